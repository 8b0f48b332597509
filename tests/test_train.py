"""Training baselines (DPO, GRPO with TRL + PEFT LoRA) on a tiny random model.

One DPO run (module fixture, through the harness) serves several checks: the loss goes down
on a planted preference, the adapter moves the readout toward the person, the readout equals
a plain forward of the PEFT model, no test item reaches the trainer (spy), the base model is
restored, results carry the training record.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.eval.runs import RunConfig, predict_aligned, run_eval
from palign.methods import MethodConfig, get_method
from palign.models.loading import LoadedModel, option_token_ids
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT, build_prompt, encode_prompt
from palign.train import answer_reward, dpo_pairs, option_completion, rl_prompts
from tests.conftest import tiny_inventory

FAST = {
    "steps": 4,
    "batch": 2,
    "micro_batch": 2,
    "lr": 3e-3,
    "warmup_ratio": 0.0,
    "lora_dropout": 0.0,
    "completion": "letter",
    "select": "none",  # these tests check the training itself (selection: test_train_select)
}


def planted_dataset() -> Dataset:
    """Person ``pa`` answers 5 (agreement) to every shown item; test answers are 3s."""
    inv = tiny_inventory()
    stored = {}
    for iid in inv.shown_ids:
        item = inv.item(iid)
        stored[iid] = next(v for v in (1, 5) if inv.answer_from_stored(item, v, "agreement") == 5)
    for iid in inv.test_ids:
        stored[iid] = 3
    neutral = {iid: 3 for iid in inv.shown_ids + inv.test_ids}
    return Dataset(inv, [Person("pa", stored), Person("pn", neutral)])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def dpo_run(tiny_lm: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DPO through run_eval for the planted person, with a spy on what the trainer sees."""
    import palign.train.dpo as dpo_mod

    ds = planted_dataset()
    out = tmp_path_factory.mktemp("dpo-run")
    before = _state(tiny_lm.model)
    base_cls = dpo_mod.dpo_trainer_class()
    seen: list[str] = []

    class Spy(base_cls):  # type: ignore[misc,valid-type]
        def compute_loss(self, model, inputs, *a, **kw):  # noqa: ANN001
            seen.extend(tiny_lm.tokenizer.batch_decode(inputs["input_ids"]))
            return super().compute_loss(model, inputs, *a, **kw)

    orig = dpo_mod.dpo_trainer_class
    dpo_mod.dpo_trainer_class = lambda: Spy
    torch.set_num_threads(1)
    try:
        cfg = RunConfig(method="dpo", persons=["pa"], options=dict(FAST))
        method = get_method("dpo", MethodConfig("agreement", 0, dict(FAST)))
        method.adapter_root = out / "adapters"
        method.progress = False
        res = run_eval(cfg, out, lm=tiny_lm, dataset=ds, method=method, progress=False)
    finally:
        dpo_mod.dpo_trainer_class = orig
    return {"res": res, "out": out, "seen": seen, "before": before, "ds": ds}


def _plain_probs(lm: LoadedModel, folder: Path | None, statements: list[str]) -> torch.Tensor:
    """Independent re-statement: option probabilities from a plain forward of the PEFT model."""
    from peft import PeftModel

    model = copy.deepcopy(lm.model)
    if folder is not None:
        model = PeftModel.from_pretrained(model, str(folder))
    model.eval()
    letters = option_token_ids(lm.tokenizer)
    rows = []
    with torch.no_grad():
        for st in statements:
            ids = encode_prompt(lm.tokenizer, build_prompt(lm.tokenizer, NEUTRAL_SYSTEM_PROMPT, st))
            logits = model(torch.tensor([ids])).logits[0, -1]
            rows.append(torch.softmax(logits[letters].double(), dim=0))
    return torch.stack(rows)


def test_data_shown_items_only_and_mirrored(tiny_lm: LoadedModel, tiny: Dataset) -> None:
    inv = tiny.inventory
    p1 = tiny.persons[0]
    pairs = dpo_pairs(tiny_lm.tokenizer, tiny, p1)
    answers = p1.answers(inv, "agreement", inv.shown_ids)
    assert [p.item for p in pairs] == [i for i in inv.shown_ids if answers.get(i, 3) != 3]
    for p in pairs:
        assert p.chosen == option_completion(answers[p.item])
        assert p.rejected == option_completion(6 - answers[p.item])
        assert p.prompt.endswith("Option (") and inv.statement(inv.item(p.item)) in p.prompt
    assert option_completion(4) == "B). Moderately Accurate"
    assert option_completion(1) == "E). Very Inaccurate"
    prompts = rl_prompts(tiny_lm.tokenizer, tiny, p1)
    assert {q.item for q in prompts} <= set(inv.shown_ids)
    assert all(q.prompt.endswith("Option") for q in prompts)
    assert answer_reward(["(A). Very Accurate", " (E)", "no idea"], [5, 5, 3], -5.0) == [
        0.0,
        -4.0,
        -5.0,
    ]


