"""The ``palign`` command line: a thin layer over the Python API.

Every command prints a human table by default and JSON with ``--format json``. Bad input
prints one line ``palign: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from palign import __version__
from palign.errors import PalignError

EXIT_USAGE = 2


def _emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    if getattr(args, "format", "table") == "json":
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(human)


def _data_args(p: argparse.ArgumentParser, semantics: bool = True) -> None:
    p.add_argument(
        "--data",
        metavar="DIR",
        help="folder with the release files (default: $PALIGN_DATA, else the cache filled by "
        "'palign data fetch'); for sd3 the folder, its sd3/ subfolder or its sibling sd3/",
    )
    p.add_argument(
        "--inventory",
        default="ipip-neo",
        help="ipip-neo (PAPI, Big Five; default) or sd3 (Short Dark Triad)",
    )
    if semantics:
        p.add_argument(
            "--semantics",
            default="agreement",
            help="agreement (default: the answer to the statement; 6-v for reverse-keyed PAPI "
            "items) or paper (the stored value, as the original code did)",
        )


def _fmt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")


# --- data ---------------------------------------------------------------------------------
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
    _emit(args, payload, human)


def cmd_data_person(args: argparse.Namespace) -> None:
    """A person's trait/facet profile (trait-direction means of their answers)."""
    import numpy as np

    from palign.data import check_semantics, load_dataset
    from palign.eval.report import format_table

    sem = check_semantics(args.semantics)
    ds = load_dataset(args.data, args.inventory)
    inv = ds.inventory
    p = ds.person(args.id)
    answers = p.answers(inv, sem)
    by: dict[str, dict[str, list[float]]] = {"shown": {}, "test": {}}
    for iid, a in answers.items():
        it = inv.item(iid)
        part = "shown" if iid in inv.shown_ids else "test"
        v = inv.to_trait(it, a, sem)
        by[part].setdefault(it.trait, []).append(v)
        by[part].setdefault(it.facet, []).append(v)

    def m(part: str, key: str) -> float | None:
        vals = by[part].get(key)
        return round(float(np.mean(vals)), 3) if vals else None

    facets = sorted({i.facet for i in inv.items}, key=lambda f: (inv.traits.index(f[0]), f))
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
    _emit(args, payload, human)


def cmd_data_fetch(args: argparse.Namespace) -> None:
    """Download the public release files into the cache, verifying sha256 sums."""
    from palign.data import check_inventory, fetch

    check_inventory(args.inventory)
    lines: list[str] = []
    dest = fetch(args.inventory, args.dest, log=lambda s: print(s, file=sys.stderr))
    payload = {"inventory": args.inventory, "folder": str(dest), "verified": True}
    lines.append(f"{args.inventory} data verified in {dest}")
    _emit(args, payload, "\n".join(lines))


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
    _emit(args, payload, human)


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job: align the embedded model to one PAPI person with PAS and print the
    evaluation beside vanilla and the reference predictors."""
    from palign.cli_models import cmd_demo as demo

    demo(args)


# --- parser -------------------------------------------------------------------------------
Registrar = Callable[[argparse._SubParsersAction], None]
EXTRA_COMMANDS: list[Registrar] = []


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``palign``."""
    ap = argparse.ArgumentParser(
        prog="palign",
        description="Align an open LLM with one person's personality from their questionnaire "
        "answers, and measure how well it worked (PAPI benchmark, PAS method).",
    )
    ap.add_argument("--version", action="version", version=f"palign {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="inspect and fetch the PAPI / SD3 data")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("info", help="inventory, counts, split sizes, missing answers")
    _data_args(p, semantics=False)
    _fmt_arg(p)
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("person", help="a person's trait/facet profile")
    p.add_argument("id", help="person id (PAPI 'case'; SD3 data row)")
    _data_args(p)
    _fmt_arg(p)
    p.set_defaults(func=cmd_data_person)
    p = dsub.add_parser("fetch", help="download the public release files (sha256-verified)")
    p.add_argument("--inventory", default="ipip-neo", help="ipip-neo (default) or sd3")
    p.add_argument("--dest", metavar="DIR", help="target folder (default: the user cache)")
    _fmt_arg(p)
    p.set_defaults(func=cmd_data_fetch)
    data.set_defaults(func=lambda a: data.print_help())

    p = sub.add_parser("baselines", help="table of the reference predictors (no LLM)")
    _data_args(p)
    p.add_argument("--predictors", help="comma-separated subset (default: all)")
    p.add_argument("--person", help="comma-separated person ids to score (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ridge folds (default 0)")
    _fmt_arg(p)
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser(
        "demo",
        help="align the embedded model to one PAPI person (PAS) and evaluate it beside vanilla "
        "and the reference predictors",
    )
    p.add_argument("--person", default=None, help="PAPI person id (default: the first person)")
    p.add_argument("--model", default="smollm2", help="model (default: the embedded SmolLM2)")
    p.add_argument("--out", default="runs/demo", help="run folders (default runs/demo)")
    p.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="only this many test items (quick look; default all 180)",
    )
    _data_args(p)
    _fmt_arg(p)
    p.set_defaults(func=cmd_demo)

    for register in EXTRA_COMMANDS:
        register(sub)
    try:
        from palign import cli_models

        cli_models.register(sub)
    except ImportError as e:  # pragma: no cover - only while the model layer is absent
        if "palign.cli_models" not in str(e) and "cli_models" not in str(e):
            raise
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``palign`` console command."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        args.func(args)
    except PalignError as e:
        print(f"palign: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("palign: interrupted (finished work is saved; rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
