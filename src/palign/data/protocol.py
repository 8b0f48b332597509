"""palign's development / reported split of the PAPI test-set persons.

Hyper-parameters that are tuned on *test items* (today: PAS's per-model default alpha, see
``docs/pas.md#alpha-selection-protocol``) are tuned on the **development persons** only: the
test-set persons at positions 200-299 (1-based, in release order). Their test items are fair
game for tuning because palign never reports them. Every other person can be reported; a
figure computed on a development person with a rule tuned on it is not an honest result, so
:func:`check_reportable` refuses it unless the caller says so explicitly.

The split is by *position* in the release file (``Test-set.json``), so it is the same for
everybody who has the release; person ids are recorded next to it in every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from palign.errors import PalignError

#: 1-based positions (inclusive) of the development persons in the PAPI test set
DEVELOPMENT_POSITIONS = (200, 299)
#: inventories whose persons have a development split (SD3 has none: no rule is tuned there)
PROTOCOL_INVENTORIES = ("ipip-neo",)


def development_persons(dataset: Any, n: int | None = None) -> list[Any]:
    """The development persons of ``dataset`` (the first ``n`` of them when given)."""
    if dataset.inventory.name not in PROTOCOL_INVENTORIES:
        raise PalignError(
            f"the {dataset.inventory.name} inventory has no development persons; "
            "alpha rules are tuned on the PAPI (ipip-neo) test set"
        )
    lo, hi = DEVELOPMENT_POSITIONS
    dev = list(dataset.persons[lo - 1 : hi])
    if not dev:
        raise PalignError(
            f"the data set has {len(dataset.persons)} persons; the development persons are "
            f"positions {lo}-{hi} of the PAPI test set (use the full Test-set.json release)"
        )
    return dev if n is None else dev[: int(n)]


def development_ids(dataset: Any) -> set[str]:
    """Ids of every development person of ``dataset`` (empty for inventories without them)."""
    if dataset.inventory.name not in PROTOCOL_INVENTORIES:
        return set()
    lo, hi = DEVELOPMENT_POSITIONS
    return {p.id for p in dataset.persons[lo - 1 : hi]}


def check_tuning_persons(dataset: Any, person_ids: Sequence[str]) -> None:
    """Refuse tuning on any person that is not a development person (one-line error)."""
    dev = development_ids(dataset)
    bad = [pid for pid in person_ids if pid not in dev]
    if bad:
        lo, hi = DEVELOPMENT_POSITIONS
        raise PalignError(
            f"refusing to tune on reported person(s) {', '.join(bad[:5])}: rules are tuned on "
            f"the development persons only (PAPI test-set positions {lo}-{hi}); "
            "select them with --persons dev:N"
        )


def check_reportable(
    person_ids: Sequence[str], tuned_on: Sequence[str], allow: bool = False
) -> None:
    """Refuse to evaluate persons that a rule in use was tuned on (unless ``allow``)."""
    if allow:
        return
    hit = sorted(set(person_ids) & set(tuned_on))
    if hit:
        raise PalignError(
            f"person(s) {', '.join(hit[:5])} are development persons the default alpha rule "
            "was tuned on, so their scores would not be honest; evaluate other persons, give "
            "--alpha-selection heldout|fixed, or pass --allow-dev-persons to label them as such"
        )
