"""Alignment methods, one module each, behind :class:`~palign.methods.base.Method`."""

from palign.methods import few_shot, personality_prompt, vanilla  # noqa: E402,F401  (registration)
from palign.methods.base import METHODS, Aligned, Method, MethodConfig, get_method, register

try:  # PAS needs the steering layer
    from palign.methods import calibrated, pas  # noqa: F401
except ImportError:  # pragma: no cover - only while steering is being built
    pass

try:  # training baselines need the train extra (trl, peft) only when they run
    from palign.methods import dpo, grpo, ppo  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = ["METHODS", "Aligned", "Method", "MethodConfig", "get_method", "register"]
