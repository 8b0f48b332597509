"""Alpha study: why held-out shown items choose alpha 0, and an alpha rule that transfers.

    # development persons (PAPI test-set positions 200-299): their test items may be read
    python benchmarks/alpha_study.py --model qwen2.5-coder-0.5b --persons dev:8 --test-items 60
    # reported persons: every alpha of the grid on all 180 test items (the ORACLE headroom)
    python benchmarks/alpha_study.py --model qwen2.5-coder-0.5b --persons reported:10
    # the page from what is finished (no model)
    python benchmarks/alpha_study.py --model qwen2.5-coder-0.5b --report

Per person (PAS with the neutral prompt, K 24, mean ranking, steering at all positions, logits
readout, seed 0; the final fit uses all answered shown items, exactly as ``palign align``):

* ``test``: the final direction's answers on the test items at every alpha of ``--grid``
  (``--test-items N`` reads N of them, spread over the traits). On a reported person this is
  the ORACLE headroom (the best alpha on the scored items): it is reported as such, never as a
  method's score, and no rule is tuned on it.
* ``heldout`` (``--heldout``): palign's held-out selection as it runs in ``pas`` (the same 3
  folds, refits and pooled error over the shown items), per alpha.
* ``heldout_variants`` (``--heldout-variant folds=10``, ``fold_heads=final`` or both): the same
  search with more folds, or with folds that keep the final fit's heads and refit only their
  directions (PAS's ``fold_heads`` option); each variant is a candidate rule.
* ``fit_variants`` (``--fit-variant k=8``, ``heads=pooled``): other final *directions* (fewer
  or more heads, heads ranked on a pool of development persons), read on the same test items
  at every alpha, with their fold stability (:mod:`alpha_study_directions`).
* ``fold_test`` (``--fold-test``): each fold's direction read on the same test items: held-out
  shown items vs test items at equal directions isolates the item sets, fold vs final
  directions at equal items isolates the direction.
* ``diag`` (no reads): cosine of each fold's steering vectors (``u`` at alpha 1, all layers)
  with the final one, the ratio of their norms, the kept heads shared, and the ``sigma`` scale.
  Their mean cosine is the person's *fold stability*
  (:func:`palign.steering.pas.fold_stability`), which the ``stable-fixed`` rules read: steer
  with a fixed alpha only a person whose direction is stable, else not at all.
  ``--diag-folds 3,5`` repeats the diagnostics with other fold counts (``diag-<set>-k<K>.json``):
  does a fold that leaves fewer items out give a direction closer to the final one? The
  summary also counts the folds whose direction points away from the final one (cosine < 0).

Rules (``--report``) are tuned on development persons only (``--persons dev:N``; the script
refuses to tune on anybody else) and then applied unchanged to reported persons. Raw records
go to ``runs/alpha-study-<model>/persons/<id>.json`` (resumable); the page to
``docs/results/alpha-selection-<model>.md`` (+ ``.json``).
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

from palign.errors import PalignError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import alpha_study_directions as directions  # noqa: E402  (benchmarks/ is not a package)
from alpha_study_page import best, markdown  # noqa: E402

DEFAULT_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)
#: fold-stability thresholds of the ``stable-fixed`` candidates
STABILITY_THRESHOLDS = (0.3, 0.5, 0.7)


def parse_persons(ds: Any, spec: str) -> tuple[str, list[Any]]:
    """``dev:N`` / ``reported:N`` / comma-separated ids -> (set name, persons)."""
    from palign.data.protocol import development_ids, development_persons

    if spec.startswith("dev:"):
        return "dev", development_persons(ds, int(spec[4:]))
    if spec.startswith("reported:"):
        return "reported", ds.persons[: int(spec[9:])]
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    persons = [ds.person(i) for i in ids]
    dev = development_ids(ds)
    kinds = {("dev" if p.id in dev else "reported") for p in persons}
    if len(kinds) > 1:
        raise PalignError("give development and reported persons in separate runs")
    return kinds.pop(), persons


def _trait_sum(pred: np.ndarray, truth: np.ndarray, traits_of: list[str]) -> float:
    """Sum over traits of the MAE (items with a missing truth skipped)."""
    per: dict[str, list[float]] = {}
    for p, t, tr in zip(pred, truth, traits_of):
        if t > 0:
            per.setdefault(tr, []).append(abs(float(p) - float(t)))
    return float(sum(np.mean(v) for v in per.values()))


def study_person(
    pas: Any,
    lm: Any,
    ds: Any,
    person: Any,
    grid: list[float],
    test_ids: list[str],
    heldout: bool,
    fold_test: bool,
    diag_only: bool = False,
    old: dict[str, Any] | None = None,
    variants: tuple[str, ...] = (),
    fit_variants: tuple[str, ...] = (),
    pooled: dict[tuple[int, int], list[tuple[int, int]]] | None = None,
) -> dict[str, Any]:
    """Every read of one person (see the module doc); ``diag_only``: no reads.

    ``old``: the person's earlier record on the same grid and test items; only what it lacks
    is read. ``variants``: held-out searches with other settings (:func:`parse_variant`).
    ``fit_variants``: other final directions read on the test items
    (:mod:`alpha_study_directions`); ``pooled``: (pool, K) -> the pooled heads they use."""
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
    from palign.models.readout import ReadRequest
    from palign.steering.pas import (
        fit_person,
        fold_assignment,
        refit_directions,
        unit_layer_vectors,
    )

    inv = ds.inventory
    shown = inv.shown_ids
    kw = pas._fit_kw()
    a = np.nan_to_num(person.answer_vector(inv, shown, pas.config.semantics))
    fit = fit_person(pas.acts, a, **kw)
    unit = unit_layer_vectors(fit, pas.arch).double()
    answered = [i for i in range(len(shown)) if a[i] > 0]
    folds = fold_assignment(len(answered), pas.folds, pas.config.seed, [shown[i] for i in answered])
    fold_units, diag = [], []
    for fold in folds:
        held = [answered[j] for j in fold]
        train = a.copy()
        train[held] = 0.0
        ff = fit_person(pas.acts, train, **kw)
        fu = unit_layer_vectors(ff, pas.arch).double()
        fold_units.append(fu)
        cos = float(torch.nn.functional.cosine_similarity(fu.flatten(), unit.flatten(), dim=0))
        # the same fold with the final fit's heads kept (only the directions and scales
        # refitted): separates the head choice from the directions as the source of the drift
        hu = unit_layer_vectors(refit_directions(fit, pas.acts, train), pas.arch).double()
        cos_heads = float(
            torch.nn.functional.cosine_similarity(hu.flatten(), unit.flatten(), dim=0)
        )
        diag.append(
            {
                "cosine": cos,
                "cosine_final_heads": cos_heads,
                "norm_ratio": float(fu.norm() / unit.norm()),
                "heads_shared": len(set(map(tuple, ff.heads)) & set(map(tuple, fit.heads))),
                "sigma_ratio": float(ff.sigmas.mean() / fit.sigmas.mean()),
                "n_train": int((train > 0).sum()),
            }
        )
    statements = {i: inv.statement(inv.item(i)) for i in test_ids}
    truth = np.nan_to_num(person.answer_vector(inv, test_ids, pas.config.semantics))

    def read(units: list[torch.Tensor], alphas: list[float] = grid) -> np.ndarray:
        """Answers ``(len(units), len(alphas), n_test)`` of the test items."""
        rows = [al * u for u in units for al in alphas]
        reqs = [
            ReadRequest(NEUTRAL_SYSTEM_PROMPT, statements[i], r)
            for r in range(len(rows))
            for i in test_ids
        ]
        out = pas._read(lm, reqs, torch.stack(rows).float())
        return out.answers.reshape(len(units), len(alphas), len(test_ids))

    rec: dict[str, Any] = {
        "person": person.id,
        "grid": grid,
        "test_ids": test_ids,
        "truth_test": truth.tolist(),
        "diag": diag,
        "final_sigma_mean": float(fit.sigmas.mean()),
    }
    t0 = time.perf_counter()
    if diag_only:
        return rec
    if old and (old["grid"], old["test_ids"]) == (grid, test_ids):
        rec = {**old, **rec}  # keep what was read; the diagnostics (no reads) are recomputed
    if "test" not in rec:
        rec["test"] = read([unit])[0].tolist()
    if fold_test and "fold_test" not in rec:
        rec["fold_test"] = read(fold_units).tolist()
    pas.grid = list(grid)
    if heldout and "heldout" not in rec:
        ((alpha, errors),) = pas.select_alpha_many(lm, ds, [person])
        rec["heldout"] = {format(k, "g"): v for k, v in errors.items()}
        rec["heldout_alpha"] = alpha
    for name in variants:
        if name in rec.get("heldout_variants", {}):
            continue
        saved = (pas.folds, pas.fold_heads)
        settings = parse_variant(name)
        saved_k = pas.k
        pas.folds = settings.get("folds", pas.folds)
        pas.fold_heads = settings.get("fold_heads", pas.fold_heads)
        pas.k = settings.get("k", pas.k)
        try:
            ((alpha, errors),) = pas.select_alpha_many(lm, ds, [person])
        finally:
            pas.folds, pas.fold_heads = saved
            pas.k = saved_k
        rec.setdefault("heldout_variants", {})[name] = {
            "errors": {format(k, "g"): v for k, v in errors.items()},
            "alpha": alpha,
        }
    for name in fit_variants:
        if name in rec.get("fit_variants", {}):
            continue
        settings = directions.parse_fit_variant(name)
        k = settings.get("k", pas.k)
        heads = (pooled or {}).get((settings["pool"], k)) if "pool" in settings else None
        vf = directions.variant_fit(pas, a, settings, heads)
        vu = unit_layer_vectors(vf, pas.arch).double()
        # alpha 0 steers nothing: its answers are the default direction's, not read again
        steered = [al for al in grid if al != 0]
        got = dict(zip(steered, read([vu], steered)[0].tolist()))
        test_rows = [got[al] if al != 0 else rec["test"][grid.index(0.0)] for al in grid]
        rec.setdefault("fit_variants", {})[name] = {
            "test": test_rows,
            "stability": directions.variant_stability(pas, a, settings, heads, vu, list(shown)),
            "heads": [list(h) for h in vf.heads],
        }
    rec["seconds"] = round(time.perf_counter() - t0 + float(rec.get("seconds") or 0), 1)
    return rec


def parse_variant(spec: str) -> dict[str, Any]:
    """``folds=10``, ``fold_heads=final``, ``k=8`` (comma-separated): a held-out search with
    other settings than PAS's default (3 folds that refit the heads, K 24)."""
    from palign.steering.pas import check_fold_heads

    out: dict[str, Any] = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key == "folds" and value.isdigit() and int(value) >= 2:
            out["folds"] = int(value)
        elif key == "fold_heads":
            out["fold_heads"] = check_fold_heads(value)
        elif key == "k" and value.isdigit() and int(value) >= 1:
            out["k"] = int(value)
        else:
            raise PalignError(
                f"bad held-out variant {spec!r}; give folds=N (N >= 2), fold_heads=final and/or k=N"
            )
    return out


