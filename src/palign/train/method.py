"""The harness side of the training baselines: a :class:`~palign.methods.base.Method` that
trains one LoRA adapter per person and hands the harness its folder (``Aligned.lora``).

Adapters go to ``adapter_root/<person>/`` (``palign eval`` sets ``OUT/adapters``; from Python
the default is a folder in the user cache keyed by the method's configuration and model). An
adapter folder that already holds a finished adapter of the same configuration, model and
person is reused (resume after an interruption between training and the person's results
file).
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any, ClassVar

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.methods.base import Aligned, Method, MethodConfig
from palign.models.loading import LoadedModel
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
from palign.paths import cache_dir
from palign.train.config import TrainConfig, config_from_options
from palign.train.data import shown_answers
from palign.train.lora import read_meta
from palign.train.select import HeldOut, heldout_set, heldout_split


def library_versions() -> dict[str, str]:
    """Versions of the training libraries (recorded next to each adapter)."""
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            out[mod] = "missing"
    return out


class LoRATrainingMethod(Method):
    """Base of the per-person LoRA training methods (subclasses set the trainer)."""

    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    trainer_name: ClassVar[str] = ""
    system_prompt: ClassVar[str | None] = NEUTRAL_SYSTEM_PROMPT

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.train_config = config_from_options(self.config_class, self.config.options, self.name)
        self.adapter_root: Path | None = None
        """Where adapters are written (``palign eval`` sets ``OUT/adapters``; None = the user
        cache, in a folder keyed by the method's configuration and the model)."""
        self.shared_adapters = False
        """``adapter_root`` belongs to another run (``generate-eval --adapters DIR``): an
        adapter there of another configuration is refused, never overwritten."""
        self.progress = True
        self.persons_planned: int | None = None
        """Persons this run will train (set by the CLI): the first training on CPU warns when
        their projected time passes an hour; None = only this person is projected."""
        self._projected = False

    # --- to implement ----------------------------------------------------------------------
    def examples(
        self,
        lm: LoadedModel,
        dataset: Dataset,
        person: Person,
        items: list[str] | None = None,
    ) -> list[Any]:
        """The person's training examples (shown items only; ``items``: only these)."""
        raise NotImplementedError

    def trainer(self) -> Any:
        """The training function (``train_dpo``, ``train_grpo``): called as
        ``fn(lm, examples, train_config, folder, seed=, meta=, person=, progress=,
        project_persons=, heldout=)``."""
        raise NotImplementedError

    def train(
        self,
        lm: LoadedModel,
        examples: list[Any],
        folder: Path,
        meta: dict[str, Any],
        person: str,
        heldout: HeldOut | None = None,
    ) -> Any:
        """Train and save one adapter; returns a :class:`palign.train.dpo.TrainResult`."""
        project = 0 if self._projected else (self.persons_planned or 1)
        self._projected = True
        return self.trainer()(
            lm,
            examples,
            self.train_config,
            folder,
            seed=self.config.seed,
            meta=meta,
            person=person,
            progress=self.progress,
            project_persons=project,
            heldout=heldout,
        )

    def split(
        self, lm: LoadedModel, dataset: Dataset, person: Person
    ) -> tuple[list[Any], HeldOut | None]:
        """The person's training examples and held-out items (``select="heldout"``: the
        items :func:`~palign.train.select.heldout_split` holds out are left out of the
        examples; ``select="none"``: every shown item trains, nothing is held out)."""
        examples = self.examples(lm, dataset, person)  # raises for nothing to train on
        cfg = self.train_config
        if cfg.select == "none":
            return examples, None
        answered = list(shown_answers(dataset, person, self.config.semantics))
        train_ids, held_ids = heldout_split(answered, cfg.heldout_fraction, self.config.seed)
        held = heldout_set(dataset, person, held_ids, self.config.semantics, self.system_prompt)
        return self.examples(lm, dataset, person, items=train_ids), held

    # --- shared ------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The method's configuration (all training options, defaults included)."""
        return {
            "name": self.name,
            "seed": self.config.seed,
            "trainer": self.trainer_name,
            "training": self.train_config.to_dict(),
            "system_prompt": self.system_prompt,
            "data": "shown items only"
            + (
                f" ({self.train_config.heldout_fraction:g} of them held out to choose the step)"
                if self.train_config.select == "heldout"
                else ""
            ),
        }

    def root(self, lm: LoadedModel) -> Path:
        """The adapters folder of this run."""
        if self.adapter_root is not None:
            return Path(self.adapter_root)
        key = json.dumps(
            {"record": self.record(), "model": lm.model_id, "rev": lm.revision}, sort_keys=True
        )
        return cache_dir("lora", f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")

    def _meta(self, lm: LoadedModel, dataset: Dataset, person: Person) -> dict[str, Any]:
        return {
            "method": self.name,
            "trainer": self.trainer_name,
            "person": person.id,
            "model_spec": lm.spec,
            "model_id": lm.model_id,
            "revision": lm.revision,
            "model_type": getattr(lm.model.config, "model_type", None),
            "inventory": dataset.inventory.name,
            "semantics": self.config.semantics,
            "seed": self.config.seed,
            "system_prompt": self.system_prompt,
            "training": self.train_config.to_dict(),
            "versions": library_versions(),
        }

    @staticmethod
    def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
        keys = (
            "method",
            "person",
            "model_id",
            "revision",
            "inventory",
            "semantics",
            "seed",
            "training",
        )
        return all(old.get(k) == new.get(k) for k in keys)

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """Train (or reuse) the person's adapter; the readout applies it (``Aligned.lora``)."""
        examples, held = self.split(lm, dataset, person)  # raises for nothing to train on
        folder = self.root(lm) / person.id
        meta = self._meta(lm, dataset, person)
        old = read_meta(folder)
        reused = old is not None and self._same(old, meta) and "loss" in old
        if old is not None and not reused and self.shared_adapters:
            keys = ("method", "person", "model_id", "revision", "inventory", "semantics")
            diff = [k for k in (*keys, "seed", "training") if old.get(k) != meta.get(k)]
            what = ", ".join(diff) or "no loss recorded"
            raise PalignError(
                f"{folder} holds an adapter of another configuration ({what}); give the "
                "training options and --seed of the run that wrote it, or another --adapters "
                "folder"
            )
        if reused:
            loss, seconds = old["loss"], old.get("seconds")
            extra = {k: old[k] for k in ("reward", "selection") if old.get(k) is not None}
        else:
            res = self.train(lm, examples, folder, meta, person.id, held)
            loss, seconds = res.loss, round(res.seconds, 2)
            extra = {"selection": res.selection} if res.selection is not None else {}
            if res.history and any("reward" in h for h in res.history):
                from palign.train.lora import loss_summary

                extra["reward"] = loss_summary(res.history, "reward")
        info: dict[str, Any] = {
            "trainer": self.trainer_name,
            "adapter": str(folder),
            "train_seconds": seconds,
            "loss": loss,
            **extra,
            "n_examples": len(examples),
            "training": self.train_config.to_dict(),
        }
        if reused:
            info["reused_adapter"] = True
        return Aligned(person.id, self.system_prompt, info=info, lora=str(folder))
