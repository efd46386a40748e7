"""Delimited text read in batches, with the dialect `read_table` detects, and cached once as Parquet.

    for batch in csv_batches("big.csv"):                      # pyarrow RecordBatches, one schema throughout
        ...
    cached = parquet_cache("big.csv", "runs/big")              # runs/big/data-cache/big.parquet, written once

A CSV larger than memory is read with pyarrow's streaming reader (`pyarrow.csv.open_csv`), a block at a
time. The first block fixes the column types (as pyarrow infers them there); a later block whose cells do
not fit a column's type widens that column (integers to float64, anything else to text) and the read starts
again (`parquet_cache`), so every batch has the same schema. Numbers written with a decimal comma or
thousands separators are parsed per batch by `fitloop.tabular.dialect.parse_number_columns`, with the
decimal mark the first block settled.

The cache is `RUN_DIR/data-cache/<name>.parquet` with `<name>.json` beside it: the source's absolute path,
size and modification time (nanoseconds), and the dialect used. A later run or a resume reuses the cache
when all of these match (the file is not hashed: hashing a 20 GB file costs as much as converting it), and
converts again otherwise. The Parquet file is written to a temporary name and renamed when complete, so a
killed conversion never leaves a cache that looks whole.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from .dialect import ReadInfo, check_header, parse_number_columns
from .errors import TableError
from .reading import detect_content, detect_delimiter

__all__ = ["CsvDialect", "csv_dialect", "csv_batches", "parquet_cache", "ColumnTypeChanged", "CACHE_DIR",
           "BLOCK_BYTES"]

CACHE_DIR = "data-cache"
BLOCK_BYTES = 1 << 22  # 4 MiB of text per block, as `read_table` reads
ROW_GROUP_ROWS = 1 << 17  # rows per row group of the cache: the unit a streamed epoch shuffles
_COLUMN_RE = re.compile(r"In CSV column #(\d+)")


@dataclass
class CsvDialect:
    """How a delimited text file is read: its encoding, delimiter, decimal mark, compression."""

    encoding: str
    delimiter: str
    decimal: str | None
    compressed: bool
    skip_rows: int = 0  # 1 when the first line is Excel's `sep=` line


def csv_dialect(path: str | Path, *, encoding: str = "utf-8", delimiter: str | None = None,
                decimal: str | None = None, info: ReadInfo | None = None) -> CsvDialect:
    """The dialect `read_table` would read `path` with: content (gzip, UTF-16/32), the `sep=` line, the
    sniffed delimiter (given `delimiter` first). Notes what it detected in `info`."""
    path = Path(path)
    content = detect_content(path, path.name.lower(), encoding)
    if content.format == "parquet":
        raise TableError(f"{path}: is a Parquet file, not delimited text.")
    ext = ".tsv" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ".csv"
    sep, sep_line = detect_delimiter(path, ext, content, delimiter, info)
    return CsvDialect(content.encoding, sep, decimal, content.compressed, skip_rows=1 if sep_line else 0)


def _open(path: Path, found: CsvDialect, types: dict[str, pa.DataType] | None) -> tuple[Any, Any]:
    """pyarrow's streaming reader over `path` (and the raw file, whose position tells the progress)."""
    raw = pa.OSFile(str(path))
    stream = pa.CompressedInputStream(raw, "gzip") if found.compressed else raw
    read_opts = pcsv.ReadOptions(encoding=found.encoding, block_size=BLOCK_BYTES, skip_rows=found.skip_rows)
    convert = pcsv.ConvertOptions(strings_can_be_null=True, column_types=types or {},
                                  decimal_point=found.decimal if found.decimal in (",", ".") else ".")
    try:
        parse = pcsv.ParseOptions(delimiter=found.delimiter)
        reader = pcsv.open_csv(stream, read_options=read_opts, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, UnicodeDecodeError) as e:
        raw.close()
        raise TableError(f"{path}: cannot read as delimited text ({e}).") from e
    return reader, raw


