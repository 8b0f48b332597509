"""A person's trait and facet profile, and where it lies in a data set's population.

The profile is palign's one scoring of answers (``palign data person`` prints it, the demo
charts it, the web app draws it): every answer is mapped to the trait direction
(:meth:`Inventory.to_trait`: reverse-keyed items flipped, ``6 - answer``, under ``agreement``
semantics) and averaged per trait and per facet, on the 1..5 scale, so 5 = as much of the
trait as the scale can say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from palign.data.types import Dataset, Inventory, Person, Semantics

__all__ = [
    "facet_codes",
    "percentile",
    "person_scores",
    "population",
    "population_scores",
    "summary",
    "trait_profile",
    "trait_scores",
]

PARTS = ("shown", "test")


def facet_codes(inv: Inventory) -> list[str]:
    """The inventory's facet codes in display order (trait order, then code)."""
    return sorted({i.facet for i in inv.items}, key=lambda f: (inv.traits.index(f[0]), f))


def _means(
    inv: Inventory,
    answers: Mapping[str, float],
    semantics: Semantics,
    ids: Iterable[str] | None = None,
) -> dict[str, float]:
    """Unrounded trait-direction mean per trait and facet key (keys with no answer absent)."""
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
    return {k: float(np.mean(v)) for k, v in by.items()}


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
    means = _means(inv, answers, semantics, ids)
    keys = list(inv.traits) + [f for f in facet_codes(inv) if f not in inv.traits]
    return {k: (round(means[k], 3) if k in means else None) for k in keys}


def person_scores(
    inventory: Inventory, person: Person, semantics: Semantics = "agreement"
) -> dict[str, dict[str, float]]:
    """Unrounded trait and facet scores of one person on the shown and on the test items:
    ``{"shown": {key: score}, "test": {key: score}}`` (keys without an answered item absent)."""
    answers = person.answers(inventory, semantics)
    return {
        "shown": _means(inventory, answers, semantics, inventory.shown_ids),
        "test": _means(inventory, answers, semantics, inventory.test_ids),
    }


def trait_scores(
    inventory: Inventory, person: Person, semantics: Semantics = "agreement", part: str = "shown"
) -> dict[str, float | None]:
    """The person's unrounded score per trait (inventory order) on the ``part`` items."""
    scores = person_scores(inventory, person, semantics)[part]
    return {t: scores.get(t) for t in inventory.traits}


def population_scores(
    dataset: Dataset, semantics: Semantics = "agreement", part: str = "shown"
) -> dict[str, np.ndarray]:
    """Every person's trait score (trait -> array over the data set's persons, NaN = none)."""
    rows = [trait_scores(dataset.inventory, p, semantics, part) for p in dataset.persons]
    return {
        t: np.array([np.nan if r[t] is None else r[t] for r in rows], dtype=float)
        for t in dataset.inventory.traits
    }


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


def percentile(values: np.ndarray, x: float) -> float:
    """Percentile rank of ``x`` among ``values`` (any order, NaN ignored): the share of values
    below ``x`` plus half the share equal to it, times 100 (the mid-rank rule, so a value equal
    to every other value sits at 50)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    return float(100.0 * ((v < x).sum() + 0.5 * (v == x).sum()) / len(v))


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
