"""Per-person GRPO with ``trl.GRPOTrainer`` and a PEFT LoRA adapter.

The installed TRL (1.x) ships no PPO trainer, so the RL baseline is GRPO with the rule reward
of the paper's PPO appendix (``-|parsed answer - person's answer|``, -6 when nothing parses),
several optimisation passes per generated batch so the clipped ratio objective acts, and the
paper's PPO hyper-parameters where they carry over (see
:class:`~palign.train.config.GRPOTrainConfig`). Results name it
``grpo``, never PPO. The KL term's reference is the frozen base (adapter disabled).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palign.train.config import GRPOTrainConfig
from palign.train.data import RLPrompt, answer_reward, grpo_rows
from palign.train.dpo import TrainResult
from palign.train.lora import (
    drop_printer,
    lora_config,
    lora_training,
    loss_summary,
    progress_callback,
    projection_callbacks,
    quiet_libraries,
    run_training,
    save_lora,
    trainer_common_args,
)
from palign.train.select import HeldOut, check_selection, new_selection, selection_callback

if TYPE_CHECKING:
    from palign.models.loading import LoadedModel


def grpo_trainer_class() -> type:
    """``trl.GRPOTrainer`` (a function, so tests can spy on what it is given)."""
    from trl import GRPOTrainer

    return GRPOTrainer


def train_grpo(
    lm: LoadedModel,
    prompts: list[RLPrompt],
    cfg: GRPOTrainConfig,
    folder: str | Path,
    *,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    person: str = "",
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    project_persons: int = 0,
    heldout: HeldOut | None = None,
) -> TrainResult:
    """Train one LoRA adapter with GRPO on ``prompts`` and save it to ``folder`` (atomically).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (e.g. step timers).
    ``project_persons``: on CPU, warn after the first optimiser step when this many persons'
    training projects past an hour (:func:`~palign.train.lora.projection_callback`); 0 = no
    projection.
    ``heldout``: the held-out shown items (:func:`palign.train.select.heldout_set`), required
    with ``cfg.select == "heldout"``: read every ``cfg.eval_every`` steps, and the adapter of
    the best step is the one saved (:mod:`palign.train.select`).
    """
    from datasets import Dataset as HFDataset
    from trl import GRPOConfig

    check_selection(cfg, heldout)
    rows = grpo_rows(lm.tokenizer, prompts)
    holder: dict[str, Any] = {}
    sel = (
        new_selection(cfg, heldout, len({p.item for p in prompts})) if heldout is not None else None
    )

    def reward(completions: list[Any], answer: list[int], **_: Any) -> list[float]:
        return answer_reward(completions, answer, cfg.unparsed_penalty)

    reward.__name__ = "answer_reward"

    def train() -> None:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="palign-grpo-") as tmp, quiet_libraries(progress):
            pad = lm.tokenizer.pad_token_id
            args = GRPOConfig(
                **trainer_common_args(cfg, lm, seed, tmp),
                beta=cfg.beta,
                num_generations=cfg.num_generations,
                num_iterations=cfg.num_iterations,
                max_completion_length=cfg.max_new_tokens,
                temperature=cfg.temperature,
                generation_kwargs={"pad_token_id": pad} if pad is not None else None,
            )
            with lora_training(lm, seed):
                trainer = grpo_trainer_class()(
                    model=lm.model,
                    peft_config=lora_config(cfg),
                    reward_funcs=reward,
                    args=args,
                    train_dataset=HFDataset.from_list(rows),
                    processing_class=lm.tokenizer,
                    callbacks=[
                        progress_callback(f"grpo {person}", cfg.steps, progress, "reward"),
                        *projection_callbacks("grpo", cfg, lm, project_persons),
                        *callbacks,
                        # last: its reads stay out of the step timers above
                        *([selection_callback(lm, sel)] if sel is not None else []),
                    ],
                )
                drop_printer(trainer)
                trainer.train()
                history = list(trainer.state.log_history)
                model = trainer.accelerator.unwrap_model(trainer.model)
                if sel is not None:
                    sel.restore(lm.model)
                save_lora(
                    model,
                    Path(folder),
                    {
                        **(meta or {}),
                        "loss": loss_summary(history),
                        "reward": loss_summary(history, "reward"),
                        "n_prompts": len(prompts),
                        "seconds": round(time.perf_counter() - t0, 2),
                        "selection": sel.to_dict() if sel is not None else None,
                    },
                )
                holder["history"] = history

    _, seconds = run_training(train, "grpo", person, cfg)
    history = holder["history"]
    return TrainResult(
        Path(folder),
        seconds,
        loss_summary(history),
        history,
        len(prompts),
        [p.item for p in prompts],
        sel.to_dict() if sel is not None else None,
    )
