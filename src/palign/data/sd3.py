"""Short Dark Triad (SD3) from openpsychometrics.org, with palign's PAPI-style protocol.

The original PAPI split for SD3 was never released, so palign defines its own (documented in
``docs/data.md``):

- persons: complete rows only (all 27 items answered); answers standardised per item
  (z-scores over the complete rows); k-means with 300 centres (scikit-learn ``KMeans``,
  ``n_init=1``, ``random_state=0``); for each centre in label order the nearest complete
  person (Euclidean, standardised space) not chosen yet. The same selection the PAPI authors
  made for IPIP-NEO.
- shown items: M1-M5, N1-N5, P1-P5; predicted items: M6-M9, N6-N9, P6-P9.
- person id: the 1-based data row of ``data.csv`` (header excluded).

Stored values are raw agreement answers (reverse-keyed items N2, N6, N8, P2, P7 not reversed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from palign.data.types import Dataset, Inventory, Item, Person
from palign.errors import PalignError

TRAITS = ["M", "N", "P"]
TRAIT_NAMES = {"M": "Machiavellianism", "N": "Narcissism", "P": "Psychopathy"}
REVERSED = {"N2", "N6", "N8", "P2", "P7"}
ITEM_TEXT = {
    "M1": "It's not wise to tell your secrets.",
    "M2": "I like to use clever manipulation to get my way.",
    "M3": "Whatever it takes, you must get the important people on your side.",
    "M4": "Avoid direct conflict with others because they may be useful in the future.",
    "M5": "It's wise to keep track of information that you can use against people later.",
    "M6": "You should wait for the right time to get back at people.",
    "M7": "There are things you should hide from other people because they don't need to know.",
    "M8": "Make sure your plans benefit you, not others.",
    "M9": "Most people can be manipulated.",
    "N1": "People see me as a natural leader.",
    "N2": "I hate being the center of attention.",
    "N3": "Many group activities tend to be dull without me.",
    "N4": "I know that I am special because everyone keeps telling me so.",
    "N5": "I like to get acquainted with important people.",
    "N6": "I feel embarrassed if someone compliments me.",
    "N7": "I have been compared to famous people.",
    "N8": "I am an average person.",
    "N9": "I insist on getting the respect I deserve.",
    "P1": "I like to get revenge on authorities.",
    "P2": "I avoid dangerous situations.",
    "P3": "Payback needs to be quick and nasty.",
    "P4": "People often say I'm out of control.",
    "P5": "It's true that I can be mean to others.",
    "P6": "People who mess with me always regret it.",
    "P7": "I have never gotten into trouble with the law.",
    "P8": "I enjoy having sex with people I hardly know.",
    "P9": "I'll say anything to get what I want.",
}
ITEM_IDS = [f"{t}{k}" for t in TRAITS for k in range(1, 10)]
N_PERSONS = 300
SEED = 0


def sd3_inventory() -> Inventory:
    """The 27-item SD3 inventory with palign's 15 shown / 12 predicted split."""
    items = [
        Item(
            id=iid,
            text=ITEM_TEXT[iid],
            trait=iid[0],
            facet=iid[0],
            facet_name=TRAIT_NAMES[iid[0]],
            key=-1 if iid in REVERSED else 1,
        )
        for iid in ITEM_IDS
    ]
    return Inventory(
        name="sd3",
        items=items,
        traits=list(TRAITS),
        trait_names=dict(TRAIT_NAMES),
        shown_ids=[f"{t}{k}" for t in TRAITS for k in range(1, 6)],
        test_ids=[f"{t}{k}" for t in TRAITS for k in range(6, 10)],
        stored="agreement",
        statement_template='"{text}"',
    )


def read_sd3_table(folder: Path) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Read ``data.csv`` (tab-separated): answers (rows, 27) int and per-row extra fields."""
    path = folder / "data.csv"
    if not path.is_file():
        raise PalignError(
            f"missing SD3 file {path}; run 'palign data fetch --inventory sd3' or pass --data DIR "
            f"with the SD3 data.csv"
        )
    with open(path, encoding="ascii", errors="replace") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:27] != ITEM_IDS:
            raise PalignError(
                f"{path} does not start with the SD3 columns M1..P9 (tab-separated); re-fetch it"
            )
        rows, extra = [], []
        for n, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise PalignError(
                    f"{path}: line {n} has {len(parts)} fields, expected {len(header)}"
                )
            try:
                vals = [int(v) for v in parts[:27]]
            except ValueError:
                raise PalignError(f"{path}: line {n} has a non-numeric answer") from None
            if any(v < 0 or v > 5 for v in vals):
                raise PalignError(f"{path}: line {n} has an answer outside 0..5")
            rows.append(vals)
            extra.append(dict(zip(header[27:], parts[27:])))
    return np.asarray(rows, dtype=np.int64), extra


def select_persons(answers: np.ndarray, n: int = N_PERSONS, seed: int = SEED) -> list[int]:
    """palign's SD3 protocol: indices of the ``n`` complete rows nearest k-means centres."""
    from sklearn.cluster import KMeans

    complete = np.flatnonzero((answers > 0).all(axis=1))
    if len(complete) < n:
        raise PalignError(f"SD3 data has only {len(complete)} complete rows, need {n}")
    z = answers[complete].astype(np.float64)
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    km = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(z)
    d2 = (
        (z**2).sum(1)[None, :]
        - 2 * km.cluster_centers_ @ z.T
        + (km.cluster_centers_**2).sum(1)[:, None]
    )
    chosen: list[int] = []
    taken: set[int] = set()
    for c in range(n):
        for j in np.argsort(d2[c], kind="stable"):
            if int(j) not in taken:
                taken.add(int(j))
                chosen.append(int(complete[j]))
                break
    return chosen


def load_sd3(folder: str | Path) -> Dataset:
    """Load SD3 with palign's 300-person protocol."""
    folder = Path(folder)
    answers, extra = read_sd3_table(folder)
    inv = sd3_inventory()
    persons = []
    for r in select_persons(answers):
        stored = {iid: int(v) for iid, v in zip(ITEM_IDS, answers[r])}
        persons.append(Person(id=str(r + 1), stored=stored, demographics=extra[r]))
    return Dataset(inventory=inv, persons=persons, source=str(folder))
