"""A table's preprocessing fitted in one streaming pass, and its train/val/test split by row position.

    split = RowSplit(fractions=(0.7, 0.15, 0.15), seed=0)           # or RowSplit(column="fold")
    fit = fit_streamed(row_groups, target="price", task="regression", kinds=kinds, split=split)
    fit.preprocessor                                                 # a `Preprocessor`, as `Preprocessor.fit` makes
    ParquetSource(path, ..., rows=fit.masks.rows("train"))           # the training rows, streamed

`row_groups` yields `(file index, row group, pyarrow.Table)` in file order (`fitloop.tabular.streaming`
reads them from a `fitloop.data.stream.ParquetSource`'s plan). A row's position is that triple with its
offset in the row group, so the split is the same in every run and in every process, whatever the batch
size or the number of readers.

Memory is bounded by the batch and by fixed-size summaries, not by the table:

* numeric columns: count, missing count, min, max, and the mean and variance merged batch by batch (Chan's
  parallel formula: equal to numpy's over the whole column within float rounding); the median (which
  imputes missing values) and any other quantile from a seeded reservoir sample of `reservoir` values. While
  a column has at most `reservoir` values the sample is the whole column and the quantiles are exact.
  Beyond that, the rank of a sample quantile q has a standard error of sqrt(q (1 - q) / reservoir) of the
  rows: with the default 65,536 values, the median is within +-0.6 % of the rows' ranks (3 standard errors).
* categorical columns: every distinct value with its count, exactly up to 64 x `max_categories` values (the
  spec is then `Preprocessor.fit`'s), beyond that a heavy-hitters summary and a distinct-count sketch (see
  `CategorySummary`: the most frequent values kept can then differ only by ties near the cut); and a
  bounded sample of its text, on which the rule that refuses to read numbers written as text as text (90 %
  look like numbers) is checked.
* the target: its classes (over every row, as the in-memory `Table` collects them) or, for regression, the
  training rows' mean and standard deviation (the target scaling).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import TableError
from .preprocess import (
    Preprocessor,
    categorical_spec_from_counts,
    date_imputed,
    date_note,
    date_part_values,
    date_parts_of,
    date_specs,
    refuse_numbers_as_text,
)
from .reading import as_strings, column_as_float64

__all__ = ["RowSplit", "SplitMasks", "NumericSummary", "CategorySummary", "StreamFit", "fit_streamed", "position_hash",
           "SPLIT_NAMES", "RESERVOIR_SIZE"]

SPLIT_NAMES = ("train", "val", "test")
RESERVOIR_SIZE = 1 << 16  # values kept per numeric column for its quantiles (512 KiB of float64)
TEXT_SAMPLE_SIZE = 4096  # text values kept per categorical column, for the numbers-as-text rule
SUMMARY_FACTOR = 64  # a text column's counts are exact up to 64 x max_categories distinct values
DISTINCT_SKETCH = 4096  # hashes kept per summarised text column, to estimate its distinct values

def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic: the same bits on every machine)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def position_hash(file: int, row_group: int, offsets: np.ndarray, seed: int) -> np.ndarray:
    """A seeded hash of row positions `(file index, row group, offset in the row group)` as floats in [0, 1).

    The same position and seed give the same number on every machine and in every process (integer
    arithmetic modulo 2**64 only), so a row's split never depends on how or by whom the table is read.
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + golden)
        key = _mix(key ^ np.uint64(file) + golden)
        key = _mix(key ^ np.uint64(row_group) + golden)
        z = _mix(offsets.astype(np.uint64) * golden ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class RowSplit:
    """Which split each row belongs to: by a seeded hash of its position, or by a column the user names.

    Attributes:
        fractions: train/val(/test) fractions (2 or 3 numbers), used when `column` is None. A row goes to
            the split whose share of [0, 1) its position's hash falls in, so the parts have the expected
            sizes up to sampling noise, not exact counts.
        seed: The hash's seed.
        column: A column whose values are ``train``, ``val`` or ``test`` (`--split-column COL`).
    """

    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    seed: int = 0
    column: str | None = None

    def __post_init__(self) -> None:
        if self.column is None and (not 2 <= len(self.fractions) <= 3 or any(not f >= 0 for f in self.fractions)
                                    or sum(self.fractions) <= 0):
            raise TableError(f"split fractions must be 2 or 3 non-negative numbers, got {tuple(self.fractions)}.")

    @property
    def names(self) -> tuple[str, ...]:
        """The split names this split can assign (train first)."""
        if self.column is not None:
            return SPLIT_NAMES
        names = SPLIT_NAMES if len(self.fractions) == 3 else ("train", "test")
        return tuple(n for n, f in zip(names, self.fractions) if f > 0)

    def by_position(self, file: int, row_group: int, offsets: np.ndarray) -> np.ndarray:
        """The split of rows at `offsets` of a row group, from their position's hash (a str array)."""
        names = SPLIT_NAMES if len(self.fractions) == 3 else ("train", "test")
        cuts = np.cumsum(self.fractions) / sum(self.fractions)
        index = np.searchsorted(cuts, position_hash(file, row_group, offsets, self.seed), side="right")
        return np.asarray(names, dtype=object)[np.minimum(index, len(names) - 1)]

    def by_column(self, batch: pa.Table, first_row: int = 0) -> np.ndarray:
        """The split of each row of `batch` from the split column (a str array); `first_row` (the batch's
        first data row in the file) names the row of a bad value.

        Raises:
            TableError: the split column is missing, or holds a value other than train/val/test.
        """
        assert self.column is not None
        if self.column not in batch.schema.names:
            raise TableError(f"--split-column {self.column!r}: no such column; columns are {batch.schema.names}.")
        values = as_strings(batch.column(self.column))
        valid = pc.fill_null(pc.is_in(values, value_set=pa.array(SPLIT_NAMES)), False)
        if not pc.all(valid).as_py():
            bad = pc.invert(valid)
            at = int(pc.index(bad, True).as_py())
            found = sorted({str(v) for v in pc.filter(values, bad).to_pylist()})[:5]
            raise TableError(f"--split-column {self.column!r} must hold train, val or test in every row; data row "
                             f"{first_row + at + 1} holds {values[at].as_py()!r} (values seen: {found}). Fix those "
                             f"cells, or split by fractions (--split) instead.")
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)


