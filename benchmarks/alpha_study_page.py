"""The page of the alpha study (``alpha_study.py --report``): per-person curves, rules, the
ORACLE headroom and the direction candidates, as markdown."""

from __future__ import annotations

from typing import Any

import numpy as np

import alpha_study_directions as directions


def best(curve: dict[str, float]) -> float:
    """The alpha with the lowest value (ties: the smaller alpha)."""
    return min((float(k) for k in curve), key=lambda al: (curve[format(al, "g")], al))


def _curve_table(curves: dict[str, Any], diag: dict[str, Any], key: str) -> list[str]:
    grid = list(next(iter(curves.values()))[key])
    lines = [
        "| person | " + " | ".join(f"alpha {g}" for g in grid) + " | best | fold/final cosine"
        " | fold/final norm |",
        "|---|" + "---|" * (len(grid) + 3),
    ]
    for pid, c in curves.items():
        dg = diag.get(pid, [])
        cos = np.mean([x["cosine"] for x in dg]) if dg else float("nan")
        nr = np.mean([x["norm_ratio"] for x in dg]) if dg else float("nan")
        lines.append(
            f"| {pid} | "
            + " | ".join(f"{c[key][g]:.3f}" for g in grid)
            + f" | {best(c[key]):g} | {cos:.2f} | {nr:.2f} |"
        )
    means = [np.mean([c[key][g] for c in curves.values()]) for g in grid]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " | | | |")
    return lines


def _headroom_lines(h: dict[str, Any]) -> list[str]:
    """The ORACLE headroom table of the reported persons."""
    has_h = "heldout" in h
    lines = [
        "### ORACLE headroom (an upper bound, never a result)",
        "",
        "ORACLE: the best alpha per person chosen on the scored test items themselves (the "
        "paper's choice). Split-half ORACLE: the best alpha on every other test item, scored "
        "on the other half (both ways, averaged; beside it alpha 0 on the same halves): the "
        "part of the ORACLE's gain that survives choosing on other items than the scored ones.",
        "",
        "| person | alpha 0 | "
        + ("held-out search (alpha) | " if has_h else "")
        + "ORACLE (alpha) | split-half: alpha 0 | split-half ORACLE |",
        "|---|---|" + ("---|" if has_h else "") + "---|---|---|",
    ]
    for pid, r in h["per_person"].items():
        held = f"{r['heldout']:.3f} ({r['heldout_alpha']:g}) | " if has_h else ""
        shz = "-" if r.get("split_half_zero") is None else f"{r['split_half_zero']:.3f}"
        lines.append(
            f"| {pid} | {r['zero']:.3f} | {held}{r['oracle']:.3f} ({r['oracle_alpha']:g}) | "
            f"{shz} | {r['split_half_oracle']:.3f} |"
        )
    held = f"**{h['heldout']:.3f}** | " if has_h else ""
    lines.append(
        f"| **mean** | **{h['zero']:.3f}** | {held}**{h['oracle']:.3f}** | "
        f"**{h.get('split_half_zero', float('nan')):.3f}** | **{h['split_half_oracle']:.3f}** |"
    )
    n = len(h["per_person"])
    lines += [
        "",
        f"The ORACLE steers {h['oracle_nonzero']} of {n} persons and is better than alpha 0 "
        f"for {h['oracle_better']} of {n}"
        + (
            f"; the split-half ORACLE beats alpha 0 on the other half for "
            f"{h['split_half_better']} of {n}"
            if "split_half_better" in h
            else ""
        )
        + (
            f". The held-out search keeps {100 * h['heldout_kept']:.0f}% of the ORACLE's gain "
            "over alpha 0"
            if "heldout_kept" in h
            else ""
        )
        + ".",
    ]
    return lines


def markdown(d: dict[str, Any]) -> str:
    """The page of one model's study (see the module doc)."""
    m = d["model"]
    out = [f"# Alpha study: {m}", ""]
    n_dev, n_rep = len(d["dev_persons"]), len(d["reported_persons"])
    ti = d.get("test_items", {})
    out += [
        (
            f"Development persons (PAPI test-set positions 200-299): {n_dev} "
            f"({', '.join(d['dev_persons'])}), {ti.get('dev', '-')} test items each. "
            if n_dev
            else "No development persons on this page. "
        )
        + f"Reported persons (the first of the test set): {n_rep}, "
        f"{ti.get('reported', '-')} test items each. PAS with the neutral prompt, K 24, mean "
        "ranking, steering at all positions, logits readout, seed 0; the direction is the final "
        "fit on all shown items.",
        "",
    ]
    if d["curves"]["dev"]:
        out += ["## Development persons: sum of trait MAEs per alpha (test items)", ""]
        out += _curve_table(d["curves"]["dev"], d["diag"], "test_sum")
        out += ["", "Rules on the development persons (mean sum of trait MAEs):", ""]
        out += ["| rule | mean | ± 95% | non-zero alpha | better / worse than alpha 0 |"]
        out += ["|---|---|---|---|---|"]
        for name, r in sorted(d["dev"].items(), key=lambda kv: kv[1]["mean_sum"]):
            out.append(
                f"| {name} | {r['mean_sum']:.3f} | {r['ci95']:.2f} | {r['nonzero']}/{r['n']} | "
                f"{r['wins']} / {r['losses']} |"
            )
        out += [
            "",
            f"Chosen on the development persons: **{d['chosen']['name']}** (a candidate: see "
            "[alpha-selection.md](alpha-selection.md) for its result on the reported persons).",
            "",
        ]
    out += directions.markdown_lines(d.get("directions", {}).get("dev", {}), "development")
    out += directions.markdown_lines(d.get("directions", {}).get("reported", {}), "reported")
    if d["curves"]["reported"]:
        if d["reported"]:
            out += ["## Reported persons: the rules applied unchanged", ""]
            out += ["| rule | mean | ± 95% | non-zero alpha | better / worse than alpha 0 |"]
            out += ["|---|---|---|---|---|"]
        for name, r in sorted(d["reported"].items(), key=lambda kv: kv[1]["mean_sum"]):
            mark = " (chosen on dev)" if d.get("chosen") and name == d["chosen"]["name"] else ""
            out.append(
                f"| {name}{mark} | {r['mean_sum']:.3f} | {r['ci95']:.2f} | "
                f"{r['nonzero']}/{r['n']} | {r['wins']} / {r['losses']} |"
            )
        if "headroom" in d:
            out += ["", *_headroom_lines(d["headroom"])]
        out += ["", "Per person (sum of trait MAEs; the test curve is the ORACLE's view):", ""]
        out += _curve_table(d["curves"]["reported"], d["diag"], "test_sum")
    return "\n".join(out) + "\n"
