"""Does PAS move a model's answers toward the person, or only onto one letter?

For the demo's model choice (docs/results/demo-model.md): reads finished PAPI-table runs
(``runs/<table>/vanilla`` and ``runs/<table>/<entry>``, written by
``benchmarks/papi_table.py``) and, per person and model, compares vanilla with the method on
the same test items:

* the sum of trait MAEs (as every table), beside the constant-3 reference for that person;
* the answers the method uses (a model that answers one letter everywhere can lower the MAE
  of a person whose answers sit near that letter without reading anything item by item);
* the **item-level correlation** (Spearman) between the model's expected answer (the
  probability-weighted answer of the logits readout) and the person's answers: alignment
  raises it, a shift onto one letter does not;
* how many items moved toward / away from the person's answer.

A model "moves toward the person" for a person when the method lowers the sum *and* raises
the item-level correlation. Nothing here reads a model; the runs hold every per-item figure.

    python benchmarks/demo_model_choice.py --table qwen2.5-coder-0.5b-papi-10 \
        --table gemma3-270m-papi-10 --table qwen2.5-coder-1.5b-heldout-alphas:a1,a2,a8
    # -> benchmarks/results/demo_model_choice.json (and the markdown table on stdout)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman correlation (average ranks for ties); None where either side is constant."""
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def person_row(inv: Any, person: Any, van: dict[str, Any], met: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one person (module doc)."""
    from palign.eval.metrics import score_person

    ids = [i for i in inv.test_ids if i in met["answers"]]
    truth = person.answers(inv, "agreement", ids)
    ids = [i for i in ids if i in truth]
    t = np.array([truth[i] for i in ids], dtype=float)

    def sums(pred: dict[str, Any]) -> float:
        """Sum of the trait MAEs over the traits among ``ids``."""
        sc = score_person(inv, person, pred, "agreement", ids)
        return float(sum(v for t, v in sc.traits.items() if sc.n_scored[t] > 0))

    va = np.array([van["answers"][i] for i in ids], dtype=float)
    ma = np.array([met["answers"][i] for i in ids], dtype=float)
    toward = int((np.abs(ma - t) < np.abs(va - t)).sum())
    away = int((np.abs(ma - t) > np.abs(va - t)).sum())
    return {
        "person": person.id,
        "alpha": met.get("info", {}).get("alpha"),
        "items": len(ids),
        "vanilla": sums(van["answers"]),
        "method": sums(met["answers"]),
        "constant_3": sums({i: 3 for i in ids}),
        "method_answers": dict(sorted(Counter(int(a) for a in ma).items())),
        "vanilla_answers": dict(sorted(Counter(int(a) for a in va).items())),
        "corr_vanilla": spearman(np.array([van["expected"][i] for i in ids]), t),
        "corr_method": spearman(np.array([met["expected"][i] for i in ids]), t),
        "toward": toward,
        "away": away,
    }


def table_rows(ds: Any, runs: Path, table: str, entries: list[str]) -> dict[str, Any]:
    """The persons finished in both ``vanilla`` and one of ``entries`` of a table's runs."""
    inv = ds.inventory
    vdir = runs / table / "vanilla" / "persons"
    rows, order, models = [], {}, set()
    for entry in entries:
        mdir = runs / table / entry / "persons"
        if not mdir.parent.is_dir():
            raise SystemExit(f"demo_model_choice: error: no run {mdir.parent}; run it first")
        cfg = json.loads((runs / table / entry / "config.json").read_text())
        cfg = cfg.get("config", cfg)
        models.add(cfg.get("model"))
        for p in cfg.get("persons", []):
            order.setdefault(p, len(order))
        for f in sorted(mdir.glob("*.json")):
            vf = vdir / f.name
            if not vf.exists():
                continue
            met, van = json.loads(f.read_text()), json.loads(vf.read_text())
            rows.append(person_row(inv, ds.person(met["person"]), van, met))
    if len(models) != 1:
        raise SystemExit(f"demo_model_choice: error: entries of {table} hold models {models}")
    rows.sort(key=lambda r: order.get(r["person"], len(order)))
    return _summarised(rows, table, ",".join(entries), models.pop())


def _summarised(rows: list[dict[str, Any]], table: str, entry: str, model: str) -> dict[str, Any]:
    """Rows of one model with their summary."""
    n = len(rows)

    def mean(k: str) -> float | None:
        v = [r[k] for r in rows if r[k] is not None]
        return float(np.mean(v)) if v else None

    moved = [
        r
        for r in rows
        if r["method"] < r["vanilla"] - 1e-9
        and r["corr_method"] is not None
        and (r["corr_vanilla"] is None or r["corr_method"] > r["corr_vanilla"])
    ]
    return {
        "table": table,
        "entry": entry,
        "model": model,
        "persons": rows,
        "summary": {
            "n": n,
            "vanilla": mean("vanilla"),
            "method": mean("method"),
            "constant_3": mean("constant_3"),
            "better_than_vanilla": sum(r["method"] < r["vanilla"] - 1e-9 for r in rows),
            "better_than_constant_3": sum(r["method"] < r["constant_3"] - 1e-9 for r in rows),
            "one_letter": sum(max(r["method_answers"].values()) >= 0.9 * r["items"] for r in rows),
            "corr_vanilla": mean("corr_vanilla"),
            "corr_method": mean("corr_method"),
            "moved_toward_person": len(moved),
        },
    }


def study_rows(ds: Any, runs: Path, model: str, choices_spec: str) -> dict[str, Any]:
    """The same figures from the alpha study's reported persons (``alpha_study.py --persons
    reported:N``: the test curve at every alpha): alpha 0 (vanilla) against the alpha the
    held-out search chose for the person in a PAPI table (``PATH[:ENTRY]``). The study keeps
    the answers only, so the correlation is that of the answers (not the expected answer)."""
    sys.path.insert(0, str(HERE))
    from alpha_study import load_heldout_choices

    inv = ds.inventory
    alphas, label = load_heldout_choices(choices_spec)
    rows = []
    for f in sorted((runs / f"alpha-study-{model}" / "persons").glob("*.json")):
        rec = json.loads(f.read_text())
        if rec.get("set") != "reported" or "test" not in rec or rec["person"] not in alphas:
            continue
        grid = [format(float(g), "g") for g in rec["grid"]]
        chosen = format(alphas[rec["person"]], "g")
        if chosen not in grid or "0" not in grid:
            continue
        ids = rec["test_ids"]
        van = dict(zip(ids, rec["test"][grid.index("0")]))
        met = dict(zip(ids, rec["test"][grid.index(chosen)]))
        row = person_row(
            inv,
            ds.person(rec["person"]),
            {"answers": van, "expected": van},
            {"answers": met, "expected": met, "info": {"alpha": alphas[rec["person"]]}},
        )
        rows.append(row)
    order = {p.id: k for k, p in enumerate(ds.persons)}
    rows.sort(key=lambda r: order.get(r["person"], len(order)))
    return _summarised(rows, f"alpha-study-{model}", f"held-out alphas of {label}", model)


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    """Summary table (one row per model) and per-person tables."""
    out = [
        "| model (runs) | persons | vanilla | PAS | constant 3 | PAS better than vanilla / "
        "than constant 3 | PAS on one letter (>= 90% of items) | item correlation vanilla -> "
        "PAS | lower sum and higher item correlation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["summary"]
        out.append(
            f"| `{r['model']}` ({r['table']}/{r['entry']}) | {s['n']} | {_f(s['vanilla'])} | "
            f"{_f(s['method'])} | {_f(s['constant_3'])} | {s['better_than_vanilla']} / "
            f"{s['better_than_constant_3']} | {s['one_letter']} | {_f(s['corr_vanilla'])} -> "
            f"{_f(s['corr_method'])} | {s['moved_toward_person']} of {s['n']} |"
        )
    for r in results:
        out += [
            "",
            f"`{r['model']}`, {r['entry']} ({r['table']}):",
            "",
            "| person | alpha | vanilla | PAS | constant 3 | PAS answers | item correlation "
            "vanilla -> PAS | items toward / away |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in r["persons"]:
            ans = ", ".join(f"{k}: {v}" for k, v in p["method_answers"].items())
            out.append(
                f"| {p['person']} | {_f(p['alpha'], 0) if p['alpha'] is not None else '-'} | "
                f"{_f(p['vanilla'])} | {_f(p['method'])} | {_f(p['constant_3'])} | {ans} | "
                f"{_f(p['corr_vanilla'])} -> {_f(p['corr_method'])} | {p['toward']} / "
                f"{p['away']} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--table",
        action="append",
        default=[],
        help="runs/<TABLE>[:ENTRY,...] (repeatable): the method entries beside its vanilla "
        "(default pas@all)",
    )
    ap.add_argument(
        "--study",
        action="append",
        default=[],
        help="MODEL=PATH[:ENTRY]: also the alpha study's reported persons of MODEL, vanilla "
        "(alpha 0) against the held-out alphas of a PAPI table JSON (repeatable)",
    )
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "demo_model_choice.json"))
    args = ap.parse_args(argv)
    from palign.data import load_dataset
    from palign.errors import PalignError

    try:
        ds = load_dataset(args.data, "ipip-neo")
    except PalignError as e:
        print(f"demo_model_choice: error: {e}", file=sys.stderr)
        return 2
    results = []
    for spec in args.table:
        table, _, entries = spec.partition(":")
        results.append(table_rows(ds, Path(args.runs), table, (entries or "pas@all").split(",")))
    for spec in args.study:
        model, _, choices = spec.partition("=")
        results.append(study_rows(ds, Path(args.runs), model, choices))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": sys.argv, "results": results}, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
