"""The PAPI results table: every method and reference predictor for one model and N persons.

    python benchmarks/papi_table.py --model smollm2 --persons 10 --name smollm2-10
    python benchmarks/papi_table.py --model qwen2.5-coder-1.5b --persons 10 \
        --name qwen2.5-coder-1.5b-papi-10      # after ./dev setup --models qwen2.5-coder-1.5b

Methods are entries ``method[@position][:selection]``: ``pas@all`` is PAS with the paper's
all-position steering, ``pas@last`` the last-position variant, ``pas@all:tuned`` the
all-position variant with a rule tuned on development persons (``tuned``) instead of the
default held-out search. Writes docs/results/<name>.md/.json and PNG
plots; runs go to runs/<name>/<entry> and are reused (finished persons are not recomputed).
``--report-only`` writes the page from what is finished so far (unfinished entries listed).
"""

from __future__ import annotations

import argparse
import sys

from palign.data import load_dataset
from palign.errors import PalignError
from palign.eval.papi_report import ALL_METHODS, build_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        default="smollm2",
        help="model alias (see 'palign models': smollm2, qwen2.5-coder-1.5b, ...), hub id, "
        "folder or .gguf file",
    )
    ap.add_argument("--persons", type=int, default=10)
    ap.add_argument("--name", default=None, help="report name (default <model>-<persons>)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--data", default=None)
    ap.add_argument("--inventory", default="ipip-neo")
    ap.add_argument("--semantics", default="agreement")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--alpha-selection",
        default="heldout",
        choices=("heldout", "tuned", "oracle", "fixed"),
        help="PAS alpha selection of every PAS entry without its own ':selection' suffix "
        "(default heldout; tuned: the model's rule tuned on development persons)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing: write the page from the persons finished so far",
    )
    ap.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph for the page header (measurement conditions); repeatable",
    )
    args = ap.parse_args(argv)
    name = args.name or f"{args.model.replace('/', '_')}-{args.persons}"
    try:
        ds = load_dataset(args.data, args.inventory)
        methods = [m for m in args.methods.split(",") if m]
        d = build_report(
            ds,
            name,
            args.model,
            args.persons,
            methods=methods,
            semantics=args.semantics,
            runs_dir=args.runs,
            out_dir=args.out,
            max_items=args.max_items,
            seed=args.seed,
            options={"alpha_selection": args.alpha_selection},
            report_only=args.report_only,
            notes=args.note,
        )
    except PalignError as e:
        print(f"papi_table: error: {e}", file=sys.stderr)
        return 2
    from palign.eval.papi_report import markdown

    print(markdown(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
