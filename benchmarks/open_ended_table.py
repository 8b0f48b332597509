"""The open-ended table: free-text answers of several methods judged on the rubric and the stance.

    python benchmarks/open_ended_table.py --model qwen2.5-coder-1.5b --persons 10 --items 20 \
        --methods vanilla,few-shot,pas,pas+few-shot --judge-model qwen2.5-coder-1.5b \
        --validation runs/kv-smollm2/judge/local-qwen2.5-coder-1.5b.json

For every method (``pas`` entries steer at all positions; ``pas@last`` the last-position
variant) it runs ``palign generate-eval`` into ``RUNS/open-ended-<model>/<method>`` (the
first ``--persons`` test persons, the same ``--items`` statements for every method), then
``palign judge`` on each folder twice: the paper's 1-6 rubric and ``--mode stance`` (the
judge's 1-5 reading of each answer against the person's answer, and against the method's own
multiple-choice answer). Every step is a ``palign`` command run in-process; the commands are
on the page. Rerunning resumes: finished persons are not regenerated, judgements come from
the judge cache, and a judge step whose output covers every generation (same judge model and
protocol, no failed request) is skipped.

``--alphas-from docs/results/<name>.json`` (a ``benchmarks/papi_table.py`` result of the same
model, persons and seed): the PAS entries reuse the held-out alpha its rows ``pas@all`` /
``pas+few-shot@all`` chose for each person (``generate-eval --alphas-from PATH:ENTRY``: the
same fit with that alpha, no search; refused where the settings differ or a person is
missing) and run into ``RUNS/open-ended-<model>/<entry>-alphas-reused``.

Writes ``OUT/<name>.md``, ``OUT/<name>.json`` and ``OUT/<name>.png`` (default ``OUT`` =
docs/results, ``<name>`` = ``open-ended-<model>``): per method the rubric score (mean of the
per-person means, 95% t-interval over persons), wins/ties/losses against vanilla per person,
the stance error (per person the sum of the five trait MAEs, mean and 95% interval), the
multiple-choice error on the same rows, the consistency of the multiple-choice answer with the
stance of the free text, the judge and its validation figures (``--validation``: a result of
``palign judge-validate``, ``OUT/judge/<name>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from palign.errors import PalignError
from palign.judge.generate import read_jsonl
from palign.judge.run import judge_slug, mean_ci

RESULTS_FORMAT = 2
"""2: ``validation`` is a list (one entry per ``--validation``), ``reference`` and
``examples`` added; 1: ``validation`` one entry or None."""


# --- pure aggregation (tested in tests/test_open_ended_table.py) -------------------------------


def person_means(items: list[dict[str, Any]], key: str = "score") -> dict[str, float]:
    """Per person the mean of ``key`` over the items where it is not None (persons without
    any such item are absent)."""
    vals: dict[str, list[float]] = {}
    for i in items:
        if i.get(key) is not None:
            vals.setdefault(str(i["person"]), []).append(float(i[key]))
    return {p: float(np.mean(v)) for p, v in vals.items()}


def wins_ties_losses(
    method: dict[str, float], base: dict[str, float], tol: float = 1e-9
) -> dict[str, int]:
    """Per person (both defined): a win when the method's mean exceeds the base's by more
    than ``tol``, a loss when it is lower by more than ``tol``, else a tie."""
    common = sorted(set(method) & set(base))
    diffs = [method[p] - base[p] for p in common]
    return {
        "wins": sum(d > tol for d in diffs),
        "ties": sum(abs(d) <= tol for d in diffs),
        "losses": sum(d < -tol for d in diffs),
        "n": len(common),
    }


def rubric_summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The rubric figures of one method: per-person means of ``score`` and ``weighted`` with
    their mean and 95% interval over persons (clipped to 1-6), item and unparsed counts."""
    scores = person_means(items, "score")
    weighted = person_means(items, "weighted")
    answered = [i for i in items if i.get("error") is None]
    return {
        "n_items": len(items),
        "unparsed": sum(i["score"] is None for i in answered),
        "errors": len(items) - len(answered),
        "person_score": scores,
        "score": mean_ci(list(scores.values()), bounds=(1.0, 6.0)),
        "weighted": mean_ci(list(weighted.values()), bounds=(1.0, 6.0)),
    }


