"""CLI of the data layer: JSON output and every bad-input case (one line, exit 2)."""

from __future__ import annotations

import json
import shutil
import urllib.error
from pathlib import Path

import pytest

from palign.cli import main
from palign.data.fetch import fetch, sha256_file
from palign.data.sources import PAPI_FILES
from palign.errors import PalignError


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("palign: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_baselines_json(capsys, papi_dir: Path) -> None:
    rc, out, _ = run(capsys, "baselines", "--data", str(papi_dir), "--format", "json")
    assert rc == 0
    d = json.loads(out)
    assert d["inventory"] == "ipip-neo" and d["semantics"] == "agreement"
    names = [p["name"] for p in d["predictors"]]
    assert names[:5] == [f"constant-{k}" for k in range(1, 6)] and "ridge" in names
    fm = next(p for p in d["predictors"] if p["name"] == "facet-mean")
    assert set(fm["traits"]) == set("OCEAN") and fm["n_persons"] == 300
    assert fm["sum"] == pytest.approx(sum(fm["traits"].values()), abs=1e-3)


def test_data_info_and_person(capsys, papi_dir: Path) -> None:
    rc, out, _ = run(capsys, "data", "info", "--data", str(papi_dir), "--format", "json")
    d = json.loads(out)
    assert rc == 0 and d["items"] == 300 and d["shown"] == 120 and d["persons"] == 300
    assert d["missing_answers"] > 0
    rc, out, _ = run(
        capsys, "data", "person", "172481", "--data", str(papi_dir), "--format", "json"
    )
    d = json.loads(out)
    assert rc == 0 and d["person"] == "172481" and set(d["traits"]) == set("OCEAN")
    assert len(d["facets"]) == 30
    rc, out, _ = run(capsys, "data", "person", "172481", "--data", str(papi_dir))
    assert rc == 0 and "Openness" in out


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["baselines", "--data", "/nonexistent/folder"], ["/nonexistent/folder", "--data"]),
        (["baselines", "--inventory", "mbti"], ["unknown inventory 'mbti'"]),
        (["baselines", "--semantics", "raw"], ["unknown semantics 'raw'"]),
        (["baselines", "--predictors", "oracle"], ["unknown predictor 'oracle'"]),
        (["data", "person", "42"], ["unknown person '42'"]),
    ],
)
def test_bad_input(capsys, papi_dir: Path, argv: list[str], needles: list[str]) -> None:
    if "--data" not in argv:
        argv = [*argv, "--data", str(papi_dir)]
    rc, out, err = run(capsys, *argv)
    assert_one_line_error(rc, err, *needles)
    assert out == ""


def _copy_papi(papi_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in ("IPIP-NEO-ItemKey.xls", "Test-set.json", "mpi_300_split.json"):
        shutil.copy(papi_dir / f, dest / f)
    return dest


@pytest.mark.parametrize(
    "victim,content,needle",
    [
        ("Test-set.json", None, "missing PAPI file"),
        ("Test-set.json", "{not json", "malformed JSON"),
        ("Test-set.json", '{"a": 1}', "not a list of persons"),
        ("mpi_300_split.json", '{"train": []}', "malformed split file"),
        ("IPIP-NEO-ItemKey.xls", "garbage", "malformed item key"),
        ("mpi_300_split.json", None, "missing PAPI file"),
    ],
)
def test_missing_or_malformed_files(capsys, papi_dir, tmp_path, victim, content, needle) -> None:
    d = _copy_papi(papi_dir, tmp_path / "papi")
    if content is None:
        (d / victim).unlink()
        if victim == "Test-set.json":  # the folder then holds no data at all
            needle = "holds no ipip-neo data"
    else:
        (d / victim).write_text(content)
    rc, _, err = run(capsys, "baselines", "--data", str(d))
    assert_one_line_error(rc, err, needle)


def test_fetch_verifies_checksums(tmp_path, papi_dir: Path) -> None:
    served = {rf.url: (papi_dir / rf.name).read_bytes() for rf in PAPI_FILES}
    dest = fetch("ipip-neo", tmp_path / "cache", downloader=lambda url, t: served[url])
    for rf in PAPI_FILES:
        assert sha256_file(dest / rf.name) == rf.sha256

    bad = dict(served)
    bad[PAPI_FILES[1].url] = b"tampered"
    (tmp_path / "c2").mkdir()
    with pytest.raises(PalignError, match="checksum mismatch for Test-set.json"):
        fetch("ipip-neo", tmp_path / "c2", downloader=lambda url, t: bad[url])
    assert not (tmp_path / "c2" / "Test-set.json").exists()  # nothing half-written
    assert not [p for p in (tmp_path / "c2").iterdir() if p.name.startswith(".")]


def test_fetch_offline_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    def offline(url: str, timeout: float) -> bytes:
        raise urllib.error.URLError("no network")

    import importlib

    monkeypatch.setattr(importlib.import_module("palign.data.fetch"), "_download", offline)
    rc, _, err = run(capsys, "data", "fetch", "--dest", str(tmp_path / "x"))
    assert_one_line_error(rc, err, "cannot download", "--data")
