"""Streaming reader for the full PAPI releases (PAPI-300K, PAPI-120-600K).

The paper's README links the full releases (Google Drive; users download them themselves).
Their layout is the one the paper's preprocessing reads (``pd.read_csv('MPI300.csv')``, the
300 test persons of ``Test-set.json`` are rows of it): a comma-separated file with a header,
one person per row:

- ``case``: the person id (the ``case`` of ``Test-set.json``);
- demographic columns (``sex, age, sec, min, hour, date, month, year, country`` in
  ``Test-set.json``), kept as the person's demographics;
- ``i1`` ... ``i300`` (PAPI-300K): the answer to item ``Full#`` = n of the item key, 1..5 in
  trait direction like ``Test-set.json``, 0 or empty = not answered;
- or ``i1`` ... ``i120`` (PAPI-120-600K, IPIP-NEO-120 only): the answer to the n-th
  IPIP-NEO-120 item (``Short#`` = n of the item key, i.e. ``shown_ids[n - 1]`` of the PAPI
  split). These persons answered only the 120 shown items: they can be aligned, not scored.

Files may be ``.csv``, ``.csv.gz`` or a ``.zip`` holding one ``.csv``, or the parquet form of
the release (the Hugging Face dataset ``WestlakeNLP/PAPI-300K``: shards
``data/train-0000k-of-0000n-*.parquet``): one ``.parquet`` file or a folder holding the shards
(read in name order, one dataset), with the same columns; parquet needs ``pyarrow`` (the
``parquet`` extra). Put them in ``<data dir>/full/`` (found by ``palign data info``) or pass
the path. Nothing is loaded whole: CSV rows are parsed one at a time, parquet is read in
record batches of :data:`PARQUET_BATCH` rows (``ParquetFile.iter_batches``), and only the
selected persons are kept, so memory grows with the selection, not with the file. Layout problems are one-line
:class:`~palign.errors.PalignError` s naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palign.data.types import Dataset, Inventory, Person
from palign.errors import PalignError

FULL_DIR = "full"
SUFFIXES = (".csv", ".csv.gz", ".zip", ".parquet")
PARQUET_BATCH = 2048
"""Rows per parquet record batch (one batch of Python values is alive at a time)."""
LAYOUTS = {"papi-300k": 300, "papi-120-600k": 120}
_VALID = {"", "0", "1", "2", "3", "4", "5", "0.0", "1.0", "2.0", "3.0", "4.0", "5.0"}
_EXPECTED = "case, demographics..., i1..i300 (PAPI-300K) or i1..i120 (PAPI-120-600K)"


def find_full_files(data_dir: str | Path) -> list[Path]:
    """Full-release files in ``<data_dir>/full/`` (sorted; empty if none): CSV files and
    parquet files, and folders holding parquet shards."""
    folder = Path(data_dir) / FULL_DIR
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(SUFFIXES) or p.is_dir() and _parquet_files(p)
    )


def _is_parquet(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(".parquet")


def _parquet_files(path: Path) -> list[Path]:
    """The parquet shards of a file or folder (searched below it), in name order."""
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*.parquet") if p.is_file()), key=lambda p: str(p))


def _require_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PalignError(
            "reading the parquet release needs pyarrow; pip install 'palign[parquet]'"
        ) from None
    return pq


def _parquet_header(path: Path) -> tuple[list[Path], list[str]]:
    """The shards of a parquet release and their (common) column names."""
    if not path.exists():
        _missing(path)
    files = _parquet_files(path)
    if not files:
        raise PalignError(
            f"{path} holds no .parquet file; pass the PAPI-300K parquet shards' folder or a CSV"
        )
    pq = _require_pyarrow()
    header: list[str] | None = None
    for f in files:
        try:
            names = list(pq.ParquetFile(f).schema_arrow.names)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds
            raise PalignError(f"{f}: unreadable parquet ({e}); download it again") from None
        if header is None:
            header = names
        elif names != header:
            raise PalignError(
                f"{f}: its columns differ from {files[0].name}'s; the shards must be one dataset"
            )
    return files, header or []


class _ParquetRow:
    """One row of a parquet record batch, read like a CSV row (``row[k]`` is text) without
    turning every answer into a Python string: the batch's answers are one integer matrix
    (0 = not answered), already checked for the whole batch."""

    __slots__ = ("_text", "_items", "_pos", "_i", "_width")
    checked = True

    def __init__(
        self, text: dict[int, list[str]], items: Any, pos: dict[int, int], i: int, width: int
    ) -> None:
        self._text, self._items, self._pos, self._i, self._width = text, items, pos, i, width

    def __len__(self) -> int:
        return self._width

    def __getitem__(self, k: int) -> str:
        p = self._pos.get(k)
        return self._text[k][self._i] if p is None else _DIGITS[int(self._items[self._i, p])]

    def item_values(self) -> Any:
        """The answers of the row's item columns, in column order (numpy, 0 = missing)."""
        return self._items[self._i]


