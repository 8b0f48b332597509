"""Streaming reader of the full PAPI releases: selection, counts, bounded memory, bad layouts."""

from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from palign.cli import main
from palign.data import full_info, iter_persons, read_full
from palign.data.stream import sample_indices
from palign.data.types import Dataset
from palign.errors import PalignError

N_ROWS = 100_000
DEMO = ["sex", "age", "sec", "min", "hour", "date", "month", "year", "country"]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 100K-person file in the PAPI-300K layout, written from numpy arrays (fast).

    Returns the path, the answers (N, 300; 0 = missing) and the case ids.
    """
    rng = np.random.default_rng(0)
    answers = rng.integers(1, 6, size=(N_ROWS, 300), dtype=np.uint8)
    answers[rng.random((N_ROWS, 300)) < 0.002] = 0
    cases = 1_000_000 + rng.permutation(N_ROWS)
    # fixed-width prefix: case(7) sex(1) age(2) sec min hour date month(2 each) year(3) country
    prefix = np.char.add(
        cases.astype("U7"),
        np.char.add(",", rng.integers(1, 3, N_ROWS).astype("U1")),
    )
    tail = ",34,07,15,12,21,07,103,USA,"
    prefix = np.char.add(prefix, tail)
    pre = np.frombuffer("".join(prefix.tolist()).encode(), dtype=np.uint8).reshape(N_ROWS, -1)
    body = np.empty((N_ROWS, 600), dtype=np.uint8)
    body[:, 0::2] = answers + ord("0")
    body[:, 1::2] = ord(",")
    body[:, -1] = ord("\n")
    path = tmp_path_factory.mktemp("full") / "MPI300.csv"
    header = ",".join(["case", *DEMO, *(f"i{n}" for n in range(1, 301))]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(np.concatenate([pre, body], axis=1).tobytes())
    return path, answers, cases


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_counts_and_selection(big, papi: Dataset) -> None:
    path, answers, cases = big
    inv = papi.inventory
    info = full_info(path, inv)
    assert info["layout"] == "papi-300k" and info["persons"] == N_ROWS
    assert info["missing_answers"] == int((answers == 0).sum())
    assert info["complete_persons"] == int((answers != 0).all(axis=1).sum())
    assert info["scored_items"] == 180 and info["demographic_columns"] == DEMO

    # by id, in the order asked; answers equal the generating array (item Full# n = column n)
    rows = [50_000, 3, 7]  # the reader stops once all are found
    ds = read_full(path, inv, ids=[str(cases[r]) for r in rows])
    assert [p.id for p in ds.persons] == [str(cases[r]) for r in rows]
    for p, r in zip(ds.persons, rows):
        assert [p.stored[str(n)] for n in range(1, 301)] == answers[r].tolist()
        assert p.demographics["country"] == "USA" and p.demographics["year"] == 103
    with pytest.raises(PalignError, match="not in .*'case' column"):
        read_full(path, inv, ids=[str(cases[0]), "42"])

    # a row range
    ds = read_full(path, inv, start=N_ROWS - 3, stop=N_ROWS + 10)
    assert [p.id for p in ds.persons] == [str(c) for c in cases[-3:]]

    # a seeded sample: the rows of sample_indices (reproducible, seed-dependent), file order
    picks = sample_indices(N_ROWS, 20, seed=7)
    assert picks == sample_indices(N_ROWS, 20, seed=7) != sample_indices(N_ROWS, 20, seed=8)
    assert len(set(picks)) == 20 and picks == sorted(picks) and max(picks) < N_ROWS
    got = [p.id for p in iter_persons(path, inv, sample=20, seed=7, n_rows=info["persons"])]
    assert got == [str(cases[r]) for r in picks]
    with pytest.raises(PalignError, match="exceeds the file's 100000 persons"):
        sample_indices(N_ROWS, N_ROWS + 1, seed=0)
    with pytest.raises(PalignError, match="not several"):
        list(iter_persons(path, inv, sample=3, start=0))


def test_streaming_memory_is_bounded(big, papi: Dataset) -> None:
    """Reading to the last row keeps Python allocations far below the file size."""
    path, answers, cases = big
    size = path.stat().st_size
    tracemalloc.start()
    try:
        persons = list(iter_persons(path, papi.inventory, start=N_ROWS - 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.id for p in persons] == [str(c) for c in cases[-5:]]
    assert size > 60e6
    print(f"streaming {size / 1e6:.0f} MB, {N_ROWS} rows: tracemalloc peak {peak / 1e6:.2f} MB")
    # the whole file as persons would be ~700 MB (7 KB per person); streaming keeps rows:
    assert peak < 4e6, f"peak {peak / 1e6:.1f} MB while streaming a {size / 1e6:.0f} MB file"


def test_release_rows_read_like_the_test_set(tmp_path: Path, papi: Dataset) -> None:
    """The 300 Test-set.json persons, written in the release layout, read back identically."""
    src = Path(papi.source) / "Test-set.json"
    rows = json.loads(src.read_text())
    header = list(rows[0])
    path = write_csv(tmp_path / "MPI300.csv", header, [[r[h] for h in header] for r in rows])
    ds = read_full(path, papi.inventory)
    assert [p.id for p in ds.persons] == [p.id for p in papi.persons]
    for a, b in zip(ds.persons, papi.persons):
        assert a.stored == b.stored and a.demographics == b.demographics
    for packed in (tmp_path / "MPI300.csv.gz", tmp_path / "MPI300.zip"):
        if packed.suffix == ".gz":
            packed.write_bytes(gzip.compress(path.read_bytes()))
        else:
            with zipfile.ZipFile(packed, "w") as z:
                z.write(path, "MPI300.csv")
        got = read_full(packed, papi.inventory, ids=[papi.persons[5].id])
        assert got.persons[0].stored == papi.persons[5].stored


def test_papi_120_layout_uses_short_numbers(tmp_path: Path, papi: Dataset) -> None:
    """i1..i120 are IPIP-NEO-120 items (Short# n), checked against the item key itself."""
    import xlrd

    sheet = xlrd.open_workbook(str(Path(papi.source) / "IPIP-NEO-ItemKey.xls")).sheet_by_index(0)
    head = [str(v) for v in sheet.row_values(0)]
    full_of_short = {}
    for r in range(1, sheet.nrows):
        row = sheet.row_values(r)
        if row[head.index("Short#")] not in ("", None):
            full_of_short[int(row[head.index("Short#")])] = str(int(row[head.index("Full#")]))
    vals = [(n % 5) + 1 for n in range(1, 121)]
    path = write_csv(
        tmp_path / "MPI120.csv",
        ["case", "sex", *(f"i{n}" for n in range(1, 121))],
        [["9", "1", *vals]],
    )
    info = full_info(path, papi.inventory)
    assert info["layout"] == "papi-120-600k" and info["scored_items"] == 0
    p = read_full(path, papi.inventory).persons[0]
    for n, v in zip(range(1, 121), vals):
        assert p.stored[full_of_short[n]] == v
    assert all(p.stored[i] == 0 for i in papi.inventory.test_ids)


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("a.csv", "", "is empty"),
        ("a.csv", "id,sex," + ",".join(f"i{n}" for n in range(1, 301)) + "\n", "no 'case' column"),
        ("a.csv", "case;sex;i1;i2\n1;2;3;4\n", "not comma-separated"),
        (
            "a.csv",
            "case," + ",".join(f"i{n}" for n in range(1, 300)) + "\n",
            "299 answer columns (i1..i299); expected i1..i300",
        ),
        (
            "a.csv",
            "case," + ",".join(f"i{n}" for n in range(1, 121)) + "\n"
            "1," + ",".join(["3"] * 120) + "\n"
            "2," + ",".join(["3"] * 4 + ["x"] + ["3"] * 115) + "\n",
            "line 3 (case 2): i5 = 'x', expected 0..5",
        ),
        (
            "a.csv",
            "case," + ",".join(f"i{n}" for n in range(1, 121)) + "\n1,3,3\n",
            "line 2: 3 fields, the header has 121",
        ),
        ("a.xlsx", "case\n", "unsupported file type"),
        ("a.zip", "not a zip", "not a readable zip"),
    ],
)
def test_bad_layouts_are_one_line_errors(
    tmp_path: Path, papi: Dataset, name: str, content: str, needle: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PalignError) as e:
        full_info(path, papi.inventory)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(path) in msg


