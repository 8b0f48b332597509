"""``dpo``: per-person DPO (``trl.DPOTrainer``) of a LoRA adapter on the shown items.

Pairs: chosen = the option matching the person's answer, rejected = the mirrored option
(``6 - v``), neutral answers dropped (:func:`palign.train.data.dpo_pairs`). Paper-like
defaults (LoRA r 16, alpha 100 on q/k/v/o, lr 5e-4, 250 steps, batch 16, beta 0.1, 10%
warm-up); every option is overridable and recorded (:class:`palign.train.config.DPOTrainConfig`).
"""

from __future__ import annotations

from typing import Any

from palign.data.types import Dataset, Person
from palign.methods.base import register
from palign.models.loading import LoadedModel
from palign.train.config import DPOTrainConfig
from palign.train.data import dpo_pairs
from palign.train.method import LoRATrainingMethod


@register
class DPO(LoRATrainingMethod):
    """DPO of one LoRA adapter per person (the frozen base is the reference model)."""

    name = "dpo"
    description = "per-person DPO of a LoRA adapter on the shown items (TRL + PEFT)"
    config_class = DPOTrainConfig
    trainer_name = "trl.DPOTrainer"

    def examples(
        self,
        lm: LoadedModel,
        dataset: Dataset,
        person: Person,
        items: list[str] | None = None,
    ) -> list[Any]:
        """Preference pairs of the person's non-neutral shown answers."""
        cfg = self.train_config
        return dpo_pairs(
            lm.tokenizer,
            dataset,
            person,
            self.config.semantics,
            self.system_prompt,
            cfg.completion,  # type: ignore[attr-defined]
            items,
        )

    def trainer(self) -> Any:
        """:func:`palign.train.dpo.train_dpo`."""
        from palign.train.dpo import train_dpo

        return train_dpo
