"""``few-shot``: the person's shown statements and answers in the system prompt (as the paper)."""

from __future__ import annotations

from palign.data.types import Dataset, Inventory, Person, Semantics
from palign.methods.base import Aligned, Method, register
from palign.models.loading import LoadedModel
from palign.models.prompts import OPTION_TEXTS

FEW_SHOT_INTRO = "Here are some of your behaviors and your level of recognition towards them;"
"""The paper's few-shot preamble (PAlign ``process_pas``/``process_few_shot``)."""


def answer_text(answer: int) -> str:
    """Option text of an answer 1..5 (5 = "Very Accurate")."""
    return OPTION_TEXTS[5 - answer]


def few_shot_prompt(inventory: Inventory, person: Person, semantics: Semantics) -> str:
    """The paper's few-shot system prompt: ``intro + ';'.join("{item}:{option text}")``.

    Answers are shown under ``semantics`` (agreement by default, so a reverse-keyed statement
    shows what the person would answer to it); missing answers are left out.
    """
    answers = person.answers(inventory, semantics, inventory.shown_ids)
    parts = [
        f"{inventory.item(iid).text}:{answer_text(a)}"
        for iid in inventory.shown_ids
        if (a := answers.get(iid))
    ]
    return FEW_SHOT_INTRO + ";".join(parts)


@register
class FewShot(Method):
    """The person's shown answers listed in the system prompt."""

    name = "few-shot"
    description = "the person's shown statements with their answers in the system prompt"

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """System prompt listing the person's shown answers."""
        return Aligned(person.id, few_shot_prompt(dataset.inventory, person, self.config.semantics))
