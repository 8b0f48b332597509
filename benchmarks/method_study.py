"""Method study: PAS variants and alternatives, scored on held-out *shown* items only.

    python benchmarks/method_study.py --model qwen2.5-coder-1.5b --persons 10
    python benchmarks/method_study.py --model smollm2 --persons 2 --name smoke   # quick

Protocol (per person; the test items are never read):

* The person's answered shown items are split into the same seeded 3 folds as PAS's alpha
  selection (:func:`palign.steering.pas.fold_assignment`).
* For fold ``f``, every variant is fitted on the other folds' answers and reads the held-out
  fold's items at every alpha of its grid (logits readout, neutral system prompt, steering at
  the last position, which lets every variant share the items' prompt caches; the all- vs
  last-position comparison comes from the PAPI table's PAS runs, whose alpha search records
  the same folds' errors at both positions).
* Alpha is chosen *across folds*: fold ``f``'s alpha minimises the held-out error of the
  other folds, so no fold's score selects its own alpha. Each shown item is predicted once;
  the score is the paper's metric on those predictions: the sum of the five trait MAEs.
* Variants: PAS (K 24, mean ranking = the default) on a finer grid with negative alphas and on
  the default grid; K 8 and 64; head ranking by validation accuracy; a per-layer residual
  direction (contrastive mean difference at the answer letter, as CAA) at three depths; trait
  directions (one per Big Five trait, weighted by the person's trait scores from the training
  folds) at the same depths; and the calibrated readout (``vanilla+calibrated``,
  ``pas+calibrated``: a per-person map from the option distribution to an answer, fitted on
  the training folds' items as read under the same steering).

Per-person raw probabilities go to ``runs/<name>/persons/<id>.json`` (resumable); the page
``docs/results/<name>.md`` (+ ``.json``) has every variant with a 95% interval over persons.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from palign.data import load_dataset
from palign.errors import PalignError

DEFAULT_GRID = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)
FINE_GRID = (-4.0, -2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
FOLDS = 3
#: the variant that is palign's current ``pas`` default (K 24, mean ranking, grid 0..8)
DEFAULT_VARIANT = "pas K24 mean"


def variant_specs(n_layers: int) -> list[dict[str, Any]]:
    """Every variant: name, kind, parameters and alpha grid."""
    depths = sorted({max(1, round(n_layers * q)) for q in (1 / 3, 1 / 2, 2 / 3)})
    specs: list[dict[str, Any]] = [
        {
            "name": "pas K24 mean (fine grid)",
            "kind": "pas",
            "K": 24,
            "rank": "mean",
            "grid": FINE_GRID,
        },
        {
            "name": "pas K24 mean",
            "kind": "pas",
            "K": 24,
            "rank": "mean",
            "grid": DEFAULT_GRID,
            "same_as": "pas K24 mean (fine grid)",
        },
        {"name": "pas K8 mean", "kind": "pas", "K": 8, "rank": "mean", "grid": DEFAULT_GRID},
        {"name": "pas K64 mean", "kind": "pas", "K": 64, "rank": "mean", "grid": DEFAULT_GRID},
        {"name": "pas K24 val", "kind": "pas", "K": 24, "rank": "val", "grid": DEFAULT_GRID},
    ]
    for layer in depths:
        specs.append(
            {"name": f"caa layer {layer}", "kind": "caa", "layer": layer, "grid": DEFAULT_GRID}
        )
    for layer in depths:
        specs.append(
            {"name": f"trait layer {layer}", "kind": "trait", "layer": layer, "grid": DEFAULT_GRID}
        )
    return specs


def _tables(
    spec: dict[str, Any],
    acts: torch.Tensor,
    res: torch.Tensor,
    trait_dirs: Any,
    train: np.ndarray,
    arch: Any,
    inv: Any,
    shown: list[str],
    seed: int,
) -> torch.Tensor:
    """``(n_alpha, L, hidden)`` steering tables of one variant fitted on ``train`` answers."""
    from palign.steering.pas import fit_person, layer_vectors_grid
    from palign.steering.residual import caa_direction, residual_table, trait_weights

    grid = list(spec["grid"])
    if spec["kind"] == "pas":
        fit = fit_person(acts, train, K=spec["K"], seed=seed, head_rank=spec["rank"])
        return layer_vectors_grid(fit, grid, arch)
    layer = spec["layer"]
    if spec["kind"] == "caa":
        d = caa_direction(res, train)
        v = d.sigmas[layer] * d.directions[layer]
    else:
        w = trait_weights(inv, shown, train)
        v = sum(
            w[t] * trait_dirs[t].sigmas[layer] * trait_dirs[t].directions[layer] for t in inv.traits
        )
    return residual_table({layer: torch.as_tensor(v)}, arch.n_layers, arch.hidden, grid)


def study_person(
    lm: Any,
    ds: Any,
    person: Any,
    acts: torch.Tensor,
    res: torch.Tensor,
    trait_dirs: Any,
    arch: Any,
    specs: list[dict[str, Any]],
    seed: int,
    kv_store: Any,
    batch_size: int,
) -> dict[str, Any]:
    """Held-out probabilities of every variant and alpha for one person (see module doc)."""
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
    from palign.models.readout import ReadRequest, option_probs
    from palign.steering.pas import fold_assignment

    inv = ds.inventory
    shown = inv.shown_ids
    a = np.nan_to_num(person.answer_vector(inv, shown, "agreement"))
    answered = [i for i in range(len(shown)) if a[i] > 0]
    folds = fold_assignment(len(answered), FOLDS, seed, [shown[i] for i in answered])
    statements = [inv.statement(inv.item(i)) for i in shown]
    out: dict[str, Any] = {"person": person.id, "folds": [], "truth": a.tolist()}
    computed = [s for s in specs if "same_as" not in s]
    for fold in folds:
        held = [answered[j] for j in fold]
        train = a.copy()
        train[held] = 0.0
        train_items = [i for i in answered if i not in set(held)]
        rows: list[torch.Tensor] = []
        index: dict[str, list[int]] = {}  # variant -> row of each alpha (zero rows shared)
        zero_row: int | None = None
        for s in computed:
            idx = []
            for u in _tables(s, acts, res, trait_dirs, train, arch, inv, shown, seed):
                if not bool(u.any()):
                    if zero_row is None:
                        zero_row = len(rows)
                        rows.append(u)
                    idx.append(zero_row)
                else:
                    idx.append(len(rows))
                    rows.append(u)
            index[s["name"]] = idx
        table = torch.stack(rows)
        nh = len(held)
        reqs = [
            ReadRequest(NEUTRAL_SYSTEM_PROMPT, statements[i], r)
            for r in range(len(rows))
            for i in held
        ]
        # calibration: the training items read under the default PAS variant's alphas
        cal_rows = index["pas K24 mean (fine grid)"]
        reqs += [
            ReadRequest(NEUTRAL_SYSTEM_PROMPT, statements[i], r)
            for r in cal_rows
            for i in train_items
        ]
        rd = option_probs(
            lm, reqs, batch_size=batch_size, steering=table, kv_store=kv_store, position="last"
        )
        p = np.round(rd.probs, 5)
        held_p = p[: len(rows) * nh].reshape(len(rows), nh, 5)
        rec: dict[str, Any] = {"held": held, "train": train_items, "probs": {}}
        for name, idx in index.items():
            rec["probs"][name] = held_p[idx].tolist()
        rec["train_probs"] = (
            p[len(rows) * nh :].reshape(len(cal_rows), len(train_items), 5).tolist()
        )
        out["folds"].append(rec)
    return out


# --- analysis ---------------------------------------------------------------------------


def _answers(probs: np.ndarray) -> np.ndarray:
    """Argmax answers 1..5 (5 = option A), as the logits readout."""
    return 5 - np.asarray(probs).argmax(axis=-1)


def _trait_sum(
    pred: dict[int, float], truth: np.ndarray, traits_of: list[str], traits: list[str]
) -> float:
    per: dict[str, list[float]] = {t: [] for t in traits}
    for i, v in pred.items():
        per[traits_of[i]].append(abs(v - truth[i]))
    return float(sum(np.mean(v) for v in per.values() if v))


def cross_fold_choice(errors: np.ndarray, grid: list[float]) -> list[int]:
    """For fold ``f``, the alpha index minimising the mean error of the *other* folds.

    ``errors``: ``(n_folds, n_alpha)`` mean held-out error per fold and alpha. Ties go to the
    smallest |alpha| (no steering first).
    """
    out = []
    for f in range(errors.shape[0]):
        others = np.delete(errors, f, axis=0).mean(axis=0)
        best = min(
            range(len(grid)), key=lambda k: (round(float(others[k]), 12), abs(grid[k]), grid[k])
        )
        out.append(best)
    return out


def analyse_person(
    rec: dict[str, Any],
    specs: list[dict[str, Any]],
    traits_of: list[str],
    traits: list[str],
    keys_of: list[int] | None = None,
) -> dict[str, Any]:
    """Per-variant scores of one person: sum of trait MAEs with cross-fold alpha, curves.

    Also two predictors that read no model, on the same folds: the person's mean training
    answer (``person-mean``) and, with ``keys_of``, the person's mean training answer of the
    item's trait in the trait's direction, mapped back through the item's key
    (``trait-mean``), both rounded.
    """
    from palign.methods.calibrated import fit_calibration

    truth = np.asarray(rec["truth"])
    res: dict[str, Any] = {}
    folds = rec["folds"]

    def score(
        name: str, fold_preds: list[np.ndarray], grid: list[float], cal: bool = False
    ) -> dict[str, Any]:
        errs = np.array(
            [
                [np.abs(fp[k] - truth[f["held"]]).mean() for k in range(len(grid))]
                for fp, f in zip(fold_preds, folds)
            ]
        )
        choice = cross_fold_choice(errs, grid)
        pred = {}
        for f, fp, k in zip(folds, fold_preds, choice):
            pred.update({i: float(v) for i, v in zip(f["held"], fp[k])})
        curve = {format(g, "g"): float(errs[:, k].mean()) for k, g in enumerate(grid)}
        return {
            "sum": _trait_sum(pred, truth, traits_of, traits),
            "alphas": [grid[k] for k in choice],
            "curve": curve,
        }

    for s in specs:
        src = s.get("same_as", s["name"])
        fine = [g for g in next(x for x in specs if x["name"] == src)["grid"]]
        idx = [fine.index(g) for g in s["grid"]]
        fp = [_answers(np.asarray(f["probs"][src]))[idx] for f in folds]
        res[s["name"]] = score(s["name"], fp, list(s["grid"]))
    # vanilla (alpha 0) and the calibrated readouts
    src = "pas K24 mean (fine grid)"
    fine = list(next(x for x in specs if x["name"] == src)["grid"])
    zero = fine.index(0.0)
    res["vanilla (alpha 0)"] = score(
        "v", [_answers(np.asarray(f["probs"][src]))[[zero]] for f in folds], [0.0]
    )
    cal_preds = []
    slopes = []
    for f in folds:
        hp, tp = np.asarray(f["probs"][src]), np.asarray(f["train_probs"])
        rows = []
        for k in range(len(fine)):
            c = fit_calibration(tp[k], truth[f["train"]])
            rows.append(c.apply(hp[k]))
            if k == zero:
                slopes.append(c.b)
        cal_preds.append(np.asarray(rows))
    res["vanilla+calibrated"] = score("vc", [cp[[zero]] for cp in cal_preds], [0.0])
    res["vanilla+calibrated"]["slope_b"] = float(np.mean(slopes))
    # no model at all, same folds
    pm, tm = {}, {}
    for f in folds:
        tr = truth[f["train"]]
        pm.update({i: float(np.clip(np.rint(tr.mean()), 1, 5)) for i in f["held"]})
        if keys_of is not None:
            by_trait: dict[str, list[float]] = {}
            for i in f["train"]:
                v = truth[i] if keys_of[i] > 0 else 6 - truth[i]
                by_trait.setdefault(traits_of[i], []).append(v)
            for i in f["held"]:
                m = np.mean(by_trait.get(traits_of[i], [3.0]))
                tm[i] = float(np.clip(np.rint(m if keys_of[i] > 0 else 6 - m), 1, 5))
    res["person-mean (no model)"] = {"sum": _trait_sum(pm, truth, traits_of, traits)}
    if keys_of is not None:
        res["trait-mean (no model)"] = {"sum": _trait_sum(tm, truth, traits_of, traits)}
    # pas+calibrated: alpha chosen on the uncalibrated errors (as the method does), then mapped
    idx = [fine.index(g) for g in DEFAULT_GRID]
    unc = [_answers(np.asarray(f["probs"][src]))[idx] for f in folds]
    errs = np.array(
        [
            [np.abs(u[k] - truth[f["held"]]).mean() for k in range(len(idx))]
            for u, f in zip(unc, folds)
        ]
    )
    choice = cross_fold_choice(errs, list(DEFAULT_GRID))
    pred = {}
    for f, cp, k in zip(folds, cal_preds, choice):
        pred.update({i: float(v) for i, v in zip(f["held"], cp[idx[k]])})
    res["pas+calibrated"] = {
        "sum": _trait_sum(pred, truth, traits_of, traits),
        "alphas": [DEFAULT_GRID[k] for k in choice],
    }
    return res


def _ci(v: list[float]) -> float:
    return float(1.96 * np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarise(per_person: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: mean sum over persons, 95% interval, wins over vanilla, and the
    paired difference to the default PAS variant with its 95% interval."""
    names = list(next(iter(per_person.values())))
    rows = []
    for n in names:
        sums = [pp[n]["sum"] for pp in per_person.values()]
        van = [pp["vanilla (alpha 0)"]["sum"] for pp in per_person.values()]
        ref = [pp[DEFAULT_VARIANT]["sum"] for pp in per_person.values()]
        diff = [s - r for s, r in zip(sums, ref)]
        rows.append(
            {
                "variant": n,
                "mean_sum": float(np.mean(sums)),
                "ci95": _ci(sums),
                "diff_vs_default": float(np.mean(diff)),
                "diff_ci95": _ci(diff),
                "wins_vs_vanilla": int(sum(s < v for s, v in zip(sums, van))),
                "n": len(sums),
            }
        )
    return rows


