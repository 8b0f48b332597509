"""The CPU smoke of ``benchmarks/gpu_suite.py``: the JSON's structure, the equality checks
(serving mixed == solo, Ray == one process) and the page's device labels.

Runs the suite as a subprocess (it sets its own activation cache and starts Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def run_suite(tmp: Path, papi_dir: Path, *args: str) -> tuple[int, dict]:
    # the default cache: the embedded tokenizer is converted there once (the suite then uses
    # a fresh activation cache of its own)
    env = {**os.environ, "PALIGN_DATA": str(papi_dir)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--out", str(tmp / "out"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    path = tmp / "out" / "gpu_suite.json"
    assert path.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(path.read_text())
    res["_output"] = proc.stdout[-3000:] + proc.stderr[-3000:]  # shown when an assert fails
    return proc.returncode, res


def test_smoke_serve_and_ray_equal(tmp_path: Path, papi_dir: Path) -> None:
    pytest.importorskip("ray")
    rc, res = run_suite(tmp_path, papi_dir, "--parts", "serve,ray")
    parts = res["parts"]
    assert rc == 0, (parts, res["_output"])
    assert res["smoke"] is True and res["device_type"] == "cpu"
    assert set(parts) == {"setup", "serve", "ray"}
    assert all(p["status"] == "ok" and p["seconds"] >= 0 for p in parts.values())
    serve = parts["serve"]
    assert [c["personalities"] for c in serve["cells"]] == [1, 8, 64]
    for c in serve["cells"]:
        assert c["completed"] == c["requests"] == 32 and c["lost"] == 0
        assert c["solo_checked"] > 0 and c["solo_equal"] == c["solo_checked"]
        assert c["tokens"] > 0 and c["tok_per_s"] > 0 and c["p50_s"] > 0
        assert c["p99_s"] is None  # fewer than 100 samples: not stated
    assert serve["solo_equal_all"] is True
    assert set(serve["ratio_mixed_vs_one"]) == {"8", "64"}
    ray = parts["ray"]
    assert ray["identical"] is True and ray["identical_persons"] == ray["persons"] == 2
    assert ray["actor_path"] == "cpu" and ray["runs"]["ray_1"]["scale"]["workers"] == 1
    page = (tmp_path / "out" / "gpu_suite.md").read_text()
    assert "No GPU run has happened yet" in page


def test_budget_skips_with_reasons(tmp_path: Path, papi_dir: Path) -> None:
    rc, res = run_suite(tmp_path, papi_dir, "--budget-s", "0.5", "--parts", "pas,serve")
    parts = res["parts"]
    assert rc == 1  # the smoke fails when a part did not run
    assert parts["setup"]["status"] == "skipped" and "time budget" in parts["setup"]["reason"]
    for name in ("pas", "serve"):
        assert parts[name] == {"status": "skipped", "reason": "no model (part setup: skipped)"}
    assert (tmp_path / "out" / "gpu_suite.md").is_file()


def test_page_names_the_device_in_every_row() -> None:
    sys.path.insert(0, str(SUITE.parent))
    import gpu_suite_page

    res = {
        "smoke": False,
        "device": "NVIDIA H100 80GB HBM3",
        "device_type": "cuda",
        "created": "2026-01-01T00:00:00Z",
        "command": "python benchmarks/gpu_suite.py",
        "weights": "random",
        "expected_h100_s": {"setup": 30, "pas": 240},
        "versions": {"torch": "x"},
        "total_s": 500.0,
        "parts": {
            "serve": {
                "status": "ok",
                "engine": "E",
                "vectors": "V",
                "max_tokens": 32,
                "requests_per_stream": 4,
                "cells": [
                    {
                        "personalities": m,
                        "streams": 32,
                        "requests": 128,
                        "completed": 128,
                        "tok_per_s": 100.0 * m,
                        "p50_s": 0.5,
                        "p99_s": 0.9,
                        "max_batch_rows": 32,
                        "solo_equal": 8,
                        "solo_checked": 8,
                    }
                    for m in (1, 8)
                ],
                "ratio_mixed_vs_one": {"8": 8.0},
                "solo_equal_all": True,
            },
            "train": {"status": "error", "error": "OutOfMemoryError: x"},
        },
    }
    page = gpu_suite_page.render(res)
    assert "No GPU run has happened yet" not in page
    assert "Measured on **NVIDIA H100 80GB HBM3**" in page
    run = page.split("## This run")[1]
    rows = [r for r in run.splitlines() if r.startswith("| ") and not r.startswith("| person")]
    assert len(rows) == 2 and all(r.rstrip().endswith("NVIDIA H100 80GB HBM3 |") for r in rows)
    assert "error: `OutOfMemoryError: x`" in run
    assert "expected on one H100 (not measured)" in page
