"""benchmarks/demo_model_choice.py: one letter vs toward the person, by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from palign.data.types import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _write(folder: Path, pid: str, answers: dict, expected: dict, alpha: float | None) -> None:
    (folder / "persons").mkdir(parents=True, exist_ok=True)
    rec = {"person": pid, "answers": answers, "expected": expected}
    if alpha is not None:
        rec["info"] = {"alpha": alpha}
    (folder / "persons" / f"{pid}.json").write_text(json.dumps(rec))


def test_one_letter_is_not_toward_the_person(papi: Dataset, tmp_path: Path) -> None:
    import demo_model_choice as dmc

    inv = papi.inventory
    person = papi.persons[0]
    ids = [i for i in inv.test_ids if i in person.answers(inv, "agreement", inv.test_ids)][:20]
    truth = person.answers(inv, "agreement", ids)
    t = np.array([truth[i] for i in ids], dtype=float)
    van = {i: 5 for i in ids}
    van_exp = {i: 4.5 + 0.01 * k for k, i in enumerate(ids)}
    # "one letter": every answer 3, expected constant up to noise unrelated to the person
    one = {i: 3 for i in ids}
    one_exp = {i: 3.0 for i in ids}
    row = dmc.person_row(
        inv, person, {"answers": van, "expected": van_exp}, {"answers": one, "expected": one_exp}
    )
    assert row["corr_method"] is None  # constant: no item-level reading at all
    assert row["method_answers"] == {3: len(ids)}
    assert row["toward"] == int((np.abs(3 - t) < np.abs(5 - t)).sum())
    assert row["away"] == int((np.abs(3 - t) > np.abs(5 - t)).sum())
    # "toward the person": the person's own answers (expected = truth + a small offset)
    own_exp = {i: truth[i] + 0.1 for i in ids}
    row2 = dmc.person_row(
        inv,
        person,
        {"answers": van, "expected": van_exp},
        {"answers": dict(truth), "expected": own_exp},
    )
    assert row2["corr_method"] == pytest.approx(1.0) and row2["method"] == 0.0
    assert row2["corr_vanilla"] == pytest.approx(spearmanr([van_exp[i] for i in ids], t).statistic)

    # a table folder: vanilla beside two entries of the same model, merged and summarised
    run = tmp_path / "runs" / "t"
    for entry in ("vanilla", "a1", "a2"):
        (run / entry).mkdir(parents=True)
        (run / entry / "config.json").write_text(
            json.dumps({"config": {"model": "m", "persons": [person.id, papi.persons[1].id]}})
        )
    _write(run / "vanilla", person.id, van, van_exp, None)
    _write(run / "a1", person.id, one, one_exp, 1.0)
    res = dmc.table_rows(papi, tmp_path / "runs", "t", ["a1", "a2"])
    assert res["model"] == "m" and res["summary"]["n"] == 1
    assert res["summary"]["one_letter"] == 1 and res["summary"]["moved_toward_person"] == 0


def test_study_rows_compare_alpha_zero_with_the_recorded_choice(
    papi: Dataset, tmp_path: Path
) -> None:
    import demo_model_choice as dmc

    inv = papi.inventory
    person = papi.persons[0]
    ids = [i for i in inv.test_ids if i in person.answers(inv, "agreement", inv.test_ids)][:10]
    truth = person.answers(inv, "agreement", ids)
    folder = tmp_path / "runs" / "alpha-study-m" / "persons"
    folder.mkdir(parents=True)
    rec = {
        "person": person.id,
        "set": "reported",
        "grid": [0.0, 1.0, 2.0],
        "test_ids": ids,
        # alpha 0: 5 everywhere; alpha 1: the person's answers; alpha 2: 1 everywhere
        "test": [[5] * len(ids), [truth[i] for i in ids], [1] * len(ids)],
    }
    (folder / f"{person.id}.json").write_text(json.dumps(rec))
    table = tmp_path / "t.json"
    table.write_text(
        json.dumps({"rows": [{"name": "pas@all", "per_person": {person.id: {"alpha": 1.0}}}]})
    )
    res = dmc.study_rows(papi, tmp_path / "runs", "m", str(table))
    (row,) = res["persons"]
    assert row["alpha"] == 1.0 and row["method"] == 0.0
    assert row["corr_method"] == pytest.approx(1.0) and row["corr_vanilla"] is None
    assert row["away"] == 0 and row["toward"] == sum(truth[i] != 5 for i in ids)
    assert res["summary"]["moved_toward_person"] == 1
