"""A person's trait and facet scores: the trait-direction mean of their answers (1..5).

A score is the mean over the person's non-missing answers to a trait's (or facet's) items,
each answer first turned into the trait's direction (``6 - answer`` for reverse-keyed items
under the agreement semantics), so 5 = as much of the trait as the scale can say. This is the
score ``palign data person`` prints and the demo charts.
"""

from __future__ import annotations

import numpy as np

from palign.data.types import Dataset, Inventory, Person, Semantics

PARTS = ("shown", "test")


def person_scores(
    inventory: Inventory, person: Person, semantics: Semantics = "agreement"
) -> dict[str, dict[str, float | None]]:
    """Trait and facet scores of one person on the shown and on the test items.

    Returns ``{"shown": {key: score}, "test": {key: score}}`` where ``key`` is a trait letter
    or a facet code; a key without any answered item is absent. Scores are unrounded.
    """
    by: dict[str, dict[str, list[float]]] = {part: {} for part in PARTS}
    for iid, a in person.answers(inventory, semantics).items():
        it = inventory.item(iid)
        part = "shown" if iid in inventory.shown_ids else "test"
        v = inventory.to_trait(it, a, semantics)
        by[part].setdefault(it.trait, []).append(v)
        if it.facet != it.trait:
            by[part].setdefault(it.facet, []).append(v)
    return {part: {k: float(np.mean(v)) for k, v in d.items()} for part, d in by.items()}


def trait_scores(
    inventory: Inventory, person: Person, semantics: Semantics = "agreement", part: str = "shown"
) -> dict[str, float | None]:
    """The person's score per trait (inventory order) on the ``part`` items (None = none)."""
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


def percentile(values: np.ndarray, x: float) -> float:
    """Percentile rank of ``x`` among ``values`` (NaN ignored): the share of values below
    ``x`` plus half the share equal to it, times 100 (the mid-rank rule, so a value equal to
    every other value sits at 50)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return float("nan")
    return float(100.0 * ((v < x).sum() + 0.5 * (v == x).sum()) / len(v))
