"""Held-out step selection of the training baselines (early stopping on the shown items).

PAS chooses its steering strength on held-out *shown* items; the LoRA baselines choose their
number of optimiser steps the same way (``select="heldout"``, the default of
:class:`~palign.train.config.TrainConfig`):

1. :func:`heldout_split`: ``heldout_fraction`` of the person's answered shown items are held
   out: the first ones in the seeded hash order of their ids that PAS's alpha folds are dealt
   from (:func:`palign.steering.pas.seeded_item_order`, same ``--seed``). They are never
   trained on; the test items are never read here.
2. :func:`selection_callback`: after every ``eval_every`` optimiser steps (and after the last)
   the held-out items are read with the logits readout (option probabilities under the
   method's system prompt, argmax answer: the answer ``palign eval`` scores) and their mean
   absolute error is recorded; the LoRA weights of the best step so far are copied aside.
3. :meth:`StepSelection.restore`: after training the best step's LoRA weights are put back,
   so the saved adapter is exactly that checkpoint. Ties go to fewer steps. With ``patience``
   training stops after that many evaluations without a new best; ``steps`` (the paper's
   number) is the upper bound either way.

The record (:meth:`StepSelection.to_dict`: held-out items, the curve step -> error, the chosen
step) goes next to the adapter and into the person's results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from palign.data.types import Dataset, Person, Semantics
from palign.errors import PalignError

if TYPE_CHECKING:
    from palign.models.loading import LoadedModel
    from palign.train.config import TrainConfig

SCORE = "mean absolute error of the logits readout's argmax answers on the held-out items"
"""What the held-out curve measures (recorded with it)."""


def heldout_split(
    item_ids: Sequence[str], fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split answered shown items into (training, held-out), both in the given order.

    ``round(fraction * n)`` items are held out: the first in
    :func:`~palign.steering.pas.seeded_item_order` (a seeded hash of each id, the order PAS's
    alpha folds are dealt from), so an item's side depends on its id and the seed only.
    Raises :class:`PalignError` when either side would be empty.
    """
    from palign.steering.pas import seeded_item_order

    ids = list(item_ids)
    n_held = int(round(float(fraction) * len(ids)))
    if n_held < 1 or n_held >= len(ids):
        raise PalignError(
            f"--heldout-fraction {fraction} of {len(ids)} answered shown items leaves "
            f"{'no held-out item' if n_held < 1 else 'no item to train on'}; give a fraction "
            "that holds out at least one item and keeps one, or --train-select none"
        )
    held = {ids[i] for i in seeded_item_order(ids, seed)[:n_held]}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


@dataclass(frozen=True)
class HeldOut:
    """The held-out shown items of one person, as the readout asks them.

    Attributes:
        items: item ids.
        statements: their statements (in ``items`` order).
        answers: the person's answers 1..5 under the run's semantics.
        system_prompt: the method's system prompt (the prompt its readout uses).
    """

    items: tuple[str, ...]
    statements: tuple[str, ...]
    answers: tuple[int, ...]
    system_prompt: str | None


def heldout_set(
    dataset: Dataset,
    person: Person,
    items: Sequence[str],
    semantics: Semantics = "agreement",
    system_prompt: str | None = None,
) -> HeldOut:
    """The :class:`HeldOut` of ``items`` (shown items the person answered)."""
    inv = dataset.inventory
    shown = set(inv.shown_ids)
    bad = [i for i in items if i not in shown]
    if bad:
        raise PalignError(f"item {bad[0]} is not a shown item; only shown items are held out")
    answers = person.answers(inv, semantics, list(items))
    missing = [i for i in items if i not in answers]
    if missing:
        raise PalignError(f"person {person.id} did not answer held-out item {missing[0]}")
    return HeldOut(
        tuple(items),
        tuple(inv.statement(inv.item(i)) for i in items),
        tuple(int(answers[i]) for i in items),
        system_prompt,
    )


