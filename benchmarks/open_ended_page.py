"""The page of the open-ended table (``open_ended_table.py``): the markdown and the plot,
written from the data :func:`open_ended_table.collect` gathers (pure: no model, no files read)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np


def family(model: str | None) -> str:
    """A model's family: the leading letters of its name (``qwen2.5-coder-1.5b`` -> ``qwen``,
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` -> ``smollm``)."""
    name = (model or "").rstrip("/").split("/")[-1].lower()
    m = re.match(r"[a-z]+", name)
    return m.group(0) if m else name


def _ci(d: dict[str, Any] | None, nd: int = 2) -> str:
    if not d or d.get("mean") is None:
        return "-"
    if d.get("lo") is None:
        return f"{d['mean']:.{nd}f}"
    return f"{d['mean']:.{nd}f} [{d['lo']:.{nd}f}, {d['hi']:.{nd}f}]"


def _f(x: Any, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def plot(d: dict[str, Any], path: Path) -> bool:
    """Per-method distributions: the parsed rubric scores of all items (left), their
    probability-weighted scores (middle), the per-person stance error sums (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in d["rows"] if "rubric" in r]
    if not rows:
        return False
    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(rows)
    x = np.arange(1, 7)
    for k, r in enumerate(rows):
        h = np.asarray(r["histogram"], dtype=float)
        a1.bar(x - 0.4 + width * (k + 0.5), h / max(h.sum(), 1), width, label=r["method"])
    a1.set_xticks(x)
    a1.set_xlabel("rubric score (1 = not aligned, 6 = perfectly aligned)")
    a1.set_ylabel("share of parsed judgements")
    a1.set_title("rubric scores, all items")
    a1.legend(fontsize=8)
    w = [r.get("weighted_items") or [] for r in rows]
    for k, vals in enumerate(w):
        if vals:
            a3.boxplot([vals], positions=[k], widths=0.5, showfliers=False)
            jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
            a3.scatter(np.full(len(vals), k) + jitter, vals, s=10, alpha=0.5)
    a3.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=15)
    a3.set_ylim(1, 6)
    a3.set_ylabel("weighted rubric score (sum k p_k)")
    a3.set_title("weighted rubric scores, all items")
    data = [[v for v in r["stance"]["person_sums"].values() if v is not None] for r in rows]
    for k, vals in enumerate(data):
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
        a2.scatter(np.full(len(vals), k) + jitter, vals, s=18, alpha=0.7)
        if vals:
            a2.hlines(np.mean(vals), k - 0.3, k + 0.3, color="black")
    ref = (d.get("reference") or {}).get("stance")
    if ref and ref["error"].get("mean") is not None:
        a2.axhline(
            ref["error"]["mean"],
            linestyle="--",
            color="grey",
            label=f"every answer read as {ref['reading']} (mean)",
        )
        a2.legend(fontsize=8, loc="lower right")
    a2.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=15)
    a2.set_ylim(0, max([4.0, *[v for vals in data for v in vals]]) * 1.05)
    a2.set_ylabel("sum of the 5 trait MAEs (lower is better)")
    a2.set_title("stance error per person (bar: mean)")
    fig.suptitle(f"{d['model']}: {len(d['persons'])} persons x {d['n_items']} statements")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def steering_lines(steering: dict[str, Any]) -> list[str]:
    """The page's account of what PAS actually steered (:func:`open_ended_table.steering_summary`):
    per PAS entry the persons with alpha > 0 and their alphas, the texts identical to its base
    method's, and the steered persons' figures next to the base's."""
    if not steering:
        return []
    lines = [
        "",
        "**What PAS steered**: each PAS person's alpha comes from a held-out search that keeps "
        "alpha 0 where no alpha helped on the person's held-out shown items; at alpha 0 the "
        "entry is its base method's aligned state (vanilla for pas, few-shot for "
        "pas+few-shot).",
        "",
    ]
    for entry, s in steering.items():
        n, st = s["n_persons"], s["steered"]
        alist = ", ".join(f"{p}: {s['alphas'][p]:g}" for p in st)
        line = f"- {entry}: alpha > 0 for {len(st)} of {n} persons" + (f" ({alist})" if st else "")
        ident = s.get("identical")
        if ident:
            a, z, t = ident["all"], ident["alpha0"], ident["steered"]
            line += (
                f"; texts identical to {s['base']}'s: {a['same']}/{a['n']} "
                f"({z['same']}/{z['n']} of the persons at alpha 0, {t['same']}/{t['n']} of the "
                "steered)"
            )
        sf = s.get("steered_figures")
        if sf:
            who = f"{len(st)} steered person" + ("" if len(st) == 1 else "s")
            line += (
                f"; on the {who}: rubric {_f(sf['rubric'])} against "
                f"{s['base']}'s {_f(sf['base_rubric'])}, stance error {_f(sf['stance_error'])} "
                f"against {_f(sf['base_stance_error'])}"
            )
        lines.append(line + ".")
    if any(s["base"] == "vanilla" and s.get("identical") for s in steering.values()):
        lines += [
            "",
            "Vanilla's texts are sampled once for all persons; the other methods sample with "
            "each person's own seed, so a person at alpha 0 gets exactly its base's texts "
            "where the base is person-specific (few-shot) and other samples of the same state "
            "where it is vanilla.",
        ]
    return lines


def markdown(
    d: dict[str, Any], commands: dict[str, list[list[str]]], argv: list[str], png: str | None
) -> str:
    """The results page."""
    c = d["config"]
    j = d["judge"] or {}
    served = (
        f"an OpenAI-compatible endpoint ({j.get('base_url')})"
        if j.get("base_url")
        else "in-process by palign (transformers)"
    )
    resolved = ", ".join(j.get("resolved_models") or []) or j.get("model") or c["judge_model"]
    lines = [
        f"# Open-ended alignment on {d['model']}: {len(d['persons'])} persons x "
        f"{d['n_items']} statements",
        "",
        f"Each method aligns {d['model']} to each of the first {c['persons']} PAPI test persons "
        f'from their shown answers and answers, in free text, "Tell me in a few sentences how '
        f'well this describes you" for the same {d["n_items"]} test statements (spread over '
        f"the five traits; temperature {c['temperature']:g}, at most {c['max_new_tokens']} new "
        f"tokens, seed {c['seed']}; PAS steers at every position). Persons: "
        f"{', '.join(d['persons'])}.",
        "",
        f"**Judge**: {resolved}, served {served}, protocol {c['protocol']}"
        + (
            f" (judge settings: {j.get('dtype')}, batch {j.get('batch_size')})"
            if j.get("kind") == "local"
            else ""
        )
        + ".",
    ]
    gm = next(iter(d["generation"].values()), {}).get("model", {})
    if family(resolved) == family(gm.get("id") or d["model"]):
        lines += [
            "",
            f"The judge is of the generator's own family ({family(resolved)}): it may favour "
            "its own family's wording; the validation figures below bound how well it reads "
            "a stance at all.",
        ]
    vals = d["validation"]
    if isinstance(vals, dict):  # format 1 pages: one validation
        vals = [vals]
    lines.append("")
    if not vals:
        lines.append(
            "**Judge validation**: missing. No `palign judge-validate` result was given "
            "(`--validation`); the figures below are not backed by a measured judge."
        )
    for v in vals:
        per = v.get("mean_reading_per_level") or {}
        lines += [
            f"**Judge validation** (`palign judge-validate`, texts written by {v['generator']} "
            f"at each stance 1-5 for {v['statements']} statements, read back by {v['judge']} "
            f"{v['served']}, {v['protocol']}): {v['n_texts']} texts, unparsed "
            f"{_f(v['unparsed_rate'], 3)}, Spearman {_f(v['spearman'], 3)}, exact "
            f"{_f(v['exact_agreement'], 3)}, within one {_f(v['within_one'], 3)}, MAE "
            f"{_f(v['mae'], 3)}; weighted: Spearman {_f(v['spearman_weighted'], 3)}, MAE "
            f"{_f(v['mae_weighted'], 3)}"
            + (
                "; mean reading per instructed stance 1..5: "
                + ", ".join(_f(per[k]) for k in sorted(per))
                if per
                else ""
            )
            + ".",
            "",
        ]
    if vals and lines[-1] == "":
        lines.pop()
    base = d["baseline"]
    lines += [
        "",
        f"| method | rubric score [95% CI] | weighted | vs {base or 'baseline'} (W/T/L) | "
        "rubric unparsed | stance error [95% CI] | weighted | MC error, same rows | "
        "MC vs stance: MAE | exact | Spearman | stance unparsed | first person |",
        "|---|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        ru, st = r["rubric"], r["stance"]
        cons = st["consistency"] or {}
        vs = r.get("vs_base")
        lines.append(
            f"| {r['method']} | {_ci(ru['score'])} | {_ci(ru['weighted'])} | "
            + (f"{vs['wins']}/{vs['ties']}/{vs['losses']}" if vs else "-")
            + f" | {ru['unparsed']}/{ru['n_items']} | {_ci(st['error'])} | "
            f"{_ci(st['error_weighted'])} | {_ci(st['mc_error'])} | {_f(cons.get('mae'))} | "
            f"{_f(cons.get('exact_agreement'))} | {_f(cons.get('spearman'))} | "
            f"{_f(st['unparsed_rate'])} | "
            + (
                f"{r['voice']['first_person']}/{r['voice']['n']}"
                if r.get("voice") and r["voice"]["n"]
                else "-"
            )
            + " |"
        )
    ref = d.get("reference")
    if ref:
        st, ru = ref["stance"], ref["rubric"]
        lines += [
            "",
            f"**A judge that reads one value everywhere**: this judge's most common stance "
            f"reading is {st['reading']} ({st['share']:.0%} of its {st['n_readings']} stance "
            f"readings over all methods); reading *every* answer as {st['reading']} gives a "
            f"stance error of {_ci(st['error'])} on these persons and statements. A method's "
            "stance error says something about its free text only where it differs from this "
            "anchor."
            + (
                f" Its most common rubric score is {ru['score']} ({ru['share']:.0%} of its "
                f"{ru['n']} parsed rubric judgements)."
                if ru
                else ""
            ),
        ]
    lines += steering_lines(d.get("steering") or {})
    if d["missing"]:
        lines += ["", f"Not finished yet: {', '.join(d['missing'])}."]
    lines += [
        "",
        "- **rubric score**: the paper's 1-6 rubric (6 = perfectly aligned with the person's "
        "own answer), per person the mean over their parsed judgements, then the mean and 95% "
        "t-interval over persons; *weighted*: the same on `sum k p_k` over the six digits.",
        f"- **W/T/L**: persons whose mean rubric score is above / equal to / below "
        f"{base or 'the baseline'}'s.",
        "- **stance error**: the judge's 1-5 reading of each free-text answer (`palign judge "
        "--mode stance`) against the person's own answer; per person the sum of the five "
        "trait MAEs (the multiple-choice tables' scale, 0-20; lower is better), mean and 95% "
        "interval over the persons with every trait read.",
        "- **MC error, same rows**: the method's own multiple-choice answer (`mc_answer`, read "
        "as `palign eval` reads it, in the same aligned state) against the person's answer, "
        "same scale.",
        '- **first person**: answers that open in the first person ("I ...", "My ...", '
        '"As someone ..."), speaking *as* the person the question addresses, not about '
        "them; no judge involved.",
        "- **MC vs stance**: the multiple-choice answer against the reading of the same "
        "method's free text on the same statement (is the aligned model consistent with "
        "itself?), over items where both are parsed.",
    ]
    if png:
        lines += ["", f"![score distributions]({png})"]
    if d.get("examples"):
        ex = d["examples"]
        lines += [
            "",
            "## Examples",
            "",
            f"Person {ex[0]['person']}'s first {len(ex)} statements, as each method answered "
            "them (the texts are the run's, unedited; MC = the method's multiple-choice "
            "answer, stance = the judge's 1-5 reading of the text; 5 = Very Accurate).",
        ]
        for e in ex:
            lines += [
                "",
                f"**{e['statement']}** (the person's answer: {e['answer']})",
                "",
                "| method | MC | stance | text |",
                "|---|---:|---:|---|",
            ]
            for m, v in e["methods"].items():
                text = " ".join(str(v["text"]).split()).replace("|", "\\|")
                lines.append(
                    f"| {m} | {v['mc_answer'] if v['mc_answer'] is not None else '-'} | "
                    f"{v['stance'] if v['stance'] is not None else '-'} | {text} |"
                )
    lines += ["", "## Commands", ""]
    reused = {e: g["alphas_from"] for e, g in d["generation"].items() if g.get("alphas_from")}
    if reused:
        lines += [
            "The PAS entries do not search alpha again: `generate-eval --alphas-from` fits "
            "each person with the alpha that the held-out search of the multiple-choice table "
            "chose for them under the same settings (the same fit, so the same steering; "
            "recorded as `alpha_selection: heldout (reused)`). Sources: "
            + "; ".join(
                f"{e}: row `{r['entry']}` of `{Path(r['path']).name}` (sha256 "
                f"`{r['sha256'][:12]}...`)"
                for e, r in reused.items()
            )
            + ".",
            "",
        ]
    vcmds = [
        v["command"] for v in (d["validation"] or []) if isinstance(v, dict) and v.get("command")
    ]
    if vcmds:
        lines += ["The judge's validation:", "", "```bash", *vcmds, "```", ""]
    lines += [
        "```bash",
        "python benchmarks/open_ended_table.py "
        + shlex.join([a for a in argv if a != "--report-only"]),
    ]
    for entry, cmds in commands.items():
        lines.append(f"# {entry}")
        lines += ["palign " + shlex.join(cmd) for cmd in cmds]
    lines.append("```")
    return "\n".join(lines) + "\n"
