"""Per-person training baselines (DPO, GRPO) with TRL and PEFT LoRA adapters.

Usable without the CLI::

    from palign.train import DPOTrainConfig, dpo_pairs, train_dpo
    pairs = dpo_pairs(lm.tokenizer, dataset, person)            # shown items only
    res = train_dpo(lm, pairs, DPOTrainConfig(steps=50), "adapters/172481")

The methods ``dpo`` and ``grpo`` (:mod:`palign.methods.dpo`, :mod:`palign.methods.grpo`) run
these per person inside ``palign eval``. Needs the ``train`` extra (``trl``, ``peft``).
"""

from palign.train.config import DPOTrainConfig, GRPOTrainConfig, TrainConfig, config_from_options
from palign.train.data import (
    answer_reward,
    dpo_pairs,
    dpo_rows,
    grpo_rows,
    option_completion,
    rl_prompts,
    trainer_text,
)
from palign.train.dpo import TrainResult, train_dpo
from palign.train.grpo import train_grpo
from palign.train.lora import PALIGN_META, active_lora, is_lora_folder, load_lora_model

__all__ = [
    "PALIGN_META",
    "DPOTrainConfig",
    "GRPOTrainConfig",
    "TrainConfig",
    "TrainResult",
    "active_lora",
    "answer_reward",
    "config_from_options",
    "dpo_pairs",
    "dpo_rows",
    "grpo_rows",
    "is_lora_folder",
    "load_lora_model",
    "option_completion",
    "rl_prompts",
    "train_dpo",
    "train_grpo",
    "trainer_text",
]
