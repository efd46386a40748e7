"""Tables larger than memory in the table workflow: when to stream, the streamed table, predict and evaluate.

    streams, why = decide_streaming("big.parquet", stream=None, memory_budget="4G")
    table = open_streamed(cfg, run_dir)              # kinds and task from a sample, the preprocessor in one pass
    ParquetSource(table.path, ..., rows=table.fit.masks.rows("train"), transform=table.transform)
    rows, notes = predict_stream(run, "big.csv", "predictions.parquet")   # memory constant in the file's size
    report = evaluate_stream(run, "big.parquet")

**When to stream.** `fitloop train` reads the table into memory unless it would not fit the memory budget
(`--memory-budget`, default: `DEFAULT_MEMORY_FRACTION` of the memory available when the command starts,
`MemAvailable` in /proc/meminfo) or `--stream` asks for it. The table's size in memory is estimated as
`MEMORY_FACTOR` times its data: a Parquet file's uncompressed row groups (from the footers), a CSV's bytes
(gzip: `GZIP_RATIO` times the compressed bytes): the Arrow table, the float32 features and the copies a
split makes live together in the in-memory path.

**The streamed table.** A CSV is converted once into a Parquet cache in the run directory
(`fitloop.tabular.csv_cache`). The column kinds, the id-like columns and the task are inferred, by the rules
of the in-memory `Table`, from the first `SAMPLE_ROWS` rows; the classes come from every row and the
preprocessor from every training row, in one pass (`fitloop.tabular.stream_fit`).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from ..data.stream import ParquetSource, StreamPlan, return_freed_memory
from ..metrics import confusion_metrics
from ..outputs import OutputPathError
from .columns import Table
from .config import RunConfig
from .csv_cache import csv_batches, parquet_cache
from .dialect import ReadInfo
from .errors import TableError
from .preprocess import Preprocessor
from .reading import signless_zero
from .runs import LoadedRun, baseline_outputs, float32_value, predict_columns
from .stream_fit import RowSplit, StreamFit, fit_streamed

__all__ = ["decide_streaming", "parse_size", "available_memory", "estimated_memory", "StreamedTable",
           "open_streamed", "row_groups", "predict_stream", "evaluate_stream", "StreamedScore",
           "DEFAULT_MEMORY_FRACTION", "MEMORY_FACTOR", "SAMPLE_ROWS", "PREDICT_ROWS", "MODEL_ROWS", "WINDOW_BYTES"]

DEFAULT_MEMORY_FRACTION = 0.5
MEMORY_FACTOR = 4.0
GZIP_RATIO = 4.0
SAMPLE_ROWS = 100_000
PREDICT_ROWS = 65_536  # rows per batch of a streamed predict or evaluate (read, encoded, written)
# rows per forward pass of a streamed predict or evaluate: the activations are the peak (the default TabM,
# k=8 members: about 17 KiB a row, 870 MiB for 50k rows at once; 8192 rows: about 140 MiB)
MODEL_ROWS = 8192
# A streamed training source's shuffle window, in bytes of rows: the reader, the transform and the prefetch
# queue hold a few windows at once, so peak memory is a small multiple of this (bench/stream.py measures it)
WINDOW_BYTES = 16 << 20
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


# --------------------------------------------------------------------------------------- when to stream


def parse_size(text: str | int) -> int:
    """`--memory-budget`: bytes, or a number with K, M, G or T (powers of 1024): ``"4G"``, ``"512M"``.

    Raises:
        TableError: anything else.
    """
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise TableError(f"--memory-budget: got {text!r}; pass a size such as 4G, 512M or 2000000000.")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024 ** power)


def available_memory() -> int:
    """Bytes of memory available now (`MemAvailable`; elsewhere, the free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimated_memory(path: str | os.PathLike) -> int:
    """Bytes the in-memory path would hold for the table at `path` (see the module docstring)."""
    path = Path(path)
    if path.is_dir() or path.name.lower().endswith(".parquet") or "*" in str(path):
        plan = ParquetSource(path, columns=[]).plan()
        data = sum(f.metadata.row_group(g).total_byte_size for f in plan.fragments
                   for g in range(f.metadata.num_row_groups))
    else:
        size = path.stat().st_size
        data = int(size * (GZIP_RATIO if path.name.lower().endswith(".gz") else 1.0))
    return int(data * MEMORY_FACTOR)


def decide_streaming(path: str | os.PathLike, *, stream: bool | None = None,
                     memory_budget: str | int | None = None) -> tuple[bool, str]:
    """Whether `fitloop train` streams the table at `path`, and the one line that says so and why (empty
    when the table cannot be sized: the reader's error comes next).

    Args:
        path: the table (a file, a directory of Parquet files or a glob).
        stream: True: stream (`--stream`); False: never; None: when the table would not fit the budget.
        memory_budget: bytes or a size (``"4G"``); None: `DEFAULT_MEMORY_FRACTION` of the available memory.
    """
    if stream:
        return True, "streaming the table (--stream)"
    many = Path(path).is_dir() or any(c in str(path) for c in "*?[")
    budget = parse_size(memory_budget) if memory_budget is not None else \
        int(available_memory() * DEFAULT_MEMORY_FRACTION)
    try:
        need = estimated_memory(path)
    except (OSError, ValueError, pa.ArrowException):  # no such file, not a table: the reader's error says why,
        return False, ""  # alone (a line about reading a file that is not there would come first)
    sizes = f"it needs about {_size(need)} in memory, {{}} the budget of {_size(budget)}"
    if need > budget and stream is not False:
        return True, f"streaming the table: {sizes.format('over')} (--memory-budget sets the budget)"
    if many and stream is not False:
        return True, "streaming the table: a directory or glob of Parquet files"
    return False, f"reading the table into memory: {sizes.format('within' if need <= budget else 'over')}" + \
        (" (--stream streams it)" if stream is None else " (as asked)")


def _size(n: int) -> str:
    """Bytes in words: 5.2 MiB, 10.7 GiB."""
    for unit, power in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << power:
            return f"{n / 2**power:.1f} {unit}"
    return f"{n} bytes"


# ------------------------------------------------------------------------------------ the streamed table


def row_groups(plan: StreamPlan, columns: list[str]) -> Iterator[tuple[int, int, pa.Table]]:
    """`(file index, row group, rows)` of every row group of `plan`, in its order (the positions
    `fitloop.data.stream` filters by), with `columns` only."""
    for index, fragment in enumerate(plan.fragments):
        for group in range(fragment.metadata.num_row_groups):
            try:
                rows = fragment.subset(row_group_ids=[group]).to_table(columns=columns, schema=plan.schema)
            except (OSError, pa.ArrowException) as error:
                raise TableError(f"{plan.files[index]}: row group {group}: cannot be read ({error}).") from None
            yield index, group, rows


def _sample(plan: StreamPlan, rows: int) -> pa.Table:
    """The first `rows` rows of the table (whole row groups, then cut)."""
    parts, held = [], 0
    for _, _, table in row_groups(plan, plan.schema.names):
        parts.append(table)
        held += table.num_rows
        if held >= rows:
            break
    return pa.concat_tables(parts).slice(0, rows) if parts else plan.schema.empty_table()


@dataclass
class StreamedTable:
    """A table read as a stream: where its Parquet data is, what `Table` inferred on a sample, the pass's fit.

    Attributes:
        path: the Parquet file, directory or glob (a CSV's cache).
        sample: the `Table` of the first rows (kinds, task and its reason, id-like columns, notes).
        fit: the one-pass fit: the preprocessor, the splits' row filters and counts, the classes.
        read_info: how a CSV was read (delimiter, decimal mark); None for Parquet.
    """

    path: str
    sample: Table
    fit: StreamFit
    read_info: ReadInfo | None = None

    @property
    def task(self) -> str:
        return self.sample.task

    @property
    def preprocessor(self) -> Preprocessor:
        return self.fit.preprocessor

    @property
    def columns(self) -> list[str]:
        """The columns a training source reads: the kept inputs (the target apart)."""
        return self.fit.preprocessor.input_columns

    def transform(self, rows: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        """`(X, y)` of streamed rows: the fitted encoding, the target as class indices or standardised."""
        pre = self.fit.preprocessor
        X = torch.from_numpy(pre.transform(rows))
        y = torch.from_numpy(pre.encode_target(rows))
        if self.task == "regression":
            mean, std = float(self.fit.target_mean or 0.0), float(self.fit.target_std or 1.0)
            y = ((y.double() - mean) / std).float()
        return X, y

    def source(self, split: str, batch_size: int | None, *, shuffle_rows: int | None = None) -> ParquetSource:
        """The `ParquetSource` of one split's rows; its shuffle buffer holds `shuffle_rows` rows (default: about
        `WINDOW_BYTES` of encoded and decoded rows, at least one row group: what bounds the memory)."""
        if shuffle_rows is None:
            row_bytes = 4 * len(self.preprocessor.feature_names) + 8 * len(self.columns) + 8  # float32 X, float64 in
            shuffle_rows = min(max(WINDOW_BYTES // row_bytes, 1 << 12), 1 << 18)
        return ParquetSource(self.path, columns=self.columns, target=self.sample.target, batch_size=batch_size,
                             transform=self.transform, rows=self.fit.masks.rows(split), buffer_rows=shuffle_rows)


def open_streamed(cfg: RunConfig, run_dir: str | os.PathLike, log: Any = None,
                  split_column: str | None = None) -> StreamedTable:
    """The run's table as a stream: a CSV cached as Parquet in `run_dir`, the kinds and the task from the
    first rows, the preprocessor fitted in one pass over the training rows (split by `split_column`'s
    values, train/val/test, when given; else by the hash of each row's position, with `data.split`).

    Raises:
        TableError: the data does not fit the settings (no such target, a bad split column, ...).
    """
    d = cfg.data
    if not d.target:
        raise TableError("no target column: pass --target COL or set data.target.")
    target: str = d.target
    path, info = str(d.path), None
    if not (Path(path).is_dir() or path.lower().endswith(".parquet") or any(c in path for c in "*?[")):
        info = ReadInfo()
        path = str(parquet_cache(path, run_dir, encoding=d.encoding, delimiter=d.delimiter, decimal=d.decimal,
                                 info=info, log=log))
    plan = ParquetSource(path, columns=[]).plan()
    split_column = split_column or getattr(d, "split_column", None)  # (a config key, when the config has one)
    drop = [*d.drop, *([split_column] if split_column else [])]
    sample = Table.from_arrow(_sample(plan, SAMPLE_ROWS), target, task=d.task, drop=drop, id=d.id,
                              max_categories=d.max_categories, source=str(d.path))
    kinds = {c: sample.kinds[c] for c in sample.feature_columns}
    seed = d.seed if d.seed is not None else cfg.train.seed
    split = RowSplit(tuple(d.split), seed, split_column)
    wanted = [*kinds, target, *([split_column] if split_column else [])]
    fit = fit_streamed(row_groups(plan, wanted), target=target, task=sample.task, kinds=kinds, split=split,
                       id=d.id, max_categories=d.max_categories, seed=seed)
    if not fit.preprocessor.features:
        raise TableError(f"{d.path}: no usable feature columns are left ({'; '.join(fit.preprocessor.notes)}).")
    pa.default_memory_pool().release_unused()  # the pass's row groups: hand the pages back before training
    return StreamedTable(path, sample, fit, info)


# --------------------------------------------------------------------------------- predict and evaluate


def _input_batches(run: LoadedRun, data: str | os.PathLike, columns: list[str], *, encoding: str,
                   delimiter: str | None, decimal: str | None, batch_rows: int) -> Iterator[pa.Table]:
    """The rows of a file (CSV/TSV(.gz), Parquet, a directory or glob of Parquet) in batches of
    `batch_rows`, with those of `columns` it has."""
    text = str(data)
    if Path(text).is_dir() or text.lower().endswith(".parquet") or any(c in text for c in "*?["):
        yield from _parquet_batches(ParquetSource(text, columns=[]).plan(), columns, batch_rows)
        return
    sep = delimiter if delimiter is not None else run.info.get("delimiter")
    mark = decimal if decimal is not None else run.info.get("decimal")
    pending: list[pa.RecordBatch] = []
    for batch in csv_batches(text, encoding=encoding, delimiter=sep, decimal=mark, widen=True):
        pending.append(batch.select([c for c in columns if c in batch.schema.names]))
        if sum(b.num_rows for b in pending) >= batch_rows:
            yield pa.Table.from_batches(pending)
            pending = []
    if pending:
        yield pa.Table.from_batches(pending)


def _parquet_batches(plan: StreamPlan, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """The rows of a plan's files in batches of `batch_rows`, with those of `columns` they have: a hive
    partition column (`year=2024/part.parquet`) as training read it (`ParquetSource`: the value of the
    file's folder, of the type the directory's schema gives it)."""
    # File by file, a row group at a time, decoded `batch_rows` rows at a time: a dataset scan reads ahead,
    # `iter_batches` over a whole file keeps buffers that grow with it, and a whole row group decoded at once
    # is as large as the writer made it (pyarrow writes row groups of a million rows). The footer already
    # parsed for the plan is reused, not read a second time (it grows with the row groups).
    import pyarrow.dataset as pads  # only here: it imports pandas where installed (0.2 s of every `fitloop train`)

    for fragment in plan.fragments:
        parquet = pq.ParquetFile(fragment.path, metadata=fragment.metadata)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        keys = pads.get_partition_keys(fragment.partition_expression)
        partitions = {c: pa.scalar(keys.get(c), plan.schema.field(c).type) for c in columns
                      if c not in present and c in plan.schema.names}
        for group in range(parquet.num_row_groups):
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=present,
                                              use_threads=False):
                rows = pa.Table.from_batches([batch])
                for name, value in partitions.items():
                    rows = rows.append_column(name, pa.repeat(value, rows.num_rows))
                yield rows
            pa.default_memory_pool().release_unused()  # the row group's column chunks: back to the system


class _Notes:
    """Notes of many batches as one set: the unseen-categories counts summed per column, others once."""

    _UNSEEN = "unseen (or missing) categories mapped to the <unknown> slot (rows per column): "

    def __init__(self) -> None:
        self.unseen: dict[str, int] = {}
        self.other: dict[str, None] = {}

    def add(self, notes: list[str]) -> None:
        for note in notes:
            if note.startswith(self._UNSEEN):
                for part in note[len(self._UNSEEN):].split(", "):
                    name, _, count = part.rpartition(": ")
                    self.unseen[name] = self.unseen.get(name, 0) + int(count)
            else:
                self.other[note] = None

    def all(self) -> list[str]:
        unseen = [self._UNSEEN + ", ".join(f"{n}: {c}" for n, c in self.unseen.items())] if self.unseen else []
        return [*self.other, *unseen]


def _writer(path: Path, schema: pa.Schema, name: str) -> Any:
    """A batch-by-batch writer to `path` in the format the extension of `name` says: Parquet, CSV or TSV."""
    if name.endswith(".parquet"):
        return pq.ParquetWriter(str(path), schema)
    return pcsv.CSVWriter(str(path), schema, write_options=pcsv.WriteOptions(
        delimiter="\t" if name.endswith(".tsv") else ","))


def predict_stream(run: LoadedRun, data: str | os.PathLike, out: str | os.PathLike | None, *, proba: bool = False,
                   encoding: str = "utf-8", delimiter: str | None = None, decimal: str | None = None,
                   batch_rows: int = PREDICT_ROWS) -> tuple[int, list[str]]:
    """Predictions for a file of any size, read and written batch by batch: memory stays constant.

    The output (`out`: .csv, .tsv or .parquet; None: CSV on stdout) has the columns `LoadedRun.predict`
    returns; a file is written to `out.partial` and renamed when complete.

    Returns:
        The rows predicted, and the notes (ignored columns, unseen categories summed over the batches).
    """
    if out is None:
        return _predict_batches(run, data, None, None, proba=proba, encoding=encoding, delimiter=delimiter,
                                decimal=decimal, batch_rows=batch_rows)
    out = Path(out)
    if not out.name.lower().endswith((".csv", ".tsv", ".parquet")):
        raise OutputPathError(f"-o {out}: unsupported output extension; use .csv, .tsv or .parquet.")
    if not out.parent.is_dir():
        raise OutputPathError(f"-o {out}: the directory {out.parent} does not exist.")
    partial = out.with_name(out.name + ".partial")
    result = _predict_batches(run, data, partial, out.name.lower(), proba=proba, encoding=encoding,
                              delimiter=delimiter, decimal=decimal, batch_rows=batch_rows)
    os.replace(partial, out)
    return result


def _predict_batches(run: LoadedRun, data: str | os.PathLike, path: Path | None, name: str | None, *, proba: bool,
                     encoding: str, delimiter: str | None, decimal: str | None,
                     batch_rows: int) -> tuple[int, list[str]]:
    """Write each batch's predictions to `path` (in `name`'s format), or as CSV to stdout (`path` None)."""
    pre = run.preprocessor
    wanted = [*pre.input_columns, *([pre.id] if pre.id else [])]
    writer, schema, rows, notes = None, None, 0, _Notes()
    try:
        for batch in _input_batches(run, data, wanted, encoding=encoding, delimiter=delimiter, decimal=decimal,
                                    batch_rows=batch_rows):
            return_freed_memory()  # the batches written since: their pages go back
            table, found = run_predict(run, batch, proba)
            notes.add(found)
            if writer is None:
                schema = table.schema
                writer = _writer(path, schema, name or "") if path is not None else \
                    pcsv.CSVWriter(pa.PythonFile(sys.stdout.buffer, mode="w"), schema)
            writer.write_table(table.cast(schema) if table.schema != schema else table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise TableError(f"{data}: no data rows to predict.")
    return rows, notes.all()


def run_predict(run: LoadedRun, batch: pa.Table, proba: bool) -> tuple[pa.Table, list[str]]:
    """One batch's prediction table (the id column, then `prediction` [and `proba_<class>`]) and notes."""
    notes: list[str] = []
    X = torch.from_numpy(run.preprocessor.transform(batch, None, notes))
    cols: dict[str, Any] = {}
    pid = run.info.get("id")
    if pid and pid in batch.schema.names:
        cols[pid] = batch.column(pid)
    parts = [predict_columns(run, X[start: start + MODEL_ROWS], proba=proba)  # an empty batch: its empty columns
             for start in range(0, max(len(X), 1), MODEL_ROWS)]
    for name in parts[0]:
        chunks = [pa.array(part[name]) for part in parts]
        cols[name] = chunks[0] if len(chunks) == 1 else pa.chunked_array(chunks)
    return pa.table(cols), notes


def evaluate_stream(run: LoadedRun, data: str | os.PathLike, *, encoding: str = "utf-8",
                    delimiter: str | None = None, decimal: str | None = None,
                    batch_rows: int = PREDICT_ROWS) -> dict[str, Any]:
    """`LoadedRun.evaluate` for a file of any size, read batch by batch (memory constant): the run's model
    and its training baseline scored on the labelled rows, ``{"rows", "metrics", "baseline", "baseline_kind",
    "notes"}``. Metrics equal the in-memory ones within float rounding.

    Raises:
        TableError: the file has no target column, or no labelled row.
    """
    pre, info = run.preprocessor, run.info
    wanted = [*pre.input_columns, pre.target]
    scaling = info.get("target_scaling")
    model, baseline = (StreamedScore(run.task, scaling, len(info["classes"] or []) or None) for _ in range(2))
    notes = _Notes()
    for batch in _input_batches(run, data, wanted, encoding=encoding, delimiter=delimiter, decimal=decimal,
                                batch_rows=batch_rows):
        return_freed_memory()  # the batches scored since: their pages go back
        if pre.target not in batch.schema.names:
            raise TableError(f"the file has no target column {pre.target!r}, so there is nothing to evaluate "
                             f"against; use `fitloop predict` for unlabelled data.")
        found: list[str] = []
        X = torch.from_numpy(pre.transform(batch, None, found))
        notes.add(found)
        y = torch.from_numpy(pre.encode_target(signless_zero(batch, pre.target)))
        for start in range(0, len(X), MODEL_ROWS):  # the forward pass's activations grow with its rows
            model.add(run.outputs(X[start: start + MODEL_ROWS]), y[start: start + MODEL_ROWS])
        baseline.add(baseline_outputs(run.task, info, len(y)), y)
    if model.rows == 0:
        raise TableError(f"target column {pre.target!r} is empty in this file; evaluate needs labels.")
    return {"rows": model.rows, "metrics": model.result(), "baseline": baseline.result(),
            "baseline_kind": info.get("baseline_kind"), "notes": notes.all()}


class StreamedScore:
    """Metrics accumulated batch by batch, equal (within float rounding) to `runs.score` on all rows at once:
    classification keeps the confusion matrix and the summed cross-entropy, regression the summed errors and
    the target's mean and spread (merged as `stream_fit.NumericSummary` merges them)."""

    def __init__(self, task: str, scaling: dict[str, float] | None, classes: int | None) -> None:
        self.task, self.scaling, self.classes = task, scaling, classes
        self.rows = 0
        self.loss = 0.0
        self.confusion = torch.zeros((classes or 1, classes or 1), dtype=torch.int64)
        self.squared = self.absolute = 0.0
        self.y_mean = self.y_m2 = 0.0

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Raw outputs (standardised for regression) and targets (class indices or original units)."""
        out = out.detach().float()
        if self.task == "classification":
            self.loss += float(torch.nn.functional.cross_entropy(out, y.long(), reduction="sum").double())
            c = self.classes or 1
            self.confusion += torch.bincount(y.long() * c + out.argmax(-1), minlength=c * c)[:c * c].view(c, c)
        else:
            pred = out.reshape(-1).double()
            if self.scaling:
                pred = pred * self.scaling["std"] + self.scaling["mean"]
            err = pred - y.double().reshape(-1)
            self.squared += float((err * err).sum())
            self.absolute += float(err.abs().sum())
            values = y.double().reshape(-1)
            mean = float(values.mean())
            n_a, n_b = self.rows, len(values)
            delta = mean - self.y_mean
            self.y_mean += delta * n_b / (n_a + n_b)
            self.y_m2 += float(((values - mean) ** 2).sum()) + delta * delta * n_a * n_b / (n_a + n_b)
        self.rows += len(y)

    def result(self) -> dict[str, Any]:
        """The metrics `runs.score` reports (same names, float32 values)."""
        if self.task == "classification":
            res = {"loss": self.loss / max(self.rows, 1), **_confusion_metrics(self.confusion)}
        else:
            mse = self.squared / max(self.rows, 1)
            res = {"mse": mse, "mae": self.absolute / max(self.rows, 1), "rmse": math.sqrt(mse)}
            if self.rows > 1:
                res["r2"] = 1 - self.squared / self.y_m2 if self.y_m2 > 0 else 0.0
        return {k: float32_value(float(np.float32(v))) if isinstance(v, float) else v for k, v in res.items()}


def _confusion_metrics(confusion: torch.Tensor) -> dict[str, Any]:
    """The classification metrics `runs.score` reports (`metrics.confusion_metrics`, macro averages over the
    classes present), from the confusion matrix summed over the batches, as plain numbers."""
    metrics = confusion_metrics(confusion, binary=False)
    return {**{k: float(v) for k, v in metrics.items() if k != "confusion_matrix"},
            "confusion_matrix": confusion.tolist()}
