"""``judge-validate``: a judge's reliability measured on a known-answer set built from the data.

For ``items`` test statements of the inventory (a seeded sample) and each of the five Likert
levels 1 (Very Inaccurate) .. 5 (Very Accurate), a generator model (any palign model in-process,
or any OpenAI-compatible endpoint) is instructed to write a short first-person text for which
the statement is that accurate (:func:`palign.judge.prompts.stance_instruction`). A judge then
reads each text's stance 1..5 (:func:`palign.judge.prompts.stance_prompt`, without the
instruction) and must recover the instructed level: the same reading ``palign judge`` needs to
say whether a free-text answer agrees with the person's own 1-5 answer.

A folder ``OUT`` holds ``config.json`` (the generation settings; another configuration in the
same folder is refused), ``texts.jsonl`` (one line per (statement, level): the instruction, the
text, the generator model that wrote it; rewritten atomically after every statement, so an
interrupted run resumes with the statements not yet written), and per judge
``judge/<name>.jsonl`` (per text: the reading, its weighted score, the judgement) and
``judge/<name>.json`` (settings and :func:`stance_metrics`). :func:`report` collects every
judge of a folder into one table.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from palign.data.types import Inventory
from palign.errors import PalignError
from palign.judge import prompts
from palign.judge.client import JudgeRequest
from palign.judge.generate import _write_jsonl, read_jsonl
from palign.judge.run import default_name, judge_slug, read_choice, resolved_models

VALIDATE_FORMAT = 1
LEVELS = (1, 2, 3, 4, 5)


@dataclass
class ValidateConfig:
    """What determines a known-answer set (stored in ``OUT/config.json``).

    Attributes:
        generator: the generator: a palign model spec (alias, hub id, folder, ``.gguf``), or
            the model name at ``generator_base_url``.
        generator_base_url: an OpenAI-compatible endpoint for the generator (None: in-process).
        inventory: ``ipip-neo`` or ``sd3``.
        items: how many test statements (a sample seeded by ``seed``).
        seed: seed of the statement sample and of each text's sampling.
        max_new_tokens: text length limit.
        temperature: generator sampling temperature (0 = greedy).
        batch_size: in-process generator: texts generated together (sampled texts depend on
            it, so it is part of the configuration).
        data: data folder given (None = default resolution; not part of the identity).
        instruction_version: :data:`palign.judge.prompts.STANCE_VERSION`.
    """

    generator: str
    generator_base_url: str | None = None
    inventory: str = "ipip-neo"
    items: int = 10
    seed: int = 0
    max_new_tokens: int = 160
    temperature: float = 0.7
    batch_size: int = 8
    data: str | None = None
    instruction_version: str = prompts.STANCE_VERSION

    def identity(self) -> dict[str, Any]:
        """Fields that must match for a folder to be resumed."""
        d = asdict(self)
        d.pop("data")
        if self.generator_base_url is not None:
            d.pop("batch_size")  # an endpoint answers each request on its own
        return d


def select_statements(inventory: Inventory, n: int, seed: int) -> list[str]:
    """``n`` test item ids sampled with ``seed`` (in inventory order), all if ``n`` >= them."""
    ids = list(inventory.test_ids)
    if n < 1:
        raise PalignError("--items must be at least 1")
    if n >= len(ids):
        return ids
    pick = set(random.Random(seed).sample(ids, n))
    return [i for i in ids if i in pick]


def text_seed(seed: int, item: str) -> int:
    """The sampling seed of one statement's texts (independent of which ran before)."""
    return (seed * 1_000_003 + zlib.crc32(item.encode())) % 2**31


def _check_folder(out: Path, cfg: ValidateConfig) -> None:
    from palign.eval.runs import write_json_atomic

    p = out / "config.json"
    if p.is_file():
        try:
            have = json.loads(p.read_text())["identity"]
        except (json.JSONDecodeError, KeyError):
            raise PalignError(
                f"{p} is not a judge-validate configuration; use a new --out"
            ) from None
        want = cfg.identity()
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise PalignError(
                f"{out} holds a known-answer set with other settings ({', '.join(diff)}); use "
                "another --out or the same settings"
            )
        return
    write_json_atomic(p, {"format": VALIDATE_FORMAT, "identity": cfg.identity(), **asdict(cfg)})


