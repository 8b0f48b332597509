"""``ppo``: the paper's PPO baseline, where the installed TRL provides a PPO trainer.

TRL 1.x (the version palign pins) removed its PPO trainer; there is neither ``trl.PPOTrainer``
nor ``trl.experimental.ppo``. Rather than re-implementing PPO by hand (the issue asks for no
hand-written trainers) or calling GRPO "PPO", ``--method ppo`` stops with a one-line error
that names ``--method grpo`` (same rule reward, the paper's PPO settings where they carry over).
"""

from __future__ import annotations

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.methods.base import Aligned, Method, MethodConfig, register
from palign.models.loading import LoadedModel


def trl_ppo_available() -> bool:
    """Whether the installed TRL ships a PPO trainer."""
    try:
        import trl
    except ImportError:
        return False
    if hasattr(trl, "PPOTrainer"):
        return True
    try:
        import trl.experimental.ppo  # noqa: F401
    except ImportError:
        return False
    return True


def no_ppo_error() -> PalignError:
    """The one-line error for ``--method ppo`` without a TRL PPO trainer."""
    try:
        import trl

        version = trl.__version__
    except ImportError:
        version = "not installed"
    return PalignError(
        f"the installed TRL ({version}) ships no PPO trainer; use --method grpo (TRL's "
        "GRPOTrainer with the same rule reward and the paper's PPO settings)"
    )


@register
class PPO(Method):
    """Placeholder name that explains why PPO is unavailable (never trains anything)."""

    name = "ppo"
    description = "unavailable with TRL 1.x (no PPO trainer): use grpo"

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        raise no_ppo_error()

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """Never reached (the constructor raises)."""
        raise no_ppo_error()
