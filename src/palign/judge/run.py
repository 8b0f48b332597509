"""Judging generation folders: rubric scores, pairwise comparisons, agreement between judges.

``judge_generations`` sends each (statement, the person's answer as its Likert label,
generated text) to the judge with the 1-6 rubric under a protocol (``score-first``, the
default, or the paper's ``reasoning``) and writes ``DIR/judge/<name>.jsonl`` (per-item
scores) and ``DIR/judge/<name>.json`` (settings, per-trait means with 95% intervals, unparsed
rate). Two scores per item:

- ``score``: the clean-parsed choice of the judgement (:func:`palign.judge.parse.parse_score`);
  items without a clean parse are *unparsed* and left out of the means.
- ``weighted``: ``sum_k k p_k`` over the six choices at the choice's position (the first
  token for ``score-first``, the first bare choice line for ``reasoning``), where the judge
  returned log-probabilities (only for cleanly parsed judgements).

``judge_pairwise`` shows the judge the person's profile and two answers to the same question
in both orders and reports the first folder's win rate. ``agreement`` compares two judges'
per-item scores (Spearman, exact agreement).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from palign.errors import PalignError
from palign.judge import prompts
from palign.judge.client import JudgeRequest
from palign.judge.generate import _write_jsonl, load_generations, read_jsonl
from palign.judge.parse import choice_distribution, parse_choice, parse_judgement

RESULTS_FORMAT = 1


def mean_ci(
    values: list[float] | np.ndarray,
    level: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Mean with a Student-t interval (``lo``/``hi`` None below two values), clipped to
    ``bounds`` (the scale) when given."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    m = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": round(m, 4), "lo": None, "hi": None}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return {"n": n, "mean": round(m, 4), "lo": round(lo, 4), "hi": round(hi, 4)}


def judge_slug(name: str) -> str:
    """A file-name-safe version of a judge name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "judge"


