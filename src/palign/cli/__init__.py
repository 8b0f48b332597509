"""The ``palign`` command line: a thin shell over the Python API.

One module per command group, each with a ``register(sub)`` function; shared helpers live in
:mod:`palign.cli.common`. Command modules import only ``common`` (never each other), so
there are no import cycles. Every command prints a human table by default and JSON with
``--format json``. Bad input prints one line ``palign: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from palign import __version__
from palign.cli.common import EXIT_USAGE
from palign.errors import PalignError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: command modules in the order their commands appear in ``palign --help``
COMMAND_MODULES: list[str] = [
    "palign.cli.data",
    "palign.cli.eval",
    "palign.cli.pas",
    "palign.cli.serve",
    "palign.cli.app",
    "palign.cli.models",
    "palign.cli.judge",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``palign``."""
    ap = argparse.ArgumentParser(
        prog="palign",
        description="Align an open LLM with one person's personality from their questionnaire "
        "answers, and measure how well it worked (PAPI benchmark, PAS method).",
    )
    ap.add_argument("--version", action="version", version=f"palign {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