def heldout_error(lm: LoadedModel, held: HeldOut, batch_size: int = 16) -> float:
    """Mean absolute error of ``lm``'s argmax answers (logits readout) on ``held``.

    Reads ``lm.model`` as it is (with a LoRA adapter injected, the adapter's forward), in
    eval mode; the model's training flag is restored afterwards.
    """
    from palign.models.readout import ReadRequest, option_probs

    model = lm.model
    training = model.training
    model.eval()
    try:
        reqs = [ReadRequest(held.system_prompt, st) for st in held.statements]
        out = option_probs(lm, reqs, batch_size=batch_size)
    finally:
        model.train(training)
    truth = np.asarray(held.answers, dtype=np.float64)
    return float(np.abs(out.answers.astype(np.float64) - truth).mean())


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the LoRA parameters of ``model`` (names containing ``lora_``)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def load_lora_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`lora_state`) back into the LoRA parameters of ``model``."""
    params = dict(model.named_parameters())
    if set(state) != {n for n in params if "lora_" in n}:
        raise PalignError("the LoRA parameters changed during training; cannot restore a step")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


@dataclass
class StepSelection:
    """The held-out selection of one training run (filled by :func:`selection_callback`).

    Attributes:
        held: the held-out items.
        n_train_items: shown items the trainer gets (DPO: the non-neutral ones).
        fraction: ``heldout_fraction`` of the configuration.
        eval_steps: the steps the held-out items are read after.
        patience: evaluations without a new best before stopping (0 = never).
        curve: (step, held-out error) per evaluation, in step order.
        best_step: the chosen step (fewest steps among the minimal errors); 0 before any.
        best_error: its held-out error.
        best_state: copies of the LoRA weights at ``best_step``.
        stopped_at: the last step trained (``steps`` unless stopped by ``patience``).
    """

    held: HeldOut
    n_train_items: int
    fraction: float
    eval_steps: list[int]
    patience: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    best_error: float = float("inf")
    best_state: dict[str, torch.Tensor] | None = None
    stopped_at: int = 0
    _since_best: int = 0

    def observe(self, step: int, error: float, model: torch.nn.Module) -> bool:
        """Record ``error`` at ``step`` (copying the weights if it is a new best); returns
        whether training should stop (``patience`` evaluations without a new best)."""
        self.curve.append((int(step), float(error)))
        self.stopped_at = int(step)
        if error < self.best_error:  # strict: a tie keeps the earlier (fewer steps) one
            self.best_step, self.best_error = int(step), float(error)
            self.best_state = lora_state(model)
            self._since_best = 0
            return False
        self._since_best += 1
        return bool(self.patience) and self._since_best >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Put the best step's LoRA weights back into ``model``."""
        if self.best_state is None:
            raise PalignError(
                "no held-out evaluation ran; nothing to select (training ended early)"
            )
        load_lora_state(model, self.best_state)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: rule, held-out items, the curve and the chosen step."""
        return {
            "rule": "heldout",
            "score": SCORE,
            "heldout_fraction": self.fraction,
            "heldout_items": list(self.held.items),
            "n_heldout": len(self.held.items),
            "n_train_items": self.n_train_items,
            "eval_steps": list(self.eval_steps),
            "patience": self.patience,
            "curve": [[s, e] for s, e in self.curve],
            "chosen_step": self.best_step,
            "heldout_error": self.best_error,
            "stopped_at": self.stopped_at,
        }


def new_selection(cfg: TrainConfig, held: HeldOut, n_train_items: int) -> StepSelection:
    """A :class:`StepSelection` for a run of ``cfg`` on ``held``."""
    return StepSelection(
        held=held,
        n_train_items=n_train_items,
        fraction=cfg.heldout_fraction,
        eval_steps=cfg.eval_steps(),
        patience=cfg.patience,
    )


def selection_callback(lm: LoadedModel, selection: StepSelection) -> Any:
    """A ``TrainerCallback`` reading the held-out items after each of
    ``selection.eval_steps`` (on ``lm.model``, where PEFT injected the adapter being trained)
    and stopping the trainer when ``patience`` runs out."""
    from transformers import TrainerCallback

    steps = set(selection.eval_steps)

    class _Select(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step in steps:
                err = heldout_error(lm, selection.held)
                if selection.observe(state.global_step, err, lm.model):
                    control.should_training_stop = True
            return control

    return _Select()


def check_selection(cfg: TrainConfig, heldout: HeldOut | None) -> None:
    """Refuse ``select="heldout"`` without held-out items (one line naming the fix)."""
    if cfg.select == "heldout" and heldout is None:
        raise PalignError(
            "select='heldout' needs the held-out items: pass heldout= (palign.train.heldout_set "
            "of the items palign.train.heldout_split holds out, left out of the training "
            "examples) or set select='none'"
        )
    if cfg.select == "none" and heldout is not None:
        raise PalignError("held-out items given with select='none'; drop heldout= or select it")


__all__ = [
    "SCORE",
    "HeldOut",
    "StepSelection",
    "check_selection",
    "heldout_error",
    "heldout_set",
    "heldout_split",
    "load_lora_state",
    "lora_state",
    "new_selection",
    "selection_callback",
]