def write_texts(
    cfg: ValidateConfig,
    out: str | Path,
    generator: Any,
    inventory: Inventory,
    *,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """Write (or resume) ``OUT/texts.jsonl``: one text per (statement, level).

    Returns the rows (statement sample order, levels 1..5) and how many were generated now
    (the others were already in the folder).

    ``generator`` is a judge backend (:class:`~palign.judge.client.LocalJudge`,
    :class:`~palign.judge.client.OpenAIJudge`, optionally behind
    :class:`~palign.judge.client.CachedJudge`) used as a plain text generator.
    A text whose request failed after the retries is not written (rerunning retries it).
    """
    out = Path(out)
    _check_folder(out, cfg)
    ids = select_statements(inventory, cfg.items, cfg.seed)
    path = out / "texts.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    done = {r["item"] for r in rows}
    todo = [i for i in ids if i not in done]
    from tqdm.auto import tqdm

    failed = 0
    n_new = 0
    for iid in tqdm(todo, desc="texts", unit="statement", disable=not progress):
        item = inventory.item(iid)
        statement = inventory.statement(item)
        reqs = [
            JudgeRequest(
                prompts.stance_instruction(statement, level),
                "",
                cfg.max_new_tokens,
                cfg.temperature,
                text_seed(cfg.seed, iid),
                False,
            )
            for level in LEVELS
        ]
        resps = generator.complete_many(reqs)
        if any(r.error for r in resps):
            failed += 1
            continue
        for level, req, r in zip(LEVELS, reqs, resps):
            rows.append(
                {
                    "item": iid,
                    "trait": item.trait,
                    "statement": statement,
                    "level": level,
                    "label": prompts.answer_label(level),
                    "instruction": req.prompt,
                    "text": r.text.strip(),
                    "finish_reason": r.finish_reason,
                    "generator_model": r.model,
                }
            )
        n_new += len(resps)
        _write_jsonl(path, rows)
    if failed:
        raise PalignError(
            f"the generator failed on {failed} statements after the retries; the others are "
            f"saved in {path}: rerun the same command to retry"
        )
    order = {i: k for k, i in enumerate(ids)}
    rows = sorted(rows, key=lambda r: (order.get(r["item"], len(order)), r["level"]))
    return rows, n_new


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float | None:
    """Spearman's rho (average ranks for ties); None below 3 values or for a constant side."""
    from scipy import stats

    u, v = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(u) < 3 or np.all(u == u[0]) or np.all(v == v[0]):
        return None
    return round(float(stats.spearmanr(u, v).statistic), 4)


def stance_metrics(
    levels: list[int], readings: list[int | None], weighted: list[float | None] | None = None
) -> dict[str, Any]:
    """How well the readings recover the instructed levels.

    Over the texts with a parsed reading: Spearman's rho, exact agreement, agreement within
    one level, mean absolute error and mean signed error (reading - level); the unparsed
    rate over all texts; Spearman and MAE of the weighted readings where there are some.
    """
    n = len(levels)
    pairs = [(lv, r) for lv, r in zip(levels, readings) if r is not None]
    x = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs], dtype=float)
    k = len(pairs)
    res: dict[str, Any] = {
        "n_texts": n,
        "n_parsed": k,
        "unparsed_rate": round(1 - k / n, 4) if n else None,
        "spearman": spearman(x, y),
        "exact_agreement": round(float(np.mean(x == y)), 4) if k else None,
        "within_one": round(float(np.mean(np.abs(x - y) <= 1)), 4) if k else None,
        "mae": round(float(np.mean(np.abs(x - y))), 4) if k else None,
        "mean_error": round(float(np.mean(y - x)), 4) if k else None,
    }
    wp = [(lv, w) for lv, w in zip(levels, weighted or []) if w is not None]
    xw = np.array([p[0] for p in wp], dtype=float)
    yw = np.array([p[1] for p in wp], dtype=float)
    res["n_weighted"] = len(wp)
    res["spearman_weighted"] = spearman(xw, yw)
    res["mae_weighted"] = round(float(np.mean(np.abs(xw - yw))), 4) if wp else None
    return res


