"""Metrics: per-trait mean absolute error and friends, one code path for every predictor.

Predictions map person id -> item id -> predicted answer (1..5, float allowed for reference
predictors); ``None``, ``0`` or NaN means "unparsed" (no answer could be read) and is
excluded from the error but counted. Items whose true answer is missing are excluded and
counted too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from palign.data.types import Inventory, Person, Semantics

Predictions = Mapping[str, Mapping[str, float | int | None]]


def _is_missing(v: float | int | None) -> bool:
    return v is None or v == 0 or (isinstance(v, float) and math.isnan(v))


@dataclass
class PersonScore:
    """One person's result.

    Attributes:
        person_id: the person.
        traits: trait -> mean absolute error over the trait's scored test items (NaN if none).
        n_scored: trait -> number of items scored.
        n_missing_truth: items skipped because the person did not answer them.
        n_unparsed: items skipped because the prediction was unparsed.
        exact: number of scored items whose rounded prediction equals the truth.
    """

    person_id: str
    traits: dict[str, float]
    n_scored: dict[str, int]
    n_missing_truth: int
    n_unparsed: int
    exact: int

    @property
    def mean(self) -> float:
        """Mean over traits."""
        vals = [v for v in self.traits.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "person": self.person_id,
            "traits": {k: _r(v) for k, v in self.traits.items()},
            "mean": _r(self.mean),
            "n_scored": self.n_scored,
            "n_missing_truth": self.n_missing_truth,
            "n_unparsed": self.n_unparsed,
            "exact": self.exact,
        }


def _r(v: float, nd: int = 4) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), nd)


@dataclass
class Report:
    """Aggregate over persons.

    ``traits[t]`` is the mean over persons of their trait-``t`` MAE; ``mean`` averages the
    traits; ``sum`` adds them (the paper's "overall"). ``std`` is the std over persons of each
    trait's MAE (ddof=0), ``ci95`` the half-width of a normal 95% interval of the mean.
    """

    name: str
    inventory: str
    semantics: str
    traits: dict[str, float]
    std: dict[str, float]
    ci95: dict[str, float]
    mean: float
    sum: float
    n_persons: int
    exact_match: float
    unparsed_rate: float
    n_missing_truth: int
    histogram: dict[str, int]
    persons: list[PersonScore] = field(default_factory=list)

    def to_dict(self, with_persons: bool = False) -> dict[str, object]:
        """JSON-ready form (per-person rows only if asked)."""
        d: dict[str, object] = {
            "name": self.name,
            "traits": {k: _r(v) for k, v in self.traits.items()},
            "std": {k: _r(v) for k, v in self.std.items()},
            "ci95": {k: _r(v) for k, v in self.ci95.items()},
            "mean": _r(self.mean),
            "sum": _r(self.sum),
            "n_persons": self.n_persons,
            "exact_match": _r(self.exact_match),
            "unparsed_rate": _r(self.unparsed_rate),
            "n_missing_truth": self.n_missing_truth,
            "histogram": self.histogram,
        }
        if with_persons:
            d["persons"] = [p.to_dict() for p in self.persons]
        return d


def score_person(
    inventory: Inventory,
    person: Person,
    predicted: Mapping[str, float | int | None],
    semantics: Semantics = "agreement",
    item_ids: list[str] | None = None,
) -> PersonScore:
    """Score one person's predictions on ``item_ids`` (default: the inventory's test items)."""
    ids = inventory.test_ids if item_ids is None else item_ids
    truth = person.answers(inventory, semantics, ids)
    errs: dict[str, list[float]] = {t: [] for t in inventory.traits}
    missing = unparsed = exact = 0
    for iid in ids:
        item = inventory.item(iid)
        if iid not in truth:
            missing += 1
            continue
        p = predicted.get(iid)
        if _is_missing(p):
            unparsed += 1
            continue
        e = abs(float(p) - truth[iid])  # type: ignore[arg-type]
        errs[item.trait].append(e)
        exact += int(math.floor(float(p) + 0.5) == truth[iid])  # type: ignore[arg-type]
    return PersonScore(
        person_id=person.id,
        traits={t: float(np.mean(v)) if v else float("nan") for t, v in errs.items()},
        n_scored={t: len(v) for t, v in errs.items()},
        n_missing_truth=missing,
        n_unparsed=unparsed,
        exact=exact,
    )


def histogram(
    predictions: Predictions, item_ids: list[str], persons: list[Person]
) -> dict[str, int]:
    """Counts of predicted answers (rounded to 1..5) and of unparsed ones."""
    h = {str(k): 0 for k in range(1, 6)} | {"unparsed": 0}
    for p in persons:
        pred = predictions.get(p.id, {})
        for iid in item_ids:
            v = pred.get(iid)
            if _is_missing(v):
                h["unparsed"] += 1
            else:
                h[str(min(5, max(1, math.floor(float(v) + 0.5))))] += 1  # type: ignore[arg-type]
    return h


def evaluate(
    inventory: Inventory,
    persons: list[Person],
    predictions: Predictions,
    semantics: Semantics = "agreement",
    name: str = "",
    item_ids: list[str] | None = None,
) -> Report:
    """Aggregate per-person scores into a :class:`Report` (mean/std over persons)."""
    ids = inventory.test_ids if item_ids is None else item_ids
    rows = [score_person(inventory, p, predictions.get(p.id, {}), semantics, ids) for p in persons]
    traits, std, ci = {}, {}, {}
    for t in inventory.traits:
        v = np.array([r.traits[t] for r in rows], dtype=float)
        v = v[~np.isnan(v)]
        traits[t] = float(v.mean()) if len(v) else float("nan")
        std[t] = float(v.std()) if len(v) else float("nan")
        ci[t] = float(1.96 * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    tv = [traits[t] for t in inventory.traits]
    scored = sum(sum(r.n_scored.values()) for r in rows)
    unparsed = sum(r.n_unparsed for r in rows)
    return Report(
        name=name,
        inventory=inventory.name,
        semantics=semantics,
        traits=traits,
        std=std,
        ci95=ci,
        mean=float(np.mean(tv)),
        sum=float(np.sum(tv)),
        n_persons=len(rows),
        exact_match=sum(r.exact for r in rows) / scored if scored else float("nan"),
        unparsed_rate=unparsed / (scored + unparsed) if scored + unparsed else float("nan"),
        n_missing_truth=sum(r.n_missing_truth for r in rows),
        histogram=histogram(predictions, ids, persons),
        persons=rows,
    )
