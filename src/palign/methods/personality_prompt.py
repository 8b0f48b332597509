"""``personality-prompt`` (P²): a persona paragraph about the person as the system prompt.

Where the paragraph comes from is the option ``persona_source`` (recorded in results):

- ``"release"``: the PAPI release's paragraph (``personality_prompt.json``, written by
  Llama-3-70B from the person's 120 shown answers). The release wrote it from the *stored*
  values, i.e. under ``paper`` semantics: for a reverse-keyed statement it was told the
  opposite of what the person answered to the statement ("Rarely get irritated: Very
  Inaccurate" for someone who rarely gets irritated). It is therefore only offered with
  ``semantics="paper"``.
- ``"answers"``: a deterministic description written from the person's shown answers under
  the chosen semantics: per trait and facet, the mean in trait direction and its level
  (:func:`answers_persona`). No model involved.
- ``"model"``: generated greedily by ``persona_model`` (default: the evaluated model) with the
  release's request (:data:`PERSONA_REQUEST`) listing the shown answers under the chosen
  semantics; cached per person in the method instance.

Default: ``"release"`` under ``paper`` semantics (as the paper; persons without a release
paragraph, e.g. SD3 or an answers file, get ``"answers"``, recorded per person), ``"answers"``
under ``agreement`` semantics; ``"model"`` when only ``persona_model`` is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from palign.data.types import Dataset, Inventory, Person, Semantics
from palign.errors import PalignError
from palign.methods.base import Aligned, Method, MethodConfig, register
from palign.methods.few_shot import answer_text
from palign.models.loading import LoadedModel

PERSONA_SOURCES: tuple[str, ...] = ("release", "answers", "model")

PERSONA_REQUEST = (
    'Please use "You" to organize and rewrite the following fragment into a smooth object '
    'description, without including any "accurate" and "inaccurate" elements, but rather a '
    "natural description:\n"
)
"""The request of the PAPI release's ``personality_prompt.json`` (``input`` field)."""

ANSWERS_PERSONA_INTRO = (
    "This is your personality, from your own answers to a personality questionnaire "
    "(scores from 1 = very low to 5 = very high)."
)
"""First sentence of :func:`answers_persona`."""

#: Level words by score (trait direction, 1..5): upper bounds, checked in order.
LEVELS: tuple[tuple[float, str], ...] = (
    (1.5, "very low"),
    (2.5, "low"),
    (3.5, "average"),
    (4.5, "high"),
    (5.0, "very high"),
)


def default_persona_source(semantics: Semantics, options: dict[str, Any] | None = None) -> str:
    """The persona source used when none is given: ``"model"`` when a ``persona_model`` is
    given, else ``"release"`` under ``paper`` semantics and ``"answers"`` under ``agreement``."""
    opts = options or {}
    if opts.get("persona_model") or opts.get("regenerate_persona"):
        return "model"
    return "release" if semantics == "paper" else "answers"


def level(score: float) -> str:
    """Level word of a 1..5 trait-direction score (:data:`LEVELS`)."""
    for bound, word in LEVELS:
        if score < bound or bound == LEVELS[-1][0]:
            return word
    raise AssertionError("unreachable")  # pragma: no cover


def trait_scores(
    inventory: Inventory, person: Person, semantics: Semantics
) -> dict[str, tuple[float, dict[str, float]]]:
    """Per trait: the mean of the shown answers in trait direction, and the same per facet.

    The answers are taken under ``semantics`` and mapped to trait direction with
    :meth:`Inventory.to_trait` (high = more of the trait). Traits or facets without an
    answered shown item are left out.

    Returns:
        ``{trait: (trait mean, {facet code: facet mean})}`` in inventory trait order.
    """
    answers = person.answers(inventory, semantics, inventory.shown_ids)
    by_trait: dict[str, list[float]] = {}
    by_facet: dict[str, list[float]] = {}
    for iid, a in answers.items():
        it = inventory.item(iid)
        v = float(inventory.to_trait(it, a, semantics))
        by_trait.setdefault(it.trait, []).append(v)
        by_facet.setdefault(it.facet, []).append(v)
    facet_trait = {it.facet: it.trait for it in inventory.items}
    out: dict[str, tuple[float, dict[str, float]]] = {}
    for t in inventory.traits:
        if t not in by_trait:
            continue
        facets = {
            f: float(np.mean(v)) for f, v in by_facet.items() if f != t and facet_trait[f] == t
        }
        out[t] = (float(np.mean(by_trait[t])), dict(sorted(facets.items())))
    return out