def variant_name(spec: str) -> str:
    """The canonical name of a variant (keys sorted)."""
    v = parse_variant(spec)
    return ",".join(f"{k}={v[k]}" for k in sorted(v))


# --- analysis -------------------------------------------------------------------------------


def person_curves(rec: dict[str, Any], traits_of: dict[str, str]) -> dict[str, Any]:
    """Per alpha: the test sum of trait MAEs and mean error (final and fold directions)."""
    grid = rec["grid"]
    truth = np.asarray(rec["truth_test"])
    tr = [traits_of[i] for i in rec["test_ids"]]
    ok = truth > 0
    test = np.asarray(rec["test"])
    out: dict[str, Any] = {
        "test_sum": {format(g, "g"): _trait_sum(test[k], truth, tr) for k, g in enumerate(grid)},
        "test_err": {
            format(g, "g"): float(np.abs(test[k][ok] - truth[ok]).mean())
            for k, g in enumerate(grid)
        },
    }
    if "fold_test" in rec:
        ft = np.asarray(rec["fold_test"])  # (folds, alpha, items)
        out["fold_test_err"] = {
            format(g, "g"): float(np.abs(ft[:, k][:, ok] - truth[ok]).mean())
            for k, g in enumerate(grid)
        }
    if "heldout" in rec:
        out["heldout_err"] = rec["heldout"]
    if rec.get("heldout_variants"):
        out["heldout_variants"] = {k: v["errors"] for k, v in rec["heldout_variants"].items()}
    out["stability"] = float(np.mean([d["cosine"] for d in rec["diag"]]))
    if rec.get("fit_variants"):
        out["fit_variants"] = {
            name: {
                "test_sum": {
                    format(g, "g"): _trait_sum(np.asarray(v["test"])[k], truth, tr)
                    for k, g in enumerate(grid)
                },
                "stability": v["stability"],
            }
            for name, v in rec["fit_variants"].items()
        }
    # split-half ORACLE: the best alpha on every other test item, scored on the rest (both
    # ways): how much of the ORACLE's gain is the alpha and how much the choice on the
    # scored items themselves
    halves = [list(range(0, len(tr), 2)), list(range(1, len(tr), 2))]
    cross = []
    for pick, score in (halves, halves[::-1]):
        sub = {
            format(g, "g"): _trait_sum(test[k][pick], truth[pick], [tr[j] for j in pick])
            for k, g in enumerate(grid)
        }
        al = best(sub)
        k = [format(g, "g") for g in grid].index(format(al, "g"))
        cross.append(_trait_sum(test[k][score], truth[score], [tr[j] for j in score]))
    zero = [format(g, "g") for g in grid].index("0") if 0.0 in grid else None
    out["split_half_oracle"] = float(np.mean(cross))
    if zero is not None:
        out["split_half_zero"] = float(
            np.mean([_trait_sum(test[zero][h], truth[h], [tr[j] for j in h]) for h in halves])
        )
    return out