def test_dpo_loss_down_and_readout_toward_person(
    dpo_run: dict[str, Any], tiny_lm: LoadedModel
) -> None:
    res, ds = dpo_run["res"], dpo_run["ds"]
    info = res["persons"][0]["info"]
    assert info["trainer"] == "trl.DPOTrainer" and info["n_examples"] == 4
    loss = info["loss"]
    assert loss["logged"] == FAST["steps"] and loss["last"] < loss["first"]
    assert info["train_seconds"] > 0 and res["timings"]["seconds_per_person"] > 0
    assert res["method"]["training"]["steps"] == 4 and res["method"]["training"]["lora_r"] == 16
    # the adapter moves the test-item readout toward the planted "Very Accurate" (5)
    inv = ds.inventory
    statements = [inv.statement(inv.item(i)) for i in inv.test_ids]
    folder = Path(info["adapter"])
    base = _plain_probs(tiny_lm, None, statements)
    tuned = _plain_probs(tiny_lm, folder, statements)
    values = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert bool(((tuned @ values) > (base @ values) + 0.05).all())
    # the harness readout is exactly the LoRA model's forward
    probs = res and json.loads((dpo_run["out"] / "persons" / "pa.json").read_text())["probs"]
    got = torch.tensor([probs[i] for i in inv.test_ids], dtype=torch.float64)
    assert torch.allclose(got, tuned, atol=1e-4)


def test_dpo_adapter_files_and_base_restored(dpo_run: dict[str, Any], tiny_lm: LoadedModel) -> None:
    folder = dpo_run["out"] / "adapters" / "pa"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 16 and cfg["lora_alpha"] == 100
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (folder / "adapter_model.safetensors").stat().st_size > 0
    meta = json.loads((folder / "palign_train.json").read_text())
    assert meta["method"] == "dpo" and meta["person"] == "pa" and meta["training"]["beta"] == 0.1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # the shared base model is untouched: no LoRA layers, same weights, eval mode
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in tiny_lm.model.modules())
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in dpo_run["before"].items())
    assert not tiny_lm.model.training and "forward" not in tiny_lm.model.__dict__


def test_no_test_item_reaches_the_trainer(dpo_run: dict[str, Any]) -> None:
    inv = dpo_run["ds"].inventory
    seen = dpo_run["seen"]
    assert seen, "the spy saw no batch"
    text = "\n".join(seen)
    for iid in inv.test_ids:
        assert inv.statement(inv.item(iid)) not in text
    for iid in inv.shown_ids:
        assert inv.statement(inv.item(iid)) in text


def test_resume_reuses_the_adapter(
    dpo_run: dict[str, Any], tiny_lm: LoadedModel, monkeypatch
) -> None:
    import palign.train.dpo as dpo_mod

    def boom():
        raise AssertionError("trained again")

    monkeypatch.setattr(dpo_mod, "dpo_trainer_class", boom)
    m = get_method("dpo", MethodConfig("agreement", 0, dict(FAST)))
    m.adapter_root = dpo_run["out"] / "adapters"
    a = m.fit(tiny_lm, dpo_run["ds"], dpo_run["ds"].persons[0])
    assert (
        a.info["reused_adapter"] and a.info["loss"] == dpo_run["res"]["persons"][0]["info"]["loss"]
    )
    # a plain Aligned without the adapter reads differently from the adapter one
    inv = dpo_run["ds"].inventory
    plain = type(a)(a.person_id, a.system_prompt)
    r_lora, r_plain = predict_aligned(tiny_lm, dpo_run["ds"], [a, plain], inv.test_ids)
    assert r_lora["probs"] != r_plain["probs"]