def answers_persona(inventory: Inventory, person: Person, semantics: Semantics) -> str:
    """A deterministic persona paragraph from the person's shown answers under ``semantics``.

    One sentence per trait: ``"Your <trait> is <level> (<mean>): you are <level> in <facet>
    (<mean>), ..."`` with the means of :func:`trait_scores` (trait direction, two
    decimals) and the level words of :data:`LEVELS`.

    Raises:
        PalignError: the person has no answered shown item.
    """
    scores = trait_scores(inventory, person, semantics)
    if not scores:
        raise PalignError(f"person {person.id} has no answered shown item; a persona needs answers")
    facet_names = {it.facet: it.facet_name for it in inventory.items}
    sentences = [ANSWERS_PERSONA_INTRO]
    for t, (mean, facets) in scores.items():
        name = inventory.trait_names.get(t, t).lower()
        s = f"Your {name} is {level(mean)} ({mean:.2f})"
        if facets:
            parts = [
                f"{level(m)} in {facet_names.get(f, f).lower()} ({m:.2f})"
                for f, m in facets.items()
            ]
            s += ": you are " + ", ".join(parts)
        sentences.append(s + ".")
    return " ".join(sentences)


def persona_request(inventory: Inventory, person: Person, semantics: Semantics) -> str:
    """The request asking a model to write the persona paragraph from the shown answers."""
    answers = person.answers(inventory, semantics, inventory.shown_ids)
    return PERSONA_REQUEST + ";".join(
        f"{inventory.item(i).text}:{answer_text(a)}"
        for i in inventory.shown_ids
        if (a := answers.get(i))
    )


def generate_persona(lm: LoadedModel, request: str, max_new_tokens: int = 300) -> str:
    """Greedy-generate a persona paragraph for ``request`` with ``lm`` (chat template)."""
    import torch

    tok = lm.tokenizer
    msgs = [{"role": "user", "content": request}]
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
    else:
        ids = tok(f"User: {request}\n\nAssistant: ", return_tensors="pt").input_ids
    ids = ids.to(lm.device)
    with torch.inference_mode():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


@register
class PersonalityPrompt(Method):
    """P²: a persona paragraph about the person as the system prompt.

    Options: ``persona_source`` (``release`` | ``answers`` | ``model``; default from the
    semantics, see the module docstring), ``persona_model`` (model spec for ``model``).
    """

    name = "personality-prompt"
    description = (
        "P²: a persona paragraph (the release's under paper semantics; from the answers, or "
        "written by a model, under the chosen semantics)"
    )

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        opts = self.config.options
        self.explicit_source = opts.get("persona_source") is not None
        self.source = str(
            opts.get("persona_source") or default_persona_source(self.config.semantics, opts)
        )
        if self.source not in PERSONA_SOURCES:
            raise PalignError(
                f"unknown persona source {self.source!r}; use one of: {', '.join(PERSONA_SOURCES)}"
            )
        if self.source == "release" and self.config.semantics != "paper":
            raise PalignError(
                "the release personas were written from the stored answers (paper semantics) "
                "and contradict agreement-semantics answers on reverse-keyed items; use "
                "--semantics paper with --persona-source release, or --persona-source "
                "answers|model"
            )
        if opts.get("persona_model") and self.source != "model":
            raise PalignError(
                f"--persona-model is used only with --persona-source model (got {self.source})"
            )
        self._generated: dict[str, str] = {}
        self._persona_lm: LoadedModel | None = None

    def _persona_model(self, lm: LoadedModel) -> LoadedModel:
        spec = self.config.options.get("persona_model")
        if not spec:
            return lm
        if self._persona_lm is None:
            from palign.models.loading import load_model

            self._persona_lm = load_model(spec)
        return self._persona_lm

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """The persona paragraph of ``person`` from the configured source."""
        inv, sem = dataset.inventory, self.config.semantics
        source = self.source
        if source == "release":
            if person.persona:
                return Aligned(person.id, person.persona, info={"persona_source": "release"})
            if self.explicit_source:
                raise PalignError(
                    f"person {person.id} has no release persona; use --persona-source "
                    "answers or model"
                )
            source = "answers"  # the default under paper semantics, for persons without one
        if source == "answers":
            text = answers_persona(inv, person, sem)
            info = {"persona_source": "answers", "persona": text}
            if source != self.source:
                info["note"] = "no release persona for this person"
            return Aligned(person.id, text, info=info)
        if person.id not in self._generated:
            req = persona_request(inv, person, sem)
            self._generated[person.id] = generate_persona(self._persona_model(lm), req)
        text = self._generated[person.id]
        src = self.config.options.get("persona_model") or lm.model_id
        return Aligned(
            person.id,
            text,
            info={"persona_source": "model", "persona_model": src, "persona": text},
        )

    def record(self) -> dict[str, Any]:
        """Configuration for results files (``persona_source`` resolved)."""
        return {**super().record(), "persona_source": self.source}
