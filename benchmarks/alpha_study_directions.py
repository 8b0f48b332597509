"""Direction candidates of the alpha study (``alpha_study.py --fit-variant``).

The ORACLE headroom showed that no alpha rule can steer more persons for the better with PAS's
direction (K 24 heads, each person's own head ranking); what would have to change is the
direction. A *fit variant* changes how the final direction is fitted from the person's shown
items, and the study reads it on the same test items at every alpha of the grid:

* ``k=N``: keep N heads instead of 24 (fewer: less of the noise of weak heads; more: an average
  over more heads);
* ``heads=pooled``: every person gets the same heads, the K best by the probe score averaged
  over ``pool`` development persons (positions 250-299 of the PAPI test set, disjoint from the
  ``dev:N`` persons the rules are tuned on for N <= 50; only their *shown* answers are read),
  and only the mass-mean directions and scales are the person's own. The head choice is the
  part of the direction that moved most when a third of the shown items was left out
  (alpha-selection.md, section 1);
* ``dir=content`` / ``dir=level``: PAS's heads, the direction split in two. With the sample
  layout (item ``i`` answered A and E), a head's mass-mean difference is
  ``v = mean_i s_i (A_i - E_i)`` (``s_i`` = +1 where the person agrees, -1 where they
  disagree): a sum of per-item "A rather than E" vectors. Their mean over the 120 shown items,
  ``m`` (the same for everybody), is the head's "answer A" direction. ``level`` keeps only
  ``v``'s component along ``m`` (steering toward agreeing or disagreeing with everything);
  ``content`` removes it (what is left is the person's pattern of agreeing with some
  statements and not others). Each is normalised and gets its own projection std, as PAS's.
  Which of the two carries PAS's gain says whether it aligns the person's traits or their
  answer level.

Each variant records its test curve (``test``, the ORACLE's view, as ``alpha_study``'s own) and
its fold stability (the mean cosine of the fold refits, with the same variant, to the final
fit: no reads).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from palign.errors import PalignError

#: development positions (1-based, PAPI test set) the pooled head ranking reads: disjoint from
#: ``dev:N`` (positions 200-...) for N <= 50
POOL_FIRST = 250
DEFAULT_POOL = 30


def parse_fit_variant(spec: str) -> dict[str, Any]:
    """``k=8``, ``heads=pooled``, ``heads=pooled,pool=50,k=48`` -> settings."""
    out: dict[str, Any] = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key == "k" and value.isdigit() and int(value) >= 1:
            out["k"] = int(value)
        elif key == "heads" and value == "pooled":
            out["heads"] = "pooled"
        elif key == "pool" and value.isdigit() and 2 <= int(value) <= 50:
            out["pool"] = int(value)
        elif key == "dir" and value in ("content", "level"):
            out["dir"] = value
        else:
            raise PalignError(
                f"bad fit variant {spec!r}; give k=N, heads=pooled, pool=N (2..50) and/or "
                "dir=content|level"
            )
    if "pool" in out and out.get("heads") != "pooled":
        raise PalignError(f"fit variant {spec!r}: pool=N needs heads=pooled")
    if out.get("heads") == "pooled":
        out.setdefault("pool", DEFAULT_POOL)
    if not out:
        raise PalignError("empty fit variant; give k=N, heads=pooled and/or dir=content|level")
    return out


def fit_variant_name(spec: str) -> str:
    """The canonical name of a fit variant (keys sorted)."""
    v = parse_fit_variant(spec)
    return ",".join(f"{k}={v[k]}" for k in sorted(v))


def pool_persons(ds: Any, n: int) -> list[Any]:
    """The development persons whose shown answers rank the pooled heads."""
    from palign.data.protocol import development_persons

    dev = development_persons(ds)
    first = POOL_FIRST - 200
    pool = dev[first : first + n]
    if len(pool) < n:
        raise PalignError(f"only {len(pool)} pool persons at positions {POOL_FIRST}-299")
    return pool


def pooled_heads(pas: Any, ds: Any, n_pool: int, K: int) -> list[tuple[int, int]]:
    """The K heads with the best probe score averaged over ``n_pool`` pool persons."""
    from palign.steering.pas import head_score_map
    from palign.steering.probes import rank_heads

    inv = ds.inventory
    kw = {k: v for k, v in pas._fit_kw().items() if k != "K"}
    scores, losses = [], []
    for p in pool_persons(ds, n_pool):
        a = np.nan_to_num(p.answer_vector(inv, inv.shown_ids, pas.config.semantics))
        hs = head_score_map(pas.acts, a, **kw)
        scores.append(hs.score.double())
        losses.append(hs.val_loss.double())
    return rank_heads(torch.stack(scores).mean(0), K, tiebreak=torch.stack(losses).mean(0))


def variant_fit(
    pas: Any, answers: np.ndarray, settings: dict[str, Any], heads: list[tuple[int, int]] | None
) -> Any:
    """The final fit of one variant on ``answers`` (0 = not used)."""
    from palign.steering.pas import fit_person, refit_directions

    kw = pas._fit_kw() | ({"K": settings["k"]} if "k" in settings else {})
    fit = fit_person(pas.acts, answers, **kw)
    if settings.get("heads") == "pooled":
        if heads is None:
            raise PalignError("heads=pooled needs the pooled head ranking")
        fit = refit_directions(replace(fit, heads=list(heads), K=len(heads)), pas.acts, answers)
    if "dir" in settings:
        dirs, sig = split_directions(pas.acts, answers, fit.heads, settings["dir"])
        fit = replace(fit, directions=dirs, sigmas=sig)
    return fit


def split_directions(
    acts: torch.Tensor, answers: np.ndarray, heads: list[tuple[int, int]], part: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``level`` or ``content`` part of each head's mass-mean direction (module doc), unit
    length, and the std of the labelled samples' projections on it."""
    from palign.steering.pas import labels_for

    y = labels_for(answers)
    li = torch.tensor([h[0] for h in heads])
    hi = torch.tensor([h[1] for h in heads])
    x = acts[:, li, hi].double()  # (2n, K, d)
    delta = x[0::2] - x[1::2]  # (n, K, d): A_i - E_i
    m = delta.mean(0)
    m = m / m.norm(dim=1, keepdim=True)
    pos, neg = y == 1, y == 0
    v = x[pos].mean(0) - x[neg].mean(0)  # PAS's mass-mean difference
    along = (v * m).sum(1, keepdim=True) * m
    d = along if part == "level" else v - along
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-30)
    sigma = torch.einsum("nkd,kd->nk", x[pos | neg], d).std(0, unbiased=False)
    return d.float(), sigma.float()


