"""``grpo``: per-person GRPO (``trl.GRPOTrainer``) of a LoRA adapter with the PPO rule reward.

The installed TRL has no PPO trainer (see :mod:`palign.methods.ppo`); this is the RL baseline
instead, named for what it is. Reward: ``-|parsed answer - person's answer|`` on 15 generated
tokens, -6 when nothing parses (the paper's PPO appendix). Defaults from the paper's PPO where
they carry over (batch 16, 250 steps, KL coefficient 0.2), 8 completions per prompt, 4
optimisation passes per generated batch (the clipped objective acts), lr 1e-4 for the LoRA
adapter (:class:`palign.train.config.GRPOTrainConfig`).
"""

from __future__ import annotations

from typing import Any

from palign.data.types import Dataset, Person
from palign.methods.base import register
from palign.models.loading import LoadedModel
from palign.train.config import GRPOTrainConfig
from palign.train.data import rl_prompts
from palign.train.method import LoRATrainingMethod


@register
class GRPO(LoRATrainingMethod):
    """GRPO of one LoRA adapter per person with the rule reward."""

    name = "grpo"
    description = "per-person GRPO of a LoRA adapter, reward -|answer error| (TRL + PEFT)"
    config_class = GRPOTrainConfig
    trainer_name = "trl.GRPOTrainer"

    def examples(
        self,
        lm: LoadedModel,
        dataset: Dataset,
        person: Person,
        items: list[str] | None = None,
    ) -> list[Any]:
        """Generate-readout prompts of the person's answered shown items."""
        return rl_prompts(
            lm.tokenizer, dataset, person, self.config.semantics, self.system_prompt, items
        )

    def trainer(self) -> Any:
        """:func:`palign.train.grpo.train_grpo`."""
        from palign.train.grpo import train_grpo

        return train_grpo
