"""Metrics and every reference predictor on the tiny hand-made data set (hand-computed)."""

from __future__ import annotations

import math

import pytest

from palign.data.types import Dataset
from palign.errors import PalignError
from palign.eval.baselines import PREDICTORS, predict, run_baselines
from palign.eval.metrics import evaluate, score_person

# agreement answers of the tiny set (see conftest):
#   p1: 1:5 2:2 4:2 6:1 | test 3:4 5:3 7:4
#   p2: 1:1 2:4 4:4 6:3 | test 3:- 5:1 7:2
#   p3: 1:3 2:3 4:3 6:5 | test 3:3 5:5 7:1


def test_score_person_counts_missing_and_unparsed(tiny: Dataset) -> None:
    inv = tiny.inventory
    s = score_person(inv, tiny.person("p2"), {"3": 5, "5": None, "7": 2.0})
    assert s.n_missing_truth == 1 and s.n_unparsed == 1
    assert math.isnan(s.traits["X"]) and s.traits["Y"] == 0.0 and s.exact == 1
    s = score_person(inv, tiny.person("p1"), {"3": 5, "5": 1, "7": 0})
    assert s.traits == {"X": 1.5, "Y": float("nan")} or (
        s.traits["X"] == 1.5 and math.isnan(s.traits["Y"])
    )
    assert s.n_unparsed == 1


def test_evaluate_aggregates(tiny: Dataset) -> None:
    preds = {p.id: {"3": 3, "5": 3, "7": 3} for p in tiny.persons}
    r = evaluate(tiny.inventory, tiny.persons, preds, "agreement", name="c3")
    # X: p1 (1+0)/2, p2 2/1, p3 (0+2)/2 -> (0.5+2+1)/3 ; Y: (1+1+2)/3
    assert r.traits["X"] == pytest.approx(3.5 / 3)
    assert r.traits["Y"] == pytest.approx(4 / 3)
    assert r.mean == pytest.approx((3.5 / 3 + 4 / 3) / 2)
    assert r.sum == pytest.approx(3.5 / 3 + 4 / 3)
    assert r.n_persons == 3 and r.n_missing_truth == 1
    # exact: p1 item 5; p3 item 3 -> 2 of 8 scored
    assert r.exact_match == pytest.approx(2 / 8)
    assert r.histogram == {"1": 0, "2": 0, "3": 9, "4": 0, "5": 0, "unparsed": 0}
    assert r.unparsed_rate == 0


@pytest.mark.parametrize("sem", ["agreement", "paper"])
def test_constant_predictors(tiny: Dataset, sem: str) -> None:
    r = run_baselines(tiny, sem, ["constant-3"])[0]
    assert r.sum == pytest.approx(3.5 / 3 + 4 / 3)
    r1 = run_baselines(tiny, "agreement", ["constant-1"])[0]
    # X: p1 (3+2)/2=2.5, p2 0, p3 (2+4)/2=3 ; Y: 3, 1, 0
    assert r1.traits == pytest.approx({"X": 5.5 / 3, "Y": 4 / 3})


def test_item_median_and_mean(tiny: Dataset) -> None:
    med = predict("item-median", tiny, "agreement")
    # leave-one-out: p1 sees item 3 from p3 only (p2 missing), item 5 from {1,5}, item 7 {2,1}
    assert med["p1"] == {"3": 3.0, "5": 3.0, "7": 1.5}
    mean = predict("item-mean", tiny, "agreement")
    assert mean["p2"] == pytest.approx({"3": 3.5, "5": 4.0, "7": 2.5})
    r = evaluate(tiny.inventory, tiny.persons, med, "agreement")
    # p1: X (1+0)/2, Y 2.5 ; p2: X item5 median {3,5}=4 vs 1 -> 3 (item 3 missing truth),
    #     Y |2.5-2|=.5 ; p3: item3 median {4}=4 vs 3 ->1, item5 median {3,1}=2 vs 5 ->3, X=2;
    #     Y median {4,2}=3 vs 1 -> 2
    assert r.traits["X"] == pytest.approx((0.5 + 3 + 2) / 3)
    assert r.traits["Y"] == pytest.approx((2.5 + 0.5 + 2) / 3)


@pytest.mark.parametrize("sem", ["agreement", "paper"])
def test_facet_and_trait_mean(tiny: Dataset, sem: str) -> None:
    fm = predict("facet-mean", tiny, sem)
    tm = predict("trait-mean", tiny, sem)
    if sem == "agreement":
        # p1 facet X1 trait values: item1 5, item2 6-2=4 -> 4.5 ; X2: 2 -> item 5 (-) 6-2=4
        assert fm["p1"] == {"3": 4.5, "5": 4.0, "7": 5.0}
        # trait X: mean(5,4,2)=11/3 -> item 3: 11/3, item 5: 6-11/3
        assert tm["p1"] == pytest.approx({"3": 11 / 3, "5": 6 - 11 / 3, "7": 5.0})
    r = evaluate(tiny.inventory, tiny.persons, fm, sem)
    # p1: X (0.5+1)/2, Y 1 ; p2: X1 (1, 6-4=2)->1.5 (truth missing), X2 4 -> item5 6-4=2 vs 1:
    #     X=1 ; Y 3 -> 3 vs 2: 1 ; p3: X1 3 vs 3: 0, X2 3 -> 3 vs 5: 2 -> X=1 ; Y 5 -> 1 vs 1: 0
    assert r.traits["X"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert r.traits["Y"] == pytest.approx((1 + 1 + 0) / 3)


def test_facet_mean_fallbacks(tiny: Dataset) -> None:
    p = tiny.person("p1")
    p.stored["4"] = 0  # no shown answer in facet X2 -> fall back to trait X
    p.stored["6"] = 0  # no shown answer in trait Y -> 3
    fm = predict("facet-mean", tiny, "agreement")["p1"]
    assert fm["5"] == pytest.approx(6 - 4.5) and fm["7"] == 3.0


def test_ridge_uses_only_other_persons(tiny: Dataset) -> None:
    a = predict("ridge", tiny, "agreement", seed=0)
    b = predict("ridge", tiny, "agreement", seed=0)
    assert a == b
    assert all(1.0 <= v <= 5.0 for p in a.values() for v in p.values())
    # changing a person's own test answers never changes that person's prediction
    tiny.person("p1").stored.update({"3": 1, "5": 5, "7": 5})
    c = predict("ridge", tiny, "agreement", seed=0)
    assert c["p1"] == a["p1"]


def test_ridge_recovers_linear_relation() -> None:
    import numpy as np

    from palign.data.types import Dataset, Person
    from tests.conftest import tiny_inventory

    inv = tiny_inventory()
    rng = np.random.default_rng(0)
    persons = []
    for k in range(60):
        x = rng.integers(1, 6, size=4)
        stored = dict(zip(["1", "2", "4", "6"], map(int, x)))
        stored.update({"3": int(x[0]), "5": int(x[2]), "7": int(x[3])})
        persons.append(Person(id=f"q{k}", stored=stored))
    ds = Dataset(inv, persons)
    r = run_baselines(ds, "paper", ["ridge", "constant-3"])
    assert r[0].mean < 0.3 < r[1].mean


def test_unknown_predictor(tiny: Dataset) -> None:
    with pytest.raises(PalignError, match="unknown predictor 'oracle'"):
        predict("oracle", tiny)
    assert set(PREDICTORS) >= {"constant-1", "item-median", "facet-mean", "ridge"}