def csv_batches(path: str | Path, *, encoding: str = "utf-8", delimiter: str | None = None,
                decimal: str | None = None, info: ReadInfo | None = None, types: dict[str, pa.DataType] | None = None,
                widen: bool = False, progress: Any = None) -> Iterator[pa.RecordBatch]:
    """The rows of a delimited text file, in batches of one schema (see the module docstring).

    Args:
        path: A .csv/.tsv file, gzip-compressed or not.
        encoding, delimiter, decimal: as `read_table` takes them (None: detected).
        info: receives the delimiter and decimal mark used, and the notes about them.
        types: column -> type, over what the first block infers.
        widen: read integer columns as float64 and all-empty ones as text from the start, so that a later
            block rarely disagrees (predict and evaluate, which cannot read the file twice).
        progress: called with the bytes of the file read so far, after each batch.

    Raises:
        ColumnTypeChanged: a later block's cells do not fit a column's type (`parquet_cache` reads again,
            with the column widened).
        TableError: text pyarrow cannot parse.
    """
    path = Path(path)
    found = csv_dialect(path, encoding=encoding, delimiter=delimiter, decimal=decimal, info=info)
    reader, raw = _open(path, found, types)
    first = reader.schema
    reader.close()
    raw.close()
    fixed = {f.name: _widened(f.type) if widen else f.type for f in first} | (types or {})
    reader, raw = _open(path, found, fixed)
    names = check_header(list(first.names), str(path)) or list(first.names)
    decided: pa.Schema | None = None
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as e:
                raise _type_error(path, e, first, fixed) from e
            table = pa.Table.from_batches([batch]).rename_columns(names)
            table = parse_number_columns(table, found.decimal, str(path), info if info is not None else ReadInfo())
            if decided is None:
                decided = table.schema
                found.decimal = found.decimal or (info.decimal if info is not None else None)
            yield from _conform(table, decided, path).to_batches()
            if progress is not None:
                progress(raw.tell())
    finally:
        reader.close()
        raw.close()


def _widened(kind: pa.DataType) -> pa.DataType:
    """The type a column read in one pass gets: one a later block is unlikely to contradict."""
    if pa.types.is_integer(kind):
        return pa.float64()
    if pa.types.is_null(kind) or pa.types.is_temporal(kind):
        return pa.string()
    return kind


class ColumnTypeChanged(TableError):
    """A later block's cells do not fit the type the first block gave a column: `to` is the wider one."""

    def __init__(self, message: str, name: str, to: pa.DataType) -> None:
        super().__init__(message)
        self.name, self.to = name, to


def _type_error(path: Path, error: Exception, schema: pa.Schema, fixed: dict[str, pa.DataType]) -> TableError:
    """`ColumnTypeChanged` for a conversion error in a later block, else the error as a `TableError`."""
    match = _COLUMN_RE.search(str(error))
    if match is None or "conversion error" not in str(error):
        return TableError(f"{path}: cannot parse as delimited text ({error}).")
    name = schema.names[int(match.group(1))]
    now = fixed[name]
    to = pa.float64() if pa.types.is_integer(now) else pa.string()
    if now == to:
        return TableError(f"{path}: column {name!r} cannot be read ({error}).")
    return ColumnTypeChanged(f"{path}: column {name!r} reads as {now} in the first rows but not further on "
                             f"({error}); convert the file to Parquet, or fix those cells.", name, to)