_DIGITS = ["0", "1", "2", "3", "4", "5"]


def _parquet_items(batch: Any, cols: list[int], header: list[str], where: Any) -> Any:
    """The item columns of a record batch as an integer matrix (null/NaN -> 0), checked."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    out = np.zeros((batch.num_rows, len(cols)), dtype=np.int8)
    for j, k in enumerate(cols):
        col = batch.column(k)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.if_else(pc.equal(col, ""), pa.scalar(None, col.type), col)
            try:
                col = pc.cast(col, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad = next(i for i, v in enumerate(col.to_pylist()) if v and not _num(v))
                _bad_value(where(bad), header[k], col[bad].as_py())
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise PalignError(f"{where(0)}: column {header[k]} is {col.type}, expected numbers")
        vals = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        vals[np.isnan(vals)] = 0
        ok = (vals >= 0) & (vals <= 5) & (vals == np.floor(vals))
        if not ok.all():
            bad = int(np.argmin(ok))
            _bad_value(where(bad), header[k], col[bad].as_py())
        out[:, j] = vals
    return out


def _num(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _bad_value(where: str, column: str, value: Any) -> None:
    raise PalignError(f"{where}: {column} = {value!r}, expected 0..5 (0 or empty = not answered)")


def _parquet_records(
    path: Path, files: list[Path], header: list[str], item_cols: list[int], id_col: int
) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` for every row of the shards, one record batch of
    :data:`PARQUET_BATCH` rows at a time; answers are checked batch by batch in Arrow/numpy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pq = _require_pyarrow()
    pos = {k: j for j, k in enumerate(item_cols)}
    other = [k for k in range(len(header)) if k not in pos]
    for f in files:
        row = 0
        try:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, use_threads=False):
                ids = batch.column(id_col)
                text: dict[int, list[str]] = {}
                for k in other:
                    col = batch.column(k)
                    if pa.types.is_floating(col.type):
                        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
                    if not pa.types.is_string(col.type):
                        col = pc.cast(col, pa.string())
                    text[k] = pc.fill_null(col, "").to_pylist()

                def where(i: int, f: Path = f, base: int = row, ids: Any = ids) -> str:
                    return f"{path} {f.name} row {base + i} (case {ids[i].as_py()})"

                items = _parquet_items(batch, item_cols, header, where)
                for i in range(batch.num_rows):
                    yield f"{f.name} row {row}", _ParquetRow(text, items, pos, i, len(header))
                    row += 1
        except PalignError:
            raise
        except (OSError, ValueError, TypeError, pa.ArrowException) as e:
            raise PalignError(f"{f}: unreadable parquet ({e}); download it again") from None


def _missing(path: Path) -> None:
    raise PalignError(
        f"full-set file {path} not found; download PAPI-300K from the links in the paper's "
        f"README and put it in <data dir>/{FULL_DIR}/ (see docs/scaling.md)"
    )


@contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOBase]:
    if not path.is_file():
        _missing(path)
    name = path.name.lower()
    if name.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            yield f
    elif name.endswith(".csv.gz"):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            yield f  # type: ignore[misc]
    elif name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise PalignError(f"{path} is not a readable zip file; download it again") from None
        with zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise PalignError(
                    f"{path} holds {len(members)} .csv files ({', '.join(members[:3]) or 'none'}); "
                    "expected exactly one; unzip it and pass the .csv"
                )
            with zf.open(members[0]) as raw:
                yield io.TextIOWrapper(raw, encoding="utf-8", newline="")
    else:
        raise PalignError(
            f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)} "
            "(the PAPI release CSV, optionally compressed, or its parquet shards)"
        )


@dataclass
class FullLayout:
    """The columns of a full-release file.

    Attributes:
        path: the file.
        layout: ``papi-300k`` or ``papi-120-600k``.
        header: the column names.
        id_col: index of ``case``.
        item_cols: ``(column index, item id)`` for every answer column.
        demo_cols: ``(column index, name)`` of the other columns.
    """

    path: Path
    layout: str
    header: list[str]
    id_col: int
    item_cols: list[tuple[int, str]]
    demo_cols: list[tuple[int, str]]


def _layout(path: Path, header: list[str], inventory: Inventory) -> FullLayout:
    if inventory.name != "ipip-neo":
        raise PalignError(
            f"the full releases are IPIP-NEO (PAPI); got inventory {inventory.name!r}; "
            "use --inventory ipip-neo"
        )
    header = [h.strip() for h in header]
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise PalignError(
            f"{path}: the header is not comma-separated ({header[0][:40]!r}...); expected the "
            f"PAPI release CSV: {_EXPECTED}"
        )
    lower = [h.lower() for h in header]
    if "case" not in lower:
        raise PalignError(
            f"{path}: no 'case' column (the person id); expected the PAPI release layout: "
            f"{_EXPECTED}"
        )
    items: dict[int, int] = {}
    for k, h in enumerate(lower):
        if h.startswith("i") and h[1:].isdigit():
            n = int(h[1:])
            if n in items:
                raise PalignError(f"{path}: column {header[k]!r} appears twice; fix the header")
            items[n] = k
    found = sorted(items)
    layout = next((k for k, n in LAYOUTS.items() if found == list(range(1, n + 1))), None)
    if layout is None:
        span = f"i{found[0]}..i{found[-1]}" if found else "none"
        raise PalignError(
            f"{path}: {len(found)} answer columns ({span}); expected i1..i300 (PAPI-300K) or "
            "i1..i120 (PAPI-120-600K)"
        )
    if layout == "papi-300k":
        known = {it.id for it in inventory.items}
        ids = [str(n) for n in found]
        if set(ids) != known:
            raise PalignError(f"{path}: item ids do not match the inventory's 300 items")
    else:
        if len(inventory.shown_ids) != 120:
            raise PalignError(f"{path}: PAPI-120 needs the 120 shown items of the PAPI split")
        ids = [inventory.shown_ids[n - 1] for n in found]  # Short# n = shown_ids[n - 1]
    item_cols = [(items[n], iid) for n, iid in zip(found, ids)]
    taken = {k for k, _ in item_cols}
    id_col = lower.index("case")
    demo = [(k, h) for k, h in enumerate(header) if k not in taken and k != id_col]
    return FullLayout(path, layout, header, id_col, item_cols, demo)


def _csv_records(path: Path) -> Iterator[tuple[str, list[str]] | list[str]]:
    """The header, then ``(where, fields)`` for every non-empty row of a CSV release."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise PalignError(f"{path} is empty; expected the PAPI release CSV") from None
        except (UnicodeDecodeError, csv.Error, OSError, EOFError) as e:
            raise PalignError(f"{path}: unreadable ({e}); download it again") from None
        yield header
        try:
            for row in reader:
                if row:
                    yield f"line {reader.line_num}", row
        except (UnicodeDecodeError, csv.Error, OSError, EOFError, zipfile.BadZipFile) as e:
            raise PalignError(f"{path}: unreadable ({e}); download it again") from None