def item_histogram(items: list[dict[str, Any]], key: str = "score", levels: int = 6) -> list[int]:
    """Counts of the parsed values 1..``levels`` of ``key``."""
    h = [0] * levels
    for i in items:
        v = i.get(key)
        if v is not None:
            h[int(v) - 1] += 1
    return h


def family(model: str | None) -> str:
    """A model's family: the leading letters of its name (``qwen2.5-coder-1.5b`` -> ``qwen``,
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` -> ``smollm``)."""
    name = (model or "").rstrip("/").split("/")[-1].lower()
    m = re.match(r"[a-z]+", name)
    return m.group(0) if m else name


def validation_summary(d: dict[str, Any]) -> dict[str, Any]:
    """The figures of a ``palign judge-validate`` result (``OUT/judge/<name>.json``)."""
    if d.get("mode") != "stance" or "spearman" not in d:
        raise PalignError("--validation: not a 'palign judge-validate' result (OUT/judge/*.json)")
    ka = d.get("known_answers") or {}
    j = d.get("judge") or {}
    cmd = None
    if d.get("folder") and ka.get("generator") and j.get("model"):
        cmd = ["judge-validate", "--out", str(d["folder"]), "--generator", str(ka["generator"])]
        if ka.get("generator_base_url"):
            cmd += ["--generator-base-url", str(ka["generator_base_url"])]
        cmd += ["--judge-model", str(j["model"])]
        if j.get("base_url"):
            cmd += ["--base-url", str(j["base_url"])]
        for flag, key in (("--items", "items"), ("--gen-max-tokens", "max_new_tokens")):
            if ka.get(key) is not None:
                cmd += [flag, str(ka[key])]
        if ka.get("seed"):
            cmd += ["--seed", str(ka["seed"])]
    return {
        "command": None if cmd is None else "palign " + shlex.join(cmd),
        "judge": ", ".join(j.get("resolved_models") or []) or j.get("model"),
        "served": j.get("base_url") or "in-process",
        "generator": ka.get("generator"),
        "statements": ka.get("items"),
        "protocol": d.get("protocol"),
        "mean_reading_per_level": {
            k: v.get("mean_reading") for k, v in sorted((d.get("per_level") or {}).items())
        },
        **{
            k: d.get(k)
            for k in (
                "n_texts",
                "unparsed_rate",
                "spearman",
                "exact_agreement",
                "within_one",
                "mae",
                "spearman_weighted",
                "mae_weighted",
            )
        },
    }


def method_row(
    name: str,
    rubric_items: list[dict[str, Any]] | None,
    stance: dict[str, Any] | None,
    base: dict[str, float] | None,
) -> dict[str, Any]:
    """One table row: the rubric figures (:func:`rubric_summary`), wins against ``base``
    (the baseline's per-person means), the stance error and consistency from a stance-mode
    result of ``palign judge``."""
    row: dict[str, Any] = {"method": name}
    if rubric_items is not None:
        r = rubric_summary(rubric_items)
        row["rubric"] = r
        row["histogram"] = item_histogram(rubric_items)
        row["weighted_items"] = [
            i["weighted"] for i in rubric_items if i.get("weighted") is not None
        ]
        row["vs_base"] = None if base is None else wins_ties_losses(r["person_score"], base)
    if stance is not None:
        row["stance"] = {
            "error": stance["error"]["person_sum"],
            "error_weighted": stance["error_weighted"]["person_sum"],
            "item_mae": stance["error"]["overall"],
            "n_persons_complete": stance["error"]["n_persons_complete"],
            "unparsed_rate": stance["unparsed_rate"],
            "person_sums": {p["person"]: p["sum"] for p in stance["error"]["persons"]},
            "mc_error": None if stance["mc_error"] is None else stance["mc_error"]["person_sum"],
            "consistency": stance["consistency"],
        }
    return row


FIRST_PERSON = re.compile(r"^\W*(I|I'm|I've|I'd|I'll|My|Me|Myself|As (a|an|someone)\b)\b")
"""An answer that opens in the first person (the person speaking), as the question asks."""


def first_person_share(texts: list[str]) -> dict[str, Any]:
    """How many answers open in the first person (:data:`FIRST_PERSON`): a judge-free check
    of whether the aligned model speaks *as* the person or *about* them."""
    n = sum(bool(FIRST_PERSON.match(t or "")) for t in texts)
    return {
        "first_person": n,
        "n": len(texts),
        "share": round(n / len(texts), 4) if texts else None,
    }


