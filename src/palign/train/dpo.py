"""Per-person DPO with ``trl.DPOTrainer`` and a PEFT LoRA adapter (the frozen base is the
reference model: TRL disables the adapter for the reference log-probabilities)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palign.train.config import DPOTrainConfig
from palign.train.data import PreferencePair, dpo_rows
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


@dataclass
class TrainResult:
    """What one person's training produced.

    Attributes:
        folder: the saved adapter folder.
        seconds: wall-clock seconds of the training (data preparation and saving included).
        loss: :func:`palign.train.lora.loss_summary` of the logged training loss.
        history: the trainer's full log history.
        n_examples: training examples (pairs or prompts).
        items: the shown item ids trained on.
        selection: the held-out step selection (:meth:`palign.train.select.StepSelection.
            to_dict`: held-out items, curve, chosen step); None with ``select="none"``.
    """

    folder: Path
    seconds: float
    loss: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    n_examples: int = 0
    items: list[str] = field(default_factory=list)
    selection: dict[str, Any] | None = None


def dpo_trainer_class() -> type:
    """``trl.DPOTrainer`` (a function, so tests can spy on what it is given)."""
    from trl import DPOTrainer

    return DPOTrainer


def train_dpo(
    lm: LoadedModel,
    pairs: list[PreferencePair],
    cfg: DPOTrainConfig,
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
    """Train one LoRA adapter with DPO on ``pairs`` and save it to ``folder`` (atomically).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (e.g. step timers).
    ``project_persons``: on CPU, warn after the first optimiser step when this many persons'
    training projects past an hour (:func:`~palign.train.lora.projection_callback`); 0 = no
    projection.
    ``heldout``: the held-out shown items (:func:`palign.train.select.heldout_set`), required
    with ``cfg.select == "heldout"``: read every ``cfg.eval_every`` steps, and the adapter of
    the best step is the one saved (:mod:`palign.train.select`).
    """
    from datasets import Dataset as HFDataset
    from trl import DPOConfig

    check_selection(cfg, heldout)
    rows = dpo_rows(lm.tokenizer, pairs)
    holder: dict[str, Any] = {}
    sel = new_selection(cfg, heldout, len({p.item for p in pairs})) if heldout is not None else None

    def train() -> None:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="palign-dpo-") as tmp, quiet_libraries(progress):
            args = DPOConfig(
                **trainer_common_args(cfg, lm, seed, tmp),
                beta=cfg.beta,
                max_length=cfg.max_length,
                precompute_ref_log_probs=cfg.precompute_ref,
                precompute_ref_batch_size=cfg.micro_batch,
            )
            with lora_training(lm, seed):
                trainer = dpo_trainer_class()(
                    model=lm.model,
                    peft_config=lora_config(cfg),
                    ref_model=None,
                    args=args,
                    train_dataset=HFDataset.from_list(rows),
                    processing_class=lm.tokenizer,
                    callbacks=[
                        progress_callback(f"dpo {person}", cfg.steps, progress),
                        *projection_callbacks("dpo", cfg, lm, project_persons),
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
                        "n_pairs": len(pairs),
                        "seconds": round(time.perf_counter() - t0, 2),
                        "selection": sel.to_dict() if sel is not None else None,
                    },
                )
                holder["history"] = history

    _, seconds = run_training(train, "dpo", person, cfg)
    history = holder["history"]
    return TrainResult(
        Path(folder),
        seconds,
        loss_summary(history),
        history,
        len(pairs),
        [p.item for p in pairs],
        sel.to_dict() if sel is not None else None,
    )
