"""``judge-validate``: known-answer texts written by SmolLM2, read back by SmolLM2 as judge.

The pipeline runs on 2 statements x 5 stances, is interrupted after the first statement and
resumed by the CLI (only the missing texts are generated, then every judgement comes from
the cache on a rerun); the reported metrics (and the rubric check's) equal a hand
computation from the items file,
and :func:`stance_metrics` equals a hand re-statement (average ranks, Pearson) and scipy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from palign.cli import main
from palign.judge.generate import read_jsonl
from palign.judge.validate import (
    ValidateConfig,
    select_statements,
    stance_metrics,
    write_texts,
)


def _ranks(x: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(x)), key=lambda k: x[k])
    r = [0.0] * len(x)
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and x[order[j + 1]] == x[order[k]]:
            j += 1
        for m in range(k, j + 1):
            r[order[m]] = (k + j) / 2 + 1
        k = j + 1
    return r


def _hand_spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den


def _hand(levels: list[int], readings: list[int | None]) -> dict[str, Any]:
    p = [(a, b) for a, b in zip(levels, readings) if b is not None]
    x, y = [a for a, _ in p], [b for _, b in p]
    out: dict[str, Any] = {"n_parsed": len(p), "unparsed_rate": 1 - len(p) / len(levels)}
    if p:
        out["exact_agreement"] = sum(a == b for a, b in p) / len(p)
        out["within_one"] = sum(abs(a - b) <= 1 for a, b in p) / len(p)
        out["mae"] = sum(abs(a - b) for a, b in p) / len(p)
        out["mean_error"] = sum(b - a for a, b in p) / len(p)
    if len(p) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
        out["spearman"] = _hand_spearman(x, y)
    else:
        out["spearman"] = None
    return out


def test_stance_metrics_equal_a_hand_computation() -> None:
    from scipy import stats

    levels = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 3]
    readings = [1, 3, 3, 5, 5, 2, None, 1, 4, 4, None]
    weighted = [1.2, 2.9, 3.1, 4.6, 4.9, 1.8, None, 1.5, 4.1, 4.2, None]
    got = stance_metrics(levels, readings, weighted)
    want = _hand(levels, readings)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-4), k
    assert got["n_texts"] == 11 and got["n_parsed"] == 9
    x = [a for a, b in zip(levels, readings) if b is not None]
    y = [b for b in readings if b is not None]
    assert got["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-4)
    xw = [a for a, w in zip(levels, weighted) if w is not None]
    yw = [w for w in weighted if w is not None]
    assert got["spearman_weighted"] == pytest.approx(_hand_spearman(xw, yw), abs=1e-4)
    assert got["mae_weighted"] == pytest.approx(np.mean(np.abs(np.subtract(xw, yw))), abs=1e-4)
    # undefined: a constant reading, fewer than three pairs
    assert stance_metrics([1, 2, 3], [4, 4, 4])["spearman"] is None
    assert stance_metrics([1, 2], [1, 2])["spearman"] is None
    none = stance_metrics([1, 2], [None, None])
    assert none["unparsed_rate"] == 1.0 and none["exact_agreement"] is None


def test_statement_sample_is_seeded(papi) -> None:
    inv = papi.inventory
    a = select_statements(inv, 10, 0)
    assert a == select_statements(inv, 10, 0) and len(set(a)) == 10
    assert a != select_statements(inv, 10, 1)
    assert set(a) <= set(inv.test_ids)
    assert select_statements(inv, 10_000, 0) == list(inv.test_ids)


class _Interrupt:
    """A generator backend that stops the run (like Ctrl-C) on its ``stop_at``-th call."""

    def __init__(self, backend: Any, stop_at: int) -> None:
        self.backend, self.stop_at, self.calls = backend, stop_at, 0
        self.identity, self.name = backend.identity, backend.name

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def complete_many(self, requests: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.backend.complete_many(requests, **kw)


def test_judge_validate_on_smollm2_runs_resumes_and_reports(
    papi, papi_dir: Path, tmp_path: Path, monkeypatch, capsys, one_thread
) -> None:
    from palign.judge.client import LocalJudge
    from palign.models.loading import load_model

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kv"
    cfg = ValidateConfig("smollm2", items=2, max_new_tokens=16, seed=3, batch_size=8)
    gen = _Interrupt(LocalJudge(load_model("smollm2"), batch_size=8), stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        write_texts(cfg, out, gen, papi.inventory, progress=False)
    first = read_jsonl(out / "texts.jsonl")
    ids = select_statements(papi.inventory, 2, 3)
    assert [r["item"] for r in first] == [ids[0]] * 5 and [r["level"] for r in first] == [
        1,
        2,
        3,
        4,
        5,
    ]
    for r in first:  # the instruction names the statement and the stance; the text is recorded
        assert r["statement"] in r["instruction"] and r["text"]
        assert r["generator_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "very inaccurate" in first[0]["instruction"]
    assert "very accurate" in first[4]["instruction"]
    argv = [
        "judge-validate",
        "--out",
        str(out),
        "--generator",
        "smollm2",
        "--judge-model",
        "smollm2",
        "--items",
        "2",
        "--gen-max-tokens",
        "16",
        "--seed",
        "3",
        "--data",
        str(papi_dir),
        "--quiet",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    texts = read_jsonl(out / "texts.jsonl")
    assert d["texts"] == {"total": 10, "generated_now": 5, "file": f"{out}/texts.jsonl"}
    assert texts[:5] == first and [r["item"] for r in texts[5:]] == [ids[1]] * 5
    assert d["protocol"] == "score-first" and d["judge"]["kind"] == "local"
    assert d["known_answers"]["generator"] == "smollm2" and d["known_answers"]["items"] == 2
    items = read_jsonl(out / "judge" / "local-smollm2.jsonl")
    assert [(i["item"], i["level"]) for i in items] == [(t["item"], t["level"]) for t in texts]
    want = _hand([i["level"] for i in items], [i["reading"] for i in items])
    for k, v in want.items():
        assert d[k] == pytest.approx(v, abs=1e-4), k
    # SmolLM2 starts its reply with the digit: the readings parse, with a weighted score
    assert d["n_parsed"] >= 5 and d["n_weighted"] == d["n_parsed"]
    # a rerun generates nothing and sends no judge request
    assert main(argv) == 0
    d2 = json.loads(capsys.readouterr().out)
    assert d2["texts"]["generated_now"] == 0 and d2["requests"]["cached"] == 10
    assert d2["exact_agreement"] == d["exact_agreement"]
    # the rubric check: each text rated on the 1-6 rubric against its instructed label and the
    # mirrored one (levels 1, 2, 4, 5); the summary equals a hand computation
    assert main([*argv, "--rubric-check"]) == 0
    d3 = json.loads(capsys.readouterr().out)
    assert d3["requests"]["total"] == 10 + 10 + 8 and d3["requests"]["cached"] == 10
    items = read_jsonl(out / "judge" / "local-smollm2.jsonl")
    assert [i["rubric_mirrored"] is None for i in items if i["level"] == 3] == [True, True]
    pairs = [
        (i["rubric_matched"], i["rubric_mirrored"])
        for i in items
        if i["rubric_matched"] is not None and i["rubric_mirrored"] is not None
    ]
    rc = d3["rubric_check"]
    assert rc["n_pairs"] == len(pairs) and rc["ties"] == sum(a == b for a, b in pairs)
    if pairs:
        assert rc["matched_higher"] == pytest.approx(
            sum(a > b for a, b in pairs) / len(pairs), abs=1e-4
        )
        assert rc["mean_mirrored"] == pytest.approx(np.mean([b for _, b in pairs]), abs=1e-4)
    # the markdown table names every judge of the folder
    assert main(argv[:-2]) == 0
    table = capsys.readouterr().out
    assert (
        "| judge | served by | protocol |" in table and "| in-process | score-first | 10 |" in table
    )
    # another generation setting in the same folder: one line, exit 2, nothing written
    assert main([*argv, "--gen-temperature", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "temperature" in err
    assert read_jsonl(out / "texts.jsonl") == texts
