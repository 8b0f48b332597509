"""The development/reported protocol and tuned alpha rules (``alpha_selection="tuned"``).

A rule is tuned on development persons only (PAPI test-set positions 200-299) and applied
unchanged by every path that fits PAS: ``palign eval`` (one process and Ray workers),
``palign align``, the demo (through ``run_eval``) and the server's ``POST /v1/personalities``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from palign.cli import main
from palign.data.protocol import (
    DEVELOPMENT_POSITIONS,
    check_reportable,
    check_tuning_persons,
    development_ids,
    development_persons,
)
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.methods import MethodConfig, get_method
from palign.methods.alpha_rules import RULES_ENV, AlphaRule, find_rule, shipped_rules
from palign.models.loading import LoadedModel
from palign.steering.pas import fit_pas
from tests.test_runs import small

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _rules_file(path: Path, model: str, dev: list[str], kind: str = "fixed", **params) -> Path:
    rule = {
        "model": model,
        "method": "pas",
        "steer_position": "all",
        "semantics": "agreement",
        "kind": kind,
        "params": params or {"alpha": 2.0},
        "dev_persons": dev,
        "evidence": {"command": "test"},
    }
    path.write_text(json.dumps({"rules": [rule]}))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- the protocol -------------------------------------------------------------------------


def test_development_persons_are_release_positions_200_to_299(papi: Dataset) -> None:
    lo, hi = DEVELOPMENT_POSITIONS
    assert (lo, hi) == (200, 299)
    dev = development_persons(papi)
    assert len(dev) == 100
    assert dev[0] is papi.persons[199] and dev[-1] is papi.persons[298]
    assert development_persons(papi, 3) == papi.persons[199:202]
    ids = development_ids(papi)
    assert not ids & {p.id for p in papi.persons[:199]}  # every reported candidate is outside
    assert papi.persons[299].id not in ids


def test_tuning_on_a_reported_person_is_refused(papi: Dataset) -> None:
    check_tuning_persons(papi, [p.id for p in development_persons(papi, 5)])
    with pytest.raises(PalignError, match="refusing to tune on reported person"):
        check_tuning_persons(papi, [papi.persons[199].id, papi.persons[0].id])


def test_evaluating_a_tuned_on_person_is_refused_unless_allowed() -> None:
    check_reportable(["1", "2"], ["3"])
    with pytest.raises(PalignError, match="--allow-dev-persons"):
        check_reportable(["1", "3"], ["3"])
    check_reportable(["1", "3"], ["3"], allow=True)


def test_alpha_study_refuses_to_tune_on_a_relabelled_reported_person(
    papi: Dataset, tmp_path: Path
) -> None:
    """The study's report tunes only on development persons, whatever its files say."""
    import alpha_study

    run = tmp_path / "alpha-study-x"
    (run / "persons").mkdir(parents=True)
    tids = papi.inventory.test_ids[:5]
    for p, kind in ((papi.persons[199], "dev"), (papi.persons[0], "dev")):
        rec = {
            "person": p.id,
            "set": kind,
            "grid": [0.0, 1.0],
            "test_ids": tids,
            "truth_test": [3] * 5,
            "test": [[3] * 5, [4] * 5],
            "diag": [],
        }
        (run / "persons" / f"{p.id}.json").write_text(json.dumps(rec))
    with pytest.raises(PalignError, match="refusing to tune on reported person"):
        alpha_study.report(papi, run, "x", str(tmp_path / "out"))


