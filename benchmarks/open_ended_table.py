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
``palign judge-validate``, ``OUT/judge/<name>.json``), and what PAS steered (persons with
alpha > 0, texts identical to the base method's). The page itself is written by
``open_ended_page.py``.
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

from open_ended_page import markdown, plot
from palign.errors import PalignError
from palign.judge.generate import read_jsonl
from palign.judge.run import judge_slug, mean_ci

RESULTS_FORMAT = 3
"""3: ``steering`` added (:func:`steering_summary`); 2: ``validation`` is a list (one entry
per ``--validation``), ``reference`` and ``examples`` added; 1: ``validation`` one entry or
None."""


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
    gens: dict[str, list[dict[str, Any]]],
    stance_items: dict[str, list[dict[str, Any]]],
    n_items: int = 3,
) -> list[dict[str, Any]]:
    """The first person's first ``n_items`` statements as every finished method answered
    them: the free text, the method's multiple-choice answer and the judge's stance reading
    (what a reader checks the figures against; ``gens``: each method's ``generations.jsonl``
    rows)."""
    gens = {e: g for e, g in gens.items() if e in stance_items and g}
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


def base_entry(entry: str) -> str | None:
    """The unsteered method a PAS entry steers (``pas`` -> ``vanilla``, ``pas+few-shot@last``
    -> ``few-shot``); None for the other entries."""
    method = entry.split("@")[0]
    if method == "pas":
        return "vanilla"
    return method[len("pas+") :] if method.startswith("pas+") else None


def _same(a: dict[Any, str], b: dict[Any, str], keys: list[Any]) -> dict[str, int]:
    return {"same": sum(a[k] == b[k] for k in keys), "n": len(keys)}


def _mean_over(d: dict[str, Any], persons: list[str]) -> float | None:
    v = [d[p] for p in persons if d.get(p) is not None]
    return float(np.mean(v)) if v else None


def steering_summary(
    folders: dict[str, Path],
    rows: list[dict[str, Any]],
    gens: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """What PAS actually steered, per PAS entry with finished persons: each person's alpha
    (``persons/<id>.json``), how many were steered (alpha != 0), how many of its texts are
    identical to its base entry's (:func:`base_entry`; overall, for the persons at alpha 0 and
    for the steered ones), and on the steered persons the mean rubric score and stance error
    of the entry and of its base (``rows``: :func:`method_row` rows; ``gens``: each method's
    ``generations.jsonl`` rows)."""
    by_method = {r["method"]: r for r in rows}
    out: dict[str, Any] = {}
    for entry, folder in folders.items():
        base = base_entry(entry)
        if base is None:
            continue
        alphas: dict[str, float] = {}
        for f in sorted((folder / "persons").glob("*.json")):
            rec = json.loads(f.read_text())
            a = (rec.get("info") or {}).get("alpha")
            if a is not None:
                alphas[str(rec["person"])] = float(a)
        if not alphas:
            continue
        steered = sorted(p for p, a in alphas.items() if a != 0)
        s: dict[str, Any] = {
            "base": base,
            "alphas": alphas,
            "n_persons": len(alphas),
            "steered": steered,
            "identical": None,
            "steered_figures": None,
        }
        if gens.get(entry) and gens.get(base):
            mine = {(str(g["person"]), str(g["item"])): g["text"] for g in gens[entry]}
            theirs = {(str(g["person"]), str(g["item"])): g["text"] for g in gens[base]}
            common = [k for k in mine if k in theirs]
            s["identical"] = {
                "all": _same(mine, theirs, common),
                "alpha0": _same(mine, theirs, [k for k in common if alphas.get(k[0]) == 0]),
                "steered": _same(mine, theirs, [k for k in common if k[0] in steered]),
            }
        me, them = by_method.get(entry), by_method.get(base)
        if steered and me and them and "rubric" in me and "rubric" in them:
            s["steered_figures"] = {
                "rubric": _mean_over(me["rubric"]["person_score"], steered),
                "base_rubric": _mean_over(them["rubric"]["person_score"], steered),
                "stance_error": _mean_over(me.get("stance", {}).get("person_sums", {}), steered),
                "base_stance_error": _mean_over(
                    them.get("stance", {}).get("person_sums", {}), steered
                ),
            }
        out[entry] = s
    return out


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
    gens = {  # each finished method's generations, read once
        e: read_jsonl(folders[e] / "generations.jsonl")
        for e in rubric_items
        if (folders[e] / "generations.jsonl").is_file()
    }
    for r in rows:
        g = gens.get(r["method"])
        r["voice"] = None if g is None else first_person_share([x["text"] for x in g])
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
        "examples": examples(gens, stance_items),
        "steering": steering_summary(
            {e: f for e, f in folders.items() if e in rubric_items}, rows, gens
        ),
    }


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
