"""Core data types: items, inventories, persons, data sets, and answer semantics.

Answer scale everywhere: 1..5 where 5 = "Very Accurate" / agree and 1 = "Very Inaccurate" /
disagree; 0 (or ``None``) = missing.

How stored values map to answers depends on the inventory's ``stored`` convention:

- ``"trait"`` (PAPI IPIP-NEO): stored answers of reverse-keyed items are already reversed into
  the trait's direction. The answer to the statement is ``6 - v`` for "-" items.
- ``"agreement"`` (SD3): stored answers are the raw agreement with the statement.

Two semantics are offered everywhere:

- ``agreement`` (default): the answer is what the person would answer to the statement.
- ``paper``: the stored value is used as the answer, as the original PAPI code did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from palign.errors import PalignError

Semantics = Literal["agreement", "paper"]
SEMANTICS: tuple[str, ...] = ("agreement", "paper")


def check_semantics(semantics: str) -> Semantics:
    """Return ``semantics`` if valid, else raise a one-line :class:`PalignError`."""
    if semantics not in SEMANTICS:
        raise PalignError(f"unknown semantics {semantics!r}; use one of: {', '.join(SEMANTICS)}")
    return semantics  # type: ignore[return-value]


@dataclass(frozen=True)
class Item:
    """One questionnaire statement.

    Attributes:
        id: item id as a string (``"1"``..``"300"`` for IPIP-NEO, ``"M1"`` for SD3).
        text: the statement, e.g. ``"Worry about things."``.
        trait: trait letter (``"N"``; ``"M"``/``"N"``/``"P"`` for SD3).
        facet: facet code (``"N1"``); equals ``trait`` where the inventory has no facets.
        facet_name: facet name (``"Anxiety"``).
        key: +1 for a forward-keyed item, -1 for a reverse-keyed one.
    """

    id: str
    text: str
    trait: str
    facet: str
    facet_name: str
    key: int


@dataclass
class Inventory:
    """A questionnaire with its shown/test split.

    Attributes:
        name: ``"ipip-neo"`` or ``"sd3"``.
        items: all items in inventory order.
        traits: trait letters in display order.
        trait_names: trait letter -> name.
        shown_ids: ids of the items the model is shown (the person's known answers).
        test_ids: ids of the items to predict.
        stored: how stored answers relate to the statements (``"trait"`` or ``"agreement"``).
        statement_template: how an item becomes a statement in the prompt (``{item}`` is the
            item text with its first letter lower-cased for IPIP's "You {item}" form).
    """

    name: str
    items: list[Item]
    traits: list[str]
    trait_names: dict[str, str]
    shown_ids: list[str]
    test_ids: list[str]
    stored: Literal["trait", "agreement"]
    statement_template: str = "{text}"
    _by_id: dict[str, Item] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {it.id: it for it in self.items}

    def item(self, item_id: str) -> Item:
        """Return the item with id ``item_id`` or raise :class:`PalignError`."""
        try:
            return self._by_id[str(item_id)]
        except KeyError:
            raise PalignError(
                f"unknown item id {item_id!r} for inventory {self.name}; "
                f"valid ids: {self.items[0].id}..{self.items[-1].id}"
            ) from None

    def has_item(self, item_id: str) -> bool:
        """Whether ``item_id`` is an item of this inventory."""
        return str(item_id) in self._by_id

    @property
    def shown_items(self) -> list[Item]:
        """Items shown to the model."""
        return [self._by_id[i] for i in self.shown_ids]

    @property
    def test_items(self) -> list[Item]:
        """Items the model must predict."""
        return [self._by_id[i] for i in self.test_ids]

    def statement(self, item: Item) -> str:
        """The statement as it appears in prompts (e.g. ``"You worry about things."``)."""
        text = item.text.strip()
        if self.statement_template.startswith("You {item}"):
            text = text[:1].lower() + text[1:]
            text = text.rstrip(".")
            return self.statement_template.format(item=text)
        return self.statement_template.format(item=text, text=text)

    # --- semantics ------------------------------------------------------------------------
    def answer_from_stored(self, item: Item, value: float, semantics: Semantics) -> float:
        """Map a stored value (non-missing) to the answer under ``semantics``."""
        if semantics == "paper" or self.stored == "agreement" or item.key > 0:
            return value
        return 6 - value

    def to_trait(self, item: Item, answer: float, semantics: Semantics) -> float:
        """Map an answer under ``semantics`` to the trait direction (high = more of trait)."""
        if semantics == "paper" and self.stored == "trait":
            return answer
        return answer if item.key > 0 else 6 - answer

    def from_trait(self, item: Item, trait_value: float, semantics: Semantics) -> float:
        """Inverse of :meth:`to_trait`: a trait-direction value to the answer of ``item``."""
        return self.to_trait(item, trait_value, semantics)  # an involution


@dataclass
class Person:
    """One respondent.

    Attributes:
        id: person id as a string (PAPI's ``case``; SD3's 1-based data row).
        stored: item id -> stored value (1..5; 0 = missing), exactly as in the source file.
        demographics: other fields of the source (sex, age, country, ...).
        persona: the P² persona paragraph, where the release has one.
    """

    id: str
    stored: dict[str, int]
    demographics: dict[str, object] = field(default_factory=dict)
    persona: str | None = None

    def answers(
        self, inventory: Inventory, semantics: Semantics = "agreement", ids: list[str] | None = None
    ) -> dict[str, int]:
        """The person's non-missing answers under ``semantics`` (item id -> 1..5)."""
        out: dict[str, int] = {}
        for iid in inventory.shown_ids + inventory.test_ids if ids is None else ids:
            v = int(self.stored.get(iid, 0) or 0)
            if v:
                out[iid] = int(inventory.answer_from_stored(inventory.item(iid), v, semantics))
        return out

    def answer_vector(
        self, inventory: Inventory, ids: list[str], semantics: Semantics = "agreement"
    ) -> np.ndarray:
        """Answers for ``ids`` as a float array, NaN where missing."""
        out = np.full(len(ids), np.nan)
        for k, iid in enumerate(ids):
            v = int(self.stored.get(iid, 0) or 0)
            if v:
                out[k] = inventory.answer_from_stored(inventory.item(iid), v, semantics)
        return out


@dataclass
class Dataset:
    """An inventory with its persons (the benchmark's test persons)."""

    inventory: Inventory
    persons: list[Person]
    source: str = ""

    def person(self, person_id: str) -> Person:
        """Return a person by id or raise :class:`PalignError`."""
        for p in self.persons:
            if p.id == str(person_id):
                return p
        raise PalignError(
            f"unknown person {person_id!r} in {self.inventory.name}; "
            f"run 'palign data info --inventory {self.inventory.name}' to see valid ids "
            f"(e.g. {', '.join(p.id for p in self.persons[:3])})"
        )

    def select(self, n: int | None = None, ids: list[str] | None = None) -> list[Person]:
        """The first ``n`` persons, or the persons with the given ids (in that order)."""
        if ids:
            return [self.person(i) for i in ids]
        return self.persons[: n if n is not None else len(self.persons)]

    def matrix(self, ids: list[str], semantics: Semantics = "agreement") -> np.ndarray:
        """Answers of all persons for ``ids``: shape (persons, items), NaN = missing."""
        return np.stack([p.answer_vector(self.inventory, ids, semantics) for p in self.persons])