def test_alpha_study_rules_and_scores() -> None:
    """Rules read only what they may (never the test curve) and are scored against alpha 0."""
    import alpha_study

    per = {
        "a": {
            "test_sum": {"0": 5.0, "1": 3.0, "2": 4.0},
            "heldout_err": {"0": 1.0, "1": 1.1, "2": 0.9},
        },
        "b": {
            "test_sum": {"0": 4.0, "1": 4.5, "2": 2.0},
            "heldout_err": {"0": 0.8, "1": 0.9, "2": 1.2},
        },
    }
    fixed1 = alpha_study.score_rule({"kind": "fixed", "alpha": 1.0}, per)
    assert fixed1["mean_sum"] == pytest.approx(3.75) and (fixed1["wins"], fixed1["losses"]) == (
        1,
        1,
    )
    held = alpha_study.score_rule({"kind": "heldout"}, per)
    assert held["alphas"] == [2.0, 0.0] and held["mean_sum"] == pytest.approx(4.0)
    floor = alpha_study.score_rule({"kind": "heldout-floor", "floor": 1.0}, per)
    assert floor["alphas"] == [2.0, 1.0] and floor["nonzero"] == 2
    per["a"]["heldout_variants"] = {"folds=10": {"0": 1.0, "1": 0.5, "2": 0.9}}
    per["b"]["heldout_variants"] = {"folds=10": {"0": 0.7, "1": 0.9, "2": 0.6}}
    var = alpha_study.score_rule({"kind": "heldout-variant", "variant": "folds=10"}, per)
    assert var["alphas"] == [1.0, 2.0] and var["mean_sum"] == pytest.approx(2.5)
    assert alpha_study.variant_name("fold_heads=final,folds=10") == "fold_heads=final,folds=10"
    assert alpha_study.parse_variant("folds=10") == {"folds": 10}
    for bad in ("folds=1", "heads=final", "fold_heads=x"):
        with pytest.raises(PalignError):
            alpha_study.parse_variant(bad)
    per["a"]["stability"], per["b"]["stability"] = 0.8, 0.1
    stable = alpha_study.score_rule({"kind": "stable-fixed", "alpha": 1.0, "min_cosine": 0.5}, per)
    assert stable["alphas"] == [1.0, 0.0] and stable["mean_sum"] == pytest.approx(3.5)


def test_alpha_study_headroom_and_split_half_oracle(papi: Dataset, tmp_path: Path) -> None:
    """The ORACLE, the split-half ORACLE and the recorded held-out choice, by hand."""
    import alpha_study

    inv = papi.inventory
    o = [i for i in inv.test_ids if inv.item(i).trait == "O"][:4]
    c = [i for i in inv.test_ids if inv.item(i).trait == "C"][:4]
    tids = [o[0], c[0], o[1], c[1], o[2], c[2], o[3], c[3]]  # halves: even O, odd C
    truth = [5, 1, 5, 1, 5, 1, 5, 1]
    rec = {
        "person": papi.persons[0].id,
        "set": "reported",
        "grid": [0.0, 1.0, 2.0],
        "test_ids": tids,
        "truth_test": truth,
        # alpha 0: all 3 (error 2 each); alpha 1: O right on the first half of the O items
        # only; alpha 2: every C item right
        "test": [[3] * 8, [5, 3, 5, 3, 3, 3, 3, 3], [3, 1, 3, 1, 3, 1, 3, 1]],
        "diag": [{"cosine": 0.5}],
    }
    curves = alpha_study.person_curves(rec, {i: inv.item(i).trait for i in tids})
    # full items: alpha 0 -> 2 + 2; alpha 1 -> O mean(0,0,2,2)=1 + 2; alpha 2 -> 2 + 0
    assert curves["test_sum"] == {"0": 4.0, "1": 3.0, "2": 2.0}
    # halves are O-only (even positions) and C-only (odd): on the O half alpha 1 is best
    # (O: 1 vs 2) and scores C at alpha 1 = 2; on the C half alpha 2 is best (C: 0) and
    # scores O at alpha 2 = 2: mean 2; alpha 0 scores 2 on both halves
    assert curves["split_half_oracle"] == pytest.approx(2.0)
    assert curves["split_half_zero"] == pytest.approx(2.0)
    curves["heldout_recorded"] = 1.0
    h = alpha_study.headroom({"p": curves})
    assert (h["zero"], h["oracle"], h["heldout"]) == (4.0, 2.0, 3.0)
    assert h["per_person"]["p"]["oracle_alpha"] == 2.0 and h["heldout_kept"] == pytest.approx(0.5)
    assert (h["oracle_better"], h["split_half_better"]) == (1, 0)
    # the recorded choices come from a PAPI table's per-person alphas
    table = tmp_path / "t.json"
    table.write_text(
        json.dumps({"rows": [{"name": "pas@all", "per_person": {"p": {"alpha": 2.0}}}]})
    )
    assert alpha_study.load_heldout_choices(str(table))[0] == {"p": 2.0}
    with pytest.raises(PalignError, match="no per-person alphas of pas@last"):
        alpha_study.load_heldout_choices(f"{table}:pas@last")


# --- rules ----------------------------------------------------------------------------------