class SplitMasks:
    """Which rows of each row group each split keeps, as the `rows` filter of a `ParquetSource`.

    By fractions the split is the position's hash, computed when asked (no memory). What only the data
    tells is recorded by the fitting pass, one bit per row and split, only for the row groups concerned:
    the split column's values, and the rows whose target is missing (left out of every split, as the
    in-memory `Table` drops them). A split column over 100 million rows costs about 37 MB here.
    """

    def __init__(self, split: RowSplit) -> None:
        self.split = split
        self.columns: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # (file, group) -> split -> packed bits
        self.missing: dict[tuple[int, int], np.ndarray] = {}  # (file, group) -> packed bits of target-less rows

    def record(self, file: int, row_group: int, names: np.ndarray, has_target: np.ndarray) -> None:
        """Remember a row group's split (a split column) and its rows without a target."""
        if self.split.column is not None:
            self.columns[(file, row_group)] = {n: np.packbits(names == n) for n in SPLIT_NAMES}
        if not has_target.all():
            self.missing[(file, row_group)] = np.packbits(~has_target)

    def assign(self, file: int, row_group: int, offsets: np.ndarray, batch: pa.Table | None = None) -> np.ndarray:
        """The split names of rows `offsets` of a row group (None where the target is missing)."""
        if self.split.column is None:
            names = self.split.by_position(file, row_group, offsets)
        elif batch is not None:
            names = self.split.by_column(batch)
        else:
            recorded = self.columns[(file, row_group)]
            names = np.full(len(offsets), None, dtype=object)
            for name, bits in recorded.items():
                names[_unpack(bits, offsets)] = name
        missing = self.missing.get((file, row_group))
        if missing is not None:
            names = names.copy()
            names[_unpack(missing, offsets)] = None
        return names

    def rows(self, name: str) -> Callable[[int, int, np.ndarray], np.ndarray]:
        """The `ParquetSource` row filter of split `name`."""
        def keep(file: int, row_group: int, offsets: np.ndarray) -> np.ndarray:
            return np.asarray(self.assign(file, row_group, offsets) == name, dtype=bool)
        return keep


