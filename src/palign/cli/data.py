"""``palign data info|person|fetch`` and ``palign baselines``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from palign import __version__
from palign.cli.common import data_args, emit, fmt_arg
from palign.errors import PalignError


def cmd_data_info(args: argparse.Namespace) -> None:
    """Inventory, counts, split sizes, missing answers."""
    from palign.data import load_dataset
    from palign.eval.report import format_table

    ds = load_dataset(args.data, args.inventory)
    inv = ds.inventory
    per_trait = {}
    for t in inv.traits:
        its = [i for i in inv.items if i.trait == t]
        per_trait[t] = {
            "name": inv.trait_names[t],
            "items": len(its),
            "shown": sum(i.id in inv.shown_ids for i in its),
            "test": sum(i.id in inv.test_ids for i in its),
            "facets": len({i.facet for i in its}),
            "reverse_keyed": sum(i.key < 0 for i in its),
        }
    missing = sum(1 for p in ds.persons for v in p.stored.values() if not v)
    incomplete = sum(1 for p in ds.persons if any(not v for v in p.stored.values()))
    payload = {
        "inventory": inv.name,
        "source": ds.source,
        "items": len(inv.items),
        "shown": len(inv.shown_ids),
        "test": len(inv.test_ids),
        "persons": len(ds.persons),
        "missing_answers": missing,
        "persons_with_missing": incomplete,
        "stored": inv.stored,
        "traits": per_trait,
        "first_persons": [p.id for p in ds.persons[:5]],
    }
    rows = [
        [t, v["name"], v["items"], v["facets"], v["shown"], v["test"], v["reverse_keyed"]]
        for t, v in per_trait.items()
    ]
    human = (
        f"inventory {inv.name} from {ds.source}\n"
        f"{len(inv.items)} items ({len(inv.shown_ids)} shown, {len(inv.test_ids)} to predict), "
        f"{len(ds.persons)} persons, {missing} missing answers in {incomplete} persons\n"
        f"stored answers: {inv.stored} direction; first person ids: "
        f"{', '.join(payload['first_persons'])}\n\n"
        + format_table(["trait", "name", "items", "facets", "shown", "test", "reversed"], rows)
    )
    full = _full_sets(args, ds)
    if full is not None:
        payload["full_sets"] = full
        human += "\n\n" + (
            "\n".join(
                f"full set {f['file']} ({f['layout']}): {f['persons']} persons, "
                f"{f['items_per_person']} items each ({f['scored_items']} scored), "
                f"{f['complete_persons']} complete, {f['missing_answers']} missing answers"
                for f in full
            )
            or f"no full-set files in {ds.source}/full/ (PAPI-300K: see docs/scaling.md)"
        )
    emit(args, payload, human)


def _full_sets(args: argparse.Namespace, ds: Any) -> list[dict[str, Any]] | None:
    """Counts of the full-release files: --full FILE, else those in <data>/full/ (PAPI)."""
    from palign.data import find_full_files, full_info

    if getattr(args, "full", None):
        return [full_info(args.full, ds.inventory)]
    if ds.inventory.name != "ipip-neo" or not ds.source:
        return None
    return [full_info(f, ds.inventory) for f in find_full_files(ds.source)]


def cmd_data_person(args: argparse.Namespace) -> None:
    """A person's trait/facet profile (trait-direction means of their answers)."""
    from palign.data import check_semantics, load_dataset
    from palign.data.profile import facet_codes, trait_profile
    from palign.eval.report import format_table

    sem = check_semantics(args.semantics)
    ds = load_dataset(args.data, args.inventory)
    inv = ds.inventory
    p = ds.person(args.id)
    answers = p.answers(inv, sem)
    prof = {
        "shown": trait_profile(inv, answers, sem, inv.shown_ids),
        "test": trait_profile(inv, answers, sem, inv.test_ids),
    }

    def m(part: str, key: str) -> float | None:
        return prof[part].get(key)

    facets = facet_codes(inv)
    payload = {
        "person": p.id,
        "inventory": inv.name,
        "semantics": sem,
        "demographics": p.demographics,
        "missing": sum(1 for v in p.stored.values() if not v),
        "traits": {t: {"shown": m("shown", t), "test": m("test", t)} for t in inv.traits},
        "facets": {}
        if facets == inv.traits
        else {f: {"shown": m("shown", f), "test": m("test", f)} for f in facets},
        "persona": p.persona,
    }
    rows = [[t, inv.trait_names[t], m("shown", t), m("test", t)] for t in inv.traits]
    human = (
        f"person {p.id} ({inv.name}; {payload['missing']} missing answers; "
        f"{', '.join(f'{k}={v}' for k, v in p.demographics.items())})\n"
        "trait-direction mean answer (1..5) on the shown and on the test items:\n\n"
        + format_table(["trait", "name", "shown", "test"], [[str(c) for c in r] for r in rows])
    )
    if payload["facets"]:
        frows = [[f, v["shown"], v["test"]] for f, v in payload["facets"].items()]
        human += "\n\n" + format_table(["facet", "shown", "test"], frows)
    if p.persona:
        human += f"\n\nP² persona: {p.persona[:300]}{'...' if len(p.persona) > 300 else ''}"
    emit(args, payload, human)


