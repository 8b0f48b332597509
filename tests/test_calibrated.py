"""Calibrated readout (``pas+calibrated``, ``vanilla+calibrated``): the fit against independent
re-statements, end-to-end runs on the tiny model, shown items only, logits readout only."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from palign.cli import main
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.eval.runs import RunConfig, run_eval
from palign.methods import METHODS, MethodConfig, get_method
from palign.methods.calibrated import Calibration, fit_calibration
from palign.models.loading import LoadedModel
from tests.test_runs import small

PAS_OPTS = {"alpha_grid": [0.0, 2.0], "k": 4}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def few(papi: Dataset) -> Dataset:
    """4 test items and 24 of the 120 shown items (every 5th, all traits): fast on the tiny model."""
    ds = small(papi, 4)
    ds.inventory.shown_ids = ds.inventory.shown_ids[::5]
    return ds


def random_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.dirichlet(np.ones(5), size=n)


@pytest.mark.parametrize("ridge", [0.0, 0.3, 1.0, 10.0])
def test_fit_equals_ridge_towards_identity(ridge: float) -> None:
    from scipy.optimize import minimize
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(int(ridge * 10))
    probs = random_probs(rng, 40)
    y = rng.integers(1, 6, size=40).astype(float)
    y[[3, 7]] = 0.0  # missing
    y[11] = np.nan  # missing
    cal = fit_calibration(probs, y, ridge=ridge)
    keep = np.isfinite(y) & (y > 0)
    e = probs[keep] @ np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # option A = 5
    assert cal.n == int(keep.sum()) == 37
    # scikit-learn: ridge on the residual from the identity map, no free intercept
    x = np.column_stack([np.ones_like(e), e])
    sk = Ridge(alpha=ridge, fit_intercept=False, solver="svd").fit(x, y[keep] - e)
    assert [cal.a, cal.b] == pytest.approx([sk.coef_[0], sk.coef_[1] + 1.0], abs=1e-8)

    # the objective as written in the docstring, minimised numerically
    def objective(t: np.ndarray) -> float:
        return float(
            ((y[keep] - t[0] - t[1] * e) ** 2).sum() + ridge * (t[0] ** 2 + (t[1] - 1) ** 2)
        )

    num = minimize(objective, x0=np.array([0.0, 1.0]), method="BFGS", options={"gtol": 1e-10})
    assert [cal.a, cal.b] == pytest.approx(num.x.tolist(), abs=1e-5)

    # apply: clip(rint(a + b E), 1, 5) with E on the 1..5 scale (5 = A)
    new = random_probs(rng, 50)
    want = np.clip(np.rint(cal.a + cal.b * (new @ [5, 4, 3, 2, 1])), 1, 5)
    assert cal.apply(new).tolist() == want.astype(int).tolist()
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_degenerate_constant_expected_answer_predicts_the_mean() -> None:
    probs = np.tile([0.0, 0.0, 1.0, 0.0, 0.0], (30, 1))  # always C: E = 3
    y = np.array([5, 4, 5, 4, 4, 5] * 5, dtype=float)
    cal = fit_calibration(probs, y)  # default ridge 1.0
    assert np.isfinite(cal.a) and np.isfinite(cal.b)
    assert cal.a + cal.b * 3.0 == pytest.approx(y.mean(), abs=0.02)
    assert set(cal.apply(probs).tolist()) == {int(np.rint(y.mean()))}
    # a pure identity pull: with all data on E = 3, a and b stay on the line a + 3b = mean,
    # nearest to (0, 1)
    assert cal.b - 1 == pytest.approx(3 * cal.a, rel=1e-6)


def test_fit_bad_input() -> None:
    p = random_probs(np.random.default_rng(0), 4)
    with pytest.raises(PalignError, match="at least 2 answered"):
        fit_calibration(p, np.array([0, 3, np.nan, 0.0]))
    gen = p.copy()
    gen[1] = np.nan  # generate readout: no distribution for an unparsed row
    with pytest.raises(PalignError, match="calibrated methods need the logits readout"):
        fit_calibration(gen, np.array([1, 2, 3, 4.0]))
    with pytest.raises(PalignError, match="calibrated methods need the logits readout"):
        Calibration(0.0, 1.0, 2).apply(gen)
    with pytest.raises(PalignError, match="one row per item"):
        fit_calibration(p, np.array([1, 2, 3.0]))


def _check_run(out: Path, ds: Dataset, ids: list[str]) -> dict[str, Calibration]:
    """Recorded answers = the recorded calibration applied to the recorded probs."""
    cals = {}
    for pid in ids:
        rec = json.loads((out / "persons" / f"{pid}.json").read_text())
        cal = Calibration.from_dict(rec["info"]["calibration"])
        probs = np.array([rec["probs"][i] for i in ds.inventory.test_ids])
        want = cal.apply(probs)
        assert [rec["answers"][i] for i in ds.inventory.test_ids] == want.tolist()
        raw = [rec["raw_answers"][i] for i in ds.inventory.test_ids]
        assert raw == (5 - probs.argmax(axis=1)).tolist()  # argmax kept, 5 = A
        assert cal.n == int(
            (ds.person(pid).answer_vector(ds.inventory, ds.inventory.shown_ids) > 0).sum()
        )
        cals[pid] = cal
    return cals


def _scramble_test_answers(ds: Dataset) -> Dataset:
    other = copy.deepcopy(ds)
    for p in other.persons:
        for iid in other.inventory.test_ids:
            p.stored[iid] = 6 - p.stored[iid] if p.stored.get(iid) else 5
    return other


def test_vanilla_calibrated_end_to_end(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, one_thread: None
) -> None:
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
    from palign.models.readout import ReadRequest, naive_option_probs

    ds = few(papi)
    ids = [p.id for p in ds.persons[:2]]
    cfg = RunConfig(method="vanilla+calibrated", model="tiny", persons=ids, batch_size=16)
    res = run_eval(cfg, tmp_path / "v", lm=tiny_lm, dataset=ds, progress=False)
    assert res["method"]["name"] == "vanilla+calibrated" and res["report"]["n_persons"] == 2
    cals = _check_run(tmp_path / "v", ds, ids)
    # independent: the shown items read one by one (neutral prompt), fitted on each person's
    # answered shown items
    inv = ds.inventory
    shown = naive_option_probs(
        tiny_lm,
        [ReadRequest(NEUTRAL_SYSTEM_PROMPT, inv.statement(inv.item(i))) for i in inv.shown_ids],
    )
    for pid in ids:
        y = np.nan_to_num(ds.person(pid).answer_vector(inv, inv.shown_ids))
        want = fit_calibration(shown, y)
        assert [cals[pid].a, cals[pid].b] == pytest.approx([want.a, want.b], abs=1e-4)
    # shown items only: other test answers give the same maps
    other = _scramble_test_answers(ds)
    again = get_method("vanilla+calibrated").fit_many(tiny_lm, other, other.persons[:2])
    assert [a.calibration for a in again] == [cals[pid].to_dict() for pid in ids]


def test_pas_calibrated_end_to_end(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, cache: Path, one_thread: None
) -> None:
    from palign.models.readout import ReadRequest, naive_option_probs
    from palign.steering import steer

    ds = few(papi)
    ids = [p.id for p in ds.persons[:2]]
    cfg = RunConfig(
        method="pas+calibrated",
        model="tiny",
        persons=ids,
        person_batch=2,
        batch_size=16,
        options=dict(PAS_OPTS),
    )
    res = run_eval(cfg, tmp_path / "p", lm=tiny_lm, dataset=ds, progress=False)
    assert res["method"]["name"] == "pas+calibrated" and res["method"]["calibration_ridge"] == 1.0
    cals = _check_run(tmp_path / "p", ds, ids)

    # alpha and steering exactly as pas; the map from the final steered state on shown items
    pas = get_method("pas", MethodConfig("agreement", 0, dict(PAS_OPTS)))
    plain = pas.fit_many(tiny_lm, ds, ds.persons[:2])
    inv = ds.inventory
    for pid, a in zip(ids, plain):
        rec = json.loads((tmp_path / "p" / "persons" / f"{pid}.json").read_text())
        assert rec["info"]["alpha"] == a.info["alpha"]
        assert rec["info"]["validation_errors"] == a.info["validation_errors"]
        y = np.nan_to_num(ds.person(pid).answer_vector(inv, inv.shown_ids))
        answered = [i for i, v in zip(inv.shown_ids, y) if v > 0]
        reqs = [ReadRequest(a.system_prompt, inv.statement(inv.item(i))) for i in answered]
        with steer(tiny_lm.model, a.steering[None], position=a.steer_position):
            shown = naive_option_probs(tiny_lm, reqs)
        want = fit_calibration(shown, y[y > 0])
        assert [cals[pid].a, cals[pid].b] == pytest.approx([want.a, want.b], abs=1e-4)

    # shown items only: other test answers give the same maps (and the same fit one by one)
    other = _scramble_test_answers(ds)
    m = get_method("pas+calibrated", MethodConfig("agreement", 0, dict(PAS_OPTS)))
    again = [m.fit(tiny_lm, other, p) for p in other.persons[:2]]
    for pid, a in zip(ids, again):
        got = Calibration.from_dict(a.calibration)
        assert [got.a, got.b, got.n] == pytest.approx(
            [cals[pid].a, cals[pid].b, cals[pid].n], abs=1e-6
        )
        assert a.info["calibration"] == a.calibration


def test_generate_readout_is_refused_before_any_work(
    tmp_path: Path, papi: Dataset, papi_dir: Path, capsys
) -> None:
    ds = small(papi, 3)
    for name in ("vanilla+calibrated", "pas+calibrated"):
        cfg = RunConfig(method=name, model="tiny", readout="generate", persons=[ds.persons[0].id])
        with pytest.raises(PalignError, match="calibrated methods need --readout logits"):
            run_eval(cfg, tmp_path / name, lm=None, dataset=ds, progress=False)  # no model load
        assert not (tmp_path / name).exists()
    # the CLI sets pas's selection readout to generate: refused when the method is built
    with pytest.raises(PalignError, match="calibrated methods need the logits readout"):
        get_method("pas+calibrated", MethodConfig(options={"selection_readout": "generate"}))
    base = ["--data", str(papi_dir), "--persons", "1", "--readout", "generate"]
    for name in ("vanilla+calibrated", "pas+calibrated"):
        rc = main(["eval", "--method", name, "--out", str(tmp_path / "cli"), *base])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "calibrated methods need" in err, err


def test_registered_listed_and_no_adapters(tmp_path: Path, capsys) -> None:
    from palign.methods.base import Aligned

    assert Aligned("p", None).calibration is None  # the other methods: argmax answers
    assert {"pas+calibrated", "vanilla+calibrated"} <= set(METHODS)
    assert not METHODS["vanilla+calibrated"].person_independent
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "pas+calibrated" in capsys.readouterr().out
    # palign align saves PAS adapters only (chat/generate/serve never apply a calibration)
    rc = main(
        ["align", "--method", "pas+calibrated", "--person", "x", "--out", str(tmp_path / "a")]
    )
    assert rc == 2 and "pas or pas+few-shot" in capsys.readouterr().err
