"""The PAPI results table on a tiny random model: every method, references, plots, reuse."""

from __future__ import annotations

import json
from pathlib import Path

from palign.data.types import Dataset
from palign.eval.papi_report import build_report
from palign.models.loading import LoadedModel
from tests.test_runs import small


def test_report_all_methods(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, monkeypatch
) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    ds = small(papi, 5)
    methods = ["vanilla", "few-shot", "personality-prompt", "pas", "pas+few-shot"]
    d = build_report(
        ds,
        "tiny",
        "tiny",
        2,
        methods=methods,
        runs_dir=tmp_path / "runs",
        out_dir=tmp_path / "docs",
        options={"alpha_grid": [0, 2], "k": 4, "steer_position": "last"},  # fast: structure only
        progress=False,
        lm=tiny_lm,
    )
    names = [r["name"] for r in d["rows"]]
    assert names[:5] == methods and "ridge" in names and "facet-mean" in names
    pas = next(r for r in d["rows"] if r["name"] == "pas")
    assert sum(pas["alpha_distribution"].values()) == 2
    assert set(pas["alpha_distribution"]) <= {"0", "2"}
    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert "| pas |" in md and "(reference)" in md and "Chosen alpha" in md
    assert json.loads((tmp_path / "docs" / "tiny.json").read_text())["persons"] == d["persons"]
    for f in d["plots"]:
        assert (tmp_path / "docs" / f).stat().st_size > 1000
    # rerun reuses the finished runs: the person files are untouched
    stamp = (
        (tmp_path / "runs" / "tiny" / "pas" / "persons" / f"{d['persons'][0]}.json")
        .stat()
        .st_mtime_ns
    )
    build_report(
        ds,
        "tiny",
        "tiny",
        2,
        methods=["pas"],
        runs_dir=tmp_path / "runs",
        out_dir=tmp_path / "docs",
        options={"alpha_grid": [0, 2], "k": 4, "steer_position": "last"},
        progress=False,
        lm=tiny_lm,
    )
    assert (
        tmp_path / "runs" / "tiny" / "pas" / "persons" / f"{d['persons'][0]}.json"
    ).stat().st_mtime_ns == stamp