def rule_alpha(rule: dict[str, Any], curves: dict[str, Any]) -> float:
    """The alpha a rule picks for one person from what it may read (never the test curve)."""
    if rule["kind"] == "fixed":
        return float(rule["alpha"])
    if rule["kind"] == "stable-fixed":  # steer only a person whose direction is stable
        return float(rule["alpha"]) if curves["stability"] >= rule["min_cosine"] else 0.0
    if rule["kind"] == "heldout":
        return best(curves["heldout_err"])
    if rule["kind"] == "heldout-variant":  # the held-out search with other settings
        return best(curves["heldout_variants"][rule["variant"]])
    if rule["kind"] == "heldout-recorded":  # the held-out search's choice in an earlier run
        return float(curves["heldout_recorded"])
    if rule["kind"] == "heldout-floor":  # held-out choice, never below the floor
        h = {k: v for k, v in curves["heldout_err"].items() if float(k) >= rule["floor"]}
        return best(h)
    if rule["kind"] == "heldout-margin":  # stay at the prior unless held-out beats it clearly
        h = curves["heldout_err"]
        prior = format(float(rule["alpha"]), "g")
        b = best(h)
        return b if h[format(b, "g")] < h[prior] - rule["margin"] else float(rule["alpha"])
    raise PalignError(f"unknown rule kind {rule['kind']!r}")


