"""Stance mode of ``palign judge``: the judge's 1-5 reading of each free-text answer.

Beyond the paper's 1-6 rubric: :func:`judge_stance` asks the judge how accurately the
statement describes the writer of each generated answer
(:func:`palign.judge.prompts.stance_prompt`, the reading ``palign judge-validate`` measures)
and compares the reading with the person's own answer to the statement (the row's
``answer``, 1..5 under the run's semantics). The error is an absolute difference on the
Likert scale, so per person the sum of the five trait MAEs is on the same scale as palign's
multiple-choice tables (``sum``).

Where the generation folder records the method's own multiple-choice answer to the same
statement in the same aligned state (``mc_answer``, generation format 2), the summary also
gives the agreement between that answer and the stance of the free text: is the aligned model
consistent with itself? Older folders have no ``mc_answer``; they are judged without it.

Outputs: ``DIR/judge/<name>-stance.jsonl`` (per item) and ``DIR/judge/<name>-stance.json``
(configuration and :func:`summarize_stance`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from palign.judge import prompts
from palign.judge.client import JudgeRequest
from palign.judge.generate import _write_jsonl
from palign.judge.run import (
    RESULTS_FORMAT,
    WEIGHTED_AT,
    default_name,
    judge_slug,
    judgeable_rows,
    mean_ci,
    read_choice,
    resolved_models,
)


def stance_name(judge_name: str, protocol: str) -> str:
    """The default output name of the stance mode: the rubric's name plus ``-stance``."""
    return f"{default_name(judge_name, protocol)}-stance"


