"""Evaluation harness: methods, resumable runs, determinism, compare, CLI bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from palign.cli import main
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.eval.runs import RunConfig, load_results, run_eval
from palign.methods import METHODS, MethodConfig, get_method
from palign.methods.few_shot import few_shot_prompt
from palign.models.loading import LoadedModel


def small(papi: Dataset, n_items: int = 6) -> Dataset:
    """The PAPI data with only a few test items (fast)."""
    import copy

    ds = copy.copy(papi)
    inv = copy.copy(papi.inventory)
    inv.test_ids = [
        i for t in "OCEAN" for i in papi.inventory.test_ids if papi.inventory.item(i).trait == t
    ][:: 36 // n_items * 5 or 1][:n_items]
    inv.__post_init__()
    ds.inventory = inv
    return ds


def test_registry_and_prompts(papi: Dataset) -> None:
    assert {"vanilla", "few-shot", "personality-prompt"} <= set(METHODS)
    with pytest.raises(PalignError, match="unknown method 'magic'"):
        get_method("magic")
    p = papi.persons[0]
    inv = papi.inventory
    text = few_shot_prompt(inv, p, "agreement")
    assert text.startswith("Here are some of your behaviors and your level of recognition")
    # agreement semantics: a reverse-keyed shown item shows 6 - stored
    rev = next(i for i in inv.shown_ids if inv.item(i).key < 0 and p.stored[i] not in (0, 3))
    want = {
        5: "Very Accurate",
        4: "Moderately Accurate",
        2: "Moderately Inaccurate",
        1: "Very Inaccurate",
    }
    assert f"{inv.item(rev).text}:{want[6 - p.stored[rev]]}" in text
    assert f"{inv.item(rev).text}:{want[p.stored[rev]]}" in few_shot_prompt(inv, p, "paper")


def test_run_resume_and_determinism(tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel) -> None:
    ds = small(papi)
    ids = [p.id for p in ds.persons[:3]]
    cfg = RunConfig(method="few-shot", model="tiny", persons=ids, person_batch=2, batch_size=8)
    out = tmp_path / "run"
    res = run_eval(cfg, out, lm=tiny_lm, dataset=ds, progress=False)
    assert res["report"]["n_persons"] == 3
    assert set(res["report"]["traits"]) == set("OCEAN")
    assert res["config"]["method"] == "few-shot" and res["versions"]["palign"]
    assert res["model"]["id"] == "tiny-random-llama"
    first = {p: json.loads((out / "persons" / f"{p}.json").read_text()) for p in ids}
    for rec in first.values():
        assert set(rec["answers"]) == set(ds.inventory.test_ids)
        assert all(abs(sum(v) - 1) < 1e-3 for v in rec["probs"].values())

    # interruption: one person's file is lost; the rerun recomputes only that person
    (out / "persons" / f"{ids[1]}.json").unlink()
    calls = []
    real_fit = get_method("few-shot").__class__.fit

    class Counting(get_method("few-shot").__class__):
        def fit(self, lm, dataset, person):  # type: ignore[override]
            calls.append(person.id)
            return real_fit(self, lm, dataset, person)

    res2 = run_eval(
        cfg, out, lm=tiny_lm, dataset=ds, method=Counting(MethodConfig()), progress=False
    )
    assert calls == [ids[1]]
    again = json.loads((out / "persons" / f"{ids[1]}.json").read_text())
    assert again["answers"] == first[ids[1]]["answers"]  # deterministic
    assert again["probs"] == first[ids[1]]["probs"]
    assert res2["report"]["traits"] == res["report"]["traits"]
    assert load_results(out)["report"] == res2["report"]

    # a different configuration into the same folder is refused
    with pytest.raises(PalignError, match="different configuration"):
        run_eval(
            RunConfig(method="vanilla", model="tiny", persons=ids),
            out,
            lm=tiny_lm,
            dataset=ds,
            progress=False,
        )


def test_vanilla_is_person_independent(tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel) -> None:
    ds = small(papi, 3)
    ids = [p.id for p in ds.persons[:3]]
    res = run_eval(
        RunConfig(method="vanilla", model="tiny", persons=ids),
        tmp_path / "v",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
    from palign.models.readout import ReadRequest, naive_option_probs

    inv = ds.inventory
    for pid in ids:
        rec = json.loads((tmp_path / "v" / "persons" / f"{pid}.json").read_text())
        # independent: each full prompt alone, batch 1, no cache, the paper's neutral prompt
        reqs = [
            ReadRequest(NEUTRAL_SYSTEM_PROMPT, inv.statement(inv.item(i))) for i in inv.test_ids
        ]
        probs = naive_option_probs(tiny_lm, reqs)
        for k, iid in enumerate(inv.test_ids):
            assert rec["answers"][iid] == 5 - int(probs[k].argmax())
            assert rec["probs"][iid] == pytest.approx(probs[k].tolist(), abs=1e-5)
    assert res["report"]["unparsed_rate"] == 0


def test_batching_persons_equals_one_at_a_time(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel
) -> None:
    ds = small(papi, 4)
    ids = [p.id for p in ds.persons[:3]]
    a = run_eval(
        RunConfig(method="few-shot", model="tiny", persons=ids, person_batch=3),
        tmp_path / "a",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    b = run_eval(
        RunConfig(method="few-shot", model="tiny", persons=ids, person_batch=1),
        tmp_path / "b",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    for p in ids:
        pa = json.loads((tmp_path / "a" / "persons" / f"{p}.json").read_text())["probs"]
        pb = json.loads((tmp_path / "b" / "persons" / f"{p}.json").read_text())["probs"]
        for k in pa:
            assert pa[k] == pytest.approx(pb[k], abs=1e-4)
    assert a["report"]["traits"] == pytest.approx(b["report"]["traits"])


def test_compare_and_cli(
    tmp_path: Path, papi: Dataset, papi_dir: Path, tiny_lm: LoadedModel, capsys
) -> None:
    ds = small(papi, 3)
    ids = [p.id for p in ds.persons[:2]]
    run_eval(
        RunConfig(method="vanilla", model="tiny", persons=ids, data=str(papi_dir)),
        tmp_path / "v",
        lm=tiny_lm,
        dataset=ds,
        progress=False,
    )
    assert main(["compare", str(tmp_path / "v"), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in d["rows"]]
    assert names[0] == "vanilla" and "facet-mean" in names and d["persons"] == ids
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.json not found" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["eval", "--method", "magic", "--persons", "1"], "unknown method 'magic'"),
        (["eval", "--method", "vanilla", "--person", "999"], "unknown person '999'"),
        (["eval", "--method", "vanilla", "--readout", "beam"], "unknown readout 'beam'"),
        (
            ["eval", "--method", "vanilla", "--persons", "1", "--model", "/no/such/model"],
            "not found",
        ),
        (
            [
                "eval",
                "--method",
                "vanilla",
                "--persons",
                "1",
                "--model",
                "no-such-org/no-such-model",
            ],
            "no-such-org/no-such-model",
        ),
    ],
)
def test_eval_bad_input(tmp_path: Path, papi_dir: Path, capsys, monkeypatch, argv, needle) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rc = main([*argv, "--data", str(papi_dir), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.slow
def test_real_model_eval_two_persons(tmp_path: Path, papi_dir: Path, capsys) -> None:
    """vanilla and few-shot on the embedded model for 2 PAPI persons (10 items each); resume.

    The full 180-item run is the same code path; its timing is in docs/evaluation.md."""
    for method in ("vanilla", "few-shot"):
        out = tmp_path / method
        argv = [
            "eval",
            "--method",
            method,
            "--persons",
            "2",
            "--data",
            str(papi_dir),
            "--out",
            str(out),
            "--quiet",
            "--format",
            "json",
            "--max-items",
            "10",
        ]
        assert main(argv) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["report"]["n_persons"] == 2 and d["model"]["id"].endswith("SmolLM2-135M-Instruct")
        assert sum(d["report"]["histogram"].values()) == 20
        assert d["report"]["unparsed_rate"] == 0
        mtime = (out / "persons").stat().st_mtime_ns
        assert main(argv) == 0  # resumes: nothing to recompute
        d2 = json.loads(capsys.readouterr().out)
        assert d2["report"] == d["report"] and (out / "persons").stat().st_mtime_ns == mtime


def test_resume_refuses_other_weights_at_the_same_path(tmp_path, papi, tiny_lm) -> None:
    """A run folder written with one set of weights is not resumed with retrained weights at
    the same model path (the weights fingerprint is recorded when the folder is claimed)."""
    import dataclasses

    from palign.errors import PalignError
    from palign.eval.runs import RunConfig, run_eval

    ids = [p.id for p in papi.persons[:2]]
    lm = dataclasses.replace(tiny_lm, weights_fingerprint="aaa")
    cfg = RunConfig(method="vanilla", model="tiny", persons=ids[:1], max_items=2)
    run_eval(cfg, tmp_path / "run", lm=lm, dataset=papi, progress=False)
    cfg2 = RunConfig(method="vanilla", model="tiny", persons=ids, max_items=2)
    run_eval(cfg2, tmp_path / "run", lm=lm, dataset=papi, progress=False)  # same weights: ok
    other = dataclasses.replace(tiny_lm, weights_fingerprint="bbb")
    cfg3 = RunConfig(
        method="vanilla", model="tiny", persons=[*ids, papi.persons[2].id], max_items=2
    )
    with pytest.raises(PalignError, match="other weights"):
        run_eval(cfg3, tmp_path / "run", lm=other, dataset=papi, progress=False)


def test_identical_requests_are_read_once(papi: Dataset, tiny_lm: LoadedModel, monkeypatch) -> None:
    """Persons asking identical unsteered requests share one read; records equal solo reads."""
    import palign.models.readout as readout
    from palign.eval.runs import predict_aligned
    from palign.methods.base import Aligned

    ds = small(papi, 4)
    items = ds.inventory.test_ids
    solo = {
        sp: predict_aligned(tiny_lm, ds, [Aligned("x", sp)], items)[0]
        for sp in ("You are a person.", "Be yourself.")
    }
    seen: list[int] = []
    real = readout.option_probs

    def counting(lm, reqs, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(reqs))
        return real(lm, reqs, **kw)

    monkeypatch.setattr(readout, "option_probs", counting)
    prompts = ["You are a person.", "Be yourself.", "You are a person.", "You are a person."]
    recs = predict_aligned(
        tiny_lm, ds, [Aligned(str(k), sp) for k, sp in enumerate(prompts)], items
    )
    assert seen == [2 * len(items)]
    for rec, sp in zip(recs, prompts):
        assert rec["answers"] == solo[sp]["answers"]
        assert rec["probs"] == solo[sp]["probs"]


def test_zero_steering_is_read_unsteered_and_shared(
    papi: Dataset, tiny_lm: LoadedModel, monkeypatch
) -> None:
    """PAS persons at alpha 0 (a zero vector) ask the unsteered requests: read once for all of
    them, equal to the steered readout with the zero vector at every position."""
    import torch

    import palign.models.readout as readout
    from palign.eval.runs import predict_aligned
    from palign.methods.base import Aligned
    from palign.models.readout import ReadRequest, option_probs

    ds = small(papi, 4)
    items = ds.inventory.test_ids
    n_layers, hidden = tiny_lm.model.config.num_hidden_layers, tiny_lm.model.config.hidden_size
    zero = torch.zeros(n_layers, hidden)
    u = torch.randn(n_layers, hidden, generator=torch.Generator().manual_seed(0))
    statements = [ds.inventory.statement(ds.inventory.item(i)) for i in items]
    # reference: the zero vector steered at every position, no sharing
    ref = option_probs(
        tiny_lm,
        [ReadRequest("S", st, 0) for st in statements],
        steering=zero.unsqueeze(0),
        position="all",
    )
    seen: list[int] = []
    real = readout.option_probs

    def counting(lm, reqs, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(reqs))
        return real(lm, reqs, **kw)

    monkeypatch.setattr(readout, "option_probs", counting)
    persons = [Aligned(str(k), "S", v) for k, v in enumerate([zero, u, zero, zero])]
    recs = predict_aligned(tiny_lm, ds, persons, items)
    assert seen == [2 * len(items)]  # the three alpha-0 persons share one read; u its own
    for k in (0, 2, 3):
        got = np.array([recs[k]["probs"][i] for i in items])
        np.testing.assert_allclose(np.log(got), np.log(ref.probs), rtol=0, atol=1e-4)
    assert recs[1]["answers"] != recs[0]["answers"] or recs[1]["probs"] != recs[0]["probs"]
