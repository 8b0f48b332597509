"""The method interface shared by every alignment method, and the method registry.

A method turns a person's *shown* answers into an :class:`Aligned` state: the system prompt
to use and, for steering methods, per-layer vectors added to the attention output. The
evaluation harness (:mod:`palign.eval.runs`) then asks the model every test item for many
persons at once through one readout call, so all methods share one fast path.

To add a method: subclass :class:`Method`, set ``name``, implement :meth:`Method.fit`, and
decorate it with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from palign.errors import PalignError

if TYPE_CHECKING:
    import torch

    from palign.data.types import Dataset, Person, Semantics
    from palign.models.loading import LoadedModel


@dataclass
class MethodConfig:
    """Options shared by all methods (each method reads what it needs).

    Attributes:
        semantics: answer semantics of the person's answers shown to the method.
        seed: seed of every random choice the method makes (probe splits, folds).
        options: method-specific options (e.g. PAS ``k``, ``alpha_grid``, ``alpha_selection``).
    """

    semantics: Semantics = "agreement"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Aligned:
    """What a method produced for one person.

    Attributes:
        person_id: the person.
        system_prompt: system prompt of every test question (None = no system turn).
        steering: per-layer vectors ``u`` (n_layers, hidden) added to the attention output
            (``o_proj``) at ``steer_position``, or None for prompt-only methods.
        info: method details stored in the results (alpha, validation errors, ...).
        steer_position: where ``steering`` is added: ``"all"`` (every position of every
            forward, the paper's o_proj bias; default) or ``"last"`` (the last position).
        lora: folder of the person's PEFT LoRA adapter (training baselines), applied to the
            model while this person's items are read; None for the other methods.
        calibration: a per-person map from the option distribution to an answer, applied by
            the harness to multiple-choice answers (``Calibration.to_dict()`` of
            :mod:`palign.methods.calibrated`: ``answer = clip(rint(a + b * E), 1, 5)``, ``E``
            the expected answer); None = the argmax answer. Only the calibrated methods set it.
    """

    person_id: str
    system_prompt: str | None
    steering: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    steer_position: str = "all"
    lora: str | None = None
    calibration: dict[str, Any] | None = None


class Method:
    """Base class of alignment methods."""

    name: ClassVar[str] = ""
    person_independent: ClassVar[bool] = False
    """True when answers do not depend on the person (vanilla): computed once per run."""
    description: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config or MethodConfig()

    def setup(self, lm: LoadedModel, dataset: Dataset) -> None:
        """Per-run preparation (e.g. PAS caches the contrastive activations). Default: none."""

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """Align to ``person`` from their shown answers only."""
        raise NotImplementedError

    def fit_many(self, lm: LoadedModel, dataset: Dataset, persons: list[Person]) -> list[Aligned]:
        """:meth:`fit` for several persons; methods may share work between them."""
        return [self.fit(lm, dataset, p) for p in persons]

    def record(self) -> dict[str, Any]:
        """The method's configuration as stored in results files."""
        return {"name": self.name, "seed": self.config.seed, **self.config.options}


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, config: MethodConfig | None = None) -> Method:
    """Instantiate a registered method by name, or raise a one-line :class:`PalignError`."""
    import palign.methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise PalignError(f"unknown method {name!r}; use one of: {', '.join(METHODS)}")
    return METHODS[name](config)
