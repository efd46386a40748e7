"""Tabular data: a table's column kinds and task, inferred, and its train/val/test splits encoded.

Typical use::

    tab = Table.read("data.csv", target="price", drop=["notes"], id="row_id")
    prep = tab.prepare({"train": train_idx, "val": val_idx})  # or tab.prepare(fractions=(0.8, 0.2))
    X, y = prep.train.X, prep.train.y                          # float32 / (float32 | int64) tensors
    state = prep.preprocessor.to_dict()                        # JSON-able, no pickle

Reading files is `fitloop.tabular.reading` (`read_table`); the preprocessing itself (`Preprocessor`,
fitted on the training rows only, and `transform_table` for new files) is `fitloop.tabular.preprocess`.
Everything is vectorised (pyarrow compute and numpy).
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .dialect import UNNAMED_PREFIX, ReadInfo, check_header
from .preprocess import PreparedTable, Preprocessor, TableSplit
from .reading import (
    SUPPORTED_EXTENSIONS,
    TableError,
    as_strings,
    column_as_float64,
    is_text_type,
    non_numeric_error,
    numeric_mask,
    read_table,
    sorted_unique,
)

__all__ = ["Table", "SUPPORTED_EXTENSIONS", "TableError", "read_table"]  # the last three: from .reading

# The task rule for a numeric target (README "Command line"): integers with at most this many distinct
# values, each seen on average in at least MIN_ROWS_PER_CLASS rows, are classes; two values always are.
MAX_CLASSES_FOR_INT_TARGET = 20
MIN_ROWS_PER_CLASS = 5
JUNK_NUMERIC_FRACTION = 0.9
MIN_ROWS_FOR_INDEX = 10  # below this, a column that happens to count 1, 2, 3 is not taken for a row index


# ------------------------------------------------------------------------------------------- inference


def _infer_kind(name: str, col: Any) -> str:
    """One of 'numeric', 'bool', 'categorical', 'date', 'empty', 'other'. Mostly-numeric text raises TableError.
    Dates and timestamps (what pyarrow reads from ISO text in a CSV) are 'date': numeric features."""
    t = col.type
    n_valid = len(col) - col.null_count
    if pa.types.is_floating(t):
        n_valid -= int(pc.sum(pc.is_nan(col)).as_py() or 0)
    if n_valid == 0 or pa.types.is_null(t):
        return "empty"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "numeric"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "date"
    if is_text_type(t):
        n_num = int(pc.sum(numeric_mask(col)).as_py() or 0)
        if n_num == n_valid:
            return "numeric"
        if n_num >= JUNK_NUMERIC_FRACTION * n_valid:
            ok = numeric_mask(col)
            raise non_numeric_error(name, col, pc.invert(pc.fill_null(ok, True)), None)
        return "categorical"
    return "other"


def infer_task(kind: str, values: np.ndarray | None, n_distinct: int, n_rows: int) -> tuple[str, str]:
    """The task a target implies, and the rule's reason in words (printed with the decision).

    Text and bool targets are classification, non-integer numbers regression. An integer target with
    `n_distinct` values in `n_rows` rows is classification when it has 2 values, or at most
    `MAX_CLASSES_FOR_INT_TARGET` values with at least `MIN_ROWS_PER_CLASS` rows per value on average;
    otherwise regression (16 distinct yearly totals in 16 rows are a quantity, not 16 classes).

    Args:
        kind: The target column's kind (``numeric``, ``bool``, ``categorical``).
        values: The numeric target's values (NaN-free), or None for a non-numeric target.
        n_distinct: Distinct values of the target.
        n_rows: Rows with a target.

    Returns:
        ``(task, reason)``, e.g. ``("regression", "16 distinct integer values in 16 rows")``.
    """
    if kind == "bool":
        return "classification", "a true/false target"
    if kind != "numeric" or values is None:
        return "classification", f"a text target with {n_distinct} distinct values"
    if not np.array_equal(values, np.round(values)):
        return "regression", "a numeric target with non-integer values"
    per = n_rows / max(n_distinct, 1)
    what = f"{n_distinct} distinct integer values in {n_rows} rows"
    if n_distinct <= 2:
        return "classification", what
    if n_distinct > MAX_CLASSES_FOR_INT_TARGET:
        return "regression", f"{what} (more than {MAX_CLASSES_FOR_INT_TARGET} would be classes)"
    if per < MIN_ROWS_PER_CLASS:
        rows = "row" if per == 1 else "rows"
        return "regression", f"{what} ({per:.3g} {rows} per value; classes need {MIN_ROWS_PER_CLASS} on average)"
    return "classification", f"{what} ({per:.3g} rows per class)"


def _row_index(col: Any) -> bool:
    """An integer column that is 0..n-1 or 1..n in order: the row numbers a `to_csv()` writes."""
    if not pa.types.is_integer(col.type) or col.null_count or len(col) < MIN_ROWS_FOR_INDEX:
        return False
    first, last = col[0].as_py(), col[len(col) - 1].as_py()
    if first not in (0, 1) or last != first + len(col) - 1:  # most columns: decided without a pass
        return False
    return bool(np.array_equal(col.to_numpy(), np.arange(first, first + len(col))))


def _closest(name: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


# --------------------------------------------------------------------------------------------- Table


class Table:
    """A loaded table with inferred column kinds and task. Build with `Table.read` or `Table.from_arrow`.

    Attributes:
        data: The rows (rows with a missing target already removed); row indices refer to this.
        columns: All column names of the file.
        target: The column to predict, as given.
        task: ``classification`` or ``regression``, as given or inferred.
        id: The id column, as given (None: none).
        drop: The columns left out, as given.
        kinds: Column -> ``numeric``/``bool``/``categorical``/``date``/``empty``/``other``.
        feature_columns: Columns used as features (before fit-time drops).
        classes: Sorted class labels over all rows (classification), else None.
        task_reason: Why the task is what it is (`infer_task`), e.g. "16 distinct integer values in 16 rows".
        id_like: Columns treated as row ids (no header name, or 0..n-1 in order); never features.
        notes: Human-readable notes (dropped columns, dropped rows...).
        load_seconds: Time spent reading the file.
    """

    def __init__(self, data: pa.Table, *, target: str, task: str | None = None, drop: Sequence[str] = (),
                 id: str | None = None, max_categories: int = 50, source: str = "table",
                 load_seconds: float = 0.0) -> None:
        self.source, self.load_seconds, self.max_categories = source, load_seconds, max_categories
        names = check_header(list(data.column_names), source)  # read_table did it for files; Arrow input too
        if names is not None:
            data = data.rename_columns(names)
        self.columns: list[str] = list(data.column_names)
        self.notes: list[str] = []
        self.read_info: ReadInfo | None = None  # set by `read`: the delimiter and decimal mark used
        if data.num_rows == 0:
            raise TableError(f"{source}: no data rows (only a header: {self.columns}); add rows to the file.")
        self._check_names(target, id, drop)
        self.target, self.id, self.drop = target, id, tuple(drop)
        self.id_like = self._id_like(data)  # unnamed columns and row indices: ids, never features
        self.kinds: dict[str, str] = self._infer_kinds(data)
        if self.drop:
            self.notes.append(f"dropped columns as requested: {list(self.drop)}")
        self.feature_columns = [c for c, k in self.kinds.items()
                                if c != target and k in ("numeric", "bool", "categorical", "date")]
        if self.kinds[target] in ("other", "date"):
            raise TableError(f"{source}: target {target!r} has unsupported type {data.column(target).type}.")
        self.data = self._with_target(data)
        self.task_reason = ""
        self.task = self._infer_task(task)
        self.classes: list[Any] | None = None
        if self.task == "classification":
            self.classes = sorted_unique(self.data.column(target))
            if len(self.classes) < 2:
                raise TableError(f"{source}: target {target!r} has a single class ({self.classes[0]!r}); "
                                 f"classification needs at least 2 distinct values.")

    def _check_names(self, target: str, id: str | None, drop: Sequence[str]) -> None:
        """The target, id and dropped columns exist (else a close match is suggested), and are different."""
        for what, name in [("target", target), ("id", id), *(("--drop", d) for d in drop)]:
            if name is not None and name not in self.columns:
                raise TableError(f"{self.source}: {what} column {name!r} not found.{_closest(name, self.columns)} "
                                 f"Columns are: {self.columns}.")
        if target == id or target in drop:
            raise TableError(f"{self.source}: the target {target!r} cannot also be the id or a --drop column.")

    def _infer_kinds(self, data: pa.Table) -> dict[str, str]:
        """The kind of every column but the id, dropped and id-like ones; notes the columns left out."""
        kinds: dict[str, str] = {}
        for name in self.columns:
            if name == self.id or name in self.drop or name in self.id_like:
                continue
            kinds[name] = kind = _infer_kind(name, data.column(name))
            if kind == "empty":
                if name == self.target:
                    raise TableError(f"{self.source}: target column {name!r} has no values (all missing).")
                self.notes.append(f"dropped column {name!r}: all values missing")
            elif kind == "other":
                self.notes.append(f"dropped column {name!r}: unsupported type {data.column(name).type}")
        return kinds

    def _with_target(self, data: pa.Table) -> pa.Table:
        """The rows whose target is there (not null, not NaN); notes how many were dropped."""
        tcol = data.column(self.target)
        valid = pc.is_valid(tcol)
        if self.kinds[self.target] == "numeric":
            numbers = _float64_arrow(tcol)
            valid = pc.and_(valid, pc.invert(pc.is_nan(numbers)))
            self._check_not_infinite(numbers)
        n_missing = data.num_rows - int(pc.sum(valid).as_py() or 0)
        if n_missing:
            data = data.filter(valid)
            self.notes.append(f"dropped {n_missing} row(s) with a missing target {self.target!r}")
        return data

    def _check_not_infinite(self, numbers: Any) -> None:
        """Raise for a numeric target with infinite values: they are not missing (the row would be dropped
        silently) and no model fits them."""
        infinite = pc.fill_null(pc.is_inf(numbers), False)
        n_inf = int(pc.sum(infinite).as_py() or 0)
        if n_inf:
            row = int(pc.index(infinite, True).as_py())
            raise TableError(f"{self.source}: target {self.target!r} has {n_inf} infinite value(s), first at data row "
                             f"{row + 1} (line {row + 2} of the file): {numbers[row].as_py()}. A model cannot fit "
                             f"them: fix those cells, or delete those rows.")

    def _id_like(self, data: pa.Table) -> list[str]:
        """Columns without a header name (``df.to_csv()``'s index), and row indices (0..n-1 or 1..n in
        order) unless such a column is the only feature there is: ids, with a note, never features."""
        cands = [c for c in self.columns if c not in (self.target, self.id, *self.drop)]
        unnamed = [c for c in cands if c.startswith(UNNAMED_PREFIX) or re.fullmatch(r"Unnamed: \d+", c)]
        index = [c for c in cands if c not in unnamed and _row_index(data.column(c))]
        others = [c for c in cands if c not in unnamed and c not in index
                  and data.column(c).null_count < data.num_rows]
        if index and not others:  # a toy table's x = 0, 1, 2, ...: keep it
            self.notes.append(f"column {index[0]!r} counts the rows in order, like a row index; kept as a "
                              f"feature because it is the only one")
            index = []
        for c in unnamed + index:
            why = "has no header name" if c in unnamed else "counts the rows in order (0..n-1 or 1..n)"
            self.notes.append(f"column {c!r} {why}: treated as a row id, not a feature (a model would "
                              f"learn the row order)")
        return [c for c in cands if c in unnamed or c in index]

    def _infer_task(self, task: str | None) -> str:
        kind, col = self.kinds[self.target], self.data.column(self.target)
        if task is not None:
            if task not in ("classification", "regression"):
                raise TableError(f"task must be 'classification' or 'regression', got {task!r}.")
            if task == "regression" and kind != "numeric":
                raise TableError(f"{self.source}: target {self.target!r} is {kind}, not numeric; it cannot "
                                 f"be used for regression. Use --task classification.")
            self.task_reason = "as given (--task)"
            return task
        values = column_as_float64(col, self.target) if kind == "numeric" else None
        task, self.task_reason = infer_task(kind, values, len(pc.unique(col)), len(col))
        return task

    @classmethod
    def read(cls, path: str | Path, target: str, task: str | None = None, drop: Sequence[str] = (),
             id: str | None = None, encoding: str = "utf-8", max_categories: int = 50,
             delimiter: str | None = None, decimal: str | None = None) -> Table:
        """Read a file (see `read_table`) and infer column kinds and the task.

        Args:
            path: CSV/TSV(.gz)/Parquet file.
            target: Target column.
            task: ``"classification"``/``"regression"``; inferred if None.
            drop: Columns to exclude from the features.
            id: Row-id column, excluded from features but returned with each split.
            encoding: Text encoding for CSV/TSV.
            max_categories: Categorical columns with more distinct values keep that many of their most
                frequent values (the rest share one slot); ID-like ones are dropped.
            delimiter: Field separator; sniffed from the first lines when None.
            decimal: Decimal mark (``","`` or ``"."``) of numbers written as text; detected when None.

        The table's ``read_info`` says which delimiter and decimal mark were used; its notes start
        with what was detected.
        """
        t0 = time.perf_counter()
        info = ReadInfo()
        data = read_table(path, encoding=encoding, delimiter=delimiter, decimal=decimal, info=info)
        table = cls(data, target=target, task=task, drop=drop, id=id, max_categories=max_categories,
                    source=str(path), load_seconds=time.perf_counter() - t0)
        table.read_info = info
        table.notes[:0] = info.notes
        return table

    @classmethod
    def from_arrow(cls, data: pa.Table, target: str, **kwargs: Any) -> Table:
        """Build from an in-memory ``pyarrow.Table`` (same keyword arguments as `read`, minus I/O)."""
        return cls(data, target=target, **kwargs)

    def __len__(self) -> int:
        return self.data.num_rows

    def __repr__(self) -> str:
        return (f"Table({self.source!r}, rows={len(self)}, target={self.target!r}, task={self.task!r}, "
                f"features={len(self.feature_columns)})")

    def split_indices(self, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                      seed: int = 0) -> dict[str, np.ndarray]:
        """Random train/val(/test) row indices with the given fractions."""
        if not 2 <= len(fractions) <= 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
            raise TableError(f"fractions must be 2 or 3 non-negative numbers, got {tuple(fractions)}.")
        perm = np.random.default_rng(seed).permutation(len(self))
        cuts = np.round(np.cumsum(fractions) / sum(fractions) * len(self)).astype(int)
        parts = np.split(perm, cuts[:-1])
        names = ("train", "val", "test")
        empty = [n for n, p, f in zip(names, parts, fractions) if f > 0 and len(p) == 0]
        if empty:
            raise TableError(f"{self.source}: {len(self)} row(s) are too few for fractions {tuple(fractions)}: "
                             f"the {' and '.join(empty)} part{'s' if len(empty) > 1 else ''} would get no rows. "
                             f"Add rows, or give {'them' if len(empty) > 1 else 'it'} a larger fraction.")
        return {name: np.sort(p) for name, p in zip(names, parts)}

    def fit_preprocessor(self, train_rows: Any) -> Preprocessor:
        """Fit the `Preprocessor` on the training rows: every per-column decision of a run (kept or
        dropped, statistics, categories), without encoding anything. `prepare` and `fitloop train
        --dry-run` both decide through here.

        Raises:
            TableError: the training rows hold a single class, or index outside the table.
        """
        rows = self._rows("train", train_rows)
        if rows.size == 0:
            raise TableError("the train split is empty.")
        kinds = {c: self.kinds[c] for c in self.feature_columns}
        pre = Preprocessor.fit(self.data, target=self.target, task=self.task, kinds=kinds, rows=rows,
                               classes=self.classes, id=self.id, max_categories=self.max_categories)
        if not pre.features:
            raise self._no_features_error(pre)
        if self.task == "classification":
            y = pre.encode_target(self.data, rows)
            if bool((y == y[0]).all()):
                raise TableError(f"the train split has a single class ({(self.classes or [])[int(y[0])]!r}) for "
                                 f"target {self.target!r}; use a stratified or larger split.")
        return pre

    def _no_features_error(self, pre: Preprocessor) -> TableError:
        """The error for a table none of whose columns is left as a model input: why each was left out."""
        others = [c for c in self.columns if c != self.target]
        info = self.read_info
        if not others:
            hint = ""
            if info is not None and info.delimiter is not None:
                sep = "tab" if info.delimiter == "\t" else repr(info.delimiter)
                hint = (f" It was read with the delimiter {sep}; if the file separates its fields with another, "
                        f"pass it (`--delimiter ';'`).")
            return TableError(f"{self.source}: the table has only the target column {self.target!r}, no input "
                              f"column for the model.{hint}")
        why: dict[str, str] = {self.id: "the row id (--id)"} if self.id else {}
        why |= {c: "dropped as requested (--drop)" for c in self.drop}
        why |= {c: "a row id (no header name, or it counts the rows)" for c in self.id_like}
        why |= {c: {"empty": "all values missing", "other": "unsupported type"}[k]
                for c, k in self.kinds.items() if k in ("empty", "other")}
        why |= pre.dropped
        reasons = "; ".join(f"{c!r}: {why.get(c, 'not used')}" for c in others)
        return TableError(f"{self.source}: no usable feature columns are left ({reasons}); the model needs at least "
                          f"one input. Add a column, or keep one (leave it out of --drop, raise --max-categories).")

    def _rows(self, name: str, idx: Any) -> np.ndarray:
        a = np.asarray(idx, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= len(self)):
            raise TableError(f"split {name!r} has row indices outside [0, {len(self)}).")
        return a

    def prepare(self, splits: Mapping[str, Any] | Sequence[Any] | None = None, *,
                fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                preprocessor: Preprocessor | None = None) -> PreparedTable:
        """Fit a `Preprocessor` on the train rows only and encode every split.

        Args:
            splits: Row indices per split, as ``{"train": idx, "val": idx, ...}`` or a sequence
                ``(train_idx, val_idx[, test_idx])``. Indices refer to ``self.data`` (rows with a missing
                target removed; ``len(table)`` rows). If None, a random split by ``fractions``/``seed``.
            fractions: Train/val(/test) fractions when ``splits`` is None.
            seed: Seed of the random split.
            preprocessor: One already fitted on these train rows (`fit_preprocessor`); fitted here if None.

        Returns:
            `PreparedTable` with the fitted preprocessor and one `TableSplit` (X, y, ids) per split.
        """
        if splits is None:
            named = self.split_indices(fractions, seed)
        elif isinstance(splits, Mapping):
            named = dict(splits)
        else:
            named = dict(zip(("train", "val", "test"), splits))
        if "train" not in named:
            raise TableError(f"splits need a 'train' entry; got {list(named)}.")
        rows = {name: self._rows(name, idx) for name, idx in named.items()}
        in_train = np.zeros(len(self), dtype=bool)
        in_train[rows["train"]] = True
        for name, a in rows.items():
            if name != "train" and in_train[a].any():
                raise TableError(f"split {name!r} shares rows with 'train' (leakage); use disjoint indices.")
        pre = preprocessor if preprocessor is not None else self.fit_preprocessor(rows["train"])
        out: dict[str, TableSplit] = {}
        for name, a in rows.items():
            notes: list[str] = []
            X = torch.from_numpy(pre.transform(self.data, a, notes))
            y = torch.from_numpy(pre.encode_target(self.data, a))
            ids = self.data.column(self.id).take(a).to_pylist() if self.id else None
            out[name] = TableSplit(X, y, ids, a, notes)
        return PreparedTable(pre, out, self.notes + pre.notes)


def _float64_arrow(col: Any) -> Any:
    if is_text_type(col.type):
        col = pc.utf8_trim_whitespace(as_strings(col))
    return pc.cast(col, pa.float64(), safe=not pa.types.is_integer(col.type))  # uint64 ids beyond 2**53 round
