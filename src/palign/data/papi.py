"""PAPI (IPIP-NEO-300 / 120) release files -> :class:`~palign.data.types.Dataset`."""

from __future__ import annotations

import json
from pathlib import Path

from palign.data.types import Dataset, Inventory, Item, Person
from palign.errors import PalignError

TRAITS = ["O", "C", "E", "A", "N"]
TRAIT_NAMES = {
    "O": "Openness",
    "C": "Conscientiousness",
    "E": "Extraversion",
    "A": "Agreeableness",
    "N": "Neuroticism",
}
REQUIRED = ("IPIP-NEO-ItemKey.xls", "Test-set.json", "mpi_300_split.json")


def _need(folder: Path, name: str) -> Path:
    p = folder / name
    if not p.is_file():
        raise PalignError(
            f"missing PAPI file {p}; run 'palign data fetch' or pass --data DIR with the PAPI "
            f"release files ({', '.join(REQUIRED)})"
        )
    return p


def _load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PalignError(
            f"malformed JSON in {path} ({e}); re-fetch it with 'palign data fetch'"
        ) from None


def load_items(folder: Path) -> list[Item]:
    """Read the 300 IPIP-NEO items from ``IPIP-NEO-ItemKey.xls``."""
    import xlrd

    path = _need(folder, "IPIP-NEO-ItemKey.xls")
    try:
        sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
        header = [str(v).strip() for v in sheet.row_values(0)]
        col = {name: header.index(name) for name in ("Full#", "Sign", "Key", "Facet", "Item")}
        items = []
        for r in range(1, sheet.nrows):
            row = sheet.row_values(r)
            if row[col["Full#"]] in ("", None):
                continue
            sign = str(row[col["Sign"]]).strip()
            facet = str(row[col["Key"]]).strip()
            if sign[:1] not in "+-" or sign[1:] != facet or facet[:1] not in TRAITS:
                raise ValueError(f"row {r + 1}: bad Sign/Key {sign!r}/{facet!r}")
            items.append(
                Item(
                    id=str(int(row[col["Full#"]])),
                    text=str(row[col["Item"]]).strip(),
                    trait=facet[0],
                    facet=facet,
                    facet_name=str(row[col["Facet"]]).strip(),
                    key=1 if sign[0] == "+" else -1,
                )
            )
    except (xlrd.XLRDError, ValueError, KeyError, IndexError) as e:
        raise PalignError(
            f"malformed item key {path} ({e}); re-fetch it with 'palign data fetch'"
        ) from None
    if len(items) != 300:
        raise PalignError(f"{path} has {len(items)} items, expected 300; re-fetch the file")
    return items


def load_split(folder: Path, items: list[Item]) -> tuple[list[str], list[str]]:
    """Shown (IPIP-NEO-120) and test item ids from ``mpi_300_split.json``."""
    path = _need(folder, "mpi_300_split.json")
    data = _load_json(path)
    ids = {it.id for it in items}
    try:
        shown = [str(int(i)) for i in data["train_index"]]  # type: ignore[index]
        test = [str(int(i)) for i in data["test_index"]]  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as e:
        raise PalignError(f"malformed split file {path} ({e}); re-fetch it") from None
    if not set(shown) <= ids or not set(test) <= ids or set(shown) & set(test):
        raise PalignError(f"split file {path} names unknown or overlapping items; re-fetch it")
    return shown, test


def ipip_inventory(folder: Path) -> Inventory:
    """The IPIP-NEO-300 inventory with the PAPI 120/180 split."""
    items = load_items(folder)
    shown, test = load_split(folder, items)
    return Inventory(
        name="ipip-neo",
        items=items,
        traits=list(TRAITS),
        trait_names=dict(TRAIT_NAMES),
        shown_ids=shown,
        test_ids=test,
        stored="trait",
        statement_template="You {item}.",
    )


def load_papi(folder: str | Path) -> Dataset:
    """Load the PAPI test set: inventory, 300 persons, and their P² persona paragraphs."""
    folder = Path(folder)
    inv = ipip_inventory(folder)
    path = _need(folder, "Test-set.json")
    rows = _load_json(path)
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
        raise PalignError(f"{path} is not a list of persons; re-fetch it")
    personas: list[str | None] = [None] * len(rows)
    pp = folder / "personality_prompt.json"
    if pp.is_file():
        data = _load_json(pp)
        if isinstance(data, list) and len(data) == len(rows):
            for k, e in enumerate(data):
                out = e.get("output") if isinstance(e, dict) else None
                if isinstance(out, list) and out and isinstance(out[0], str):
                    personas[k] = out[0].strip()
    persons = []
    ids = [it.id for it in inv.items]
    for k, row in enumerate(rows):
        if "case" not in row:
            raise PalignError(f"{path}: person #{k} has no 'case' field; re-fetch the file")
        stored: dict[str, int] = {}
        for iid in ids:
            v = row.get(f"i{iid}", 0)
            try:
                v = int(v or 0)
            except (TypeError, ValueError):
                raise PalignError(
                    f"{path}: person {row['case']} item i{iid} has non-numeric value {v!r}"
                ) from None
            if not 0 <= v <= 5:
                raise PalignError(f"{path}: person {row['case']} item i{iid} = {v} (not 0..5)")
            stored[iid] = v
        demo = {k2: v2 for k2, v2 in row.items() if not (k2.startswith("i") and k2[1:].isdigit())}
        demo.pop("case")
        persons.append(
            Person(id=str(row["case"]), stored=stored, demographics=demo, persona=personas[k])
        )
    return Dataset(inventory=inv, persons=persons, source=str(folder))