def test_missing_file_and_cli_counts(tmp_path: Path, papi: Dataset, papi_dir: Path, capsys) -> None:
    with pytest.raises(PalignError, match="full/"):
        full_info(tmp_path / "MPI300.csv", papi.inventory)
    header = ["case", *DEMO, *(f"i{n}" for n in range(1, 301))]
    rows = [[n, 1, 30, 1, 1, 1, 1, 1, 100, "USA", *([2] * 299 + [n % 2])] for n in range(1, 8)]
    path = write_csv(tmp_path / "MPI300.csv", header, rows)
    picks = sample_indices(7, 3, seed=1)  # the reader counts the rows itself here
    assert [p.id for p in iter_persons(path, papi.inventory, sample=3, seed=1)] == [
        str(rows[k][0]) for k in picks
    ]
    argv = ["data", "info", "--data", str(papi_dir), "--full", str(path), "--format", "json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["persons"] == 300  # the test set stays the default
    f = d["full_sets"][0]
    assert (f["persons"], f["complete_persons"], f["missing_answers"]) == (7, 4, 3)
    assert main(["data", "info", "--data", str(papi_dir), "--full", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err


# --- the parquet form of the release (WestlakeNLP/PAPI-300K: data/train-0000k-of-00002-*.parquet)


def test_parquet_shards_read_like_the_test_set(
    tmp_path: Path, papi: Dataset, papi_dir: Path, capsys
) -> None:
    """The 300 Test-set.json persons as two parquet shards (and as one file) read back
    identically; nulls and NaN are unanswered; a bad value is a one-line error."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = json.loads((Path(papi.source) / "Test-set.json").read_text())
    table = pa.Table.from_pylist(rows)
    folder = tmp_path / "PAPI-300K"
    (folder / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 120), folder / "data" / "train-00000-of-00002-a.parquet")
    pq.write_table(table.slice(120), folder / "data" / "train-00001-of-00002-b.parquet")
    ds = read_full(folder, papi.inventory)
    assert [p.id for p in ds.persons] == [p.id for p in papi.persons]
    for a, b in zip(ds.persons, papi.persons):
        assert a.stored == b.stored and a.demographics == b.demographics
    single = tmp_path / "one.parquet"
    pq.write_table(table, single, row_group_size=50)
    got = read_full(single, papi.inventory, start=250, stop=252)
    assert [p.stored for p in got.persons] == [p.stored for p in papi.persons[250:252]]
    assert main(["data", "info", "--data", str(papi_dir), "--full", str(folder)]) == 0
    assert "300" in capsys.readouterr().out

    # answers stored as floats with NaN, and as nulls: unanswered (0)
    head = [c for c in table.column_names if not (c[0] == "i" and c[1:].isdigit())]
    cols = {c: table.column(c).slice(0, 2) for c in head}
    for n in range(1, 301):
        v = [float(x) for x in table.column(f"i{n}").slice(0, 2).to_pylist()]
        cols[f"i{n}"] = pa.array([np.nan if n == 1 else v[0], None if n == 2 else v[1]])
    pq.write_table(pa.table(cols), tmp_path / "nan.parquet")
    p0, p1 = read_full(tmp_path / "nan.parquet", papi.inventory).persons
    assert p0.stored["1"] == 0 and p1.stored["2"] == 0
    assert p0.stored["3"] == papi.persons[0].stored["3"]
    cols["i7"] = pa.array([3.0, 9.0])
    pq.write_table(pa.table(cols), tmp_path / "bad.parquet")
    with pytest.raises(
        PalignError, match=r"bad.parquet row 1 \(case .*\): i7 = 9.0, expected 0..5"
    ):
        read_full(tmp_path / "bad.parquet", papi.inventory)


def test_parquet_streaming_memory_is_bounded(tmp_path: Path, papi_dir: Path) -> None:
    """Reading through 20,000 parquet rows keeps Python allocations under the CSV reader's
    bound (4 MB) and Arrow's memory well below the decoded table; measured in a fresh process
    (Arrow's pool reports its peak since start), after a warm-up pass (imports)."""
    import subprocess
    import sys

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 20_000
    rng = np.random.default_rng(1)
    cases = 2_000_000 + rng.permutation(n)
    cols = {"case": pa.array(cases.astype(np.int64)), "country": pa.array(["USA"] * n)}
    answers = rng.integers(0, 6, size=(n, 300)).astype(np.int64)
    for k in range(300):
        cols[f"i{k + 1}"] = pa.array(answers[:, k])
    table = pa.table(cols)
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    for s in range(2):
        half = table.slice(s * n // 2, n // 2)
        pq.write_table(half, folder / f"train-0000{s}-of-00002.parquet", row_group_size=5000)
    script = (
        "import json, sys, tracemalloc\n"
        "import pyarrow as pa\n"
        "from palign.data import iter_persons, load_dataset\n"
        "inv = load_dataset(sys.argv[2], 'ipip-neo').inventory\n"
        "list(iter_persons(sys.argv[1], inv, start=int(sys.argv[3]) - 1))\n"
        "tracemalloc.start()\n"
        "ids = [p.id for p in iter_persons(sys.argv[1], inv, start=int(sys.argv[3]) - 5)]\n"
        "peak = tracemalloc.get_traced_memory()[1]\n"
        "print(json.dumps({'ids': ids, 'peak': peak,"
        " 'arrow': pa.default_memory_pool().max_memory()}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "pq"), str(papi_dir), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["ids"] == [str(c) for c in cases[-5:]]
    print(f"parquet {table.nbytes / 1e6:.0f} MB decoded: {got}")
    assert got["peak"] < 4e6, got
    assert got["arrow"] < 0.75 * table.nbytes, got  # the whole table would be >= 1x
