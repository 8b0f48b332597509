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
    methods = ["vanilla", "few-shot", "personality-prompt", "pas", "pas+few-shot@last"]
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
    assert "Per person" in md and "beats vanilla" in md
    assert set(pas["per_person"]) == set(d["persons"])
    # an @position entry runs PAS with that position, in its own folder
    cfg = json.loads((tmp_path / "runs" / "tiny" / "pas+few-shot@last" / "config.json").read_text())
    assert cfg["identity"]["method"] == "pas+few-shot"
    assert cfg["identity"]["options"]["steer_position"] == "last"
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


def test_report_only_lists_unfinished(
    tmp_path: Path, papi: Dataset, tiny_lm: LoadedModel, monkeypatch
) -> None:
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    ds = small(papi, 5)
    kw = dict(runs_dir=tmp_path / "runs", out_dir=tmp_path / "docs", progress=False)
    build_report(ds, "t", "tiny", 1, methods=["vanilla"], lm=tiny_lm, **kw)
    d = build_report(ds, "t", "tiny", 2, methods=["vanilla", "pas@all"], report_only=True, **kw)
    # nothing computed: vanilla has 1 of 2 persons, pas@all none
    assert d["incomplete"] == {"vanilla": 1, "pas@all": 0}
    assert [r["name"] for r in d["rows"] if r["kind"] == "method"] == []
    md = (tmp_path / "docs" / "t.md").read_text()
    assert "Not finished yet" in md
    # the finished person of an unfinished entry is shown apart, with its own score
    assert d["partial"]["vanilla"]["persons"] == [ds.persons[0].id]
    assert "partial, vanilla on its 1 finished persons" in md


def test_method_spec_errors() -> None:
    import pytest

    from palign.errors import PalignError
    from palign.eval.papi_report import parse_method_spec

    assert parse_method_spec("pas@last") == ("pas", {"steer_position": "last"})
    assert parse_method_spec("few-shot") == ("few-shot", {})
    with pytest.raises(PalignError, match="only PAS"):
        parse_method_spec("vanilla@last")
    with pytest.raises(PalignError, match="unknown steering position"):
        parse_method_spec("pas@first")
    # a named alpha-selection variant beside the default (tuned)
    assert parse_method_spec("pas@all:heldout") == (
        "pas",
        {"steer_position": "all", "alpha_selection": "heldout"},
    )
    assert parse_method_spec("pas:oracle") == ("pas", {"alpha_selection": "oracle"})
    with pytest.raises(PalignError, match="only PAS methods take an alpha selection"):
        parse_method_spec("vanilla:heldout")
    with pytest.raises(PalignError, match="unknown alpha selection"):
        parse_method_spec("pas@all:best")
