"""Held-out step selection of the training baselines (issue #23, item 8).

Part of the shown items is held out (never trained on, never a test item), read every
``eval_every`` steps, and the adapter of the best step is the one saved: the saved LoRA
tensors equal the weights at the chosen step, the chosen step is the first minimum of the
recorded curve, the curve's values equal an independent plain PEFT forward, and the whole run
repeats under its seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.methods import MethodConfig, get_method
from palign.models.loading import LoadedModel
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
from palign.train import (
    DPOTrainConfig,
    GRPOTrainConfig,
    dpo_pairs,
    heldout_set,
    heldout_split,
    rl_prompts,
    shown_answers,
    train_dpo,
    train_grpo,
)
from tests.conftest import tiny_inventory
from tests.test_train import FAST, _plain_probs

VALUES = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)


def mixed_dataset() -> Dataset:
    """Person ``pm``: agreement 5 on shown items 1, 2, 6 and 1 on item 4; test answers 3."""
    inv = tiny_inventory()
    stored = {}
    for iid in inv.shown_ids:
        want = 1 if iid == "4" else 5
        item = inv.item(iid)
        stored[iid] = next(
            v for v in (1, 5) if inv.answer_from_stored(item, v, "agreement") == want
        )
    for iid in inv.test_ids:
        stored[iid] = 3
    return Dataset(inv, [Person("pm", stored)])


def _lora_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _capture(states: dict[int, dict[str, torch.Tensor]], lm: LoadedModel) -> Any:
    """A TrainerCallback copying the LoRA weights after every optimiser step."""
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            states[state.global_step] = {
                n: p.detach().clone() for n, p in lm.model.named_parameters() if "lora_" in n
            }

    return Capture()


def _same_weights(saved: dict[str, torch.Tensor], live: dict[str, torch.Tensor]) -> bool:
    """PEFT's saved names drop the adapter name (``.default``) and prefix ``base_model.model``."""
    norm = {n.replace(".default", ""): t for n, t in live.items()}
    assert len(saved) == len(norm) > 0
    return all(torch.equal(t, norm[n.removeprefix("base_model.model.")]) for n, t in saved.items())


def test_split_is_seeded_by_item_id_like_pas_folds(papi: Dataset) -> None:
    from palign.steering.pas import fold_assignment, seeded_item_order

    ids = list(papi.inventory.shown_ids)
    train, held = heldout_split(ids, 0.2, seed=3)
    assert len(held) == 24 and len(train) == 96 and set(train).isdisjoint(held)
    assert set(train) | set(held) == set(ids)
    # an independent re-statement of the rule: the 24 smallest sha256("seed:id")
    keys = sorted(ids, key=lambda i: hashlib.sha256(f"3:{i}".encode()).hexdigest())
    assert set(held) == set(keys[:24])
    # the order of the ids does not matter; the seed does
    assert heldout_split(list(reversed(ids)), 0.2, seed=3)[1] == list(reversed(held))
    assert set(heldout_split(ids, 0.2, seed=4)[1]) != set(held)
    # the same order PAS deals its alpha folds from (fold f = every k-th item from f)
    order = seeded_item_order(ids, 3)
    assert {ids[i] for i in order[:24]} == set(held)
    assert fold_assignment(len(ids), 5, 3, ids)[0] == sorted(order[0::5])
    assert not set(held) & set(papi.inventory.test_ids)
    with pytest.raises(PalignError, match="leaves no held-out item.*--train-select none"):
        heldout_split(ids[:2], 0.2)
    with pytest.raises(PalignError, match="leaves no item to train on"):
        heldout_split(ids[:2], 0.9)