def judge_stance(
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
    """Read the 1-5 stance of every generation of ``folder``; writes and returns the summary.

    Args:
        folder: a folder written by :func:`palign.judge.generate.run_generate`.
        judge: a backend (:class:`~palign.judge.client.CachedJudge` recommended).
        name: output name under ``folder/judge/``, ``-stance`` appended (so the rubric
            and the stance results of one name sit side by side; default: the judge's
            name).
        protocol: ``score-first`` or ``reasoning`` (:data:`palign.judge.prompts.PROTOCOLS`).
        max_tokens: judgement length (default: 16 for score-first, 512 for reasoning).

    Per item: the parsed reading ``stance`` (None when unparsed), ``weighted`` (``sum_k k
    p_k`` over the five choices at the reading's position), their absolute errors against
    the person's ``answer``, and ``mc_answer`` where the folder records it.
    """
    prompts.check_protocol(protocol)
    if max_tokens is None:
        max_tokens = prompts.default_max_tokens(protocol)
    folder = Path(folder)
    gcfg, rows, n_no_answer = judgeable_rows(folder)
    traits = list(dict.fromkeys(r["trait"] for r in rows))
    reqs = [
        JudgeRequest(
            prompts.stance_prompt(r["statement"], r["text"], protocol),
            prompts.STANCE_CHOICES,
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
        rd = read_choice(q, prompts.STANCE_CHOICES, protocol)
        a = int(r["answer"])
        item: dict[str, Any] = {
            "person": r["person"],
            "item": r["item"],
            "trait": r["trait"],
            "answer": a,
            "stance": rd["choice"],
            "weighted": rd["weighted"],
            "abs_error": None if rd["choice"] is None else abs(rd["choice"] - a),
            "abs_error_weighted": None
            if rd["weighted"] is None
            else round(abs(rd["weighted"] - a), 4),
        }
        if "mc_answer" in r:  # generation format 2; absent in older folders
            item["mc_answer"] = r["mc_answer"]
        item.update(
            {
                "choice_mass": rd["mass"],
                "choice_offset": rd["offset"],
                "error": q.error,
                "cached": q.cached,
                "finish_reason": q.finish_reason,
                "judge_model": q.model,
                "judgement": q.text,
            }
        )
        items.append(item)
    summary = summarize_stance(items, traits)
    result = {
        "format": RESULTS_FORMAT,
        "mode": "stance",
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
        "prompts": {"stance_version": prompts.STANCE_VERSION},
        "scores_used": {
            "stance": "clean-parsed reading 1-5 (unparsed items excluded)",
            "weighted": "sum_k k*p_k over the five choices at " + WEIGHTED_AT[protocol],
            "error": "|reading - the person's answer| (1..5 under the run's semantics); per "
            "person the sum over the traits of the mean error per trait",
            "consistency": "the method's multiple-choice answer (mc_answer) against the "
            "reading of its own free text, where the generations record it",
        },
        **summary,
        "skipped_no_answer": n_no_answer,
        "requests": {
            "total": len(reqs),
            "cached": getattr(judge, "hits", 0) - hits0,
            "errors": sum(i["error"] is not None for i in items),
        },
        "timings": {"judge_s": round(elapsed, 3)},
    }
    out = folder / "judge"
    stem = judge_slug(f"{name}-stance" if name else stance_name(judge.name, protocol))
    _write_jsonl(out / f"{stem}.jsonl", items)
    from palign.eval.runs import write_json_atomic

    write_json_atomic(out / f"{stem}.json", result)
    result["items_file"] = str(out / f"{stem}.jsonl")
    return result


def _mean(v: list[float]) -> float | None:
    return round(float(np.mean(v)), 4) if v else None


def person_sums(items: list[dict[str, Any]], traits: list[str], key: str) -> list[dict[str, Any]]:
    """Per person: the mean of ``key`` per trait (items where it is not None) and their sum.

    ``sum`` is None for a person with a trait without any value (an incomplete profile is
    not on the scale of the others).
    """
    persons = list(dict.fromkeys(i["person"] for i in items))
    out = []
    for p in persons:
        per = {
            t: _mean(
                [
                    i[key]
                    for i in items
                    if i["person"] == p and i["trait"] == t and i[key] is not None
                ]
            )
            for t in traits
        }
        complete = all(v is not None for v in per.values())
        out.append(
            {
                "person": p,
                "traits": per,
                "sum": round(sum(per.values()), 4) if complete else None,  # type: ignore[arg-type]
            }
        )
    return out


def error_summary(items: list[dict[str, Any]], traits: list[str], key: str) -> dict[str, Any]:
    """Errors ``key`` (absolute, 0..4): per trait and overall the item mean with a 95%
    interval; per person the sum of the trait means, with its mean and 95% interval over the
    persons whose every trait has a value."""
    per_trait = {}
    for t in [*traits, "all"]:
        v = [i[key] for i in items if (t == "all" or i["trait"] == t) and i[key] is not None]
        per_trait[t] = mean_ci(v, bounds=(0.0, 4.0))
    persons = person_sums(items, traits, key)
    sums = [p["sum"] for p in persons if p["sum"] is not None]
    return {
        "traits": {t: per_trait[t] for t in traits},
        "overall": per_trait["all"],
        "person_sum": mean_ci(sums, bounds=(0.0, 4.0 * len(traits))),
        "n_persons_complete": len(sums),
        "persons": persons,
    }


def consistency(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Agreement of the multiple-choice answer with the stance of the same row's free text.

    Over the items with both a parsed reading and a parsed ``mc_answer``: MAE, exact
    agreement, agreement within one, Spearman's rho (None below 3 items or for a constant
    side) and the mean signed difference (reading - mc_answer); per person the MAE with its
    mean and 95% interval over persons. None when no item carries ``mc_answer``.
    """
    from palign.judge.validate import spearman

    with_mc = [i for i in items if "mc_answer" in i]
    if not with_mc:
        return None
    both = [i for i in with_mc if i["stance"] is not None and i["mc_answer"] is not None]
    x = np.array([i["mc_answer"] for i in both], dtype=float)
    y = np.array([i["stance"] for i in both], dtype=float)
    n = len(both)
    per_person = {}
    for i in both:
        per_person.setdefault(i["person"], []).append(abs(i["stance"] - i["mc_answer"]))
    return {
        "n_items": len(with_mc),
        "n_both": n,
        "mc_unparsed": sum(i["mc_answer"] is None for i in with_mc),
        "mae": round(float(np.mean(np.abs(x - y))), 4) if n else None,
        "exact_agreement": round(float(np.mean(x == y)), 4) if n else None,
        "within_one": round(float(np.mean(np.abs(x - y) <= 1)), 4) if n else None,
        "spearman": spearman(x, y),
        "mean_difference": round(float(np.mean(y - x)), 4) if n else None,
        "person_mae": mean_ci([float(np.mean(v)) for v in per_person.values()], bounds=(0.0, 4.0)),
    }


def summarize_stance(items: list[dict[str, Any]], traits: list[str]) -> dict[str, Any]:
    """The stance mode's summary (see :func:`judge_stance`).

    ``error`` and ``error_weighted``: :func:`error_summary` of the parsed and the weighted
    readings; ``mc_error``: the same for the multiple-choice answers (where recorded, so the
    two are read on the same items); ``consistency``: :func:`consistency`; per trait the item
    and unparsed counts; the unparsed and log-probability rates.
    """
    n = len(items)
    answered = [i for i in items if i["error"] is None]
    counts = {}
    for t in [*traits, "all"]:
        sel = [i for i in items if t == "all" or i["trait"] == t]
        counts[t] = {
            "n_items": len(sel),
            "unparsed": sum(i["stance"] is None and i["error"] is None for i in sel),
            "errors": sum(i["error"] is not None for i in sel),
            "mean_stance": _mean([i["stance"] for i in sel if i["stance"] is not None]),
            "mean_answer": _mean([i["answer"] for i in sel]),
        }
    res: dict[str, Any] = {
        "n_items": n,
        "n_persons": len({i["person"] for i in items}),
        "counts": {"traits": {t: counts[t] for t in traits}, "overall": counts["all"]},
        "unparsed_rate": round(sum(i["stance"] is None for i in answered) / len(answered), 4)
        if answered
        else None,
        "logprobs_rate": round(sum(i["weighted"] is not None for i in items) / n, 4) if n else None,
        "error": error_summary(items, traits, "abs_error"),
        "error_weighted": error_summary(items, traits, "abs_error_weighted"),
    }
    if any("mc_answer" in i for i in items):
        mc = [
            {
                **i,
                "mc_error": None if i["mc_answer"] is None else abs(i["mc_answer"] - i["answer"]),
            }
            for i in items
            if "mc_answer" in i
        ]
        res["mc_error"] = error_summary(mc, traits, "mc_error")
    else:
        res["mc_error"] = None
    res["consistency"] = consistency(items)
    return res