def _header(path: Path) -> list[str]:
    """The column names of a CSV or parquet release."""
    if _is_parquet(path):
        return _parquet_header(path)[1]
    it = _csv_records(path)
    header = next(it)
    it.close()  # type: ignore[attr-defined]
    return header  # type: ignore[return-value]


def _rows(path: Path, inventory: Inventory) -> Iterator[tuple[FullLayout, int, str, Any]]:
    """Yield ``(layout, row index, where, fields)`` for every data row, checked (``where``:
    ``"line N"`` of a CSV, ``"<shard> row N"`` of parquet; ``fields[k]`` is column k's
    text)."""
    if _is_parquet(path):
        files, header = _parquet_header(path)
        lay = _layout(path, header, inventory)
        records: Iterator[tuple[str, Any]] = _parquet_records(
            path, files, header, [k for k, _ in lay.item_cols], lay.id_col
        )
    else:
        it = _csv_records(path)
        header = next(it)  # type: ignore[assignment]
        lay = _layout(path, header, inventory)
        records = it  # type: ignore[assignment]
    width = len(header)
    lo = min(k for k, _ in lay.item_cols)
    hi = max(k for k, _ in lay.item_cols) + 1
    contiguous = hi - lo == len(lay.item_cols)
    index = 0
    for where, row in records:
        if not getattr(row, "checked", False):
            if len(row) != width:
                raise PalignError(
                    f"{path} {where}: {len(row)} fields, the header has "
                    f"{width}; the file is truncated or not the release CSV"
                )
            vals = row[lo:hi] if contiguous else [row[k] for k, _ in lay.item_cols]
            if not _VALID.issuperset(vals):
                k, v = next((k, row[k]) for k, _ in lay.item_cols if row[k] not in _VALID)
                raise PalignError(
                    f"{path} {where} (case {row[lay.id_col]}): "
                    f"{lay.header[k]} = {v!r}, expected 0..5 (0 or empty = not answered)"
                )
        if not row[lay.id_col].strip():
            raise PalignError(f"{path} {where}: empty 'case' (person id)")
        yield lay, index, where, row
        index += 1