def constant_reference(
    stance_items: dict[str, list[dict[str, Any]]],
    rubric_items: dict[str, list[dict[str, Any]]],
) -> dict[str, Any] | None:
    """What a judge that reads one value everywhere would give (the anchor of a weak judge).

    ``stance``: the judge's most common parsed stance reading ``c`` over every method, its
    share of those readings, and the stance error of reading *every* answer as ``c``: per
    person the sum of the five trait MAEs of ``|c - answer|`` (mean and 95% interval over
    persons, as the methods' stance error) on the first method's items (the persons and
    statements, so the answers, are the same for every method). ``rubric``: the most common
    rubric score and its share. None without stance items.
    """
    from collections import Counter

    from palign.judge.stance import error_summary

    readings = [i["stance"] for v in stance_items.values() for i in v if i.get("stance")]
    if not readings:
        return None
    c, n_c = Counter(readings).most_common(1)[0]
    items = next(iter(stance_items.values()))
    traits = list(dict.fromkeys(i["trait"] for i in items))
    ref = [
        {**i, "ref_error": None if i.get("answer") is None else abs(c - i["answer"])} for i in items
    ]
    out: dict[str, Any] = {
        "stance": {
            "reading": c,
            "share": round(n_c / len(readings), 4),
            "n_readings": len(readings),
            "error": error_summary(ref, traits, "ref_error")["person_sum"],
        },
        "rubric": None,
    }
    scores = [i["score"] for v in rubric_items.values() for i in v if i.get("score") is not None]
    if scores:
        r, n_r = Counter(scores).most_common(1)[0]
        out["rubric"] = {"score": r, "share": round(n_r / len(scores), 4), "n": len(scores)}
    return out


def examples(
    folders: dict[str, Path],
    stance_items: dict[str, list[dict[str, Any]]],
    n_items: int = 3,
) -> list[dict[str, Any]]:
    """The first person's first ``n_items`` statements as every finished method answered
    them: the free text, the method's multiple-choice answer and the judge's stance reading
    (what a reader checks the figures against)."""
    gens = {}
    for entry, folder in folders.items():
        f = folder / "generations.jsonl"
        if entry in stance_items and f.is_file():
            gens[entry] = read_jsonl(f)
    if not gens:
        return []
    first = next(iter(gens.values()))
    person = str(first[0]["person"])
    rows = [r for r in first if str(r["person"]) == person][:n_items]
    out = []
    for r in rows:
        per = {}
        for entry, g in gens.items():
            gi = next((x for x in g if str(x["person"]) == person and x["item"] == r["item"]), None)
            si = next(
                (
                    x
                    for x in stance_items[entry]
                    if str(x["person"]) == person and x["item"] == r["item"]
                ),
                None,
            )
            if gi is not None:
                per[entry] = {
                    "text": gi["text"],
                    "mc_answer": gi.get("mc_answer"),
                    "stance": None if si is None else si.get("stance"),
                }
        out.append(
            {
                "person": person,
                "item": r["item"],
                "statement": r["statement"],
                "answer": r.get("answer"),
                "methods": per,
            }
        )
    return out


# --- running -------------------------------------------------------------------------------


def _palign(argv: list[str]) -> None:
    """Run one palign command in-process (its JSON output discarded; errors raised)."""
    from palign.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([*argv, "--format", "json"])
    if rc != 0:
        raise PalignError(f"'palign {shlex.join(argv)}' failed (exit {rc}); see above")


def _method_args(entry: str, alphas_from: str | None = None) -> tuple[str, list[str]]:
    """``pas`` / ``pas+few-shot`` steer at every position (``@last``: the last one); with
    ``alphas_from`` (a papi_table result) they reuse its row ``<method>@<position>``'s
    held-out alphas (``palign generate-eval --alphas-from PATH:ENTRY``)."""
    from palign.eval.papi_report import parse_method_spec

    method, opts = parse_method_spec(entry)
    extra = []
    if method.startswith("pas"):
        position = opts.get("steer_position", "all")
        extra = ["--steer-position", position]
        if "alpha_selection" in opts:
            extra += ["--alpha-selection", opts["alpha_selection"]]
        if alphas_from:
            extra += ["--alphas-from", f"{alphas_from}:{method}@{position}"]
    return method, extra