def _conform(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """`table` cast to the first batch's schema (a column of numbers with a decimal comma in one block may
    hold none in the next, which then reads as text)."""
    if table.schema == schema:
        return table
    columns = []
    for field, column in zip(schema, table.columns):
        try:
            columns.append(column if column.type == field.type else pc.cast(column, field.type))
        except pa.ArrowInvalid as e:
            raise TableError(f"{path}: column {field.name!r} reads as {field.type} in the first rows but not "
                             f"further on ({e}); pass --decimal, or fix those cells.") from e
    return pa.Table.from_arrays(columns, schema=schema)


def parquet_cache(path: str | os.PathLike, run_dir: str | os.PathLike, *, encoding: str = "utf-8",
                  delimiter: str | None = None, decimal: str | None = None, info: ReadInfo | None = None,
                  show_progress: bool | None = None, log: Any = None) -> Path:
    """`path` (delimited text) converted once into `RUN_DIR/data-cache/<name>.parquet`; reused when the source's
    size and modification time and the dialect still match (see the module docstring).

    Args:
        path: The CSV/TSV(.gz) file.
        run_dir: The run directory the cache goes in.
        encoding, delimiter, decimal: as `read_table` takes them.
        info: receives the dialect used and its notes.
        show_progress: draw a rich progress bar (None: when stderr is a terminal).
        log: called with one line saying whether the cache was written or reused.

    Returns:
        The Parquet file.
    """
    source = Path(path).resolve()
    cache = Path(run_dir) / CACHE_DIR / (source.name.split(".")[0] + ".parquet")
    stamp = _stamp(source, encoding, delimiter, decimal)
    meta = cache.with_suffix(".json")
    if cache.is_file() and meta.is_file() and _read_json(meta).get("source") == stamp:
        if log is not None:
            log(f"Reusing the Parquet cache {cache} of {source.name} (same size and modification time).")
        if info is not None:
            info.decimal = _read_json(meta).get("decimal")
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    info = info if info is not None else ReadInfo()
    partial = cache.with_name(cache.name + ".partial")
    types: dict[str, pa.DataType] = {}
    for _ in range(64):  # each try widens one column (integers, then text): a few tries at most
        try:
            _convert(source, partial, encoding, delimiter, decimal, info, types, show_progress)
            break
        except ColumnTypeChanged as changed:
            types[changed.name] = changed.to
            info.notes.clear()
    os.replace(partial, cache)
    meta.write_text(json.dumps({"source": stamp, "decimal": info.decimal}, indent=1), encoding="utf-8")
    if log is not None:
        log(f"Converted {source.name} into the Parquet cache {cache} ({cache.stat().st_size / 2**20:.1f} MiB).")
    return cache


def _stamp(source: Path, encoding: str, delimiter: str | None, decimal: str | None) -> dict[str, Any]:
    if not source.is_file():
        raise TableError(f"{source}: file not found (check the path; cwd is {Path.cwd()}).")
    status = source.stat()
    return {"path": str(source), "size": status.st_size, "mtime_ns": status.st_mtime_ns, "encoding": encoding,
            "delimiter": delimiter, "decimal": decimal}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _convert(source: Path, out: Path, encoding: str, delimiter: str | None, decimal: str | None, info: ReadInfo,
             types: dict[str, pa.DataType], show_progress: bool | None) -> None:
    """Write every batch of `source` into the Parquet file `out`, with a progress bar over the bytes read."""
    show = sys.stderr.isatty() if show_progress is None else show_progress
    total = source.stat().st_size
    with Progress(TextColumn(f"Caching {source.name} as Parquet", markup=False), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task("cache", total=total)
        writer: pq.ParquetWriter | None = None
        pending: list[pa.RecordBatch] = []
        try:
            for batch in csv_batches(source, encoding=encoding, delimiter=delimiter, decimal=decimal, info=info,
                                     types=types, progress=lambda done: bar.update(task, completed=done)):
                if writer is None:
                    writer = pq.ParquetWriter(str(out), batch.schema)
                pending.append(batch)
                if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=ROW_GROUP_ROWS)
                    pending = []
            if writer is None:
                raise TableError(f"{source}: no data rows; a table needs a header row and at least one data row.")
            if pending:
                writer.write_table(pa.Table.from_batches(pending), row_group_size=ROW_GROUP_ROWS)
        finally:
            if writer is not None:
                writer.close()
        bar.update(task, completed=total)
