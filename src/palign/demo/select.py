"""Which held-out statements the demo shows: a fixed rule, never a hand pick.

The rule (:data:`RULE`): among the test items the run read where the person answered and both
vanilla and the aligned model gave a parsed answer that differs, rank by the aligned model's
gain ``|vanilla - person| - |aligned - person|`` (largest first: the items where it moved
furthest toward the person come first, then those where it moved sideways, then those where
it moved away), ties by the items' order in the run; show the first ``n``. Every shown item
says which way it moved, and the counts over all disagreeing items are shown with them, so
the picture stays honest when the aligned model mostly moved away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from palign.models.prompts import OPTION_LETTERS, OPTION_TEXTS

RULE = (
    "the test items where vanilla and PAS answer differently, ranked by PAS's gain "
    "|vanilla - person| - |PAS - person| (largest first), ties by item order"
)


def option_label(answer: int | float | None) -> str:
    """An answer 1..5 as its option letter and words (``4`` -> ``"B (Moderately Accurate)"``);
    ``"unparsed"`` for 0 or None."""
    if not answer:
        return "unparsed"
    k = 5 - int(answer)
    return f"{OPTION_LETTERS[k]} ({OPTION_TEXTS[k]})"


@dataclass
class Disagreement:
    """One test item where vanilla and the aligned model answer differently.

    Attributes:
        item: item id.
        order: its position among the run's test items.
        person: the person's answer (1..5).
        vanilla: vanilla's answer.
        aligned: the aligned model's answer.
        gain: ``|vanilla - person| - |aligned - person|`` (> 0: moved toward the person).
        direction: ``"toward"``, ``"away"`` or ``"same distance"``.
    """

    item: str
    order: int
    person: int
    vanilla: int
    aligned: int
    gain: int
    direction: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _direction(gain: int) -> str:
    return "toward" if gain > 0 else "away" if gain < 0 else "same distance"


def disagreements(
    item_ids: Sequence[str],
    person: Mapping[str, int],
    vanilla: Mapping[str, int],
    aligned: Mapping[str, int],
) -> list[Disagreement]:
    """All items of ``item_ids`` where both answers parsed (non-zero), the person answered,
    and the two answers differ, ranked by :data:`RULE`."""
    out = []
    for order, iid in enumerate(item_ids):
        y, v, a = int(person.get(iid) or 0), int(vanilla.get(iid) or 0), int(aligned.get(iid) or 0)
        if not (y and v and a) or v == a:
            continue
        gain = abs(v - y) - abs(a - y)
        out.append(Disagreement(iid, order, y, v, a, gain, _direction(gain)))
    out.sort(key=lambda d: (-d.gain, d.order))
    return out


def select_disagreements(
    item_ids: Sequence[str],
    person: Mapping[str, int],
    vanilla: Mapping[str, int],
    aligned: Mapping[str, int],
    n: int = 3,
) -> dict[str, Any]:
    """The first ``n`` disagreements by :data:`RULE` plus the counts over all of them.

    Returns ``{"rule", "items" (list of dicts), "disagreeing", "toward", "away",
    "same_distance", "read"}``; ``read`` is the number of items considered.
    """
    all_d = disagreements(item_ids, person, vanilla, aligned)
    return {
        "rule": RULE,
        "read": len(item_ids),
        "disagreeing": len(all_d),
        "toward": sum(d.direction == "toward" for d in all_d),
        "away": sum(d.direction == "away" for d in all_d),
        "same_distance": sum(d.direction == "same distance" for d in all_d),
        "items": [d.to_dict() for d in all_d[:n]],
    }
