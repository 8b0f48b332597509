"""Per-person training baselines (DPO, GRPO) with TRL and PEFT LoRA adapters.

Usable without the CLI::

    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT as SYS
    from palign.train import (
        DPOTrainConfig, dpo_pairs, heldout_set, heldout_split, shown_answers, train_dpo,
    )
    answered = list(shown_answers(dataset, person, "agreement"))
    train_ids, held_ids = heldout_split(answered, 0.2, seed=0)    # held out: never trained on
    pairs = dpo_pairs(lm.tokenizer, dataset, person, system_prompt=SYS, items=train_ids)
    held = heldout_set(dataset, person, held_ids, system_prompt=SYS)
    res = train_dpo(lm, pairs, DPOTrainConfig(steps=50), "adapters/172481", heldout=held)
    res.selection["chosen_step"], res.selection["curve"]

or ``DPOTrainConfig(steps=50, select="none")`` without held-out items (every shown item
trains, the last step is kept).

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
    shown_answers,
    trainer_text,
)
from palign.train.dpo import TrainResult, train_dpo
from palign.train.grpo import train_grpo
from palign.train.lora import PALIGN_META, active_lora, is_lora_folder, load_lora_model
from palign.train.select import HeldOut, StepSelection, heldout_error, heldout_set, heldout_split

__all__ = [
    "PALIGN_META",
    "DPOTrainConfig",
    "GRPOTrainConfig",
    "HeldOut",
    "StepSelection",
    "TrainConfig",
    "TrainResult",
    "active_lora",
    "answer_reward",
    "config_from_options",
    "dpo_pairs",
    "dpo_rows",
    "grpo_rows",
    "heldout_error",
    "heldout_set",
    "heldout_split",
    "is_lora_folder",
    "load_lora_model",
    "option_completion",
    "rl_prompts",
    "shown_answers",
    "train_dpo",
    "train_grpo",
    "trainer_text",
]
