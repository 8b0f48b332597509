"""The PAPI results table: every method and every reference predictor for one model.

Runs each method through :func:`palign.eval.runs.run_eval` into ``<runs>/<name>/<method>``
(finished runs and persons are reused, not recomputed), then writes
``<out>/<name>.md`` and ``<out>/<name>.json`` with the per-trait table (mean, sum and a 95%
interval over persons), answer histograms, the chosen-alpha distribution of PAS methods, time
per person, and PNG plots (per-trait error bars per method; predicted vs true trait profiles of
a few persons).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from palign.data.types import Dataset
from palign.eval.baselines import predict, run_baselines
from palign.eval.metrics import Report, evaluate
from palign.eval.runs import RunConfig, run_eval, test_items, versions, write_json_atomic

ALL_METHODS = ("vanilla", "few-shot", "personality-prompt", "pas", "pas+few-shot")
REFERENCES = ("constant-3", "item-median", "item-mean", "facet-mean", "trait-mean", "ridge")


def _ci_of_sum(rep: Report) -> float:
    """95% normal interval half-width of the per-person sum over traits."""
    sums = [sum(p.traits.values()) for p in rep.persons]
    sums = [s for s in sums if not math.isnan(s)]
    if len(sums) < 2:
        return float("nan")
    return float(1.96 * np.std(sums, ddof=1) / math.sqrt(len(sums)))


def trait_profile(
    ds: Dataset, answers: dict[str, float], semantics: str, item_ids: list[str]
) -> dict[str, float]:
    """Mean trait-direction value per trait of the given answers (1..5 scale)."""
    inv = ds.inventory
    acc: dict[str, list[float]] = {t: [] for t in inv.traits}
    for iid in item_ids:
        v = answers.get(iid)
        if v is None or v == 0 or (isinstance(v, float) and math.isnan(v)):
            continue
        it = inv.item(iid)
        acc[it.trait].append(inv.to_trait(it, float(v), semantics))  # type: ignore[arg-type]
    return {t: float(np.mean(v)) if v else float("nan") for t, v in acc.items()}


def build_report(
    ds: Dataset,
    name: str,
    model: str,
    n_persons: int,
    *,
    methods: tuple[str, ...] | list[str] = ALL_METHODS,
    semantics: str = "agreement",
    runs_dir: str | Path = "runs",
    out_dir: str | Path = "docs/results",
    max_items: int | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    profiles: int = 3,
    progress: bool = True,
    lm: Any = None,
) -> dict[str, Any]:
    """Run (or reuse) every method, then write the Markdown/JSON/PNG report; returns the JSON."""
    persons = ds.persons[:n_persons]
    ids = [p.id for p in persons]
    item_ids = test_items(ds.inventory, max_items)
    runs_dir = Path(runs_dir) / name
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    per_person_preds: dict[str, dict[str, dict[str, float]]] = {}
    if lm is None and methods:
        from palign.models.loading import load_model

        lm = load_model(model)
    for m in methods:
        opts = dict(options or {}) if m.startswith("pas") else {}
        cfg = RunConfig(
            method=m,
            model=model,
            inventory=ds.inventory.name,
            semantics=semantics,  # type: ignore[arg-type]
            seed=seed,
            persons=ids,
            data=ds.source,
            options=opts,
            max_items=max_items,
        )
        res = run_eval(cfg, runs_dir / m, lm=lm, dataset=ds, progress=progress)
        done = {}
        for pid in ids:
            done[pid] = json.loads((runs_dir / m / "persons" / f"{pid}.json").read_text())
        preds = {pid: r["answers"] for pid, r in done.items()}
        per_person_preds[m] = preds
        rep = evaluate(ds.inventory, persons, preds, semantics, name=m, item_ids=item_ids)  # type: ignore[arg-type]
        alphas = [r.get("info", {}).get("alpha") for r in done.values()]
        alphas = [a for a in alphas if a is not None]
        rows.append(
            {
                "kind": "method",
                **rep.to_dict(),
                "ci95_sum": _ci_of_sum(rep),
                "seconds_per_person": res["timings"]["seconds_per_person"],
                "alpha_distribution": {
                    format(k, "g"): v for k, v in sorted(Counter(alphas).items())
                }
                if alphas
                else None,
            }
        )
    for rep in run_baselines(ds, semantics, list(REFERENCES), seed=seed, persons=ids):  # type: ignore[arg-type]
        if max_items is not None:
            preds = predict(rep.name, ds, semantics, seed)  # type: ignore[arg-type]
            rep = evaluate(
                ds.inventory, persons, preds, semantics, name=rep.name, item_ids=item_ids
            )  # type: ignore[arg-type]
        rows.append({"kind": "reference", **rep.to_dict(), "ci95_sum": _ci_of_sum(rep)})
        per_person_preds.setdefault(rep.name, {})
    prof = []
    for p in persons[:profiles]:
        truth = p.answers(ds.inventory, semantics, item_ids)  # type: ignore[arg-type]
        entry = {"person": p.id, "true": trait_profile(ds, truth, semantics, item_ids)}  # type: ignore[arg-type]
        for m in methods:
            entry[m] = trait_profile(ds, per_person_preds[m][p.id], semantics, item_ids)
        fm = predict("facet-mean", ds, semantics, seed)[p.id]  # type: ignore[arg-type]
        entry["facet-mean"] = trait_profile(ds, fm, semantics, item_ids)
        prof.append(entry)
    payload = {
        "name": name,
        "model": model,
        "model_id": getattr(lm, "model_id", None),
        "inventory": ds.inventory.name,
        "semantics": semantics,
        "persons": ids,
        "n_items": len(item_ids),
        "max_items": max_items,
        "seed": seed,
        "options": options or {},
        "versions": versions(),
        "traits": ds.inventory.traits,
        "rows": rows,
        "profiles": prof,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(payload, out_dir, name)
    payload["plots"] = plots
    write_json_atomic(out_dir / f"{name}.json", payload)
    (out_dir / f"{name}.md").write_text(markdown(payload), encoding="utf-8")
    return payload


def _fmt(v: Any, nd: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def markdown(d: dict[str, Any]) -> str:
    """The Markdown page of a report."""
    traits = d["traits"]
    lines = [
        f"# PAPI results: {d['name']}",
        "",
        f"Model `{d['model']}` ({d.get('model_id')}), inventory {d['inventory']}, {d['semantics']} "
        f"semantics, {len(d['persons'])} persons, {d['n_items']} test items each, seed {d['seed']}. "
        "Mean absolute error per trait (lower is better); `sum` is the paper's overall, "
        "`±` the 95% interval over persons.",
        "",
        f"Reproduce: `python benchmarks/papi_table.py --model {d['model']} --persons "
        f"{len(d['persons'])} --name {d['name']}"
        + (f" --max-items {d['n_items']}" if d.get("max_items") else "")
        + (f" --semantics {d['semantics']}" if d["semantics"] != "agreement" else "")
        + "` (finished runs in `runs/<name>/` are reused).",
        "",
        "| method | " + " | ".join(traits) + " | mean | sum | exact | s/person |",
        "|---|" + "---|" * (len(traits) + 4),
    ]
    for r in d["rows"]:
        name = r["name"] if r["kind"] == "method" else f"*{r['name']}* (reference)"
        cells = [f"{_fmt(r['traits'][t])} ± {_fmt(r['ci95'][t], 2)}" for t in traits]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_fmt(r['mean'])} | {_fmt(r['sum'])} ± "
            f"{_fmt(r['ci95_sum'], 2)} | {_fmt(r['exact_match'])} | "
            f"{_fmt(r.get('seconds_per_person'), 1)} |"
        )
    lines += ["", "## Predicted-answer histograms (count of answers 1..5, unparsed)", ""]
    lines += ["| method | 1 | 2 | 3 | 4 | 5 | unparsed |", "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if r["kind"] == "method":
            h = r["histogram"]
            lines.append(
                f"| {r['name']} | "
                + " | ".join(str(h[k]) for k in ("1", "2", "3", "4", "5", "unparsed"))
                + " |"
            )
    pas_rows = [r for r in d["rows"] if r.get("alpha_distribution")]
    if pas_rows:
        lines += ["", "## Chosen alpha (persons per alpha)", ""]
        for r in pas_rows:
            lines.append(
                f"- {r['name']}: "
                + ", ".join(f"alpha {k}: {v}" for k, v in r["alpha_distribution"].items())
            )
    if d.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in d["plots"]]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in d['versions'].items())}", ""]
    return "\n".join(lines)


def _plots(d: dict[str, Any], out: Path, name: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plots are optional
        return []
    traits = d["traits"]
    rows = d["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(traits) + 3), 4))
    width = 0.8 / len(rows)
    x = np.arange(len(traits))
    for k, r in enumerate(rows):
        ys = [r["traits"][t] or np.nan for t in traits]
        es = [r["ci95"][t] or 0 for t in traits]
        ax.bar(
            x + k * width,
            ys,
            width,
            yerr=es,
            capsize=2,
            label=r["name"],
            hatch="//" if r["kind"] == "reference" else None,
            alpha=0.85,
        )
    ax.set_xticks(x + width * (len(rows) - 1) / 2, traits)
    ax.set_ylabel("mean absolute error (lower is better)")
    ax.set_title(f"{d['name']}: per-trait error, 95% interval over {len(d['persons'])} persons")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    f1 = f"{name}-traits.png"
    fig.savefig(out / f1, dpi=110)
    plt.close(fig)
    files = [f1]
    if d["profiles"]:
        n = len(d["profiles"])
        fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4), squeeze=False)
        for ax, prof in zip(axes[0], d["profiles"]):
            for key, val in prof.items():
                if key == "person":
                    continue
                ax.plot(
                    traits,
                    [val[t] for t in traits],
                    marker="o",
                    lw=2.5 if key == "true" else 1,
                    color="black" if key == "true" else None,
                    label=key,
                )
            ax.set_ylim(1, 5)
            ax.set_title(f"person {prof['person']}")
        axes[0][0].set_ylabel("trait score (1..5)")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        f2 = f"{name}-profiles.png"
        fig.savefig(out / f2, dpi=110)
        plt.close(fig)
        files.append(f2)
    return files