def test_dpo_run_selects_the_first_best_step_and_saves_it(
    tiny_lm: LoadedModel, tmp_path: Path, monkeypatch
) -> None:
    """Scripted held-out errors 2, 1, 1, 3: step 2 is chosen (the tie with 3 goes to fewer
    steps), and the saved adapter holds exactly the weights after step 2, not the last."""
    import palign.train.select as sel_mod

    ds = mixed_dataset()
    person = ds.persons[0]
    cfg = DPOTrainConfig(**{**FAST, "select": "heldout", "eval_every": 1})
    answered = list(shown_answers(ds, person, "agreement"))
    train_ids, held_ids = heldout_split(answered, cfg.heldout_fraction, 0)
    pairs = dpo_pairs(tiny_lm.tokenizer, ds, person, completion="letter", items=train_ids)
    held = heldout_set(ds, person, held_ids, system_prompt=NEUTRAL_SYSTEM_PROMPT)
    scripted = iter([2.0, 1.0, 1.0, 3.0])
    monkeypatch.setattr(sel_mod, "heldout_error", lambda lm, h: next(scripted))
    states: dict[int, dict[str, torch.Tensor]] = {}
    res = train_dpo(
        tiny_lm,
        pairs,
        cfg,
        tmp_path / "a",
        progress=False,
        callbacks=[_capture(states, tiny_lm)],
        heldout=held,
    )
    s = res.selection
    assert s["curve"] == [[1, 2.0], [2, 1.0], [3, 1.0], [4, 3.0]]
    assert s["chosen_step"] == 2 and s["heldout_error"] == 1.0 and s["stopped_at"] == 4
    assert s["heldout_items"] == held_ids and s["n_train_items"] == len(train_ids)
    saved = _lora_tensors(res.folder)
    assert _same_weights(saved, states[2])
    assert not _same_weights(saved, states[4])  # the last step's weights were trained past
    meta = json.loads((res.folder / "palign_train.json").read_text())
    assert meta["selection"] == s
    # patience 1: stops after the first evaluation without a new best
    scripted = iter([2.0, 3.0, 0.0, 0.0])
    monkeypatch.setattr(sel_mod, "heldout_error", lambda lm, h: next(scripted))
    cfg2 = DPOTrainConfig(**{**FAST, "select": "heldout", "eval_every": 1, "patience": 1})
    res2 = train_dpo(tiny_lm, pairs, cfg2, tmp_path / "b", progress=False, heldout=held)
    assert res2.selection["curve"] == [[1, 2.0], [2, 3.0]] and res2.selection["stopped_at"] == 2
    assert res2.selection["chosen_step"] == 1
    assert max(h["step"] for h in res2.history if "loss" in h) == 2


