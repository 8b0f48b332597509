"""A new person's answers from a file (JSON or CSV of item id -> 1..5)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from palign.data.types import Inventory, Person
from palign.errors import PalignError


def read_answers_file(path: str | Path, inventory: Inventory) -> dict[str, int]:
    """Read answers to statements (agreement: 5 = Very Accurate / agree).

    Accepted forms: JSON ``{"1": 4, "2": 5}`` or ``{"answers": {...}}``; CSV with two columns
    ``item,answer`` (a header row is optional). Any subset of the inventory's items; unknown
    item ids, values outside 1..5 and an empty file are errors.
    """
    p = Path(path)
    if not p.is_file():
        raise PalignError(
            f"answers file not found: {p}; pass a JSON or CSV file of item id -> 1..5"
        )
    text = p.read_text(encoding="utf-8-sig").strip()
    if not text:
        raise PalignError(f"answers file {p} is empty; give item id -> answer (1..5) pairs")
    raw: dict[str, object]
    if p.suffix.lower() == ".json" or text[:1] in "{[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PalignError(
                f"answers file {p} is not valid JSON ({e.msg} at line {e.lineno})"
            ) from None
        if isinstance(data, dict) and isinstance(data.get("answers"), dict):
            data = data["answers"]
        if not isinstance(data, dict):
            raise PalignError(f"answers file {p}: expected an object of item id -> answer")
        raw = {str(k): v for k, v in data.items()}
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and not inventory.has_item(rows[0][0].strip()):
            try:
                int(rows[0][1])
            except (ValueError, IndexError):
                rows = rows[1:]  # a header row
        raw = {}
        for n, r in enumerate(rows, start=1):
            if len(r) < 2:
                raise PalignError(f"answers file {p}: row {n} needs two columns item,answer")
            raw[r[0].strip()] = r[1].strip()
    if not raw:
        raise PalignError(f"answers file {p} holds no answers")
    out: dict[str, int] = {}
    for k, v in raw.items():
        if not inventory.has_item(k):
            raise PalignError(
                f"answers file {p}: unknown item id {k!r} for {inventory.name} "
                f"(ids {inventory.items[0].id}..{inventory.items[-1].id})"
            )
        try:
            iv = int(str(v))
        except ValueError:
            iv = -1
        if not 1 <= iv <= 5:
            raise PalignError(f"answers file {p}: item {k} has answer {v!r}; answers are 1..5")
        out[k] = iv
    return out


def person_from_answers(
    inventory: Inventory, answers: dict[str, int], person_id: str = "answers-file"
) -> tuple[Inventory, Person]:
    """A person answering ``answers`` and an inventory copy whose shown items are exactly the
    answered ones (the rest become test items)."""
    import copy

    inv = copy.copy(inventory)
    inv.shown_ids = [it.id for it in inventory.items if it.id in answers]
    inv.test_ids = [it.id for it in inventory.items if it.id not in answers]
    inv.__post_init__()
    stored = {}
    for it in inventory.items:
        a = answers.get(it.id, 0)
        # stored convention of the inventory: PAPI stores reverse-keyed items reversed
        stored[it.id] = 6 - a if (a and inventory.stored == "trait" and it.key < 0) else a
    return inv, Person(person_id, stored)
