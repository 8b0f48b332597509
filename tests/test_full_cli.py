"""Persons from a full-release file on the command line (issue #23, item 14).

``palign eval`` / ``generate-eval`` take ``--full FILE`` with ``--sample N --seed S``,
``--range A:B``, ``--person ID`` or ``--persons N``; the results record the file and its
sha256; ``palign compare`` scores the runs on those persons (read again from the file, which
must be unchanged). The file is a small synthetic PAPI-300K release written here.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from palign.cli import main
from palign.data import read_full
from palign.data.stream import sample_indices
from palign.data.types import Dataset
from palign.eval.baselines import predict
from palign.eval.metrics import evaluate
from palign.eval.runs import test_items as scored_items

N = 40
DEMO = ["sex", "age", "country"]


@pytest.fixture(scope="module")
def full_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(7)
    answers = rng.integers(1, 6, size=(N, 300))
    cases = [str(9_000_000 + 17 * k) for k in range(N)]
    path = tmp_path_factory.mktemp("full") / "MPI300.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", *DEMO, *(f"i{n}" for n in range(1, 301))])
        for c, row in zip(cases, answers):
            w.writerow([c, 1, 30, "USA", *row.tolist()])
    return path, cases


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_sample_range_person_and_compare(
    full_file, papi: Dataset, papi_dir: Path, tiny_folder: Path, tmp_path: Path, capsys
) -> None:
    path, cases = full_file
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    base = ["eval", "--method", "vanilla", "--model", str(tiny_folder), "--data", str(papi_dir)]
    base += ["--max-items", "4", "--quiet", "--format", "json", "--full", str(path)]
    out = tmp_path / "sample"
    rc, text, err = _run(capsys, [*base, "--sample", "5", "--seed", "3", "--out", str(out)])
    assert rc == 0, err
    res = json.loads(text)
    want = [cases[i] for i in sample_indices(N, 5, 3)]
    assert res["config"]["persons"] == want and res["report"]["n_persons"] == 5
    assert res["config"]["full"] == str(path.resolve()) and res["config"]["full_sha256"] == sha

    rc, text, err = _run(capsys, [*base, "--range", "10:13", "--out", str(tmp_path / "r")])
    assert rc == 0, err
    assert json.loads(text)["config"]["persons"] == cases[10:13]
    rc, text, err = _run(capsys, [*base, "--person", cases[30], "--out", str(tmp_path / "p")])
    assert rc == 0, err
    assert json.loads(text)["config"]["persons"] == [cases[30]]

    # compare scores the sampled persons of the file: the reference rows equal an independent
    # evaluation of those persons
    rc, text, err = _run(capsys, ["compare", str(out), "--format", "json"])
    assert rc == 0, err
    cmp = json.loads(text)
    assert cmp["persons"] == want and cmp["full"] == {"file": str(path.resolve()), "sha256": sha}
    ds = read_full(path, papi.inventory, ids=want)
    ref = evaluate(
        ds.inventory,
        ds.persons,
        predict("item-median", ds, "agreement"),
        "agreement",
        name="item-median",
        item_ids=scored_items(ds.inventory, 4),
    ).to_dict()
    row = next(r for r in cmp["rows"] if r["name"] == "item-median")
    assert row["n_persons"] == 5 and row["mean"] == pytest.approx(ref["mean"])
    # the answers scored are the file's, not a test-set person's
    assert {p.id for p in papi.persons}.isdisjoint(want)

    # a changed file is refused, with the recorded hash named
    moved = tmp_path / "MPI300-moved.csv"
    moved.write_bytes(path.read_bytes().replace(b"USA", b"GBR", 1))
    rc, _, err = _run(capsys, ["compare", str(out), "--full", str(moved)])
    assert rc == 2 and "changed since the run" in err


def test_selection_errors_are_one_line(full_file, papi_dir: Path, capsys) -> None:
    path, _ = full_file
    base = ["eval", "--method", "vanilla", "--data", str(papi_dir), "--out", "/nonexistent/x"]
    rc, _, err = _run(capsys, [*base, "--sample", "3"])
    assert rc == 2 and "add --full FILE" in err and "Traceback" not in err
    rc, _, err = _run(capsys, [*base, "--range", "0:5"])
    assert rc == 2 and "--range selects persons of a full-release file" in err
    rc, _, err = _run(capsys, [*base, "--full", str(path)])
    assert rc == 2 and "select persons with --sample N, --range A:B" in err
    rc, _, err = _run(capsys, [*base, "--full", str(path), "--range", "7"])
    assert rc == 2 and "bad --range '7'" in err
    rc, _, err = _run(capsys, [*base, "--full", str(path), "--sample", str(N + 1)])
    assert rc == 2 and f"--sample {N + 1} exceeds the file's {N} persons" in err
    rc, _, err = _run(capsys, [*base, "--full", str(path), "--range", "5:2"])
    assert rc == 2 and "empty row range 5:2" in err


def test_generate_eval_records_the_file(
    full_file, papi_dir: Path, tiny_folder: Path, tmp_path: Path, capsys
) -> None:
    path, cases = full_file
    out = tmp_path / "gen"
    argv = ["generate-eval", "--method", "vanilla", "--model", str(tiny_folder)]
    argv += ["--data", str(papi_dir), "--full", str(path), "--range", "0:2", "--max-items", "1"]
    argv += ["--max-new-tokens", "2", "--quiet", "--format", "json", "--out", str(out)]
    rc, _, err = _run(capsys, argv)
    assert rc == 0, err
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["persons"] == cases[:2] and cfg["full"] == str(path.resolve())
    assert cfg["full_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
