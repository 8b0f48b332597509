"""A person's trait and facet profile, and where it lies in a data set's population.

The profile is palign's one scoring of answers (``palign data person`` prints it): every
answer is mapped to the trait direction (:meth:`Inventory.to_trait`: reverse-keyed items
flipped, ``6 - answer``, under ``agreement`` semantics) and averaged per trait and per facet,
on the 1..5 scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from palign.data.types import Dataset, Inventory, Semantics

__all__ = ["facet_codes", "percentile", "population", "summary", "trait_profile"]


def facet_codes(inv: Inventory) -> list[str]:
    """The inventory's facet codes in display order (trait order, then code)."""
    return sorted({i.facet for i in inv.items}, key=lambda f: (inv.traits.index(f[0]), f))


def trait_profile(
    inv: Inventory,
    answers: Mapping[str, float],
    semantics: Semantics,
    ids: Iterable[str] | None = None,
) -> dict[str, float | None]:
    """Trait-direction mean answer (1..5) per trait and per facet, rounded to 3 decimals.

    Args:
        inv: the inventory.
        answers: item id -> answer under ``semantics`` (missing items left out).
        semantics: ``agreement`` (answers to the statements) or ``paper``.
        ids: score only these items (default: every answered item).

    Returns:
        trait letter or facet code -> mean (None where no item of it is answered). For an
        inventory without facets the facet codes are the trait letters.
    """
    keep = None if ids is None else set(ids)
    by: dict[str, list[float]] = {}
    for iid, a in answers.items():
        if keep is not None and iid not in keep:
            continue
        it = inv.item(iid)
        v = inv.to_trait(it, a, semantics)
        by.setdefault(it.trait, []).append(v)
        if it.facet != it.trait:
            by.setdefault(it.facet, []).append(v)
    out: dict[str, float | None] = {}
    for key in list(inv.traits) + [f for f in facet_codes(inv) if f not in inv.traits]:
        vals = by.get(key)
        out[key] = round(float(np.mean(vals)), 3) if vals else None
    return out


def population(ds: Dataset, semantics: Semantics, ids: Iterable[str]) -> dict[str, np.ndarray]:
    """Every person's :func:`trait_profile` on ``ids``: key -> sorted scores (persons with no
    answered item of that key left out)."""
    ids = list(ids)
    cols: dict[str, list[float]] = {}
    for p in ds.persons:
        prof = trait_profile(ds.inventory, p.answers(ds.inventory, semantics, ids), semantics)
        for k, v in prof.items():
            if v is not None:
                cols.setdefault(k, []).append(v)
    return {k: np.sort(np.asarray(v, dtype=float)) for k, v in cols.items()}


def percentile(sorted_scores: np.ndarray, x: float) -> float:
    """Percentile rank of ``x`` among ``sorted_scores``: the share below plus half the ties,
    in percent (0..100)."""
    n = len(sorted_scores)
    if n == 0:
        return float("nan")
    below = np.searchsorted(sorted_scores, x, side="left")
    upto = np.searchsorted(sorted_scores, x, side="right")
    return float(100.0 * (below + 0.5 * (upto - below)) / n)


def summary(sorted_scores: np.ndarray) -> dict[str, Any]:
    """Population quantiles (5, 25, 50, 75, 95th), mean and count of sorted scores."""
    if len(sorted_scores) == 0:
        return {"n": 0}
    q = np.quantile(sorted_scores, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "n": int(len(sorted_scores)),
        "mean": round(float(sorted_scores.mean()), 3),
        "quantiles": {k: round(float(v), 3) for k, v in zip(("p5", "p25", "p50", "p75", "p95"), q)},
    }
