"""What the demo prints and draws: the terminal bar chart, two wrapped columns, the PNG, and
the whole report from the demo's result dict (:func:`palign.demo.run.run_demo`)."""

from __future__ import annotations

import math
import textwrap
from itertools import zip_longest
from pathlib import Path
from typing import Any

from palign.demo.select import option_label

BAR_WIDTH = 24
"""Characters of a bar for the whole 1..5 scale (6 per scale point)."""

_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(score: float | None, width: int = BAR_WIDTH, lo: float = 1.0, hi: float = 5.0) -> str:
    """A fixed-width horizontal bar for ``score`` on ``lo..hi`` in unicode blocks (1/8 steps);
    the rest of the width is dotted so every bar has the same length. None: all dots."""
    if score is None or not math.isfinite(score):
        return "·" * width
    frac = min(max((score - lo) / (hi - lo), 0.0), 1.0)
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    s = "█" * full + (_EIGHTHS[part] if part else "")
    return s + "·" * (width - len(s))


def scale_line(width: int = BAR_WIDTH, lo: int = 1, hi: int = 5) -> str:
    """Tick labels under a bar: ``1`` at its left edge ... ``5`` at its right edge."""
    cells = [" "] * (width + 1)
    for v in range(lo, hi + 1):
        cells[round((v - lo) / (hi - lo) * width)] = str(v)
    return "".join(cells)


def profile_chart(profile: dict[str, Any]) -> str:
    """The person's trait scores as bars, with the population mean and percentile beside."""
    traits = profile["traits"]
    name_w = max(len(t["name"]) for t in traits.values())
    lines = [
        f"{'':{name_w}}  {'score':>5}  {'1 = low ... 5 = high':<{BAR_WIDTH}}  "
        f"{'population mean':>15}  percentile"
    ]
    for t in traits.values():
        s, mean, pct = t["score"], t["population_mean"], t["percentile"]
        lines.append(
            f"{t['name']:<{name_w}}  {_num(s, 5)}  {bar(s)}  {_num(mean, 15)}  "
            + ("" if pct is None else f"{pct:>10.0f}")
        )
    lines.append(f"{'':{name_w}}  {'':5}  {scale_line()}")
    return "\n".join(lines)


def _num(v: float | None, w: int) -> str:
    return f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"


def two_columns(left: str, right: str, titles: tuple[str, str], width: int = 38) -> str:
    """Two texts side by side, each wrapped to ``width`` characters, with a title above."""
    a = [titles[0], "-" * min(width, len(titles[0]))] + (textwrap.wrap(left, width) or ["(empty)"])
    b = [titles[1], "-" * min(width, len(titles[1]))] + (textwrap.wrap(right, width) or ["(empty)"])
    return "\n".join(f"{x:<{width}}  │  {y}".rstrip() for x, y in zip_longest(a, b, fillvalue=""))


