"""Training configurations of the per-person LoRA baselines (paper-like defaults).

Every field can be overridden through the method options (``MethodConfig.options``, the CLI's
``--train-*`` flags or ``--train-option KEY=VALUE``); the full configuration, defaults
included, is recorded in results files and next to each adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from palign.errors import PalignError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""LoRA target modules: the attention projections (Llama/Qwen/Gemma naming)."""

COMPLETIONS = ("option", "letter")
"""DPO completion forms (see :attr:`DPOTrainConfig.completion`)."""

SELECTIONS = ("heldout", "none")
"""Step selection rules (see :attr:`TrainConfig.select`)."""

AUTO_EVALUATIONS = 5
"""Held-out evaluations of a run when ``eval_every`` is 0 (auto): every ``ceil(steps / 5)``."""


@dataclass
class TrainConfig:
    """Options shared by the LoRA trainers.

    Attributes:
        steps: optimiser steps per person.
        lr: peak learning rate.
        batch: effective batch (examples per optimiser step).
        micro_batch: examples per forward (gradient accumulation = batch / micro_batch).
        warmup_ratio: linear warm-up share of the steps (then linear decay).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scaling alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_targets: comma-separated module names LoRA is applied to.
        logging_steps: record the loss every this many steps.
        select: step selection: ``heldout`` (default) holds out ``heldout_fraction`` of the
            person's answered shown items (never trained on), reads their error every
            ``eval_every`` steps and keeps the adapter of the best step (ties: fewer steps);
            ``none`` trains on all shown items and keeps the last step.
        heldout_fraction: share of the answered shown items held out (``select=heldout``).
        eval_every: evaluate the held-out items every this many optimiser steps (and at the
            last step); 0 = auto, ``ceil(steps / 5)`` (5 evaluations).
        patience: stop after this many evaluations without a new best (0 = run all
            ``steps``; ``steps`` stays the upper bound either way).
    """

    steps: int = 250
    lr: float = 5e-4
    batch: int = 16
    micro_batch: int = 16
    warmup_ratio: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 100
    lora_dropout: float = 0.05
    lora_targets: str = ",".join(LORA_TARGETS)
    logging_steps: int = 1
    select: str = "heldout"
    heldout_fraction: float = 0.2
    eval_every: int = 0
    patience: int = 0

    @property
    def grad_accum(self) -> int:
        """Gradient accumulation steps."""
        return self.batch // self.micro_batch

    def eval_interval(self) -> int:
        """Optimiser steps between held-out evaluations (``eval_every``, or auto)."""
        if self.eval_every > 0:
            return min(self.eval_every, self.steps)
        return max(1, -(-self.steps // AUTO_EVALUATIONS))

    def eval_steps(self) -> list[int]:
        """The optimiser steps after which the held-out items are read (the last included)."""
        k = self.eval_interval()
        out = list(range(k, self.steps + 1, k))
        if not out or out[-1] != self.steps:
            out.append(self.steps)
        return out

    def check(self) -> None:
        """Raise a one-line :class:`PalignError` for inconsistent values."""
        for name in ("steps", "batch", "micro_batch", "lora_r", "logging_steps"):
            if getattr(self, name) < 1:
                raise PalignError(
                    f"trainer option {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise PalignError(f"trainer option lr must be positive, got {self.lr}")
        if self.batch % self.micro_batch:
            raise PalignError(
                f"trainer option batch ({self.batch}) must be a multiple of micro_batch "
                f"({self.micro_batch})"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise PalignError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise PalignError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.targets():
            raise PalignError("lora_targets is empty; give module names like q_proj,v_proj")
        if self.select not in SELECTIONS:
            raise PalignError(
                f"unknown step selection {self.select!r}; use --train-select "
                f"{' or '.join(SELECTIONS)}"
            )
        if not 0 < self.heldout_fraction < 1:
            raise PalignError(
                f"--heldout-fraction must be in (0, 1), got {self.heldout_fraction}; e.g. 0.2, "
                "or --train-select none to train on every shown item"
            )
        for name in ("eval_every", "patience"):
            if getattr(self, name) < 0:
                raise PalignError(
                    f"trainer option {name} must be at least 0, got {getattr(self, name)}"
                )

    def targets(self) -> list[str]:
        """LoRA target module names."""
        return [t.strip() for t in str(self.lora_targets).split(",") if t.strip()]

    def to_dict(self) -> dict[str, Any]:
        """All fields plus the derived gradient accumulation."""
        return {**asdict(self), "grad_accum": self.grad_accum}


@dataclass
class DPOTrainConfig(TrainConfig):
    """DPO (``trl.DPOTrainer``): paper-like defaults lr 5e-4, 250 steps, batch 16, beta 0.1.

    Attributes:
        beta: DPO temperature (strength of the implicit KL to the frozen base).
        max_length: truncate prompt + completion to this many tokens (None = no truncation).
        completion: what follows the prompt's ``"Option ("``: ``option`` (letter and option
            text, ``"B). Moderately Accurate"``) or ``letter`` (``"B"`` alone: all of the
            preference margin on the token the logits readout reads).
        precompute_ref: compute the frozen base's log-probabilities of all pairs once before
            training (same numbers, one reference forward per pair instead of one per step).
    """

    beta: float = 0.1
    max_length: int | None = None
    completion: str = "option"
    precompute_ref: bool = True

    def check(self) -> None:
        """Validate (see :meth:`TrainConfig.check`)."""
        super().check()
        if self.beta <= 0:
            raise PalignError(f"trainer option beta must be positive, got {self.beta}")
        if self.completion not in COMPLETIONS:
            raise PalignError(
                f"unknown completion {self.completion!r}; use one of: {', '.join(COMPLETIONS)}"
            )


@dataclass
class GRPOTrainConfig(TrainConfig):
    """GRPO (``trl.GRPOTrainer``) as close to the paper's PPO as TRL 1.x allows.

    From the paper: ``batch`` 16 completions per step, 250 steps, ``beta`` 0.2 (the paper's
    PPO started an *adaptive* KL controller at 0.2; GRPO keeps it fixed), 15 new tokens, and
    the reward of its appendix ("The reward function of PPO": ``-|score difference|``, -6 when
    the response matches no option). palign's choices where the paper's setting does not carry
    over: ``lr`` 1e-4 (the paper's 1.41e-5 is TRL's PPO default for full fine-tuning; a LoRA
    adapter starting at zero needs a larger step, as DPO's 5e-4 here; ``--train-lr 1.41e-5``
    restores it) and ``num_iterations`` 4 (each generated batch is optimised 4 times with the
    clipped ratio objective, as PPO's 4 epochs per batch, TRL's ``num_ppo_epochs`` default;
    with 1 the ratio is always 1 and the clip never acts).

    Attributes:
        beta: KL coefficient to the frozen base.
        num_generations: completions per prompt (the group whose rewards are normalised).
        num_iterations: optimisation passes over each generated batch (PPO epochs).
        max_new_tokens: completion length.
        temperature: sampling temperature of the completions.
        unparsed_penalty: reward of a completion with no parseable answer.
    """

    lr: float = 1e-4
    beta: float = 0.2
    num_generations: int = 8
    num_iterations: int = 4
    max_new_tokens: int = 15
    temperature: float = 1.0
    unparsed_penalty: float = -6.0

    def check(self) -> None:
        """Validate (see :meth:`TrainConfig.check`)."""
        super().check()
        if self.num_generations < 2:
            raise PalignError("num_generations must be at least 2 (GRPO compares a group)")
        n = self.num_generations
        for name, flag in (("batch", "--train-batch"), ("micro_batch", "--train-micro-batch")):
            v = getattr(self, name)
            if v % n:
                fits = [g for g in range(min(v, n - 1), 1, -1) if v % g == 0]
                alt = (
                    f", or fewer completions per prompt with --train-option "
                    f"num_generations={fits[0]}"
                    if fits
                    else ""
                )
                raise PalignError(
                    f"{flag} {v} ({name}) is not a whole number of GRPO groups of "
                    f"num_generations={n} completions per prompt; give {flag} {n} (or a "
                    f"multiple of {n}){alt}"
                )
        if self.max_new_tokens < 1:
            raise PalignError("max_new_tokens must be at least 1")
        if self.num_iterations < 1:
            raise PalignError(f"num_iterations must be at least 1, got {self.num_iterations}")
        if self.beta < 0:
            raise PalignError(f"beta must be at least 0, got {self.beta}")


C = TypeVar("C", bound=TrainConfig)


def _cast(name: str, value: Any, default: Any) -> Any:
    if value is None:
        return None
    try:
        if isinstance(default, bool):
            return (
                str(value).lower() in ("1", "true", "yes")
                if isinstance(value, str)
                else bool(value)
            )
        if isinstance(default, int) or name == "max_length":
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise PalignError(f"trainer option {name}={value!r} is not a number") from None
    return str(value)


PAS_OPTIONS = {
    "k": "--k",
    "alpha": "--alpha",
    "alpha_grid": "--alpha-grid",
    "alpha_selection": "--alpha-selection",
    "folds": "--folds",
    "steer_position": "--steer-position",
    "head_rank": "--head-rank",
    "probe_split": "--probe-split",
    "o_proj_path": "--o-proj-path",
}
"""PAS's method options and their flags (refused by the training baselines with that reason)."""


def config_from_options(cls: type[C], options: dict[str, Any], method: str) -> C:
    """Build ``cls`` from method options; unknown keys raise a one-line :class:`PalignError`
    (PAS's options are named as such: a LoRA adapter has no steering strength or heads)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(k for k in options if k not in known)
    pas = [k for k in unknown if k in PAS_OPTIONS]
    if pas:
        raise PalignError(
            f"{PAS_OPTIONS[pas[0]]} is an option of PAS (pas, pas+few-shot), not of {method}, "
            f"which trains a LoRA adapter; drop {PAS_OPTIONS[pas[0]]} or use --method pas"
        )
    if unknown:
        raise PalignError(
            f"unknown trainer option {unknown[0]!r} for {method}; use one of: {', '.join(known)}"
        )
    defaults = cls()
    kw = {k: _cast(k, v, getattr(defaults, k)) for k, v in options.items()}
    cfg = cls(**kw)
    cfg.check()
    return cfg


def option_names(cls: type[TrainConfig]) -> list[str]:
    """The option keys ``cls`` accepts."""
    return [f.name for f in fields(cls)]


__all__ = [
    "AUTO_EVALUATIONS",
    "LORA_TARGETS",
    "SELECTIONS",
    "DPOTrainConfig",
    "GRPOTrainConfig",
    "TrainConfig",
    "config_from_options",
    "option_names",
]