def test_rule_choice() -> None:
    fixed = AlphaRule("m", "pas", "all", "agreement", "fixed", {"alpha": 1.5}, ("9",))
    assert fixed.choose([0.0, 1.0, 2.0], None) == 1.5 and not fixed.needs_heldout
    floor = AlphaRule("m", "pas", "all", "agreement", "heldout-floor", {"floor": 1.0}, ("9",))
    errs = {0.0: 0.5, 1.0: 0.9, 2.0: 0.8, 4.0: 0.8}
    assert floor.choose([0.0, 1.0, 2.0, 4.0], errs) == 2.0  # best at or above the floor; ties small
    with pytest.raises(PalignError, match="no alpha >= 1"):
        floor.choose([0.0], {0.0: 0.5})
    stable = AlphaRule(
        "m", "pas", "all", "agreement", "stable-fixed", {"alpha": 1.0, "min_cosine": 0.5}, ("9",)
    )
    assert stable.needs_stability and not stable.needs_heldout
    assert (stable.choose([0.0], stability=0.5), stable.choose([0.0], stability=0.49)) == (1.0, 0.0)
    with pytest.raises(PalignError, match="needs the fold stability"):
        stable.choose([0.0])
    assert "m:pas@all:fixed(alpha=1.5)" == fixed.rule_id