def cmd_data_fetch(args: argparse.Namespace) -> None:
    """Download the public release files into the cache, verifying sha256 sums."""
    from palign.data import check_inventory, fetch

    check_inventory(args.inventory)
    lines: list[str] = []
    dest = fetch(args.inventory, args.dest, log=lambda s: print(s, file=sys.stderr))
    payload = {"inventory": args.inventory, "folder": str(dest), "verified": True}
    lines.append(f"{args.inventory} data verified in {dest}")
    emit(args, payload, "\n".join(lines))


# --- baselines ----------------------------------------------------------------------------
def cmd_baselines(args: argparse.Namespace) -> None:
    """Table of the reference predictors."""
    from palign.data import check_inventory, check_semantics, load_dataset
    from palign.eval.baselines import PREDICTORS, run_baselines
    from palign.eval.report import reports_table

    check_inventory(args.inventory)
    sem = check_semantics(args.semantics)
    names = args.predictors.split(",") if args.predictors else None
    for n in names or []:
        if n not in PREDICTORS:
            raise PalignError(f"unknown predictor {n!r}; use one of: {', '.join(PREDICTORS)}")
    ds = load_dataset(args.data, args.inventory)
    persons = args.person.split(",") if args.person else None
    reports = run_baselines(ds, sem, names, seed=args.seed, persons=persons)
    payload = {
        "inventory": ds.inventory.name,
        "semantics": sem,
        "seed": args.seed,
        "palign_version": __version__,
        "predictors": [
            {
                "name": r.name,
                "traits": {k: round(v, 4) for k, v in r.traits.items()},
                "mean": round(r.mean, 4),
                "sum": round(r.sum, 4),
                "n_persons": r.n_persons,
                "std": {k: round(v, 4) for k, v in r.std.items()},
                "exact_match": round(r.exact_match, 4),
            }
            for r in reports
        ],
    }
    human = (
        f"reference predictors on {ds.inventory.name} ({sem} semantics, {len(ds.persons)} "
        f"persons): mean absolute error per trait, lower is better; sum = the paper's overall\n\n"
        + reports_table(reports, ds.inventory.traits)
    )
    emit(args, payload, human)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data`` and ``baselines`` to the parser."""
    data = sub.add_parser("data", help="inspect and fetch the PAPI / SD3 data")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("info", help="inventory, counts, split sizes, missing answers")
    data_args(p, semantics=False)
    p.add_argument(
        "--full",
        metavar="FILE",
        help="also count the persons of a full-release file (PAPI-300K / PAPI-120-600K CSV; "
        "default: the files in <data dir>/full/)",
    )
    fmt_arg(p)
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("person", help="a person's trait/facet profile")
    p.add_argument("id", help="person id (PAPI 'case'; SD3 data row)")
    data_args(p)
    fmt_arg(p)
    p.set_defaults(func=cmd_data_person)
    p = dsub.add_parser("fetch", help="download the public release files (sha256-verified)")
    p.add_argument("--inventory", default="ipip-neo", help="ipip-neo (default) or sd3")
    p.add_argument("--dest", metavar="DIR", help="target folder (default: the user cache)")
    fmt_arg(p)
    p.set_defaults(func=cmd_data_fetch)
    data.set_defaults(func=lambda a: data.print_help())

    p = sub.add_parser("baselines", help="table of the reference predictors (no LLM)")
    data_args(p)
    p.add_argument("--predictors", help="comma-separated subset (default: all)")
    p.add_argument("--person", help="comma-separated person ids to score (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ridge folds (default 0)")
    fmt_arg(p)
    p.set_defaults(func=cmd_baselines)