def variant_stability(
    pas: Any,
    answers: np.ndarray,
    settings: dict[str, Any],
    heads: list[tuple[int, int]] | None,
    final_unit: torch.Tensor,
    item_ids: list[str],
) -> float:
    """Mean cosine of the variant's fold refits (PAS's folds) with its final steering vector."""
    from palign.steering.pas import fold_assignment, unit_layer_vectors

    answered = [i for i in range(len(answers)) if answers[i] > 0]
    folds = fold_assignment(
        len(answered), pas.folds, pas.config.seed, [item_ids[i] for i in answered]
    )
    cos = []
    for fold in folds:
        train = answers.copy()
        train[[answered[j] for j in fold]] = 0.0
        fu = unit_layer_vectors(variant_fit(pas, train, settings, heads), pas.arch).double()
        cos.append(
            float(torch.nn.functional.cosine_similarity(fu.flatten(), final_unit.flatten(), dim=0))
        )
    return float(np.mean(cos))


def summarise(curves: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fit variant over the persons that have it: alpha 0, the ORACLE view, fixed alphas.

    ``curves``: person -> :func:`alpha_study.person_curves` output (``fit_variants`` holds
    each variant's ``test_sum`` per alpha and ``stability``). The baseline (PAS's own
    direction) is listed as ``default``."""
    names = sorted({n for c in curves.values() for n in c.get("fit_variants", {})})
    out: dict[str, dict[str, Any]] = {}
    for name in ["default", *names]:
        rows = []
        for c in curves.values():
            v = (
                {"test_sum": c["test_sum"], "stability": c["stability"]}
                if name == "default"
                else c.get("fit_variants", {}).get(name)
            )
            if v:
                rows.append(v)
        if not rows or any(set(r["test_sum"]) != set(rows[0]["test_sum"]) for r in rows):
            continue
        grid = list(rows[0]["test_sum"])
        zero = [r["test_sum"]["0"] for r in rows]
        oracle = [min(r["test_sum"].values()) for r in rows]
        fixed = {}
        for g in grid:
            vals = [r["test_sum"][g] for r in rows]
            fixed[g] = {
                "mean": float(np.mean(vals)),
                "better": int(sum(v < z - 1e-9 for v, z in zip(vals, zero))),
                "worse": int(sum(v > z + 1e-9 for v, z in zip(vals, zero))),
            }
        out[name] = {
            "n": len(rows),
            "zero": float(np.mean(zero)),
            "oracle": float(np.mean(oracle)),
            "oracle_better": int(sum(o < z - 1e-9 for o, z in zip(oracle, zero))),
            "fixed": fixed,
            "stability": float(np.mean([r["stability"] for r in rows])),
        }
    return out


def markdown_lines(summary: dict[str, dict[str, Any]], who: str) -> list[str]:
    """The direction table of one person set."""
    if len(summary) < 2:
        return []
    grid = [g for g in next(iter(summary.values()))["fixed"] if g != "0"]
    lines = [
        f"## Direction candidates on the {who} persons (ORACLE view: test items at every alpha)",
        "",
        "Mean sum of trait MAEs; `better/worse`: persons against alpha 0. `default` is PAS's "
        "direction (K 24, the person's own head ranking). Fold stability: mean cosine of the "
        "variant's fold refits with its final steering vector.",
        "",
        "| direction | persons | fold stability | alpha 0 | ORACLE (better) | "
        + " | ".join(f"alpha {g} (better/worse)" for g in grid)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(grid),
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['n']} | {s['stability']:.2f} | {s['zero']:.3f} | "
            f"{s['oracle']:.3f} ({s['oracle_better']}) | "
            + " | ".join(
                f"{s['fixed'][g]['mean']:.3f} ({s['fixed'][g]['better']}/{s['fixed'][g]['worse']})"
                for g in grid
            )
            + " |"
        )
    return lines + [""]
