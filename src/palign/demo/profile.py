"""The demo's first part: the person's Big Five scores beside the population of the release."""

from __future__ import annotations

from typing import Any

import numpy as np

from palign.data.profile import percentile, population_scores, trait_scores
from palign.data.types import Dataset, Person, Semantics

LABELS = {"ipip-neo": ("Big Five", "PAPI test set"), "sd3": ("Short Dark Triad", "SD3 data set")}
"""Inventory -> (what its traits are called, what its persons are) for the demo's texts."""


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def person_profile(
    dataset: Dataset, person: Person, semantics: Semantics = "agreement"
) -> dict[str, Any]:
    """Trait scores of ``person`` from their shown answers, and per trait the mean, quartiles
    and the person's percentile (:func:`palign.data.profile.percentile`) among all persons of
    ``dataset`` scored the same way.

    Returns ``{"person", "inventory", "label" (e.g. "Big Five"), "population" (e.g. "PAPI
    test set"), "items" (answered shown items), "population_persons", "traits":
    {letter: {"name", "score", "population_mean", "population_q25", "population_q75",
    "percentile"}}}``.
    """
    inv = dataset.inventory
    mine = trait_scores(inv, person, semantics, "shown")
    pop = population_scores(dataset, semantics, "shown")
    traits = {}
    for t in inv.traits:
        v = pop[t][np.isfinite(pop[t])]
        s = mine[t]
        traits[t] = {
            "name": inv.trait_names[t],
            "score": _r(s),
            "population_mean": _r(v.mean()) if len(v) else None,
            "population_q25": _r(np.percentile(v, 25)) if len(v) else None,
            "population_q75": _r(np.percentile(v, 75)) if len(v) else None,
            "percentile": None if s is None else _r(percentile(pop[t], s), 1),
        }
    answered = sum(1 for i in inv.shown_ids if person.stored.get(i))
    what, population = LABELS.get(inv.name, ("traits", "data set"))
    return {
        "person": person.id,
        "inventory": inv.name,
        "label": what,
        "population": population,
        "items": answered,
        "population_persons": len(dataset.persons),
        "traits": traits,
    }