def _folder_name(entry: str, alphas_from: str | None) -> str:
    """The run folder of an entry; PAS entries with reused alphas get their own (a folder of
    the searching run is never resumed by a reusing one, nor the reverse)."""
    reused = alphas_from and entry.startswith("pas")
    return judge_slug(entry) + ("-alphas-reused" if reused else "")


def _fresh(out: Path, n_rows: int, judge_model: str, protocol: str) -> bool:
    """A judge output exists for every generation (``n_rows``), by the same judge model and
    protocol, without a failed request (then the step is skipped)."""
    if not out.is_file():
        return False
    try:
        d = json.loads(out.read_text())
        return (
            d["requests"]["errors"] == 0
            and d["n_items"] + d["skipped_no_answer"] == n_rows
            and d["judge"]["model"] == judge_model
            and d["protocol"] == protocol
        )
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def run_all(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, list[list[str]]]]:
    """Generate and judge every method (resuming); the folders and the commands run."""
    runs = Path(args.runs) / f"open-ended-{judge_slug(args.model)}"
    folders, commands = {}, {}
    for entry in args.methods:
        method, extra = _method_args(entry, args.alphas_from)
        folder = runs / _folder_name(entry, args.alphas_from)
        folders[entry] = folder
        gen = [
            "generate-eval",
            "--method",
            method,
            "--model",
            args.model,
            "--persons",
            str(args.persons),
            "--max-items",
            str(args.items),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--temperature",
            f"{args.temperature:g}",
            "--seed",
            str(args.seed),
            *extra,
            "--out",
            str(folder),
        ]
        if args.data:
            gen += ["--data", args.data]
        judge = ["judge", str(folder), "--judge-model", args.judge_model]
        if args.base_url:
            judge += ["--base-url", args.base_url]
        judge += ["--protocol", args.protocol, "--batch-size", str(args.judge_batch_size)]
        rubric = [*judge, "--name", args.judge_name]
        stance = [*judge, "--mode", "stance", "--name", args.judge_name]
        commands[entry] = [gen, rubric, stance]
        if args.report_only:
            continue
        print(f"[open-ended] {entry}: generate", file=sys.stderr, flush=True)
        _palign(gen if args.progress else [*gen, "--quiet"])
        n_rows = len(read_jsonl(folder / "generations.jsonl"))
        for cmd, mode in ((rubric, "rubric"), (stance, "stance")):
            stem = args.judge_name + ("-stance" if mode == "stance" else "")
            if _fresh(folder / "judge" / f"{stem}.json", n_rows, args.judge_model, args.protocol):
                continue
            print(f"[open-ended] {entry}: {mode} judge", file=sys.stderr, flush=True)
            _palign(cmd if args.progress else [*cmd, "--quiet"])
    return folders, commands


def collect(args: argparse.Namespace, folders: dict[str, Path]) -> dict[str, Any]:
    """The page's data from the folders (methods not finished are listed as missing)."""
    rubric_items: dict[str, list[dict[str, Any]]] = {}
    stance: dict[str, dict[str, Any]] = {}
    stance_items: dict[str, list[dict[str, Any]]] = {}
    judges: dict[str, Any] = {}
    gen_info: dict[str, Any] = {}
    missing = []
    for entry, folder in folders.items():
        rp = folder / "judge" / f"{args.judge_name}.jsonl"
        sp = folder / "judge" / f"{args.judge_name}-stance.json"
        if not rp.is_file() or not sp.is_file():
            missing.append(entry)
            continue
        rubric_items[entry] = read_jsonl(rp)
        stance[entry] = json.loads(sp.read_text())
        if sp.with_suffix(".jsonl").is_file():
            stance_items[entry] = read_jsonl(sp.with_suffix(".jsonl"))
        rj = json.loads((folder / "judge" / f"{args.judge_name}.json").read_text())
        judges[entry] = {**rj["judge"], "protocol": rj["protocol"]}
        gres = json.loads((folder / "results.json").read_text())
        gen_info[entry] = {
            "model": gres["model"],
            "method": gres["method"],
            "n_persons": gres["n_persons"],
            "n_items": gres["n_items"],
            "seconds_per_person": gres["timings"]["seconds_per_person"],
            "alphas_from": (gres.get("method") or {}).get("alphas_from"),
        }
    base_key = args.baseline if args.baseline in rubric_items else None
    base = person_means(rubric_items[base_key]) if base_key else None
    rows = [
        method_row(e, rubric_items[e], stance[e], None if e == base_key else base)
        for e in folders
        if e in rubric_items
    ]
    for r in rows:
        g = folders[r["method"]] / "generations.jsonl"
        r["voice"] = first_person_share([x["text"] for x in read_jsonl(g)]) if g.is_file() else None
    persons = sorted({str(i["person"]) for v in rubric_items.values() for i in v})
    items = sorted({str(i["item"]) for v in rubric_items.values() for i in v})
    validation = []
    for v in args.validation or []:
        p = Path(v)
        if not p.is_file():
            raise PalignError(
                f"--validation {p} not found; pass OUT/judge/<name>.json of 'palign judge-validate'"
            )
        validation.append(validation_summary(json.loads(p.read_text())))
    return {
        "format": RESULTS_FORMAT,
        "name": args.name,
        "model": args.model,
        "config": {
            k: getattr(args, k)
            for k in (
                "model",
                "persons",
                "items",
                "methods",
                "judge_model",
                "base_url",
                "protocol",
                "seed",
                "max_new_tokens",
                "temperature",
                "baseline",
                "validation",
                "alphas_from",
            )
        },
        "generation": gen_info,
        "judge": next(iter(judges.values()), None),
        "persons": persons,
        "n_items": len(items),
        "rows": rows,
        "baseline": base_key,
        "missing": missing,
        "validation": validation,
        "reference": constant_reference(stance_items, rubric_items),
        "examples": examples(folders, stance_items),
    }


