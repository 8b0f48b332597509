"""``palign compare``: several runs side by side with the reference predictors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from palign.data.types import Dataset
from palign.errors import PalignError
from palign.eval.report import format_table
from palign.eval.runs import load_results

DEFAULT_REFERENCES = ("constant-3", "item-median", "facet-mean", "ridge")


def run_label(d: dict[str, Any]) -> str:
    """Row label of a run: method, plus the alpha selection where it is the oracle."""
    label = d["config"]["method"]
    sel = d["config"].get("options", {}).get("alpha_selection")
    if sel == "oracle":
        label += " (ORACLE alpha: chosen on test items)"
    if d["config"].get("readout") == "generate":
        label += " [generate]"
    return label


def compare_runs(
    folders: list[str | Path],
    data: str | None = None,
    references: tuple[str, ...] | list[str] = DEFAULT_REFERENCES,
    full: str | None = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Load runs and compute the reference predictors on the first run's persons.

    Runs over persons of a full-release file (``palign eval --full``) are scored on those
    persons, read again from the recorded file (or ``full``, the same file moved), whose
    sha256 must match the recorded one; the reference predictors' population statistics
    then come from the run's persons. Runs of one comparison must share their source.
    ``dataset``, when given, is used instead of loading the data (e.g. the demo's, from
    Python without ``$PALIGN_DATA``).
    """
    from palign.data import run_dataset
    from palign.eval.baselines import predict
    from palign.eval.metrics import evaluate
    from palign.eval.runs import test_items

    if not folders:
        raise PalignError("no run folders given; pass one or more folders written by 'palign eval'")
    runs = [load_results(f) for f in folders]
    inv = runs[0]["config"]["inventory"]
    sem = runs[0]["config"]["semantics"]
    for f, r in zip(folders, runs):
        if (r["config"]["inventory"], r["config"]["semantics"]) != (inv, sem):
            raise PalignError(
                f"{f} is a {r['config']['inventory']}/{r['config']['semantics']} run, the first is "
                f"{inv}/{sem}; compare runs of one inventory and semantics"
            )
    persons = runs[0]["config"]["persons"]
    same = all(r["config"]["persons"] == persons for r in runs)
    rows = []
    for f, r in zip(folders, runs):
        rep = r["report"]
        rows.append(
            {
                "name": run_label(r),
                "folder": str(f),
                "model": r["config"]["model"],
                "kind": "run",
                **{
                    k: rep[k]
                    for k in ("traits", "mean", "sum", "n_persons", "exact_match", "unparsed_rate")
                },
                "seconds_per_person": r.get("timings", {}).get("seconds_per_person"),
            }
        )
    max_items = runs[0]["config"].get("max_items")
    for f, r in zip(folders, runs):
        if r["config"].get("max_items") != max_items:
            raise PalignError(f"{f} scores a different item set (--max-items) than the first run")
    source = runs[0]["config"].get("full_sha256")
    for f, r in zip(folders, runs):
        if r["config"].get("full_sha256") != source:
            raise PalignError(
                f"{f} read its persons from another source than the first run (--full file "
                "or the test-set release); compare runs of one source"
            )
    ds = dataset or run_dataset(
        data or runs[0]["config"].get("data"),
        inv,
        full=(full or runs[0]["config"].get("full")) if source else None,
        full_sha256=source,
        ids=persons,
    )
    items = test_items(ds.inventory, max_items)
    scored = ds.select(ids=persons)
    for name in references:
        rep = evaluate(ds.inventory, scored, predict(name, ds, sem), sem, name=name, item_ids=items)
        d = rep.to_dict()
        rows.append(
            {
                "name": rep.name,
                "kind": "reference",
                **{
                    k: d[k]
                    for k in ("traits", "mean", "sum", "n_persons", "exact_match", "unparsed_rate")
                },
            }
        )
    return {
        "inventory": inv,
        "semantics": sem,
        "traits": ds.inventory.traits,
        "persons": persons,
        "same_persons": same,
        "max_items": max_items,
        "full": {"file": runs[0]["config"].get("full"), "sha256": source} if source else None,
        "rows": rows,
    }


def _f(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def compare_table(payload: dict[str, Any]) -> str:
    """Human table of :func:`compare_runs` output."""
    traits = payload["traits"]
    headers = ["method", "model", *traits, "mean", "sum", "exact", "unparsed", "persons"]
    rows = [
        [
            r["name"],
            r.get("model", "(reference)"),
            *[_f(r["traits"].get(t)) for t in traits],
            _f(r["mean"]),
            _f(r["sum"]),
            _f(r["exact_match"]),
            _f(r["unparsed_rate"]),
            r["n_persons"],
        ]
        for r in payload["rows"]
    ]
    head = (
        f"{payload['inventory']}, {payload['semantics']} semantics: mean absolute error per trait "
        f"(lower is better; sum = the paper's overall)"
    )
    if not payload["same_persons"]:
        head += "\nNOTE: the runs cover different persons; references use the first run's persons"
    return head + "\n\n" + format_table(headers, rows)
