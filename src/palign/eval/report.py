"""Human tables and JSON for reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

from palign.eval.metrics import Report


def _f(v: float | None, nd: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (first column left-aligned, others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def reports_table(
    reports: Sequence[Report], traits: Sequence[str], label: str = "predictor"
) -> str:
    """Table of per-trait MAE, mean and sum (the paper's overall) per report; lower is better."""
    headers = [label, *traits, "mean", "sum", "exact", "unparsed", "persons"]
    rows = [
        [
            r.name,
            *[_f(r.traits.get(t)) for t in traits],
            _f(r.mean),
            _f(r.sum),
            _f(r.exact_match),
            _f(r.unparsed_rate),
            r.n_persons,
        ]
        for r in reports
    ]
    return format_table(headers, rows)