def judgeable_rows(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """``folder``'s generation config, its rows with a target answer, and how many rows had
    none (the person left the statement blank). One-line errors for an empty folder."""
    gcfg, rows = load_generations(folder)
    if not rows:
        raise PalignError(f"{folder}/generations.jsonl is empty; rerun 'palign generate-eval'")
    n_no_answer = sum(not r.get("answer") for r in rows)
    rows = [r for r in rows if r.get("answer")]  # the person left it blank: no target value
    if not rows:
        raise PalignError(f"no generation in {folder} has a target answer to judge against")
    return gcfg, rows, n_no_answer


def judge_generations(
    folder: str | Path,
    judge: Any,
    *,
    name: str | None = None,
    protocol: str = "score-first",
    temperature: float = 0.0,
    max_tokens: int | None = None,
    seed: int = 0,
    logprobs: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Rate every generation of ``folder`` on the 1-6 rubric; writes and returns the summary.

    Args:
        folder: a folder written by :func:`palign.judge.generate.run_generate`.
        judge: a backend (:class:`~palign.judge.client.CachedJudge` recommended).
        name: output name under ``folder/judge/`` (default: the judge's model name, or
            ``local-<spec>`` for a local judge; ``-reasoning`` appended for that protocol).
        protocol: ``score-first`` or ``reasoning`` (:data:`palign.judge.prompts.PROTOCOLS`).
        max_tokens: judgement length (default: 16 for score-first, 512 for reasoning).
    """
    prompts.check_protocol(protocol)
    if max_tokens is None:
        max_tokens = prompts.default_max_tokens(protocol)
    folder = Path(folder)
    gcfg, rows, n_no_answer = judgeable_rows(folder)
    inv_traits = list(dict.fromkeys(r["trait"] for r in rows))
    reqs = [
        JudgeRequest(
            prompts.rubric_prompt(r["statement"], r["answer_label"], r["text"], protocol),
            prompts.SCORE_CHOICES,
            max_tokens,
            temperature,
            seed,
            logprobs,
        )
        for r in rows
    ]
    t = time.perf_counter()
    hits0 = getattr(judge, "hits", 0)
    resps = judge.complete_many(reqs, progress=progress)
    elapsed = time.perf_counter() - t
    items = []
    for r, q in zip(rows, resps):
        rd = read_choice(q, prompts.SCORE_CHOICES, protocol)
        items.append(
            {
                "person": r["person"],
                "item": r["item"],
                "trait": r["trait"],
                "answer": r["answer"],
                "score": rd["choice"],
                "weighted": rd["weighted"],
                "choice_mass": rd["mass"],
                "choice_offset": rd["offset"],
                "error": q.error,
                "cached": q.cached,
                "finish_reason": q.finish_reason,
                "judge_model": q.model,
                "judgement": q.text,
            }
        )
    summary = summarize_scores(items, inv_traits)
    n_persons = len({r["person"] for r in rows})
    result = {
        "format": RESULTS_FORMAT,
        "mode": "score",
        "generations": str(folder),
        "generation_config": gcfg,
        "judge": {**judge.describe(), "resolved_models": resolved_models(resps)},
        "protocol": protocol,
        "sampling": {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "logprobs": logprobs,
        },
        "prompts": {"rubric_version": prompts.rubric_version(protocol)},
        "scores_used": {
            "score": "clean-parsed sampled choice (unparsed items excluded)",
            "weighted": "sum_k k*p_k over the six choices at " + WEIGHTED_AT[protocol] + " "
            "(log-probabilities; only where the endpoint returned them)",
        },
        **summary,
        "skipped_no_answer": n_no_answer,
        "requests": {
            "total": len(reqs),
            "cached": getattr(judge, "hits", 0) - hits0,
            "errors": sum(i["error"] is not None for i in items),
        },
        "timings": {
            "judge_s": round(elapsed, 3),
            "seconds_per_person": round(elapsed / n_persons, 3) if n_persons else None,
        },
    }
    out = folder / "judge"
    stem = judge_slug(name or default_name(judge.name, protocol))
    _write_jsonl(out / f"{stem}.jsonl", items)
    from palign.eval.runs import write_json_atomic

    write_json_atomic(out / f"{stem}.json", result)
    result["items_file"] = str(out / f"{stem}.jsonl")
    return result


WEIGHTED_AT = {
    "score-first": "the first token (the score the reply starts with)",
    "reasoning": "the first bare choice line (not its repetition)",
}
"""Where the weighted score is read, per protocol (recorded in every result)."""


def default_name(judge_name: str, protocol: str) -> str:
    """The default output name: the judge's name, ``-reasoning`` appended for that protocol."""
    return judge_name if protocol == "score-first" else f"{judge_name}-{protocol}"


def resolved_models(resps: list[Any]) -> list[str]:
    """The distinct models that answered (``response.model``), in order of appearance."""
    return list(dict.fromkeys(r.model for r in resps if getattr(r, "model", None)))


def read_choice(resp: Any, choices: str, protocol: str) -> dict[str, Any]:
    """A response's parsed choice (int), its character offset, weighted score and mass."""
    p = None if resp.error else parse_judgement(resp.text, choices, protocol)
    if p is None:
        return {"choice": None, "offset": None, "weighted": None, "mass": None}
    d = choice_distribution(resp.candidates, choices, p[1])
    w = None if d is None else sum(int(k) * v for k, v in d[0].items())
    return {
        "choice": int(p[0]),
        "offset": p[1],
        "weighted": None if w is None else round(w, 4),
        "mass": None if d is None else round(d[1], 4),
    }


def summarize_scores(items: list[dict[str, Any]], traits: list[str]) -> dict[str, Any]:
    """Per-trait and overall means with 95% intervals of ``score`` and ``weighted``."""
    per: dict[str, Any] = {}
    for t in [*traits, "all"]:
        sel = [i for i in items if t == "all" or i["trait"] == t]
        scored = [i["score"] for i in sel if i["score"] is not None]
        weighted = [i["weighted"] for i in sel if i["weighted"] is not None]
        per[t] = {
            "n_items": len(sel),
            "unparsed": sum(i["score"] is None and i["error"] is None for i in sel),
            "errors": sum(i["error"] is not None for i in sel),
            "score": mean_ci(scored, bounds=(1.0, 6.0)),
            "weighted": mean_ci(weighted, bounds=(1.0, 6.0)),
        }
    n = len(items)
    answered = [i for i in items if i["error"] is None]
    unparsed = sum(i["score"] is None for i in answered)
    return {
        "traits": {t: per[t] for t in traits},
        "overall": per["all"],
        "n_items": n,
        "unparsed_rate": round(unparsed / len(answered), 4) if answered else None,
        "logprobs_rate": round(sum(i["weighted"] is not None for i in items) / n, 4) if n else None,
    }


def judge_pairwise(
    folder_a: str | Path,
    folder_b: str | Path,
    judge: Any,
    *,
    name: str | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    seed: int = 0,
    logprobs: bool = True,
    progress: bool = True,
    dataset: Any = None,
) -> dict[str, Any]:
    """Pairwise comparison of two generation folders (same persons and items), both orders.

    For every (person, item) in both folders the judge sees the person's profile (trait
    levels from their *shown* answers), the statement, the person's answer and the two
    responses, once with A's answer first and once with B's first. An item counts when both
    orders parse: 1 if both pick A's answer, 0 if both pick B's, 0.5 if they disagree (the
    position decided). The win rate of A is the mean over those items, with a 95% t-interval.
    ``dataset`` (default: loaded from the first folder's recorded data folder) gives the
    profiles.
    """
    from palign.data import run_dataset

    if max_tokens is None:
        max_tokens = prompts.REASONING_MAX_TOKENS  # the pairwise prompt asks for reasoning
    folder_a, folder_b = Path(folder_a), Path(folder_b)
    cfg_a, rows_a = load_generations(folder_a)
    cfg_b, rows_b = load_generations(folder_b)
    for k in ("inventory", "semantics"):
        if cfg_a.get(k) != cfg_b.get(k):
            raise PalignError(
                f"the two generation folders differ in {k} ({cfg_a.get(k)} vs {cfg_b.get(k)}); "
                "compare folders written with the same --inventory and --semantics"
            )
    b_by = {(r["person"], r["item"]): r for r in rows_b}
    pairs = [
        (a, b_by[(a["person"], a["item"])])
        for a in rows_a
        if (a["person"], a["item"]) in b_by and a.get("answer")
    ]
    if not pairs:
        raise PalignError(
            f"{folder_a} and {folder_b} share no (person, item); generate both for the same "
            "persons and --max-items"
        )
    ds = dataset or run_dataset(
        cfg_a.get("data"),
        cfg_a.get("inventory", "ipip-neo"),
        full=cfg_a.get("full"),
        full_sha256=cfg_a.get("full_sha256"),
        ids=sorted({a["person"] for a, _ in pairs}),
    )
    profiles = {
        pid: prompts.trait_profile(
            ds.inventory, ds.person(pid), cfg_a.get("semantics", "agreement")
        )
        for pid in {a["person"] for a, _ in pairs}
    }
    reqs = []
    for a, b in pairs:
        label = a["answer_label"]
        prof = profiles[a["person"]]
        for first, second in ((a, b), (b, a)):
            reqs.append(
                JudgeRequest(
                    prompts.pairwise_prompt(
                        prof, a["statement"], label, first["text"], second["text"]
                    ),
                    prompts.PAIR_CHOICES,
                    max_tokens,
                    temperature,
                    seed,
                    logprobs,
                )
            )
    t = time.perf_counter()
    hits0 = getattr(judge, "hits", 0)
    resps = judge.complete_many(reqs, progress=progress)
    elapsed = time.perf_counter() - t
    items = []
    for k, (a, _) in enumerate(pairs):
        r1, r2 = resps[2 * k], resps[2 * k + 1]
        c1 = None if r1.error else parse_choice(r1.text, "AB")
        c2 = None if r2.error else parse_choice(r2.text, "AB")
        a_wins = None
        if c1 is not None and c2 is not None:
            a_wins = ((c1 == "A") + (c2 == "B")) / 2
        items.append(
            {
                "person": a["person"],
                "item": a["item"],
                "trait": a["trait"],
                "choice_a_first": c1,
                "choice_b_first": c2,
                "a_wins": a_wins,
                "errors": [e for e in (r1.error, r2.error) if e] or None,
                "judgements": [r1.text, r2.text],
            }
        )
    scored = [i["a_wins"] for i in items if i["a_wins"] is not None]
    parsed = [c for i in items for c in (i["choice_a_first"], i["choice_b_first"]) if c]
    wr = mean_ci(scored, bounds=(0.0, 1.0))
    n_judged = sum(1 for r in resps if r.error is None)
    result = {
        "format": RESULTS_FORMAT,
        "mode": "pairwise",
        "a": {"folder": str(folder_a), "method": cfg_a.get("method"), "model": cfg_a.get("model")},
        "b": {"folder": str(folder_b), "method": cfg_b.get("method"), "model": cfg_b.get("model")},
        "judge": {**judge.describe(), "resolved_models": resolved_models(resps)},
        "sampling": {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "logprobs": logprobs,
        },
        "prompts": {"pairwise_version": prompts.PAIRWISE_VERSION},
        "n_pairs": len(items),
        "n_decided": len(scored),
        "win_rate_a": wr,
        "ties": sum(1 for s in scored if s == 0.5),
        "unparsed_rate": round(1 - len(parsed) / n_judged, 4) if n_judged else None,
        "first_position_rate": round(
            sum((i["choice_a_first"] == "A") + (i["choice_b_first"] == "A") for i in items)
            / len(parsed),
            4,
        )
        if parsed
        else None,
        "requests": {
            "total": len(reqs),
            "cached": getattr(judge, "hits", 0) - hits0,
            "errors": sum(1 for r in resps if r.error),
        },
        "timings": {"judge_s": round(elapsed, 3)},
    }
    stem = judge_slug(name or judge.name)
    other = judge_slug(f"{cfg_b.get('method')}-{folder_b.name}")
    out = folder_a / "judge"
    _write_jsonl(out / f"pairwise-{stem}-vs-{other}.jsonl", items)
    from palign.eval.runs import write_json_atomic

    write_json_atomic(out / f"pairwise-{stem}-vs-{other}.json", result)
    result["items_file"] = str(out / f"pairwise-{stem}-vs-{other}.jsonl")
    return result


def _items(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        raise PalignError(f"{p} is a folder; pass a judge items file DIR/judge/<name>.jsonl")
    if not p.is_file():
        raise PalignError(
            f"{p} not found; pass a file written by 'palign judge' (DIR/judge/*.jsonl)"
        )
    rows = read_jsonl(p)
    if rows and "score" not in rows[0]:
        raise PalignError(f"{p} is not a rubric judge items file (no 'score' field)")
    return rows


def agreement(file_1: str | Path, file_2: str | Path) -> dict[str, Any]:
    """Agreement of two judges' per-item scores on the same generations.

    Over the (person, item) pairs both judges parsed: Spearman's rho (with its p-value),
    exact agreement, agreement within one point, mean difference (judge 1 - judge 2); and
    Spearman on the weighted scores where both have them.
    """
    from scipy import stats

    a = {(r["person"], r["item"]): r for r in _items(file_1)}
    b = {(r["person"], r["item"]): r for r in _items(file_2)}
    common = sorted(set(a) & set(b))
    if not common:
        raise PalignError(
            f"{file_1} and {file_2} share no (person, item); judge the same generations"
        )
    both = [k for k in common if a[k]["score"] is not None and b[k]["score"] is not None]
    x = np.array([a[k]["score"] for k in both], dtype=float)
    y = np.array([b[k]["score"] for k in both], dtype=float)

    def rho(u: np.ndarray, v: np.ndarray) -> tuple[float | None, float | None]:
        if len(u) < 3 or np.all(u == u[0]) or np.all(v == v[0]):
            return None, None  # undefined for constant or tiny samples
        r = stats.spearmanr(u, v)
        return round(float(r.statistic), 4), round(float(r.pvalue), 4)

    r_s, p_s = rho(x, y)
    wk = [k for k in both if a[k].get("weighted") is not None and b[k].get("weighted") is not None]
    r_w, p_w = rho(
        np.array([a[k]["weighted"] for k in wk], dtype=float),
        np.array([b[k]["weighted"] for k in wk], dtype=float),
    )
    n = len(both)
    return {
        "judge_1": str(file_1),
        "judge_2": str(file_2),
        "n_common": len(common),
        "n_both_parsed": n,
        "spearman": r_s,
        "spearman_p": p_s,
        "exact_agreement": round(float(np.mean(x == y)), 4) if n else None,
        "within_one": round(float(np.mean(np.abs(x - y) <= 1)), 4) if n else None,
        "mean_difference": round(float(np.mean(x - y)), 4) if n else None,
        "n_both_weighted": len(wk),
        "spearman_weighted": r_w,
        "spearman_weighted_p": p_w,
    }
