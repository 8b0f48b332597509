"""Data layer: inventories, persons, splits, answer semantics, data location and fetch.

Main entry point: :func:`load_dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from palign.data.fetch import default_data_dir, fetch
from palign.data.stream import (
    find_full_files,
    full_info,
    iter_persons,
    read_full,
    run_dataset,
    source_sha256,
)
from palign.data.types import (
    SEMANTICS,
    Dataset,
    Inventory,
    Item,
    Person,
    Semantics,
    check_semantics,
)
from palign.errors import PalignError

INVENTORIES = ("ipip-neo", "sd3")
_MARKER = {"ipip-neo": "Test-set.json", "sd3": "data.csv"}
_SUBDIRS = {"ipip-neo": ("papi", "PAPI"), "sd3": ("sd3", "SD3")}


def check_inventory(name: str) -> str:
    """Return ``name`` if it is a known inventory, else raise :class:`PalignError`."""
    if name not in INVENTORIES:
        raise PalignError(f"unknown inventory {name!r}; use one of: {', '.join(INVENTORIES)}")
    return name


def resolve_data_dir(data: str | Path | None = None, inventory: str = "ipip-neo") -> Path:
    """Find the folder holding ``inventory``'s files.

    Order: ``data`` (the ``--data`` option), else ``$PALIGN_DATA``, else the user cache filled
    by ``palign data fetch``. A given folder is used if it holds the inventory's files;
    otherwise its subfolder (``papi``/``sd3``) or its sibling of that name is tried, so
    ``--data ../shared/papi --inventory sd3`` finds ``../shared/sd3``.
    """
    check_inventory(inventory)
    marker = _MARKER[inventory]
    given = data if data is not None else os.environ.get("PALIGN_DATA") or None
    if given is None:
        folder = default_data_dir(inventory)
        if (folder / marker).is_file():
            return folder
        extra = " --inventory sd3" if inventory == "sd3" else ""
        raise PalignError(
            f"no {inventory} data found (no --data, no PALIGN_DATA, empty cache {folder}); "
            f"run 'palign data fetch{extra}' or pass --data DIR"
        )
    base = Path(given).expanduser()
    if not base.is_dir():
        raise PalignError(
            f"data folder {base} does not exist; pass --data DIR with the release files"
        )
    candidates = [base] + [base / s for s in _SUBDIRS[inventory]]
    candidates += [base.parent / s for s in _SUBDIRS[inventory]]
    for c in candidates:
        if (c / marker).is_file():
            return c
    raise PalignError(
        f"{base} holds no {inventory} data (looked for {marker} there, in its subfolder "
        f"{_SUBDIRS[inventory][0]}/ and its sibling); pass the folder with the release files"
    )


def load_dataset(data: str | Path | None = None, inventory: str = "ipip-neo") -> Dataset:
    """Load an inventory's benchmark persons (PAPI IPIP-NEO or SD3)."""
    folder = resolve_data_dir(data, inventory)
    if inventory == "ipip-neo":
        from palign.data.papi import load_papi

        return load_papi(folder)
    from palign.data.sd3 import load_sd3

    return load_sd3(folder)


__all__ = [
    "INVENTORIES",
    "SEMANTICS",
    "Dataset",
    "Inventory",
    "Item",
    "Person",
    "Semantics",
    "check_inventory",
    "check_semantics",
    "default_data_dir",
    "fetch",
    "find_full_files",
    "full_info",
    "iter_persons",
    "load_dataset",
    "read_full",
    "run_dataset",
    "source_sha256",
    "resolve_data_dir",
]
