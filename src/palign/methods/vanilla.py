"""``vanilla``: the model as it is, with the paper's neutral system prompt."""

from __future__ import annotations

from palign.data.types import Dataset, Person
from palign.methods.base import Aligned, Method, register
from palign.models.loading import LoadedModel
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT


@register
class Vanilla(Method):
    """No alignment: neutral system prompt; answers are the same for every person."""

    name = "vanilla"
    person_independent = True
    description = "the model as it is, neutral system prompt (computed once per run)"

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """Return the neutral state (the person is ignored)."""
        return Aligned(person.id, NEUTRAL_SYSTEM_PROMPT)