def test_shipped_rules_load_and_env_override(tmp_path: Path, monkeypatch) -> None:
    for r in shipped_rules():  # every shipped rule names its development persons and command
        assert r.dev_persons and r.evidence.get("command")
    f = _rules_file(tmp_path / "rules.json", "tiny", ["1"])
    monkeypatch.setenv(RULES_ENV, str(f))
    r = find_rule("tiny", "pas", "all", "agreement", "ipip-neo")
    assert r is not None and r.params == {"alpha": 2.0}
    assert find_rule("tiny", "pas", "last", "agreement", "ipip-neo") is None
    assert find_rule("tiny", "pas+few-shot", "all", "agreement", "ipip-neo") is None
    assert find_rule("tiny", "pas", "all", "agreement", "sd3") is None
    f.write_text("{not json")
    with pytest.raises(PalignError, match="malformed"):
        shipped_rules()
    monkeypatch.setenv(RULES_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(PalignError, match="cannot be read"):
        shipped_rules()


# --- one rule, every path ---------------------------------------------------------------------


def test_tuned_rule_in_the_method(
    papi: Dataset, tiny_lm: LoadedModel, cache: Path, tmp_path: Path, monkeypatch
) -> None:
    ds = small(papi, 4)
    dev = ds.persons[199]
    monkeypatch.setenv(RULES_ENV, str(_rules_file(tmp_path / "r.json", "tiny", [dev.id])))
    opts = {"k": 4, "alpha_grid": [0.0, 2.0], "alpha_selection": "tuned"}
    assert get_method("pas").selection == "heldout"  # the default until a rule is confirmed
    m = get_method("pas", MethodConfig("agreement", 0, dict(opts)))
    p = ds.persons[0]
    a = m.fit(tiny_lm, ds, p)
    assert a.info["alpha"] == 2.0 and a.info["alpha_selection"] == "tuned"
    assert a.info["alpha_rule"]["id"] == "tiny:pas@all:fixed(alpha=2)"
    assert m.config.options["alpha_rule"] == "tiny:pas@all:fixed(alpha=2)"
    # the same vector as a fixed alpha 2 fit (the rule adds no other difference)
    answers = np.nan_to_num(p.answer_vector(ds.inventory, ds.inventory.shown_ids))
    ref = fit_pas(m.acts, answers, m.arch, alpha=2.0, seed=0, K=4)
    assert torch.equal(a.steering, ref.u.float())
    # many persons at once: the same choice
    many = m.fit_many(tiny_lm, ds, ds.persons[:3])
    assert [x.info["alpha"] for x in many] == [2.0] * 3 and torch.equal(
        many[0].steering, a.steering
    )
    # the development person the rule was tuned on is refused, or labelled when allowed
    with pytest.raises(PalignError, match="development persons the default alpha rule"):
        m.fit(tiny_lm, ds, dev)
    allowed = get_method("pas", MethodConfig("agreement", 0, {**opts, "allow_dev_persons": True}))
    info = allowed.fit(tiny_lm, ds, dev).info
    assert info["alpha"] == 2.0 and "development person" in info["warning"]
    # no rule for this model: the held-out search, recorded as such
    monkeypatch.delenv(RULES_ENV)
    plain = get_method("pas", MethodConfig("agreement", 0, dict(opts)))
    info = plain.fit(tiny_lm, ds, p).info
    assert info["alpha_selection"] == "heldout-kfold" and info["alpha_rule"] is None
    assert plain.config.options["alpha_rule"] == "none"


def test_tuned_rule_floor_reads_the_heldout_search(
    papi: Dataset, tiny_lm: LoadedModel, cache: Path, tmp_path: Path, monkeypatch
) -> None:
    ds = small(papi, 4)
    f = _rules_file(tmp_path / "r.json", "tiny", ["x"], kind="heldout-floor", floor=1.0)
    monkeypatch.setenv(RULES_ENV, str(f))
    opts = {"k": 4, "alpha_grid": [0.0, 1.0, 4.0], "alpha_selection": "tuned"}
    m = get_method("pas", MethodConfig("agreement", 0, dict(opts)))
    p = ds.persons[0]
    info = m.fit(tiny_lm, ds, p).info
    errs = {float(k): v for k, v in info["validation_errors"].items()}
    assert set(errs) == {0.0, 1.0, 4.0}
    assert info["alpha"] == min((1.0, 4.0), key=lambda a: (errs[a], a))
    held = get_method("pas", MethodConfig("agreement", 0, {**opts, "alpha_selection": "heldout"}))
    assert held.fit(tiny_lm, ds, p).info["validation_errors"] == info["validation_errors"]


def test_tuned_rule_same_in_eval_align_and_serve(
    papi_dir: Path, tiny_folder: Path, tmp_path: Path, cache: Path, monkeypatch, capsys
) -> None:
    """``palign eval``, ``palign align`` and ``POST /v1/personalities`` apply one rule."""
    from palign.data import load_dataset
    from palign.models.loading import load_model
    from palign.serve.align import align_answers
    from palign.steering.adapter import load_adapter

    ds = load_dataset(str(papi_dir))
    p = ds.persons[1]
    model = str(tiny_folder)
    rules = _rules_file(tmp_path / "r.json", model, [ds.persons[199].id], alpha=3.0)
    monkeypatch.setenv(RULES_ENV, str(rules))
    common = ["--model", model, "--data", str(papi_dir), "--k", "4", "--alpha-selection", "tuned",
              "--format", "json"]  # fmt: skip
    assert main(["eval", "--method", "pas", "--person", p.id, "--max-items", "5", "--quiet",
                 "--out", str(tmp_path / "run"), *common]) == 0  # fmt: skip
    rec = json.loads(capsys.readouterr().out)["persons"][0]["info"]
    assert rec["alpha"] == 3.0 and rec["alpha_selection"] == "tuned"
    assert main(["align", "--person", p.id, "--out", str(tmp_path / "ad"), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["alpha"] == 3.0 and out["alpha_rule"] == f"{model}:pas@all:fixed(alpha=3)"
    ad = load_adapter(tmp_path / "ad")
    assert ad.alpha == 3.0 and [list(h) for h in ad.fit.heads] == rec["heads"]
    answers = p.answers(ds.inventory, "agreement", ds.inventory.shown_ids)
    served = align_answers(load_model(model), answers, tmp_path / "srv", data=str(papi_dir),
                           options={"k": 4, "alpha_selection": "tuned"})  # fmt: skip
    sa = load_adapter(served)
    assert sa.alpha == 3.0 and torch.allclose(sa.u, ad.u)
    # the development person is refused by eval, with the fix named
    assert main(["eval", "--method", "pas", "--person", ds.persons[199].id, "--max-items", "5",
                 "--quiet", "--out", str(tmp_path / "dev"), *common]) == 2  # fmt: skip
    assert "--allow-dev-persons" in capsys.readouterr().err


def test_tuned_rule_in_the_demo(
    papi: Dataset, tiny_lm: LoadedModel, cache: Path, tmp_path: Path, monkeypatch
) -> None:
    """The demo (through ``run_eval``) applies the rule: alpha 3 is on no default grid, and
    its steering is a fixed alpha 3 fit's."""
    from palign.demo.run import DemoConfig, run_demo

    monkeypatch.setenv(
        RULES_ENV, str(_rules_file(tmp_path / "r.json", "tiny", [papi.persons[199].id], alpha=3.0))
    )
    cfg = DemoConfig(
        model="tiny",
        out=str(tmp_path / "demo"),
        max_items=5,
        pas_options={"alpha_selection": "tuned", "k": 4},
        max_new_tokens=2,
        few_shot=False,
    )
    d = run_demo(cfg, dataset=papi, lm=tiny_lm, progress=False, log=lambda s: None)
    assert d["pas"]["alpha"] == 3.0 and d["pas"]["alpha_selection"] == "tuned"
    m = get_method("pas", MethodConfig("agreement", 0, {"alpha_selection": "tuned", "k": 4}))
    assert m.fit(tiny_lm, papi, papi.persons[0]).info["alpha"] == 3.0


def test_tuned_rule_same_on_ray_workers(
    papi_dir: Path, tiny_folder: Path, tmp_path: Path, cache: Path, monkeypatch, capsys
) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    model = tmp_path / "tiny-model"
    shutil.copytree(tiny_folder, model)
    rules = _rules_file(tmp_path / "r.json", str(model), ["x"], alpha=3.0)
    monkeypatch.setenv(RULES_ENV, str(rules))
    common = ["eval", "--method", "pas", "--persons", "2", "--person-batch", "1", "--model",
              str(model), "--data", str(papi_dir), "--max-items", "4", "--k", "4", "--quiet",
              "--alpha-selection", "tuned", "--format", "json"]  # fmt: skip
    try:
        assert main([*common, "--out", str(tmp_path / "ray"), "--workers", "1"]) == 0
        res_ray = json.loads(capsys.readouterr().out)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    res_one = json.loads(capsys.readouterr().out)
    assert [r["info"]["alpha"] for r in res_ray["persons"]] == [3.0, 3.0]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in res_one["persons"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in res_ray["persons"]] == strip
    assert res_ray["config"]["options"]["alpha_rule"] == f"{model}:pas@all:fixed(alpha=3)"
    assert os.environ[RULES_ENV] == str(rules)


def test_fold_stability_is_the_mean_fold_cosine(
    papi: Dataset, tiny_lm: LoadedModel, cache: Path
) -> None:
    """Re-stated by hand: refits without each of the selection's folds, cosine with the final."""
    from palign.steering.pas import fit_person, fold_assignment, fold_stability, unit_layer_vectors

    ds = small(papi, 4)
    m = get_method("pas", MethodConfig("agreement", 0, {"k": 4, "alpha_selection": "heldout"}))
    m.setup(tiny_lm, ds)
    inv = ds.inventory
    a = np.nan_to_num(ds.persons[0].answer_vector(inv, inv.shown_ids))
    final = unit_layer_vectors(fit_person(m.acts, a, K=4, seed=0), m.arch).flatten().double()
    answered = [i for i in range(len(a)) if a[i] > 0]
    folds = fold_assignment(len(answered), 3, 0, [inv.shown_ids[i] for i in answered])
    cos = []
    for f in folds:
        t = a.copy()
        t[[answered[j] for j in f]] = 0
        u = unit_layer_vectors(fit_person(m.acts, t, K=4, seed=0), m.arch).flatten().double()
        cos.append(float(u @ final / (u.norm() * final.norm())))
    got = fold_stability(m.acts, a, m.arch, k_folds=3, seed=0, K=4, item_ids=inv.shown_ids)
    assert got == pytest.approx(float(np.mean(cos)), abs=1e-9)
    assert -1.0 <= got <= 1.0 and len(set(np.round(cos, 6))) == 3  # three different refits


@pytest.mark.parametrize("min_cosine,steered", [(-1.0, True), (1.01, False)])
def test_stable_rule_steers_only_stable_persons(
    papi: Dataset,
    tiny_lm: LoadedModel,
    cache: Path,
    tmp_path: Path,
    monkeypatch,
    min_cosine: float,
    steered: bool,
) -> None:
    ds = small(papi, 4)
    f = _rules_file(
        tmp_path / "r.json", "tiny", ["x"], kind="stable-fixed", alpha=2.0, min_cosine=min_cosine
    )
    monkeypatch.setenv(RULES_ENV, str(f))
    m = get_method("pas", MethodConfig("agreement", 0, {"k": 4, "alpha_selection": "tuned"}))
    a = m.fit(tiny_lm, ds, ds.persons[0])
    assert a.info["alpha"] == (2.0 if steered else 0.0)
    assert -1.0 <= a.info["fold_stability"] <= 1.0
    assert bool(a.steering.abs().sum() > 0) == steered
    many = m.fit_many(tiny_lm, ds, ds.persons[:2])
    assert many[0].info["alpha"] == a.info["alpha"] and torch.equal(many[0].steering, a.steering)