def position_comparison(table_runs: Path, persons: list[str]) -> dict[str, Any] | None:
    """Held-out alpha-search errors of the PAPI table's pas@all and pas@last runs."""
    out: dict[str, Any] = {}
    for pos in ("all", "last"):
        d = table_runs / f"pas@{pos}" / "persons"
        recs = {}
        for pid in persons:
            f = d / f"{pid}.json"
            if f.exists():
                recs[pid] = json.loads(f.read_text())["info"]["validation_errors"]
        if recs:
            out[pos] = recs
    return out or None


def markdown(d: dict[str, Any]) -> str:
    """The study page."""
    lines = [
        f"# Method study: {d['name']}",
        "",
        f"Model `{d['model']}` ({d.get('model_id')}), {len(d['persons'])} persons (the first of "
        f"the PAPI test set), {d['folds']} folds over each person's answered shown items, seed "
        f"{d['seed']}. **Only shown items are read; the test items are never used.** Score: the "
        "sum of the five trait MAEs over the held-out predictions of the shown items (each "
        "item predicted once, by a fit that did not see it), alpha chosen across folds (fold "
        "f's alpha minimises the other folds' held-out error). Steering at the last position "
        "(see the position section for all vs last). Lower is better; `±` is the 95% interval "
        "over persons; `wins` counts persons for whom the variant beats vanilla (alpha 0).",
        "",
        f"Reproduce: `{d['command']}`",
        "",
        "| variant | sum of trait MAEs (held-out shown items) | minus `pas K24 mean` (paired) "
        "| wins vs vanilla |",
        "|---|---|---|---|",
    ]
    for r in sorted(d["rows"], key=lambda r: r["mean_sum"]):
        lines.append(
            f"| {r['variant']} | {r['mean_sum']:.3f} ± {r['ci95']:.2f} | "
            f"{r['diff_vs_default']:+.3f} ± {r['diff_ci95']:.2f} | "
            f"{r['wins_vs_vanilla']}/{r['n']} |"
        )
    slopes = [pp["vanilla+calibrated"].get("slope_b") for pp in d["per_person"].values()]
    slopes = [b for b in slopes if b is not None]
    if slopes:
        lines += [
            "",
            f"Calibration slope: `vanilla+calibrated` fitted `b` = {np.mean(slopes):.2f} on "
            f"average (range {min(slopes):.2f}..{max(slopes):.2f}; 0 would mean the model's "
            "distribution is unused and the map is the person's mean answer, 1 the identity). "
            "The two rows marked *no model* read no model at all (same folds).",
        ]
    for n in d.get("notes") or []:
        lines += ["", n]
    lines += [
        "",
        "## Held-out error per alpha (mean absolute error per item, mean over persons and folds)",
        "",
    ]
    for name, curve in d["curves"].items():
        lines.append(f"- {name}: " + ", ".join(f"{a}: {v:.3f}" for a, v in curve.items()))
    pos = d.get("positions")
    lines += ["", "## Steering position: all vs last", ""]
    if pos and "all" in pos and "last" in pos:
        common = sorted(set(pos["all"]) & set(pos["last"]))
        lines += [
            "From the PAPI table's `pas@all` and `pas@last` runs (same folds, grid 0..8, mean "
            "absolute held-out error per item of the alpha search; best alpha per person):",
            "",
            "| person | all: best alpha (error) | last: best alpha (error) | all: error at 0 |",
            "|---|---|---|---|",
        ]
        for pid in common:
            cells = []
            for p in ("all", "last"):
                e = {float(k): v for k, v in pos[p][pid].items() if v is not None}
                b = min(e, key=lambda k: (e[k], k))
                cells.append(f"{b:g} ({e[b]:.3f})")
            cells.append(f"{pos['all'][pid]['0.0']:.3f}")
            lines.append(f"| {pid} | " + " | ".join(cells) + " |")
        best = {
            p: [min(v for v in pos[p][pid].values() if v is not None) for pid in common]
            for p in ("all", "last")
        }
        lines += [
            "",
            f"Mean best error over {len(common)} persons: all "
            f"{np.mean(best['all']):.3f}, last {np.mean(best['last']):.3f} (both "
            "optimistic: the minimum over the grid).",
        ]
    else:
        lines.append(
            "Not available yet: the PAPI table's `pas@all` / `pas@last` runs have not "
            "finished for these persons."
        )
    lines += ["", "## Per person (sum of trait MAEs on held-out shown items)", ""]
    names = [r["variant"] for r in d["rows"]]
    lines += ["| person | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for pid, pp in d["per_person"].items():
        lines.append(f"| {pid} | " + " | ".join(f"{pp[n]['sum']:.2f}" for n in names) + " |")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in d['versions'].items())}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--persons", type=int, default=10)
    ap.add_argument("--name", default=None, help="default: method-study")
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--table",
        default=None,
        help="runs folder of the PAPI table (for the position comparison), e.g. "
        "runs/qwen2.5-coder-1.5b-papi-10",
    )
    ap.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph for the page (conclusions, conditions); repeatable",
    )
    ap.add_argument(
        "--analyse-only",
        action="store_true",
        help="compute nothing: write the page from the finished persons",
    )
    args = ap.parse_args(argv)
    name = args.name or "method-study"
    try:
        return _run(args, name)
    except PalignError as e:
        print(f"method_study: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, name: str) -> int:
    from tqdm.auto import tqdm

    from palign.eval.runs import versions, write_json_atomic

    ds = load_dataset(args.data, "ipip-neo")
    persons = ds.persons[: args.persons]
    runs = Path(args.runs) / name / "persons"
    runs.mkdir(parents=True, exist_ok=True)
    todo = [p for p in persons if not (runs / f"{p.id}.json").exists()]
    model_id = None
    n_layers = None
    meta_path = runs.parent / "meta.json"
    if todo and not args.analyse_only:
        from palign.methods.pas import shown_activations
        from palign.methods.pas_capture import residual_activations
        from palign.models.loading import load_model
        from palign.models.readout import KVStore
        from palign.steering.arch import resolve_arch
        from palign.steering.residual import trait_directions

        lm = load_model(args.model)
        model_id = lm.model_id
        arch = resolve_arch(lm.model)
        n_layers = arch.n_layers
        write_json_atomic(
            meta_path,
            {"model": args.model, "model_id": model_id, "n_layers": n_layers, "seed": args.seed},
        )
        acts = shown_activations(lm, ds, arch)
        res = residual_activations(lm, ds, arch)
        trait_dirs = trait_directions(res, ds.inventory, ds.inventory.shown_ids)
        specs = variant_specs(n_layers)
        kv = KVStore(4 << 30)
        for p in tqdm(todo, desc="method study", unit="person"):
            t = time.perf_counter()
            rec = study_person(
                lm, ds, p, acts, res, trait_dirs, arch, specs, args.seed, kv, args.batch_size
            )
            rec["seconds"] = round(time.perf_counter() - t, 1)
            write_json_atomic(runs / f"{p.id}.json", rec)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    n_layers = n_layers or meta.get("n_layers")
    model_id = model_id or meta.get("model_id")
    done = [p for p in persons if (runs / f"{p.id}.json").exists()]
    if not done:
        raise PalignError(f"no finished person in {runs}; run without --analyse-only first")
    specs = variant_specs(int(n_layers))
    inv = ds.inventory
    traits_of = [inv.item(i).trait for i in inv.shown_ids]
    keys_of = [inv.item(i).key for i in inv.shown_ids]
    per_person = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for p in done:
        rec = json.loads((runs / f"{p.id}.json").read_text())
        pp = analyse_person(rec, specs, traits_of, list(inv.traits), keys_of)
        per_person[p.id] = pp
        for n, r in pp.items():
            for a, v in (r.get("curve") or {}).items():
                curves.setdefault(n, {}).setdefault(a, []).append(v)
    cmd = (
        f"python benchmarks/method_study.py --model {args.model} --persons {args.persons}"
        + (f" --name {name}" if name != "method-study" else "")
        + (f" --table {args.table}" if args.table else "")
    )
    d = {
        "name": name,
        "model": args.model,
        "model_id": model_id,
        "seed": args.seed,
        "folds": FOLDS,
        "persons": [p.id for p in done],
        "command": cmd,
        "rows": summarise(per_person),
        "curves": {
            n: {a: float(np.mean(v)) for a, v in c.items()} for n, c in curves.items() if len(c) > 1
        },
        "positions": position_comparison(Path(args.table), [p.id for p in done])
        if args.table
        else None,
        "per_person": per_person,
        "notes": list(args.note),
        "versions": versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{name}.json", d)
    (out / f"{name}.md").write_text(markdown(d), encoding="utf-8")
    print(markdown(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