def _unpack(bits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The bools at `offsets` of a packed bit array."""
    return np.asarray((bits[offsets >> 3] >> (7 - (offsets & 7)).astype(np.uint8)) & 1, dtype=bool)


class NumericSummary:
    """A numeric column's statistics over a stream of values, in bounded memory (see the module docstring)."""

    def __init__(self, reservoir: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        self.count = 0  # finite values
        self.missing = 0
        self.mean = 0.0
        self.m2 = 0.0  # the sum of squared deviations from the mean
        self.low, self.high = np.inf, -np.inf
        self.capacity = reservoir
        self.sample = np.empty(0, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        """Add float64 values (NaN and +-inf count as missing, as `Preprocessor.fit` counts them)."""
        finite = np.isfinite(values)
        valid = values[finite] if not finite.all() else values
        self.missing += int(values.size - valid.size)
        if valid.size == 0:
            return
        mean = float(valid.mean())
        m2 = float(np.square(valid - mean).sum())
        n_a, n_b = self.count, int(valid.size)
        total = n_a + n_b
        delta = mean - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2 + delta * delta * n_a * n_b / total
        self.count = total
        self.low, self.high = min(self.low, float(valid.min())), max(self.high, float(valid.max()))
        self._sample(valid, n_a)

    def _sample(self, valid: np.ndarray, seen: int) -> None:
        """Reservoir sampling (Algorithm R), vectorised: value j (0-based, over the stream) replaces a random
        slot with probability capacity / (j + 1)."""
        room = self.capacity - self.sample.size
        if self.capacity == 0:
            return
        if room > 0:
            self.sample = np.concatenate([self.sample, valid[:room]])
            valid, seen = valid[room:], seen + min(room, valid.size)
        if valid.size == 0:
            return
        slots = self._rng.integers(0, np.arange(seen + 1, seen + valid.size + 1))
        keep = slots < self.capacity
        self.sample[slots[keep]] = valid[keep]  # a later value in the same batch wins, as in the sequential form

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    @property
    def exact(self) -> bool:
        """Whether the sample holds every value (the quantiles are then exact)."""
        return self.count <= self.capacity

    def quantiles(self, q: Sequence[float]) -> list[float]:
        """Quantiles of the finite values (exact while `exact`, else within the sample's error)."""
        return [float(v) for v in np.quantile(self.sample, q)] if self.sample.size else [float("nan")] * len(q)

    def spec(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The column's `Preprocessor` feature spec, or None and why it is dropped (its in-memory rule)."""
        if self.count == 0:
            return None, "all values missing in the training rows"
        if self.low == self.high:
            return None, f"constant ({self.low:g}) in the training rows"
        return {"name": name, "kind": "numeric", "mean": self.mean, "std": self.std,
                "median": float(np.median(self.sample)), "missing": self.missing > 0}, ""


class CategorySummary:
    """A text column's value counts in the training rows, over a stream of batches, in bounded memory.

    Up to `capacity` (default 64 x `max_categories`) distinct values the counts are exact, so the column's
    spec is the one `Preprocessor.fit` makes. Beyond, they are a Misra-Gries summary in its mergeable form:
    after merging a batch's counts, the (capacity + 1)-th largest count is subtracted from every counter and
    the counters left at 0 or below are removed. Every value seen more than N / (capacity + 1) times of N keeps
    a counter, and each count is low by at most that much; so the most frequent values kept may differ from
    the in-memory fit's only among values whose counts are that close to the cut. From then on the number of
    distinct values (the ID-like rule, the ``others`` count) is estimated from the `DISTINCT_SKETCH` smallest
    of their 64-bit hashes (k minimum values: a relative error of about 1 / sqrt(4096) = 1.6 %).
    """

    def __init__(self, max_categories: int, seed: int = 0, capacity: int | None = None) -> None:
        self.max_categories = max_categories
        self.capacity = SUMMARY_FACTOR * max_categories if capacity is None else capacity
        self.values: Any = pa.array([], pa.string())  # the counted values, and their counts
        self.counts = np.empty(0, dtype=np.int64)
        self.present = 0  # non-missing training cells
        self.missing = 0
        self.hashes: np.ndarray | None = None  # the smallest distinct hashes, once the counts are a summary
        self.sample = np.empty(0, dtype=object)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def summarised(self) -> bool:
        """Whether the column had more than `capacity` distinct values (the counts are then a summary)."""
        return self.hashes is not None

    @property
    def distinct(self) -> int:
        """The number of distinct non-missing values: exact until summarised, then estimated."""
        if self.hashes is None:
            return len(self.counts)
        if self.hashes.size < DISTINCT_SKETCH:  # every hash is in the sketch: exact (but for collisions)
            return int(self.hashes.size)
        estimate = round((DISTINCT_SKETCH - 1) / (float(self.hashes[-1]) / 2.0**64))
        return min(estimate, self.present)  # never more values than cells

    def add(self, column: Any) -> None:
        """Add an Arrow column's values (any type: read as text, as `Preprocessor.fit` reads them)."""
        strings = as_strings(column)
        self.missing += strings.null_count
        counted = pc.value_counts(strings.drop_null() if strings.null_count else strings)
        values, counts = counted.field("values"), counted.field("counts").to_numpy().astype(np.int64)
        self.present += int(counts.sum())
        if self.hashes is not None:
            self._sketch(values)
        self._merge(values, counts)
        self._keep_text(strings)

    def _merge(self, values: Any, counts: np.ndarray) -> None:
        """Add a batch's value counts; beyond `capacity` counters, the Misra-Gries cut (class docstring)."""
        merged = pa.table({"value": pa.concat_arrays([self.values, values.cast(pa.string())]),
                           "count": np.concatenate([self.counts, counts])})
        merged = merged.group_by("value").aggregate([("count", "sum")])
        self.values = merged.column("value").combine_chunks()
        self.counts = np.asarray(merged.column("count_sum").to_numpy(), dtype=np.int64)
        excess = self.counts.size - self.capacity
        if excess <= 0:
            return
        if self.hashes is None:  # every value seen so far has a counter still: the sketch starts complete
            self.hashes = np.empty(0, dtype=np.uint64)
            self._sketch(self.values)
        cut = np.partition(self.counts, excess - 1)[excess - 1]  # the (capacity + 1)-th largest count
        kept = self.counts > cut
        self.values = self.values.filter(pa.array(kept))
        self.counts = self.counts[kept] - cut

    def _sketch(self, values: Any) -> None:
        """Add values' hashes to the distinct-count sketch (the `DISTINCT_SKETCH` smallest distinct ones)."""
        assert self.hashes is not None
        self.hashes = np.unique(np.concatenate([self.hashes, text_hashes(values)]))[:DISTINCT_SKETCH]

    def _keep_text(self, strings: Any) -> None:
        """A reservoir of the column's text (bounded), for the numbers-as-text check of a column with more than
        `max_categories` values: Algorithm R as in `NumericSummary`."""
        values = np.asarray(strings.drop_null().to_numpy(zero_copy_only=False), dtype=object)
        room = TEXT_SAMPLE_SIZE - self.sample.size
        if room > 0:
            self.sample = np.concatenate([self.sample, values[:room]])
            self.seen += min(room, values.size)
            values = values[room:]
        if values.size:
            slots = self._rng.integers(0, np.arange(self.seen + 1, self.seen + values.size + 1))
            keep = slots < TEXT_SAMPLE_SIZE
            self.sample[slots[keep]] = values[keep]
            self.seen += values.size

    def spec(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The column's `Preprocessor` feature spec, or None and why it is dropped: the in-memory rule
        (`categorical_spec_from_counts`), on the counts; the numbers-as-text check runs on the text sample."""
        if self.distinct > self.max_categories and self.sample.size:
            refuse_numbers_as_text(name, pa.array(self.sample.tolist(), pa.string()))
        return categorical_spec_from_counts(name, self.values.to_pylist(), self.counts.tolist(), missing=self.missing,
                                            max_categories=self.max_categories, distinct=self.distinct,
                                            present=self.present)


_SHORT_TEXT = 64  # bytes: shorter values are hashed vectorised, longer ones one at a time


def text_hashes(values: Any) -> np.ndarray:
    """64-bit hashes of an Arrow string array's (non-missing) values, the same on every machine and in every
    process (Python's own `hash` of a str is not): their UTF-8 bytes, 8 at a time, through splitmix64's
    finaliser; values longer than 64 bytes through BLAKE2b."""
    lengths = np.asarray(pc.binary_length(values).to_numpy(zero_copy_only=False), dtype=np.int64)
    out = np.empty(lengths.size, dtype=np.uint64)
    short = lengths <= _SHORT_TEXT
    if short.any():
        text = np.asarray(values.filter(pa.array(short)).to_numpy(zero_copy_only=False), dtype=np.str_)
        padded = np.char.encode(text, "utf-8").astype(f"S{_SHORT_TEXT}")
        words = np.frombuffer(padded.tobytes(), dtype="<u8").reshape(-1, _SHORT_TEXT // 8)
        golden = np.uint64(0x9E3779B97F4A7C15)
        with np.errstate(over="ignore"):
            hashes = _mix(lengths[short].astype(np.uint64) + golden)
            for word in words.T:  # the zero padding cannot collide: the length went in first
                hashes = _mix(hashes ^ (word + golden))
        out[short] = hashes
    for i in np.flatnonzero(~short):
        digest = hashlib.blake2b(str(values[int(i)].as_py()).encode(), digest_size=8).digest()
        out[i] = np.uint64(int.from_bytes(digest, "little"))
    return out


@dataclass
class StreamFit:
    """What one streaming pass over a table found.

    Attributes:
        preprocessor: fitted on the training rows, the class `Preprocessor.fit` returns.
        masks: each split's rows, as `ParquetSource` row filters (`masks.rows("train")`).
        rows: rows per split (with a target).
        classes: the target's classes over every row (classification), else None.
        target_mean: the training target's mean (regression).
        target_std: the training target's standard deviation, 1.0 when it is 0 (regression).
        dropped_target: rows left out because their target is missing.
        numeric: each numeric column's `NumericSummary` (quantiles for bins, counts).
        categories: each kept categorical column's training rows per category (a lower bound where its
            counts were summarised: `CategorySummary`).
        class_counts: training rows per class, in `classes` order (classification).
    """

    preprocessor: Preprocessor
    masks: SplitMasks
    rows: dict[str, int]
    classes: list[Any] | None
    target_mean: float | None = None
    target_std: float | None = None
    dropped_target: int = 0
    numeric: dict[str, NumericSummary] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    class_counts: list[int] | None = None


class _Pass:
    """The accumulators of one pass: per column, the target, the rows per split."""

    def __init__(self, target: str, task: str, kinds: Mapping[str, str], max_categories: int,
                 reservoir: int, seed: int) -> None:
        self.target, self.task = target, task
        self.numeric = {n: NumericSummary(reservoir, seed + i) for i, (n, k) in enumerate(kinds.items())
                        if k in ("numeric", "bool")}
        self.text = {n: CategorySummary(max_categories, seed + i) for i, (n, k) in enumerate(kinds.items())
                     if k not in ("numeric", "bool", "date")}
        self.dates: dict[str, dict[str, NumericSummary]] = {}  # date column -> part -> summary (first batch on)
        self._date_seeds = {n: seed + i for i, (n, k) in enumerate(kinds.items()) if k == "date"}
        self.reservoir = reservoir
        self.rows: dict[str, int] = {}
        self.labels: set[Any] = set()
        self.train_labels: dict[Any, int] = {}  # class -> training rows (the class prior)
        self.target_summary = NumericSummary(0)
        self.dropped_target = 0

    def add(self, file: int, row_group: int, batch: pa.Table, masks: SplitMasks, first_row: int) -> None:
        """Add one row group's rows (all of them, in order; `first_row`: its first data row in the table)."""
        has_target = self._target_present(batch)
        self.dropped_target += int(has_target.size - np.count_nonzero(has_target))
        offsets = np.arange(batch.num_rows, dtype=np.int64)
        if masks.split.column is not None:
            masks.record(file, row_group, masks.split.by_column(batch, first_row), has_target)
        else:
            masks.record(file, row_group, np.empty(0, dtype=object), has_target)
        splits = masks.assign(file, row_group, offsets)
        for name in SPLIT_NAMES:  # in this order: the counts print train, val, test
            count = int(np.count_nonzero(splits == name))
            if count or name in self.rows:
                self.rows[name] = self.rows.get(name, 0) + count
        if self.task == "classification":
            labels = pc.unique(batch.column(self.target).filter(pa.array(has_target)))
            self.labels.update(v for v in labels.to_pylist() if v is not None and v == v)
        train = np.flatnonzero(splits == "train")
        if train.size == 0:
            return
        rows = batch.take(pa.array(train))
        for name, summary in self.numeric.items():
            summary.add(column_as_float64(rows.column(name), name))
        for name, categories in self.text.items():
            categories.add(rows.column(name))
        for name, date_seed in self._date_seeds.items():
            column = rows.column(name)
            parts = self.dates.setdefault(name, {part: NumericSummary(self.reservoir, date_seed)
                                                 for part in date_parts_of(column.type)})
            for part, summary in parts.items():
                summary.add(date_part_values(column, part, name))
        if self.task == "regression":
            self.target_summary.add(column_as_float64(rows.column(self.target), self.target))
        else:
            counted = pc.value_counts(rows.column(self.target))
            for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
                self.train_labels[value] = self.train_labels.get(value, 0) + count

    def _target_present(self, batch: pa.Table) -> np.ndarray:
        """Rows whose target is there (not null, not NaN): the in-memory `Table` drops the others."""
        column = batch.column(self.target)
        present = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_floating(column.type):
            present &= ~np.isnan(column_as_float64(column, self.target))
        return present


def fit_streamed(row_groups: Iterable[tuple[int, int, pa.Table]], *, target: str, task: str,
                 kinds: Mapping[str, str], split: RowSplit, classes: list[Any] | None = None,
                 id: str | None = None, max_categories: int = 50, reservoir: int = RESERVOIR_SIZE,
                 seed: int = 0) -> StreamFit:
    """Fit a `Preprocessor` on the training rows of a stream of batches, in one pass and bounded memory.

    Args:
        row_groups: `(file index, row group, rows)` of every row group in file order (as
            `fitloop.data.stream.StreamPlan` orders them), each with the feature columns, the target and the
            split column (when `split` has one).
        target: The target column.
        task: ``"classification"`` or ``"regression"``.
        kinds: Feature column -> kind, as `Preprocessor.fit` takes them (from `Table` on a sample).
        split: Which rows are training rows.
        classes: The class labels (default: every label seen in the target, as `Table` collects them).
        id: The id column (kept with predictions, never a feature).
        max_categories: Text columns with more distinct training values keep their most frequent ones
            (the others share one slot), or are dropped when ID-like, as `Preprocessor.fit` decides.
        reservoir: Values sampled per numeric column for its median (and quantiles).
        seed: Seed of the reservoir samples.

    Raises:
        TableError: no training rows, a single class, a bad split column, junk in a numeric column.
    """
    acc = _Pass(target, task, kinds, max_categories, reservoir, seed)
    masks = SplitMasks(split)
    first_row = 0
    for file, row_group, table in row_groups:
        acc.add(file, row_group, table, masks, first_row)
        first_row += table.num_rows
    if not acc.rows.get("train"):
        raise TableError("the train split is empty: no row was assigned to train (check --split or the split "
                         "column).")
    if task == "classification" and classes is None:
        classes = sorted(acc.labels)
    if task == "classification" and len(classes or []) < 2:
        raise TableError(f"target {target!r} has a single class ({classes!r}); classification needs at least 2.")
    pre = _preprocessor(acc, target, task, kinds, classes, id)
    rows = {name: acc.rows[name] for name in SPLIT_NAMES if name in acc.rows}
    fit = StreamFit(pre, masks, rows, classes, dropped_target=acc.dropped_target, numeric=acc.numeric,
                    categories=_kept_counts(acc, pre))
    if task == "classification":
        fit.class_counts = [acc.train_labels.get(c, 0) for c in classes or []]
        if sum(1 for n in fit.class_counts if n) < 2:
            raise TableError(f"the train split has a single class for target {target!r}; use a stratified or "
                             f"larger split.")
    if task == "regression":
        fit.target_mean = acc.target_summary.mean
        fit.target_std = acc.target_summary.std or 1.0
    return fit


def _kept_counts(acc: _Pass, pre: Preprocessor) -> dict[str, dict[str, int]]:
    """Each kept text column's training rows per category (a lower bound once its counts were summarised)."""
    out: dict[str, dict[str, int]] = {}
    for spec in pre.features:
        summary = acc.text.get(spec["name"])
        if summary is not None:
            counts = dict(zip(summary.values.to_pylist(), summary.counts.tolist()))
            out[spec["name"]] = {value: counts.get(value, 0) for value in spec["categories"]}
    return out


def _preprocessor(acc: _Pass, target: str, task: str, kinds: Mapping[str, str], classes: list[Any] | None,
                  id: str | None) -> Preprocessor:
    """The `Preprocessor` from the pass's summaries: the specs, drops and notes `Preprocessor.fit` writes."""
    features: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    imputed: list[str] = []
    cut: list[str] = []  # text columns kept with their most frequent values only
    for name in kinds:
        if name in acc.dates:  # as `Preprocessor.fit` turns a date column into numbers
            parts = [(part, *summary.spec(f"{name}__{part}"), summary.missing)
                     for part, summary in acc.dates[name].items()]
            specs, why, n_missing = date_specs(name, parts)
            features += specs
            if not specs:
                dropped[name] = why
                continue
            cut.append(date_note(name, specs))
            imputed += [date_imputed(name, specs[0], n_missing)] if n_missing else []
            continue
        numeric = acc.numeric.get(name)
        spec, why = numeric.spec(name) if numeric is not None else acc.text[name].spec(name)
        if spec is None:
            dropped[name] = why
            continue
        if why:
            cut.append(f"column {name!r}: {why}")
        if numeric is not None:  # what the column held, as `Preprocessor.fit` records it (serve's /schema)
            spec["values"] = "bool" if kinds[name] == "bool" else "number"
        features.append(spec)
        if numeric is not None and numeric.missing:
            imputed.append(f"{name}: {numeric.missing} (median {spec['median']:g})")
    notes = [f"dropped column {name!r}: {why}" for name, why in dropped.items()] + cut
    if imputed:
        notes.append("imputed missing numeric values with the train median (+ COL__missing indicator): "
                     + ", ".join(imputed))
    if acc.dropped_target:
        notes.append(f"dropped {acc.dropped_target} row(s) with a missing target {target!r}")
    pre = Preprocessor(target, task, features, classes, id, notes)
    pre.dropped = dropped
    return pre