def test_harness_heldout_never_trained_recorded_and_reproducible(
    tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    """Through the method: the held-out item never reaches DPO's trainer (spy), nor a test
    item; the curve is the error of an independent plain PEFT forward at the chosen step; the
    configuration and the selection are recorded; a second run under the seed repeats it."""
    import palign.train.dpo as dpo_mod

    ds = mixed_dataset()
    inv = ds.inventory
    base_cls = dpo_mod.dpo_trainer_class()
    seen: list[str] = []

    class Spy(base_cls):  # type: ignore[misc,valid-type]
        def compute_loss(self, model, inputs, *a, **kw):  # noqa: ANN001
            seen.extend(tiny_lm.tokenizer.batch_decode(inputs["input_ids"]))
            return super().compute_loss(model, inputs, *a, **kw)

    opts = {**FAST, "select": "heldout", "steps": 3, "eval_every": 1}
    runs = []
    orig = dpo_mod.dpo_trainer_class
    dpo_mod.dpo_trainer_class = lambda: Spy
    try:
        for k in range(2):
            m = get_method("dpo", MethodConfig("agreement", 0, dict(opts)))
            m.adapter_root = tmp_path / f"run{k}"
            m.progress = False
            runs.append((m, m.fit(tiny_lm, ds, ds.persons[0])))
    finally:
        dpo_mod.dpo_trainer_class = orig
    m, a = runs[0]
    s = a.info["selection"]
    held = s["heldout_items"]
    assert held == ["4"] and s["eval_steps"] == [1, 2, 3] and a.info["n_examples"] == 3
    text = "\n".join(seen)
    for iid in inv.shown_ids:
        assert (inv.statement(inv.item(iid)) in text) == (iid not in held), iid
    for iid in inv.test_ids:
        assert inv.statement(inv.item(iid)) not in text
    # the chosen step is the first minimum of the recorded curve
    errors = [e for _, e in s["curve"]]
    assert s["chosen_step"] == s["curve"][errors.index(min(errors))][0]
    assert s["heldout_error"] == min(errors)
    # independent re-statement: the saved adapter's argmax answer on the held-out item
    probs = _plain_probs(tiny_lm, Path(a.lora), [inv.statement(inv.item("4"))])
    answer = float(VALUES[int(probs[0].argmax())])
    assert abs(answer - 1.0) == s["heldout_error"]
    # recorded: the configuration (results and adapter) and the selection (adapter)
    rec = m.record()
    assert rec["training"]["select"] == "heldout" and rec["training"]["eval_every"] == 1
    assert rec["training"]["heldout_fraction"] == 0.2 and "held out" in rec["data"]
    meta = json.loads((Path(a.lora) / "palign_train.json").read_text())
    assert meta["training"]["select"] == "heldout" and meta["selection"] == s
    # the same seed: the same split, curve and adapter
    a2 = runs[1][1]
    assert a2.info["selection"] == s
    t1, t2 = _lora_tensors(Path(a.lora)), _lora_tensors(Path(a2.lora))
    assert all(torch.equal(t1[n], t2[n]) for n in t1)
    # resume: a reused adapter reports the same selection
    m3 = get_method("dpo", MethodConfig("agreement", 0, dict(opts)))
    m3.adapter_root = tmp_path / "run0"
    a3 = m3.fit(tiny_lm, ds, ds.persons[0])
    assert a3.info["reused_adapter"] and a3.info["selection"] == s


def test_grpo_heldout_items_never_prompted(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    import palign.train.grpo as grpo_mod

    ds = mixed_dataset()
    inv = ds.inventory
    base_cls = grpo_mod.grpo_trainer_class()
    prompts: list[str] = []

    class Spy(base_cls):  # type: ignore[misc,valid-type]
        def _generate_and_score_completions(self, inputs, *a, **kw):  # noqa: ANN001
            prompts.extend(str(x["prompt"]) for x in inputs)
            return super()._generate_and_score_completions(inputs, *a, **kw)

    opts = {"steps": 2, "batch": 6, "micro_batch": 6, "num_generations": 2, "max_new_tokens": 3}
    opts["num_iterations"] = 1  # a fresh generation every step
    m = get_method("grpo", MethodConfig("agreement", 0, opts))
    m.adapter_root = tmp_path
    m.progress = False
    orig = grpo_mod.grpo_trainer_class
    grpo_mod.grpo_trainer_class = lambda: Spy
    try:
        a = m.fit(tiny_lm, ds, ds.persons[0])
    finally:
        grpo_mod.grpo_trainer_class = orig
    s = a.info["selection"]
    assert s["heldout_items"] == ["4"] and [st for st, _ in s["curve"]] == [1, 2]
    assert prompts
    text = "\n".join(prompts)
    assert inv.statement(inv.item("4")) not in text
    assert all(inv.statement(inv.item(i)) in text for i in ("1", "2", "6"))
    assert all(inv.statement(inv.item(i)) not in text for i in inv.test_ids)


def test_select_none_and_bad_input(tiny_lm: LoadedModel, tmp_path: Path, papi_dir, capsys) -> None:
    from palign.cli import main

    ds = mixed_dataset()
    person = ds.persons[0]
    pairs = dpo_pairs(tiny_lm.tokenizer, ds, person, completion="letter")
    with pytest.raises(PalignError, match="select='heldout' needs the held-out items"):
        train_dpo(tiny_lm, pairs, DPOTrainConfig(**{**FAST, "select": "heldout"}), tmp_path / "x")
    prompts = rl_prompts(tiny_lm.tokenizer, ds, person)
    with pytest.raises(PalignError, match="select='heldout' needs the held-out items"):
        train_grpo(tiny_lm, prompts, GRPOTrainConfig(), tmp_path / "y", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # none: every shown item trains, no selection recorded
    m = get_method("dpo", MethodConfig("agreement", 0, {**FAST, "steps": 1, "select": "none"}))
    m.adapter_root = tmp_path / "none"
    m.progress = False
    a = m.fit(tiny_lm, ds, person)
    assert "selection" not in a.info and a.info["n_examples"] == 4
    assert json.loads((Path(a.lora) / "palign_train.json").read_text())["selection"] is None
    # a person whose only non-neutral shown answer is held out: nothing left to train on
    inv = ds.inventory
    stored = {i: 3 for i in inv.shown_ids + inv.test_ids}
    stored["4"] = 5
    lone = Dataset(inv, [Person("pl", stored)])
    m2 = get_method("dpo", MethodConfig("agreement", 0, {**FAST, "select": "heldout"}))
    m2.adapter_root = tmp_path / "lone"
    with pytest.raises(PalignError, match="lower --heldout-fraction or give --train-select none"):
        m2.fit(tiny_lm, lone, lone.persons[0])
    # CLI: flags reach the configuration; bad values are one-line errors (exit 2)
    argv = ["eval", "--method", "dpo", "--persons", "1", "--data", str(papi_dir)]
    assert main([*argv, "--heldout-fraction", "1.5", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("palign: error: --heldout-fraction must be in (0, 1)") and (
        err.count("\n") == 1
    )
    assert main([*argv, "--eval-every", "-1", "--out", str(tmp_path / "c")]) == 2
    assert "eval_every must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    from palign.cli.common import train_options

    class Args:
        train_select, heldout_fraction, eval_every = "none", 0.3, 7

    assert train_options(Args()) == {"select": "none", "heldout_fraction": 0.3, "eval_every": 7}
    assert DPOTrainConfig(steps=250).eval_steps() == [50, 100, 150, 200, 250]
    assert DPOTrainConfig(steps=7, eval_every=3).eval_steps() == [3, 6, 7]
