"""Clear errors where users of the training baselines trip (issue #23, item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from palign.cli import main
from palign.errors import PalignError
from palign.methods import MethodConfig, get_method
from palign.models.loading import LoadedModel
from tests.test_train import FAST, planted_dataset


def test_grpo_batch_not_a_whole_group_names_the_flags(papi_dir: Path, capsys) -> None:
    with pytest.raises(PalignError, match=r"--train-batch 4 \(batch\) is not a whole number"):
        get_method("grpo", MethodConfig(options={"batch": 4, "micro_batch": 4}))
    argv = ["eval", "--method", "grpo", "--persons", "1", "--data", str(papi_dir)]
    assert main([*argv, "--train-batch", "4", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "give --train-batch 8 (or a multiple of 8)" in err
    assert "--train-option num_generations=4" in err and "Traceback" not in err
    # a micro-batch that splits a group names its own flag
    with pytest.raises(PalignError, match="--train-micro-batch 4 .*give --train-micro-batch 8"):
        get_method("grpo", MethodConfig(options={"batch": 16, "micro_batch": 4}))
    get_method("grpo", MethodConfig(options={"batch": 4, "micro_batch": 4, "num_generations": 4}))


def test_pas_option_with_dpo_says_whose_option_it_is(papi_dir: Path, capsys) -> None:
    argv = ["eval", "--method", "dpo", "--persons", "1", "--data", str(papi_dir)]
    assert main([*argv, "--alpha", "4", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "--alpha is an option of PAS (pas, pas+few-shot), not of dpo" in err
    assert "drop --alpha" in err
    assert main([*argv, "--k", "8", "--out", "/nonexistent/x"]) == 2
    assert "--k is an option of PAS" in capsys.readouterr().err


def test_cpu_run_projected_past_an_hour_warns(tiny_lm: LoadedModel, tmp_path: Path, capfd) -> None:
    """The first optimiser step is timed; steps x persons projected past an hour warn once."""
    ds = planted_dataset()
    opts = {**FAST, "steps": 1}
    m = get_method("dpo", MethodConfig("agreement", 0, opts))
    m.adapter_root = tmp_path / "a"
    m.progress = False
    m.persons_planned = 10**9  # any measurable step projects past an hour
    m.fit(tiny_lm, ds, ds.persons[0])
    err = capfd.readouterr().err
    assert "palign: warning: dpo on CPU: the first optimiser step took" in err
    assert "1 steps x 1000000000 persons project to about" in err
    # once per run: the next person is not projected again
    (tmp_path / "a" / "pa" / "palign_train.json").unlink()
    m.fit(tiny_lm, ds, ds.persons[0])
    assert "project to about" not in capfd.readouterr().err
    # a short run stays quiet
    m2 = get_method("dpo", MethodConfig("agreement", 0, opts))
    m2.adapter_root = tmp_path / "b"
    m2.progress = False
    m2.fit(tiny_lm, ds, ds.persons[0])
    assert "project to about" not in capfd.readouterr().err


def test_grpo_recipe_follows_the_papers_ppo(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """GRPO gets several passes per generated batch (the clipped ratio objective acts), the
    paper's unparsed reward -6 and a LoRA learning rate (issue #23, item 9); checked on what
    TRL's trainer is given (its training is stopped before the first step)."""
    import palign.train.grpo as grpo_mod

    seen: dict = {}

    class Stop(Exception):
        pass

    real = grpo_mod.grpo_trainer_class()

    class Spy(real):  # type: ignore[misc,valid-type]
        def train(self, *a, **kw):  # noqa: ANN002,ANN003
            seen["args"] = self.args
            seen["reward"] = self.reward_funcs[0]
            raise Stop

    ds = planted_dataset()
    m = get_method("grpo", MethodConfig("agreement", 0, {"batch": 8, "micro_batch": 8}))
    m.adapter_root = tmp_path
    m.progress = False
    orig = grpo_mod.grpo_trainer_class
    grpo_mod.grpo_trainer_class = lambda: Spy
    try:
        with pytest.raises(Stop):
            m.fit(tiny_lm, ds, ds.persons[0])
    finally:
        grpo_mod.grpo_trainer_class = orig
    args = seen["args"]
    assert args.num_iterations == 4 and args.learning_rate == 1e-4 and args.beta == 0.2
    got = seen["reward"](["I cannot say.", "(A). Very Accurate", " (E)"], answer=[5, 5, 5])
    assert got == [-6.0, 0.0, -4.0]
    assert m.record()["training"]["unparsed_penalty"] == -6.0
    with pytest.raises(PalignError, match="num_iterations must be at least 1"):
        get_method("grpo", MethodConfig(options={"num_iterations": 0}))