def _person(lay: FullLayout, row: Any, inventory: Inventory) -> Person:
    stored = {it.id: 0 for it in inventory.items}
    for k, iid in lay.item_cols:
        v = row[k]
        stored[iid] = int(v[0]) if v else 0  # checked: "", "0".."5" or "0.0".."5.0"
    demo: dict[str, Any] = {}
    for k, name in lay.demo_cols:
        v = row[k].strip()
        demo[name] = int(v) if v.isdigit() else v
    return Person(id=_person_id(row[lay.id_col]), stored=stored, demographics=demo)


def count_rows(path: str | Path, inventory: Inventory) -> int:
    """Number of persons (data rows) in a full-release file (one checked pass)."""
    n = 0
    for _ in _rows(Path(path), inventory):
        n += 1
    return n


def sample_indices(n_rows: int, n: int, seed: int) -> list[int]:
    """The row indices of a seeded sample of ``n`` of ``n_rows`` persons, in file order."""
    import numpy as np

    if n < 1:
        raise PalignError("--sample must be at least 1")
    if n > n_rows:
        raise PalignError(f"--sample {n} exceeds the file's {n_rows} persons")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_rows, size=n, replace=False))


def iter_persons(
    path: str | Path,
    inventory: Inventory,
    *,
    ids: list[str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    n_rows: int | None = None,
) -> Iterator[Person]:
    """Stream the selected persons of a full-release file, in file order.

    Select at most one of: ``ids`` (person ids, the ``case`` column; all must exist),
    ``start``/``stop`` (data rows ``start`` .. ``stop - 1``, 0-based), ``sample`` (a seeded
    uniform sample of that many rows: :func:`sample_indices`, after a counting pass unless
    ``n_rows``, the file's row count, is given, e.g. from :func:`full_info`). None: every
    person.
    """
    path = Path(path)
    modes = [ids is not None, start is not None or stop is not None, sample is not None]
    if sum(modes) > 1:
        raise PalignError("select persons by ids, by a row range or by a sample, not several")
    if start is not None and start < 0 or stop is not None and stop < 0:
        raise PalignError("a row range needs non-negative bounds, e.g. --range 0:1000")
    if start is not None and stop is not None and stop <= start:
        raise PalignError(f"empty row range {start}:{stop}; give START:STOP with STOP > START")
    wanted: set[str] | None = None
    if ids is not None:
        wanted = {str(i) for i in ids}
        if not wanted:
            raise PalignError("no person ids given")
    picks: list[int] | None = None
    if sample is not None:
        total = n_rows if n_rows is not None else count_rows(path, inventory)
        picks = sample_indices(total, sample, seed)
    lo = start or 0
    nxt = 0
    seen: set[str] = set()
    for lay, index, _, row in _rows(path, inventory):
        if wanted is not None:
            pid = _person_id(row[lay.id_col])
            if pid in wanted and pid not in seen:
                seen.add(pid)
                yield _person(lay, row, inventory)
                if len(seen) == len(wanted):
                    return
        elif picks is not None:
            if nxt < len(picks) and index == picks[nxt]:
                nxt += 1
                yield _person(lay, row, inventory)
                if nxt == len(picks):
                    return
        else:
            if stop is not None and index >= stop:
                return
            if index >= lo:
                yield _person(lay, row, inventory)
    if wanted is not None and len(seen) < len(wanted):
        missing = sorted(wanted - seen)
        raise PalignError(
            f"{len(missing)} person id(s) not in {path} (e.g. {', '.join(missing[:3])}); "
            "ids are the 'case' column"
        )


def _person_id(v: str) -> str:
    v = v.strip()
    return v[:-2] if v.endswith(".0") and v[:-2].isdigit() else v


def read_full(
    path: str | Path,
    inventory: Inventory,
    *,
    ids: list[str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    n_rows: int | None = None,
) -> Dataset:
    """The selected persons of a full-release file as a :class:`Dataset` (see
    :func:`iter_persons` for the selection); ``inventory`` is the PAPI one
    (``load_dataset(...).inventory``)."""
    persons = list(
        iter_persons(
            path,
            inventory,
            ids=ids,
            start=start,
            stop=stop,
            sample=sample,
            seed=seed,
            n_rows=n_rows,
        )
    )
    if not persons:
        raise PalignError(f"the selection from {path} is empty; check the row range")
    if ids is not None:  # in the order asked
        by = {p.id: p for p in persons}
        persons = [by[str(i)] for i in dict.fromkeys(str(i) for i in ids)]
    return Dataset(inventory=inventory, persons=persons, source=str(path))


def full_info(path: str | Path, inventory: Inventory) -> dict[str, Any]:
    """Counts of a full-release file (one streaming pass): persons, answers, missing."""
    path = Path(path)
    lay: FullLayout | None = None
    rows = complete = missing = 0
    first: list[str] = []
    for lay, _, _, row in _rows(path, inventory):
        rows += 1
        if isinstance(row, _ParquetRow):
            miss = int((row.item_values() == 0).sum())
        else:
            vals = [row[k] for k, _ in lay.item_cols]
            miss = vals.count("") + vals.count("0") + vals.count("0.0")
        missing += miss
        complete += miss == 0
        if len(first) < 5:
            first.append(_person_id(row[lay.id_col]))
    if lay is None:
        lay = _layout(path, _header(path), inventory)
    n_items = len(lay.item_cols)
    return {
        "file": str(path),
        "layout": lay.layout,
        "persons": rows,
        "items_per_person": n_items,
        "scored_items": sum(iid in set(inventory.test_ids) for _, iid in lay.item_cols),
        "complete_persons": complete,
        "missing_answers": missing,
        "demographic_columns": [name for _, name in lay.demo_cols],
        "first_persons": first,
    }


def source_sha256(path: str | Path) -> str:
    """Hex sha256 of a full-release source: the file's bytes, or for a folder of shards
    (parquet) each shard's name and bytes in name order."""
    import hashlib

    path = Path(path)
    if not path.exists():
        raise PalignError(f"full-set file {path} not found; pass the PAPI-300K file with --full")
    files = _parquet_files(path) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def run_dataset(
    data: str | None,
    inventory: str,
    *,
    full: str | None = None,
    full_sha256: str | None = None,
    ids: list[str] | None = None,
) -> Dataset:
    """The data set a run was made on: the release of ``data`` or, for a run over a
    full-release file (``full``), its persons ``ids`` read again from that file, which must
    still have the recorded ``full_sha256``."""
    from palign.data import load_dataset

    ds = load_dataset(data, inventory)
    if not full:
        return ds
    if full_sha256 and source_sha256(full) != full_sha256:
        raise PalignError(
            f"{full} changed since the run was made (sha256 differs from the recorded "
            f"{full_sha256[:12]}...); pass the file the run used"
        )
    if not ids:
        raise PalignError(f"no person ids recorded for the run over {full}")
    return read_full(full, ds.inventory, ids=ids)