# --- the page -----------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="generator model (alias, hub id, folder)")
    ap.add_argument("--persons", type=int, default=10, help="the first N test persons")
    ap.add_argument("--items", type=int, default=20, help="test statements (spread over traits)")
    ap.add_argument(
        "--methods",
        default="vanilla,few-shot,pas,pas+few-shot",
        help="comma-separated entries method[@all|@last] (pas: @all by default)",
    )
    ap.add_argument("--baseline", default="vanilla", help="wins/ties/losses against this entry")
    ap.add_argument(
        "--judge-model", required=True, help="palign model spec, or the model name at --base-url"
    )
    ap.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint of the judge")
    ap.add_argument("--protocol", default="score-first", choices=("score-first", "reasoning"))
    ap.add_argument("--judge-batch-size", type=int, default=8, help="local judge batch size")
    ap.add_argument(
        "--validation",
        action="append",
        default=None,
        metavar="FILE",
        help="a 'palign judge-validate' result (OUT/judge/<name>.json) of this judge; "
        "repeat for several (e.g. texts written by different generators)",
    )
    ap.add_argument(
        "--alphas-from",
        default=None,
        metavar="PATH",
        help="a benchmarks/papi_table.py result (docs/results/<name>.json) of the same model, "
        "persons and seed: the PAS entries reuse its rows' held-out alphas (<method>@<position>, "
        "e.g. pas@all) instead of searching again (generate-eval --alphas-from); their runs go "
        "to RUNS/open-ended-<model>/<entry>-alphas-reused",
    )
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs", help="runs go to RUNS/open-ended-<model>/<method>")
    ap.add_argument("--out", default="docs/results", help="folder of the page, JSON and PNG")
    ap.add_argument("--name", default=None, help="page name (default open-ended-<model>)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the page from what is finished",
    )
    ap.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    args = ap.parse_args(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.name = args.name or f"open-ended-{judge_slug(args.model)}"
    args.judge_name = "judge-" + judge_slug(args.judge_model.rstrip("/").split("/")[-1])
    if args.protocol != "score-first":
        args.judge_name += f"-{args.protocol}"
    try:
        if args.persons < 1 or args.items < 1:
            raise PalignError("--persons and --items must be at least 1")
        folders, commands = run_all(args)
        d = collect(args, folders)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        png = f"{args.name}.png" if plot(d, out / f"{args.name}.png") else None
        d["commands"] = {e: ["palign " + shlex.join(c) for c in cs] for e, cs in commands.items()}
        from palign.eval.runs import write_json_atomic

        write_json_atomic(out / f"{args.name}.json", d)
        page = markdown(d, commands, raw, png)
        (out / f"{args.name}.md").write_text(page)
    except PalignError as e:
        print(f"open_ended_table: error: {e}", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