def write_profile_png(profile: dict[str, Any], path: str | Path) -> Path | None:
    """Draw the person's trait scores beside the population's (mean and 25-75% range) into a
    PNG; None when matplotlib is not installed (``pip install 'palign[plots]'``)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traits = list(profile["traits"].values())
    names = [t["name"] for t in traits][::-1]
    scores = [t["score"] if t["score"] is not None else float("nan") for t in traits][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(traits) + 2.0), dpi=100)
    ys = range(len(traits))
    ax.barh(ys, [s - 1 for s in scores], left=1, height=0.5, color="#4C72B0", label="person")
    for y, t in zip(ys, traits[::-1]):
        lo, hi = t["population_q25"], t["population_q75"]
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [y + 0.36, y + 0.36], color="#555555", lw=2)
        if t["population_mean"] is not None:
            ax.plot([t["population_mean"]], [y + 0.36], "k|", ms=12, mew=2)
        if t["score"] is not None:
            ax.text(
                t["score"] + 0.05,
                y,
                f"{t['score']:.2f} (percentile {t['percentile']:.0f})",
                va="center",
                fontsize=9,
            )
    ax.plot([], [], color="#555555", lw=2, label="population: 25-75% range, | = mean")
    ax.set_yticks(list(ys), names)
    ax.set_xlim(1, 5.9)
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.set_xlabel("trait score: mean answer in the trait's direction (1 = low, 5 = high)")
    ax.set_title(
        f"Person {profile['person']}: {profile['label']} from {profile['items']} shown answers,\n"
        f"vs the {profile['population_persons']} persons of the {profile['population']}",
        fontsize=10,
    )
    # the legend above the plot area's right edge, clear of the bars and their labels
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, -0.16), fontsize=8, frameon=False, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


_MOVED = {
    "toward": "closer to the person than vanilla",
    "away": "farther from the person than vanilla",
    "same distance": "as far from the person as vanilla",
}


def _verdict(numbers: dict[str, Any]) -> str | None:
    """One line: PAS's mean error against vanilla's on the items read."""
    rows = {r["name"]: r for r in numbers["rows"] if r.get("kind") == "run"}
    van, pas = rows.get("vanilla"), rows.get("pas")
    if not van or not pas or van["mean"] is None or pas["mean"] is None:
        return None
    a, b = pas["mean"], van["mean"]
    how = "closer to" if a < b else "farther from" if a > b else "as close to"
    return f"-> PAS is {how} the person than vanilla here: mean error {a:.3f} vs {b:.3f}"


def _section(n: int, title: str) -> str:
    return f"\n{n}. {title}\n" + "=" * (len(title) + 3)


def render(result: dict[str, Any], compare_table: str) -> str:
    """The demo's terminal report (``compare_table``: the numbers as ``palign compare``)."""
    h, prof, ans, words = result["header"], result["profile"], result["answers"], result["words"]
    pas = result["pas"]
    lines = [
        f"palign demo: {h['model']} aligned to person {h['person']} ({h['person_rule']})",
        f"  read {h['items_read']} of the {h['items_total']} held-out test items; PAS steered "
        f"at {pas['steer_position']} positions with alpha {pas['alpha']}, {pas['alpha_how']}; "
        f"took {h['seconds']:.0f} s",
    ]
    if h.get("full_command"):
        lines.append(f"  full evaluation (all {h['items_total']} items): {h['full_command']}")
    lines.append(
        _section(
            1, f"The person: {prof['person']}'s {prof['label']} from {prof['items']} shown answers"
        )
    )
    lines.append(profile_chart(prof))
    lines.append(
        f"population: the {prof['population_persons']} persons of the {prof['population']}; "
        "percentile = share of them below this person (ties half)"
    )
    if prof.get("png"):
        lines.append(f"chart: {prof['png']}")
    lines.append(
        _section(
            2,
            "The numbers: mean absolute error per trait on the test items "
            "(answers 1..5; lower = closer to the person)",
        )
    )
    lines.append(compare_table)
    lines.append(
        "references need no language model: constant-3 always answers C; item-median, "
        "facet-mean and ridge predict from the other persons' answers and this person's shown "
        "answers (palign baselines)"
    )
    verdict = _verdict(result["numbers"])
    if verdict:
        lines.append(verdict)
    lines.append(_section(3, "The answers: held-out statements where vanilla and PAS disagree"))
    lines.append(f"rule: {ans['rule']}")
    lines.append(
        f"of {ans['read']} items read they disagree on {ans['disagreeing']}: PAS closer to the "
        f"person on {ans['toward']}, farther on {ans['away']}, as far on {ans['same_distance']}"
    )
    if not ans["items"]:
        lines.append("(nothing to show: vanilla and PAS give the same answer to every item read)")
    elif len(ans["items"]) < 3:
        lines.append(f"(only {len(ans['items'])} disagreeing item(s) to show)")
    for d in ans["items"]:
        lines.append(f'\n  "{d["text"]}"  (item {d["item"]}, {d["trait_name"]})')
        lines.append(f"    person:  {option_label(d['person'])}")
        lines.append(f"    vanilla: {option_label(d['vanilla'])}")
        lines.append(f"    PAS:     {option_label(d['aligned'])}  -> {_MOVED[d['direction']]}")
    lines.append(_section(4, f'The words: "{words["question"]}"'))
    lines.append(
        f"greedy, {words['max_new_tokens']} new tokens at most, seed {words['seed']}; "
        f"PAS steered at {words['steer_position']} positions, alpha {pas['alpha']}"
    )
    lines.append("")
    lines.append(two_columns(words["vanilla"], words["aligned"], ("vanilla", "PAS (aligned)")))
    if pas["alpha"] == 0:
        lines.append(
            "\nPAS chose alpha 0 for this person on this model: the aligned model is the base "
            "model here, so the two agree everywhere."
        )
    elif words["vanilla"] == words["aligned"]:
        lines.append("\n(the same text: at this alpha the shift does not change the greedy answer)")
    lines.append(_section(5, "What to do next"))
    lines.extend(f"  {c['what']}:\n    {c['command']}" for c in result["next"])
    return "\n".join(lines)
