"""Reference predictors (no LLM), evaluated through the same metric code as the LLM methods.

Every predictor sees, for each person, only that person's *shown* answers plus (for the
population predictors) other persons' answers: never the person's own test answers.

- ``constant-k`` (k = 1..5): always answer k.
- ``item-median`` / ``item-mean``: the median / mean answer of each test item over the other
  persons of the data set (leave-one-person-out).
- ``facet-mean``: the mean of the person's own shown answers of the same facet, taken in the
  trait direction and keyed back to the test item (so it predicts the answer to the statement);
  falls back to the trait's shown answers, then to 3.
- ``trait-mean``: the same over the whole trait.
- ``ridge``: a ridge regression from the 120 shown answers to each test answer, fitted on the
  other persons, 5-fold over persons (seeded shuffle), lambda fixed at 10; missing shown answers
  are imputed with the training persons' item means; predictions clipped to 1..5.

Predictions are real numbers in 1..5; the exact-match rate rounds them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from palign.data.types import Dataset, Semantics
from palign.errors import PalignError
from palign.eval.metrics import Report, evaluate

PredictionTable = dict[str, dict[str, float]]
RIDGE_LAMBDA = 10.0
RIDGE_FOLDS = 5


def _as_table(ds: Dataset, m: np.ndarray) -> PredictionTable:
    ids = ds.inventory.test_ids
    return {
        p.id: {iid: float(m[i, j]) for j, iid in enumerate(ids)} for i, p in enumerate(ds.persons)
    }


def constant(k: int) -> Callable[[Dataset, Semantics, int], PredictionTable]:
    """The predictor that always answers ``k``."""

    def predict(ds: Dataset, semantics: Semantics, seed: int = 0) -> PredictionTable:
        return {p.id: dict.fromkeys(ds.inventory.test_ids, float(k)) for p in ds.persons}

    return predict


def _loo(ds: Dataset, semantics: Semantics, stat: str) -> PredictionTable:
    y = ds.matrix(ds.inventory.test_ids, semantics)  # (P, T)
    out = np.empty_like(y)
    for i in range(y.shape[0]):
        others = np.delete(y, i, axis=0)
        with np.errstate(all="ignore"):
            v = np.nanmedian(others, axis=0) if stat == "median" else np.nanmean(others, axis=0)
        out[i] = np.where(np.isnan(v), 3.0, v)
    return _as_table(ds, out)


def item_median(ds: Dataset, semantics: Semantics, seed: int = 0) -> PredictionTable:
    """Leave-one-person-out median of each test item."""
    return _loo(ds, semantics, "median")


def item_mean(ds: Dataset, semantics: Semantics, seed: int = 0) -> PredictionTable:
    """Leave-one-person-out mean of each test item."""
    return _loo(ds, semantics, "mean")


def _group_mean(ds: Dataset, semantics: Semantics, by_facet: bool) -> PredictionTable:
    inv = ds.inventory
    out: PredictionTable = {}
    for p in ds.persons:
        shown = p.answers(inv, semantics, inv.shown_ids)
        facet: dict[str, list[float]] = {}
        trait: dict[str, list[float]] = {}
        for iid, a in shown.items():
            it = inv.item(iid)
            t = inv.to_trait(it, a, semantics)
            facet.setdefault(it.facet, []).append(t)
            trait.setdefault(it.trait, []).append(t)
        pred = {}
        for it in inv.test_items:
            vals = (facet.get(it.facet) if by_facet else None) or trait.get(it.trait)
            pred[it.id] = (
                float(inv.from_trait(it, float(np.mean(vals)), semantics)) if vals else 3.0
            )
        out[p.id] = pred
    return out


def facet_mean(ds: Dataset, semantics: Semantics, seed: int = 0) -> PredictionTable:
    """Mean of the person's shown answers of the same facet (keyed), else trait, else 3."""
    return _group_mean(ds, semantics, by_facet=True)


def trait_mean(ds: Dataset, semantics: Semantics, seed: int = 0) -> PredictionTable:
    """Mean of the person's shown answers of the same trait (keyed), else 3."""
    return _group_mean(ds, semantics, by_facet=False)


def ridge(ds: Dataset, semantics: Semantics, seed: int = 0) -> PredictionTable:
    """Ridge map shown -> test answers, fitted on other persons, 5-fold over persons."""
    from threadpoolctl import threadpool_limits

    # the systems are tiny (121 x 121): BLAS threads only add contention
    with threadpool_limits(limits=1):
        return _ridge(ds, semantics, seed)


def _ridge(ds: Dataset, semantics: Semantics, seed: int) -> PredictionTable:
    inv = ds.inventory
    x_all = ds.matrix(inv.shown_ids, semantics)
    y_all = ds.matrix(inv.test_ids, semantics)
    n = x_all.shape[0]
    folds = min(RIDGE_FOLDS, n)
    if folds < 2:
        raise PalignError("the ridge predictor needs at least 2 persons")
    order = np.random.default_rng(seed).permutation(n)
    out = np.full_like(y_all, 3.0)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        xm = np.nanmean(x_all[train], axis=0)
        xm = np.where(np.isnan(xm), 3.0, xm)
        xtr = np.where(np.isnan(x_all[train]), xm, x_all[train])
        xte = np.where(np.isnan(x_all[test]), xm, x_all[test])
        mu = xtr.mean(axis=0)
        xc = xtr - mu
        ytr = y_all[train]
        full = ~np.isnan(ytr).any(axis=0)  # targets every training person answered
        eye = RIDGE_LAMBDA * np.eye(xc.shape[1])
        if full.any():  # one solve for all of them
            yc = ytr[:, full] - ytr[:, full].mean(axis=0)
            w = np.linalg.solve(xc.T @ xc + eye, xc.T @ yc)
            out[np.ix_(test, np.flatnonzero(full))] = (xte - mu) @ w + ytr[:, full].mean(axis=0)
        for j in np.flatnonzero(~full):
            ok = ~np.isnan(ytr[:, j])
            if not ok.any():
                continue
            yj, xj = ytr[ok, j], xc[ok]
            w = np.linalg.solve(xj.T @ xj + eye, xj.T @ (yj - yj.mean()))
            out[test, j] = (xte - mu) @ w + yj.mean()
    return _as_table(ds, np.clip(out, 1.0, 5.0))


PREDICTORS: dict[str, Callable[[Dataset, Semantics, int], PredictionTable]] = {
    **{f"constant-{k}": constant(k) for k in range(1, 6)},
    "item-median": item_median,
    "item-mean": item_mean,
    "facet-mean": facet_mean,
    "trait-mean": trait_mean,
    "ridge": ridge,
}


def predict(
    name: str, ds: Dataset, semantics: Semantics = "agreement", seed: int = 0
) -> PredictionTable:
    """Predictions of the reference predictor ``name`` for every person of ``ds``."""
    if name not in PREDICTORS:
        raise PalignError(f"unknown predictor {name!r}; use one of: {', '.join(PREDICTORS)}")
    return PREDICTORS[name](ds, semantics, seed)


def run_baselines(
    ds: Dataset,
    semantics: Semantics = "agreement",
    names: list[str] | None = None,
    seed: int = 0,
    persons: list[str] | None = None,
) -> list[Report]:
    """Evaluate reference predictors; ``persons`` restricts the scored persons (the
    population statistics still use every person of ``ds``)."""
    names = names or list(PREDICTORS)
    scored = ds.select(ids=persons) if persons else ds.persons
    return [
        evaluate(ds.inventory, scored, predict(n, ds, semantics, seed), semantics, name=n)
        for n in names
    ]