def test_grpo_trains_and_saves(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    ds = planted_dataset()
    opts = {"steps": 1, "batch": 2, "micro_batch": 2, "num_generations": 2, "max_new_tokens": 3}
    m = get_method("grpo", MethodConfig("agreement", 0, opts))
    m.adapter_root = tmp_path
    m.progress = False
    a = m.fit(tiny_lm, ds, ds.persons[0])
    assert a.info["trainer"] == "trl.GRPOTrainer" and a.info["training"]["beta"] == 0.2
    assert a.info["reward"]["logged"] == 1 and a.info["reward"]["first"] <= 0
    assert json.loads((tmp_path / "pa" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_trainer_callbacks_see_every_step(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """Extra callbacks (the GPU suite's step timer) reach the trainer: one call per step."""
    from transformers import TrainerCallback

    from palign.train import GRPOTrainConfig, train_grpo

    class Count(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.end = 0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.begin += 1

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.end += 1

    ds = planted_dataset()
    cb = Count()
    cfg = GRPOTrainConfig(
        steps=2, batch=2, micro_batch=2, num_generations=2, max_new_tokens=3, select="none"
    )
    prompts = rl_prompts(tiny_lm.tokenizer, ds, ds.persons[0])
    res = train_grpo(tiny_lm, prompts, cfg, tmp_path / "a", progress=False, callbacks=[cb])
    assert cb.begin == cb.end == 2 and (res.folder / "adapter_config.json").is_file()


def test_bad_input(tiny_lm: LoadedModel, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(PalignError, match="unknown trainer option 'bogus'"):
        get_method("dpo", MethodConfig(options={"bogus": 1}))
    with pytest.raises(PalignError, match="multiple of micro_batch"):
        get_method("dpo", MethodConfig(options={"batch": 6, "micro_batch": 4}))
    with pytest.raises(PalignError, match="no PPO trainer.*--method grpo"):
        get_method("ppo")
    ds = planted_dataset()
    for name in ("dpo", "grpo"):
        m = get_method(name, MethodConfig("agreement", 0, {"steps": 1}))
        m.adapter_root = tmp_path
        with pytest.raises(PalignError, match="no non-neutral shown answer"):
            m.fit(tiny_lm, ds, ds.persons[1])
    # out of memory inside the trainer: one-line error, no adapter, base model restored
    import palign.train.dpo as dpo_mod

    real = dpo_mod.dpo_trainer_class()

    class OOM(real):  # type: ignore[misc,valid-type]
        def train(self, *a, **kw):  # noqa: ANN002,ANN003
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(dpo_mod, "dpo_trainer_class", lambda: OOM)
    m = get_method("dpo", MethodConfig("agreement", 0, dict(FAST)))
    m.adapter_root = tmp_path
    with pytest.raises(PalignError, match="out of memory while training dpo for person pa"):
        m.fit(tiny_lm, ds, ds.persons[0])
    assert list(tmp_path.iterdir()) == []
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(mod, BaseTunerLayer) for mod in tiny_lm.model.modules())


def test_cli_options_and_chat(
    dpo_run: dict[str, Any], tiny_folder: Path, papi_dir: Path, capsys, monkeypatch
) -> None:
    from palign.chat import AlignedModel
    from palign.cli import main

    argv = ["eval", "--method", "dpo", "--persons", "1", "--data", str(papi_dir)]
    assert main([*argv, "--train-option", "bogus=1", "--out", "/nonexistent/x"]) == 2
    assert "unknown trainer option 'bogus'" in capsys.readouterr().err
    assert main([*argv, "--train-option", "nokeyvalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["eval", "--method", "ppo", "--persons", "1", "--data", str(papi_dir)]) == 2
    assert "--method grpo" in capsys.readouterr().err
    # the trained adapter loads for chat/generate on its base model (tiny_folder = tiny_lm)
    folder = dpo_run["out"] / "adapters" / "pa"
    gen = ["generate", "--adapter", str(folder), "--model", str(tiny_folder), "Hello"]
    assert main([*gen, "--max-new-tokens", "5", "--format", "json"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    am = AlignedModel.from_adapter(folder, model=str(tiny_folder))
    assert am.system_prompt == NEUTRAL_SYSTEM_PROMPT
    assert am.generate("Hello", max_new_tokens=5) == text
    assert main([*gen, "--alpha", "2"]) == 2
    assert "LoRA adapter" in capsys.readouterr().err
    # interactive chat on the same adapter
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/quit\n"))
    chat = ["chat", "--adapter", str(folder), "--model", str(tiny_folder), "--max-new-tokens", "5"]
    assert main(chat) == 0
    io_out = capsys.readouterr()
    assert "aligned to person pa" in io_out.err and text in io_out.out