def candidate_rules(
    grid: list[float], with_heldout: bool, variants: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Every rule measured: fixed alphas, and (with held-out curves) held-out variants."""
    rules = [{"name": f"fixed {g:g}", "kind": "fixed", "alpha": g} for g in grid]
    for g in grid:
        for c in STABILITY_THRESHOLDS:
            if g > 0:
                rules.append(
                    {
                        "name": f"fixed {g:g} if stable (cosine >= {c:g})",
                        "kind": "stable-fixed",
                        "alpha": g,
                        "min_cosine": c,
                    }
                )
    if with_heldout:
        rules.append({"name": "heldout (today's default)", "kind": "heldout"})
        for g in grid:
            if g > 0:
                rules.append({"name": f"heldout, floor {g:g}", "kind": "heldout-floor", "floor": g})
                rules.append(
                    {
                        "name": f"heldout, prior {g:g} margin 0.05",
                        "kind": "heldout-margin",
                        "alpha": g,
                        "margin": 0.05,
                    }
                )
    for name in variants:
        rules.append({"name": f"heldout [{name}]", "kind": "heldout-variant", "variant": name})
    return rules


def score_rule(rule: dict[str, Any], per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean test sum of a rule over persons, its alphas, wins/losses against alpha 0."""
    sums, alphas, wins, losses = [], [], 0, 0
    for curves in per.values():
        al = rule_alpha(rule, curves)
        s = curves["test_sum"][format(al, "g")]
        v = curves["test_sum"]["0"]
        sums.append(s)
        alphas.append(al)
        wins += s < v - 1e-9
        losses += s > v + 1e-9
    return {
        "mean_sum": float(np.mean(sums)),
        "ci95": float(1.96 * np.std(sums, ddof=1) / math.sqrt(len(sums)))
        if len(sums) > 1
        else float("nan"),
        "alphas": alphas,
        "nonzero": int(sum(a != 0 for a in alphas)),
        "wins": int(wins),
        "losses": int(losses),
        "n": len(sums),
    }


def summarise_diag(diag: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Means over persons and folds of each diagnostic."""
    rows = [f for folds in diag.values() for f in folds]
    keys = ("cosine", "cosine_final_heads", "norm_ratio", "heads_shared", "sigma_ratio")
    per_person = [float(np.mean([f["cosine"] for f in folds])) for folds in diag.values()]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys if all(k in r for r in rows)} | {
        "n_persons": len(diag),
        "folds_opposed": sum(r["cosine"] < 0 for r in rows),
        "n_folds": len(rows),
        "persons_stable_0.5": sum(c >= 0.5 for c in per_person),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--persons", default="dev:8", help="dev:N, reported:N or comma-separated ids")
    ap.add_argument("--grid", default=",".join(format(g, "g") for g in DEFAULT_GRID))
    ap.add_argument("--test-items", type=int, default=None, help="test items read (default all)")
    ap.add_argument("--heldout", action="store_true", help="also the held-out alpha search")
    ap.add_argument(
        "--heldout-variant",
        action="append",
        default=[],
        help="also a held-out search with other settings: folds=N and/or fold_heads=final "
        "(comma-separated; repeatable), e.g. folds=10 or fold_heads=final",
    )
    ap.add_argument("--fold-test", action="store_true", help="also the fold directions on test")
    ap.add_argument(
        "--fit-variant",
        action="append",
        default=[],
        help="also another final direction read on the test items: k=N and/or heads=pooled "
        "(pool=N development persons at positions 250-299 rank the heads; default 30); "
        "repeatable, e.g. k=8 or heads=pooled",
    )
    ap.add_argument(
        "--diag-only", action="store_true", help="only the direction diagnostics (no reads)"
    )
    ap.add_argument(
        "--diag-folds",
        default=None,
        help="with --diag-only: fold counts to compare, e.g. 3,5 (default: PAS's own)",
    )
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--name", default=None, help="page name under --out (default alpha-study-<model>)"
    )
    ap.add_argument("--report", action="store_true", help="only write the page")
    ap.add_argument(
        "--heldout-choices",
        default=None,
        help="PATH[:ENTRY]: a PAPI table JSON whose ENTRY (default pas@all) recorded the "
        "held-out search's alpha per reported person; scored on the study's test items",
    )
    args = ap.parse_args(argv)
    from palign.data import load_dataset
    from palign.eval.runs import test_items, write_json_atomic

    try:
        ds = load_dataset(args.data, "ipip-neo")
        grid = sorted({float(x) for x in args.grid.split(",")} | {0.0})
        run = Path(args.runs) / f"alpha-study-{args.model}"
        (run / "persons").mkdir(parents=True, exist_ok=True)
        if not args.report:
            kind, persons = parse_persons(ds, args.persons)
            from palign.methods import MethodConfig, get_method
            from palign.models.loading import load_model

            lm = load_model(args.model)
            pas = get_method("pas", MethodConfig("agreement", args.seed, {"steer_position": "all"}))
            pas.setup(lm, ds)
            tids = test_items(ds.inventory, args.test_items)
            if args.diag_only:
                ks = [int(k) for k in args.diag_folds.split(",")] if args.diag_folds else [0]
                for k in ks:
                    if k:
                        pas.folds = k
                    diag = {}
                    for p in persons:
                        rec = study_person(pas, lm, ds, p, grid, tids, False, False, diag_only=True)
                        diag[p.id] = rec["diag"]
                    path = run / (f"diag-{kind}-k{k}.json" if k else f"diag-{kind}.json")
                    write_json_atomic(path, diag)
                    print(json.dumps({"folds": pas.folds} | summarise_diag(diag), indent=1))
                return 0
            variants = tuple(variant_name(v) for v in args.heldout_variant)
            fits = tuple(directions.fit_variant_name(v) for v in args.fit_variant)
            pooled = {}
            for v in fits:
                st = directions.parse_fit_variant(v)
                key = (st.get("pool", 0), st.get("k", pas.k))
                if "pool" in st and key not in pooled:
                    pooled[key] = directions.pooled_heads(pas, ds, *key)
            for p in persons:
                path = run / "persons" / f"{p.id}.json"
                old = json.loads(path.read_text()) if path.exists() else None
                if old and old.get("set") != kind:
                    old = None
                if (
                    old
                    and (old["grid"], old["test_ids"]) == (grid, tids)
                    and ("heldout" in old) >= args.heldout
                    and ("fold_test" in old) >= args.fold_test
                    and all(v in old.get("heldout_variants", {}) for v in variants)
                    and all(v in old.get("fit_variants", {}) for v in fits)
                ):
                    continue
                t0 = time.perf_counter()
                rec = study_person(
                    pas,
                    lm,
                    ds,
                    p,
                    grid,
                    tids,
                    args.heldout,
                    args.fold_test,
                    old=old,
                    variants=variants,
                    fit_variants=fits,
                    pooled=pooled,
                )
                rec["set"] = kind
                rec["model"] = args.model
                write_json_atomic(path, rec)
                print(f"{kind} {p.id}: {time.perf_counter() - t0:.0f} s", flush=True)
        choices = load_heldout_choices(args.heldout_choices) if args.heldout_choices else None
        d = report(ds, run, args.model, args.out, choices, args.name)
        print(json.dumps({k: d[k] for k in ("chosen", "reported")}, indent=1))
    except PalignError as e:
        print(f"alpha_study: error: {e}", file=sys.stderr)
        return 2
    return 0


def _applicable(rule: dict[str, Any], curves: Any) -> bool:
    """Whether every person has what the rule reads and the test point it lands on."""
    for c in curves:
        try:
            al = rule_alpha(rule, c)
        except KeyError:
            return False
        if format(al, "g") not in c["test_sum"]:
            return False
    return True


def headroom(rep: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ORACLE headroom on the reported persons: per person alpha 0, the ORACLE (best alpha on
    the scored items), the split-half ORACLE and, where recorded, the held-out choice."""
    per = {}
    for pid, c in rep.items():
        ts = c["test_sum"]
        row = {
            "zero": ts["0"],
            "oracle": min(ts.values()),
            "oracle_alpha": best(ts),
            "split_half_oracle": c["split_half_oracle"],
            "split_half_zero": c.get("split_half_zero"),
        }
        if "heldout_recorded" in c:
            row["heldout_alpha"] = float(c["heldout_recorded"])
            row["heldout"] = ts[format(float(c["heldout_recorded"]), "g")]
        per[pid] = row
    rows = list(per.values())
    out: dict[str, Any] = {"per_person": per}
    for k in ("zero", "oracle", "split_half_oracle", "split_half_zero", "heldout"):
        vals = [r[k] for r in rows if r.get(k) is not None]
        if len(vals) == len(rows):
            out[k] = float(np.mean(vals))
    out["oracle_better"] = sum(r["oracle"] < r["zero"] - 1e-9 for r in rows)
    out["oracle_nonzero"] = sum(r["oracle_alpha"] != 0 for r in rows)
    if "split_half_zero" in out:
        out["split_half_better"] = sum(
            r["split_half_oracle"] < r["split_half_zero"] - 1e-9 for r in rows
        )
    if "heldout" in out and out["zero"] > out["oracle"]:
        out["heldout_kept"] = (out["zero"] - out["heldout"]) / (out["zero"] - out["oracle"])
    return out


def load_heldout_choices(spec: str) -> tuple[dict[str, float], str]:
    """``PATH[:ENTRY]`` of a PAPI table JSON -> (person -> alpha of ENTRY, label)."""
    path, _, entry = spec.partition(":")
    entry = entry or "pas@all"
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PalignError(f"cannot read the held-out choices {path}: {e}") from None
    for row in d.get("rows", []):
        if row.get("name") == entry and row.get("per_person"):
            return (
                {pid: float(v["alpha"]) for pid, v in row["per_person"].items()},
                f"{entry} in {Path(path).name}",
            )
    raise PalignError(f"{path} has no per-person alphas of {entry}; give PATH:ENTRY")


def report(
    ds: Any,
    run: Path,
    model: str,
    out_dir: str,
    heldout_choices: tuple[dict[str, float], str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Tune the rules on the development persons, apply them to the reported ones, write
    ``OUT/<name>.md`` and ``.json`` (default name ``alpha-study-<model>``)."""
    from palign.data.protocol import check_tuning_persons

    inv = ds.inventory
    traits_of = {i: inv.item(i).trait for i in inv.test_ids}
    recs = [json.loads(p.read_text()) for p in sorted((run / "persons").glob("*.json"))]
    dev = {r["person"]: person_curves(r, traits_of) for r in recs if r["set"] == "dev"}
    rep = {r["person"]: person_curves(r, traits_of) for r in recs if r["set"] == "reported"}
    check_tuning_persons(ds, list(dev))
    d: dict[str, Any] = {"model": model, "dev_persons": list(dev), "reported_persons": list(rep)}
    if dev:
        grid = [float(k) for k in next(iter(dev.values()))["test_sum"]]
        shared = set.intersection(*(set(c.get("heldout_variants", {})) for c in dev.values()))
        rules = candidate_rules(
            grid,
            all("heldout_err" in c for c in dev.values()) and len(dev) > 0,
            tuple(sorted(shared)),
        )
        d["dev"] = {r["name"]: score_rule(r, dev) for r in rules}
        chosen = min(rules, key=lambda r: (d["dev"][r["name"]]["mean_sum"], r["name"]))
        d["chosen"] = chosen
        if rep:
            d["reported"] = {
                r["name"]: score_rule(r, rep) for r in rules if _applicable(r, rep.values())
            }
        else:
            d["reported"] = {}
    else:
        d["chosen"], d["reported"] = None, {}
    if rep:
        if heldout_choices:
            src, entry = heldout_choices
            missing = [pid for pid in rep if pid not in src]
            if missing:
                raise PalignError(
                    f"the held-out choices file has no {entry} alpha for {', '.join(missing)}"
                )
            for pid, c in rep.items():
                c["heldout_recorded"] = src[pid]
            rule = {
                "name": f"heldout (today's default; alphas of {entry})",
                "kind": "heldout-recorded",
            }
            if _applicable(rule, rep.values()):
                d["reported"][rule["name"]] = score_rule(rule, rep)
                d["heldout_recorded_from"] = entry
        d["headroom"] = headroom(rep)
    d["directions"] = {"dev": directions.summarise(dev), "reported": directions.summarise(rep)}
    d["curves"] = {"dev": dev, "reported": rep}
    d["diag"] = {r["person"]: r["diag"] for r in recs}
    d["test_items"] = {r["set"]: len(r["test_ids"]) for r in recs}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    stem = name or f"alpha-study-{model}"
    (Path(out_dir) / f"{stem}.json").write_text(json.dumps(d, indent=1))
    (Path(out_dir) / f"{stem}.md").write_text(markdown(d))
    return d


if __name__ == "__main__":
    raise SystemExit(main())
