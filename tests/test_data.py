"""Data layer: item parsing, split, semantics, missing answers, SD3 protocol."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from palign.data import load_dataset, resolve_data_dir
from palign.data.sd3 import ITEM_IDS, REVERSED, select_persons
from palign.data.types import Dataset
from palign.errors import PalignError


def test_ipip_items_and_split(papi: Dataset) -> None:
    inv = papi.inventory
    assert len(inv.items) == 300
    facets = Counter(it.facet for it in inv.items)
    assert len(facets) == 30 and set(facets.values()) == {10}
    assert len(inv.shown_ids) == 120 and len(inv.test_ids) == 180
    assert not set(inv.shown_ids) & set(inv.test_ids)
    test_per_trait = Counter(inv.item(i).trait for i in inv.test_ids)
    assert test_per_trait == dict.fromkeys("OCEAN", 36)
    first = inv.item("1")
    assert (first.text, first.trait, first.facet, first.facet_name, first.key) == (
        "Worry about things.",
        "N",
        "N1",
        "Anxiety",
        1,
    )
    assert inv.item("300").key == -1 and inv.item("300").facet == "C6"
    assert inv.statement(first) == "You worry about things."
    assert len(papi.persons) == 300 and papi.persons[0].id == "172481"
    assert papi.persons[0].persona and papi.persons[0].persona.startswith("You are")


def test_papi_semantics_on_real_person(papi: Dataset) -> None:
    inv = papi.inventory
    p = papi.persons[0]
    # item 300 is reverse keyed ("-C6"); its stored value is in trait direction
    stored = p.stored["300"]
    assert p.answers(inv, "paper", ["300"]) == {"300": stored}
    assert p.answers(inv, "agreement", ["300"]) == {"300": 6 - stored}
    assert p.answers(inv, "agreement", ["1"]) == p.answers(inv, "paper", ["1"])


def test_semantics_hand_made(tiny: Dataset) -> None:
    inv = tiny.inventory
    p1 = tiny.person("p1")
    assert p1.answers(inv, "agreement") == {"1": 5, "2": 2, "4": 2, "6": 1, "3": 4, "5": 3, "7": 4}
    assert p1.answers(inv, "paper") == {"1": 5, "2": 4, "4": 2, "6": 1, "3": 4, "5": 3, "7": 2}
    # trait direction is the same whichever semantics the answer came in
    for sem in ("agreement", "paper"):
        a = p1.answers(inv, sem)
        assert [inv.to_trait(inv.item(i), a[i], sem) for i in ("2", "7")] == [4, 2]
    assert inv.from_trait(inv.item("2"), 4.5, "agreement") == 1.5
    assert inv.from_trait(inv.item("2"), 4.5, "paper") == 4.5


def test_missing_answers(tiny: Dataset) -> None:
    inv = tiny.inventory
    p2 = tiny.person("p2")
    assert "3" not in p2.answers(inv)
    v = p2.answer_vector(inv, ["3", "5"])
    assert np.isnan(v[0]) and v[1] == 1


def test_sd3_semantics_and_split(sd3_dir) -> None:
    ds = load_dataset(sd3_dir, "sd3")
    inv = ds.inventory
    assert [it.id for it in inv.items] == ITEM_IDS
    assert {it.id for it in inv.items if it.key < 0} == REVERSED
    assert inv.shown_ids == [f"{t}{k}" for t in "MNP" for k in range(1, 6)]
    assert inv.test_ids == [f"{t}{k}" for t in "MNP" for k in range(6, 10)]
    assert len(ds.persons) == 300 and len({p.id for p in ds.persons}) == 300
    assert all(all(v > 0 for v in p.stored.values()) for p in ds.persons)
    p = ds.persons[0]
    # raw agreement is stored: both semantics give the stored value as the answer
    assert (
        p.answers(inv, "agreement")
        == p.answers(inv, "paper")
        == {k: v for k, v in p.stored.items()}
    )
    assert inv.to_trait(inv.item("N2"), 5, "agreement") == 1
    assert inv.to_trait(inv.item("N2"), 5, "paper") == 1
    # the same code path and the same data folder: --data ../shared/papi finds the sibling
    assert resolve_data_dir(sd3_dir.parent / "papi", "sd3") == sd3_dir


def test_sd3_protocol_deterministic() -> None:
    rng = np.random.default_rng(3)
    answers = rng.integers(1, 6, size=(400, 27))
    answers[5, 3] = 0  # incomplete rows are never chosen
    a = select_persons(answers, n=30, seed=0)
    b = select_persons(answers, n=30, seed=0)
    assert a == b and len(set(a)) == 30 and 5 not in a


def test_bad_data_dirs(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALIGN_DATA", raising=False)
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PalignError, match="palign data fetch"):
        resolve_data_dir(None, "ipip-neo")
    with pytest.raises(PalignError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope", "ipip-neo")
    with pytest.raises(PalignError, match="holds no ipip-neo data"):
        resolve_data_dir(tmp_path, "ipip-neo")
    with pytest.raises(PalignError, match="unknown inventory"):
        resolve_data_dir(tmp_path, "mbti")