def judge_texts(
    out: str | Path,
    judge: Any,
    *,
    name: str | None = None,
    protocol: str = "score-first",
    temperature: float = 0.0,
    max_tokens: int | None = None,
    seed: int = 0,
    logprobs: bool = True,
    rubric_check: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The judge's stance reading of every text of ``OUT/texts.jsonl``; writes and returns it.

    Writes ``OUT/judge/<name>.jsonl`` (per text) and ``OUT/judge/<name>.json`` (settings,
    :func:`stance_metrics` overall and per level). Answers go through ``judge``'s cache when
    it has one, so a rerun sends only what is missing.

    With ``rubric_check`` the judge also rates each text on the 1-6 rubric of ``palign
    judge`` twice: against the label of its instructed level (``matched``) and, for levels
    other than 3, against the mirrored label (level ``6 - level``, ``mirrored``); a judge
    whose rubric scores mean something rates the matched target higher
    (:func:`rubric_summary`).
    """
    from palign.eval.runs import write_json_atomic

    prompts.check_protocol(protocol)
    if max_tokens is None:
        max_tokens = prompts.default_max_tokens(protocol)
    out = Path(out)
    path = out / "texts.jsonl"
    if not path.is_file():
        raise PalignError(f"{out} holds no texts.jsonl; run 'palign judge-validate' to write it")
    rows = read_jsonl(path)
    cfg = json.loads((out / "config.json").read_text())
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
    n_stance = len(reqs)
    mirror_of: list[int] = []
    if rubric_check:
        for r in rows:
            reqs.append(_rubric_request(r, r["level"], protocol, max_tokens, temperature, seed))
        for k, r in enumerate(rows):
            if r["level"] != 3:
                mirror_of.append(k)
                reqs.append(
                    _rubric_request(r, 6 - r["level"], protocol, max_tokens, temperature, seed)
                )
    t = time.perf_counter()
    hits0 = getattr(judge, "hits", 0)
    all_resps = judge.complete_many(reqs, progress=progress)
    elapsed = time.perf_counter() - t
    resps = all_resps[:n_stance]
    items = []
    for r, q in zip(rows, resps):
        rd = read_choice(q, prompts.STANCE_CHOICES, protocol)
        items.append(
            {
                "item": r["item"],
                "trait": r["trait"],
                "level": r["level"],
                "reading": rd["choice"],
                "weighted": rd["weighted"],
                "choice_mass": rd["mass"],
                "error": q.error,
                "cached": q.cached,
                "judge_model": q.model,
                "judgement": q.text,
            }
        )
    if rubric_check:
        mirrored = dict(zip(mirror_of, all_resps[2 * n_stance :]))
        for k, i in enumerate(items):
            for key, q in (("matched", all_resps[n_stance + k]), ("mirrored", mirrored.get(k))):
                rd = read_choice(q, prompts.SCORE_CHOICES, protocol) if q else None
                i[f"rubric_{key}"] = rd["choice"] if rd else None
                i[f"rubric_{key}_weighted"] = rd["weighted"] if rd else None
                if q is not None and q.error and i["error"] is None:
                    i["error"] = q.error
    ok = [i for i in items if i["error"] is None]
    metrics = stance_metrics(
        [i["level"] for i in ok], [i["reading"] for i in ok], [i["weighted"] for i in ok]
    )
    per_level = {}
    for lv in LEVELS:
        sel = [i for i in ok if i["level"] == lv]
        got = [i["reading"] for i in sel if i["reading"] is not None]
        w = [i["weighted"] for i in sel if i["weighted"] is not None]
        per_level[str(lv)] = {
            "n": len(sel),
            "mean_reading": round(float(np.mean(got)), 4) if got else None,
            "mean_weighted": round(float(np.mean(w)), 4) if w else None,
            "exact": round(float(np.mean([g == lv for g in got])), 4) if got else None,
        }
    stem = judge_slug(name or default_name(judge.name, protocol))
    result = {
        "format": VALIDATE_FORMAT,
        "mode": "stance",
        "folder": str(out),
        "name": stem,
        "known_answers": {k: v for k, v in cfg.items() if k != "identity"},
        "judge": {**judge.describe(), "resolved_models": resolved_models(resps)},
        "protocol": protocol,
        "sampling": {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "logprobs": logprobs,
        },
        "prompts": {"stance_version": prompts.STANCE_VERSION},
        **metrics,
        "per_level": per_level,
        "rubric_check": rubric_summary(ok) if rubric_check else None,
        "requests": {
            "total": len(reqs),
            "cached": getattr(judge, "hits", 0) - hits0,
            "errors": sum(r.error is not None for r in all_resps),
        },
        "timings": {"judge_s": round(elapsed, 3)},
    }
    _write_jsonl(out / "judge" / f"{stem}.jsonl", items)
    write_json_atomic(out / "judge" / f"{stem}.json", result)
    result["items_file"] = str(out / "judge" / f"{stem}.jsonl")
    return result


def _rubric_request(
    row: dict[str, Any],
    level: int,
    protocol: str,
    max_tokens: int,
    temperature: float,
    seed: int,
) -> JudgeRequest:
    return JudgeRequest(
        prompts.rubric_prompt(row["statement"], prompts.answer_label(level), row["text"], protocol),
        prompts.SCORE_CHOICES,
        max_tokens,
        temperature,
        seed,
        True,
    )


def rubric_summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The rubric check: matched vs mirrored target over the texts with both scores.

    ``matched_higher``: the share of texts whose matched score is strictly higher than the
    mirrored one (``ties`` counted apart); the same on the weighted scores where both exist.
    """
    pairs = [
        (i["rubric_matched"], i["rubric_mirrored"])
        for i in items
        if i.get("rubric_matched") is not None and i.get("rubric_mirrored") is not None
    ]
    wp = [
        (i["rubric_matched_weighted"], i["rubric_mirrored_weighted"])
        for i in items
        if i.get("rubric_matched_weighted") is not None
        and i.get("rubric_mirrored_weighted") is not None
    ]
    n = len(pairs)
    matched = [i["rubric_matched"] for i in items if i.get("rubric_matched") is not None]
    return {
        "n_matched": len(matched),
        "mean_matched": round(float(np.mean(matched)), 4) if matched else None,
        "n_pairs": n,
        "mean_matched_paired": round(float(np.mean([a for a, _ in pairs])), 4) if n else None,
        "mean_mirrored": round(float(np.mean([b for _, b in pairs])), 4) if n else None,
        "matched_higher": round(sum(a > b for a, b in pairs) / n, 4) if n else None,
        "ties": sum(a == b for a, b in pairs),
        "n_pairs_weighted": len(wp),
        "matched_higher_weighted": round(sum(a > b for a, b in wp) / len(wp), 4) if wp else None,
    }


def report(out: str | Path) -> list[dict[str, Any]]:
    """Every judge's result in ``OUT/judge/`` (by name)."""
    folder = Path(out) / "judge"
    res = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if d.get("mode") == "stance":
            res.append(d)
    return res


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One markdown row per judge: model, protocol, texts, unparsed, Spearman, agreement."""
    lines = [
        "| judge | served by | protocol | texts | unparsed | Spearman | exact | within one | "
        "MAE | Spearman (weighted) | MAE (weighted) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in results:
        j = d["judge"]
        where = j.get("base_url") or "in-process"
        model = ", ".join(j.get("resolved_models") or []) or j.get("model")
        lines.append(
            f"| {model} | {where} | {d['protocol']} | {d['n_texts']} | "
            f"{_f(d['unparsed_rate'])} | {_f(d['spearman'])} | {_f(d['exact_agreement'])} | "
            f"{_f(d['within_one'])} | {_f(d['mae'])} | {_f(d['spearman_weighted'])} | "
            f"{_f(d['mae_weighted'])} |"
        )
    return "\n".join(lines)
