"""Streamed Parquet data for the Trainer: tables larger than memory, read block by block.

    source = ParquetSource("data/", columns=["a", "b"], target="y", batch_size=256)
    trainer.fit(source)            # also trainer.evaluate(source), trainer.predict(source)

`ParquetSource` names the data (a Parquet file, a directory of them, hive partitions included, or a glob)
and how to read it; `make_batches` turns it into a `StreamBatches`, the batch source the Trainer iterates
over (`fitloop.step.batches.RowCountedBatches`), as it turns `(X, y)` into `TensorBatches`.

**Blocks.** The unit of reading is a *block*: a row group, or a slice of at most `block_rows` rows of one
(a slice still decodes its whole row group: slicing buys a finer shuffle at the price of decoding large row
groups once per slice). The plan of the blocks and of their row counts comes from the files' footers,
without reading data. A `rows` filter (`(file_index, row_group, offsets) -> bool mask`, a function of the
row's position only, e.g. a seeded hash split) is counted in the same pass; it reads no data either.

**The order** (a seeded, global, two-level shuffle). Each epoch draws, from the Trainer's generator, a
permutation of the blocks and one 62-bit key. The permuted blocks are cut into *windows* of consecutive
blocks holding at most `buffer_rows` rows (at least one block); the rows of window `w` are delivered in the
order of a permutation seeded by `(key, w)`. Every row the filter keeps is delivered exactly once per epoch.
The global order depends only on the files, the filter, `block_rows`, `buffer_rows` and the generator:
never on the number of processes, threads or the batch size. Without shuffling (evaluation, predict) the
order is the files' order (sorted paths, then row groups, then rows).

**Ranks.** The epoch is cut into global batches of `batch_size * world` rows, and each rank takes its part
of each global batch by `fitloop.data.sharding.shard_bounds`, exactly as `ShardedBatches` does for
in-memory data: the batch count comes from the metadata, so every rank has the same number of batches by
construction (a rank may get an empty share of the short last batch: it then steps on `filler` with weight
0). Each rank knows from the plan which rows of a window are its own, reads only the blocks that hold at
least one of them and converts (`transform`) only its own rows. The trade-off: with a row shuffle, a
window's rows are spread over the global batches, so every rank needs rows of (nearly) every block of the
window, and the row groups are decoded on each rank; what each rank saves is the transform and the copy of
the other ranks' rows. Assigning whole blocks to ranks would read each block once, but the global order
would then depend on the world size, which resume at another world size and the 1-process/N-process
equality need. Evaluation and predict read everything in every process (no gather), as the DataLoader path.

**Resume.** The Trainer's checkpoint holds the epoch's generator state and the index of the next batch;
`epoch(generator, start)` draws the same permutation and key, skips whole windows before batch `start`
without reading them, and in the window where it resumes reads only the blocks holding rows still to come.
`fingerprint()` (files, sizes, row counts, the settings the order depends on) tells a changed file set.
As the order does not depend on the world size, a run may resume at another one (plain DDP): the position
is a row of the order, `batch * global batch`; `ParquetSource.continue_at` has the new run's first epoch
start there, in the rest of the new grid's batch holding that row (`fitloop.callbacks.resume`).

**Prefetch.** Background threads (`workers`, 2 by default) read, decode, transform and gather the next windows,
each window on one thread, at most `max(prefetch, workers) + 1` windows ahead, while the step runs. The windows are
handed to the training thread in the epoch's order, and a window's content depends only on the window, so the
number of threads cannot change the order. Reading, Arrow's decoding and numpy's copies release the GIL: two
threads delivered 1.3-1.5x one thread's rate on two cores, where the copies compete for memory (bench/STREAM.md).

**Shuffle quality** (measured: 200,000 rows in 50 files of 4 row groups of 1,000 rows, 5 epochs, batches of
256). |rho| is Spearman's rank correlation between a row's position in the files and in the delivery (0: no
trace of the file order; a perfect shuffle of 200,000 rows gives about 0.002); "row groups per batch" is how
many of the 200 row groups a batch's rows come from (a uniform shuffle: 144.4).

    buffer_rows                    1,000    4,000    16,000   64,000   200,000 (all)
    mean |rho|                     0.047    0.045    0.046    0.047    0.0015
    max |rho|                      0.134    0.133    0.132    0.119    0.003
    row groups per batch           1.2      4.2      15.8     60.7     144.7
    same, block_rows=250: |rho|    0.023    0.023    0.023
    same, row groups per batch     4.9      16.3     55.3

The block permutation removes the file order at any buffer size: what is left is the correlation of a
random order of the blocks (about 0.8 / sqrt(blocks)), which finer blocks (`block_rows`) lower. The buffer
decides how mixed a batch is: a batch draws from about `buffer_rows / rows per block` blocks, so a buffer of
a few hundred blocks' rows makes batches as mixed as a full shuffle. Memory: each process holds about
`(max(prefetch, workers) + 2) * buffer_rows` rows of its needed blocks, decoded.

**Throughput** (bench/STREAM.md: 2,000,000 rows of 16 float32 features in 65,536-row row groups, 2 cores):
the source alone delivers 7.7-8.9 M rows a second, 0.42-0.50 of a raw pyarrow scan (the shuffle's row gather
is the difference); `Trainer.fit` on it runs 1.3-1.7x as fast as on the same rows in memory, since the reader
threads prepare the next windows while the step runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import functools
import glob
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from .gather import gather_rows
from .sharding import shard_bounds

if TYPE_CHECKING:
    import pyarrow.dataset as pads

__all__ = ["ParquetSource", "StreamBatches", "StreamError", "RowFilter", "Transform", "return_freed_memory"]

RowFilter = Callable[[int, int, np.ndarray], np.ndarray]
"""`(file_index, row_group, offsets) -> mask`: which rows of a block to keep, from their position only
(`offsets` are the rows' int64 offsets within the row group; the mask is a bool array of the same length)."""

Transform = Callable[[pa.Table], tuple[torch.Tensor, "torch.Tensor | None"]]
"""A table of rows (the `columns` and the `target`) -> `(X, y)` tensors, one row per row (`y` None)."""

Batch = tuple[torch.Tensor, "torch.Tensor | None"]  # (X, y) of some rows


_E = TypeVar("_E", bound=Exception)


class StreamError(ValueError):
    """A streamed file that cannot be read as asked: the message names the file (and the row group)."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator's own policy applies
        return None


def return_freed_memory() -> None:
    """Give the memory this process has freed back to the system, now (glibc's `malloc_trim(0)`).

    A stream frees a window of rows for each one it reads. glibc keeps freed memory in its heaps for reuse,
    and the step's and the transform's smaller allocations between the windows' arrays keep the freed space
    from being given back: the process grew with the table (1 GiB above its start for a 1.5 GiB table,
    bench/stream.py) instead of staying near the buffers' size. `malloc_trim(0)` also releases the free pages
    inside the heaps, so the stream calls it once per window, and streamed predict once per batch: the resident
    memory stays near the buffers' size. (Fixing malloc's thresholds instead, `mallopt` with arrays over 128 KiB
    mapped, bounded the memory too, but made every training step map, fault in and unmap its activations:
    training on the stream was 1.4-1.6x slower, bench/STREAM.md.) A no-op where the C library is not glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class ParquetSource:
    """Parquet data read block by block, for `Trainer.fit`, `evaluate` and `predict`.

    Args:
        path: a Parquet file, a directory of Parquet files (hive partitions `key=value/` become columns),
            a glob (`"data/*.parquet"`, `**` recursive), or a list of files.
        columns: the feature columns, in the order `X` has them.
        target: the target column; None for unlabelled data (predict).
        batch_size: rows per process per step; None: the Trainer's `batch_size`.
        transform: `(table) -> (X, y)` applied to each window's rows (e.g. a fitted preprocessor); None:
            the columns as float32 and the target as stored (nulls refused).
        rows: a `RowFilter` keeping part of the rows (e.g. a seeded hash split); None keeps all.
        block_rows: the most rows of one block (a slice of a row group); None: whole row groups.
        buffer_rows: the shuffle buffer: rows are shuffled within windows of consecutive blocks of at
            most this many rows (at least one block).
        prefetch: windows read ahead by the background threads (0: read in the training thread).
        workers: the background threads reading windows (each window on one; the order does not depend
            on their number).
    """

    path: str | os.PathLike | Sequence[str | os.PathLike]
    columns: Sequence[str]
    target: str | None = None
    batch_size: int | None = None
    transform: Transform | None = None
    rows: RowFilter | None = None
    block_rows: int | None = None
    buffer_rows: int = 1 << 18
    prefetch: int = 2
    workers: int = 2
    _plan: StreamPlan | None = field(default=None, init=False, repr=False, compare=False)
    _continue_at: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.columns, str):
            raise TypeError("ParquetSource: columns is a list of column names, got one string "
                            f"({self.columns!r}); pass [{self.columns!r}].")
        self.columns = list(self.columns)
        for name, value, low in (("batch_size", self.batch_size, 1), ("block_rows", self.block_rows, 1),
                                 ("buffer_rows", self.buffer_rows, 1), ("prefetch", self.prefetch, 0),
                                 ("workers", self.workers, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"ParquetSource: {name} must be an integer >= {low}, got {value!r}.")
        if self.target is not None and self.target in self.columns:
            raise ValueError(f"ParquetSource: the target {self.target!r} is also one of the feature columns.")

    def plan(self) -> StreamPlan:
        """The files, their blocks and row counts (read from the footers once, then kept)."""
        if self._plan is None:
            self._plan = StreamPlan.build(self)
        return self._plan

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint remembers of this source: the files (names relative to their common folder,
        sizes, row counts), the kept rows and the settings the order depends on. A resume on a different
        file set differs here. `order: "global"` records that the epoch's order does not depend on the
        number of processes and that a checkpoint's position is its batch index times the global batch
        (`batch_size`, this source's own, or else the Trainer's, times the processes): what a resume at
        another world size needs (`fitloop.callbacks.resume`); a checkpoint without it cannot change it."""
        plan = self.plan()
        digest = hashlib.sha256()
        # names relative to the files' common folder: the same files by a directory, a glob or a list, or
        # moved elsewhere, fingerprint alike
        base = os.path.commonpath([os.path.dirname(os.path.abspath(file)) for file in plan.files])
        for file, size in zip(plan.files, plan.sizes, strict=True):
            digest.update(f"{os.path.relpath(os.path.abspath(file), base)}\0{size}\n".encode())
        digest.update(np.asarray([b.stop - b.start for b in plan.blocks], dtype=np.int64).tobytes())
        return {"kind": "parquet-stream", "files": len(plan.files), "rows": plan.rows,
                "files_sha256": digest.hexdigest()[:16], "columns": list(self.columns), "target": self.target,
                "block_rows": self.block_rows, "buffer_rows": self.buffer_rows, "batch_size": self.batch_size,
                "order": "global"}

    def global_batch(self, batch_size: int | None, world: int) -> int:
        """The rows of one global training batch over `world` processes (this source's `batch_size` first,
        else `batch_size`; None: the whole epoch)."""
        size = self.batch_size or batch_size
        rows = self.plan().rows
        return rows if size is None else min(size * world, rows)

    def continue_at(self, row: int, batch_size: int | None, world: int) -> int:
        """Have the next training epoch start at `row` of the epoch's global order (a resume at another
        world size, where a checkpoint's position is not on this run's grid of global batches). Returns the
        batch index the Trainer continues at: the batch of this run's grid holding `row`, of which only the
        rows from `row` on are delivered (its `global_rows` says so); the later batches are on the grid.
        Applies once, to the first `epoch` started at that batch."""
        batch = row // self.global_batch(batch_size, world)
        self._continue_at = row
        return batch

    def batches(self, *, train: bool, batch_size: int | None, shuffle: bool, device: torch.device,
                float_dtype: torch.dtype = torch.float32,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                rank: int = 0, world: int = 1) -> StreamBatches:
        """The batch source (`make_batches` calls it): training batches of `batch_size` rows per process
        (this source's own `batch_size` first), or evaluation batches (bigger, unshuffled, every row in
        every process). `prepare` converts each window's targets (the loss's dtype)."""
        size = self.batch_size or batch_size
        plan = self.plan()
        if plan.rows == 0:
            raise StreamError(f"{self.path}: no rows to read (the files are empty, or the row filter keeps none).")
        if not train:  # no backward pass: bigger batches, bounded to keep memory modest
            size = max(size or 0, min(plan.rows, 8192))
        continue_at, self._continue_at = (self._continue_at, None) if train else (None, self._continue_at)
        return StreamBatches(self, plan, batch_size=size, shuffle=train and shuffle, device=device,
                             float_dtype=float_dtype, prepare=prepare, rank=rank if train else 0,
                             world=world if train else 1, continue_at=continue_at)


@dataclass(frozen=True)
class Block:
    """A slice `[start, stop)` of row group `row_group` of file `file`, of which `kept` rows pass the filter."""

    file: int
    row_group: int
    start: int
    stop: int
    kept: int


@dataclass
class StreamPlan:
    """The files of a source (sorted paths) and their blocks, with the rows each keeps; from the footers."""

    files: list[str]
    sizes: list[int]
    fragments: list[Any]
    schema: pa.Schema
    blocks: list[Block]

    @property
    def rows(self) -> int:
        """The rows delivered per epoch (the filter's kept rows)."""
        return sum(b.kept for b in self.blocks)

    @classmethod
    def build(cls, source: ParquetSource) -> StreamPlan:
        import pyarrow.dataset as pads  # here, not at the top: it imports pandas where pandas is installed (0.3 s)

        dataset = _open_dataset(source.path)
        fragments = sorted(dataset.get_fragments(), key=lambda fragment: fragment.path)
        if not fragments:
            raise StreamError(f"{source.path}: no Parquet files found.")
        wanted = [*source.columns, *([source.target] if source.target is not None else [])]
        blocks: list[Block] = []
        for index, fragment in enumerate(fragments):
            names = set(fragment.physical_schema.names) | set(pads.get_partition_keys(fragment.partition_expression))
            missing = [c for c in wanted if c not in names]
            if missing:
                raise StreamError(f"{fragment.path}: no column {', '.join(map(repr, missing))} (its columns: "
                                  f"{', '.join(sorted(names))}).")
            blocks += _file_blocks(index, fragment, source.block_rows, source.rows)
        return cls(files=[f.path for f in fragments], sizes=[_file_size(f) for f in fragments],
                   fragments=fragments, schema=dataset.schema, blocks=blocks)


def _open_dataset(path: Any) -> pads.Dataset:
    """A pyarrow dataset of `path`: a file, a directory (hive partitioning), a glob or a list of files."""
    import pyarrow.dataset as pads

    if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        try:
            return pads.dataset(str(path), format="parquet", partitioning="hive")
        except (OSError, pa.ArrowException) as error:
            raise StreamError(f"{path}: cannot be read as a directory of Parquet files ({error}).") from None
    if isinstance(path, (str, os.PathLike)):
        text = str(path)
        files = sorted(glob.glob(text, recursive=True)) if _is_glob(text) else [text]
    else:
        files = [str(p) for p in path]
    for file in files:
        if not Path(file).is_file():
            raise StreamError(f"{file}: no such file." if not _is_glob(str(path)) else
                              f"{path}: the glob matches no file.")
    if not files:
        raise StreamError(f"{path}: the glob matches no file.")
    try:
        return pads.dataset(files, format="parquet")
    except (OSError, pa.ArrowException) as error:
        raise StreamError(f"{path}: cannot be read as Parquet ({error}).") from None


def _is_glob(text: str) -> bool:
    return any(character in text for character in "*?[")


def _file_size(fragment: Any) -> int:
    return int(fragment.filesystem.get_file_info(fragment.path).size)


def _file_blocks(index: int, fragment: Any, block_rows: int | None, rows: RowFilter | None) -> list[Block]:
    """The blocks of one file (from its footer), with the rows `rows` keeps of each."""
    try:
        metadata = fragment.metadata
    except (OSError, pa.ArrowException) as error:
        raise StreamError(f"{fragment.path}: cannot read the Parquet footer ({error}).") from None
    blocks = []
    for group in range(metadata.num_row_groups):
        length = metadata.row_group(group).num_rows
        step = block_rows or max(length, 1)
        for start in range(0, length, step):
            stop = min(start + step, length)
            kept = stop - start if rows is None else int(_mask(rows, index, fragment.path, group, start, stop).sum())
            if kept:
                blocks.append(Block(index, group, start, stop, kept))
    return blocks


def _mask(rows: RowFilter, index: int, path: str, group: int, start: int, stop: int) -> np.ndarray:
    """The filter's mask of rows `[start, stop)` of a row group, checked (bool, one per row)."""
    mask = np.asarray(rows(index, group, np.arange(start, stop, dtype=np.int64)))
    if mask.dtype != np.bool_ or mask.shape != (stop - start,):
        raise StreamError(f"{path}: row group {group}: the row filter returned {mask.dtype} of shape "
                          f"{mask.shape}; it must return a bool mask of shape ({stop - start},).")
    return mask


@dataclass(frozen=True)
class Window:
    """Consecutive blocks of the epoch's block order (indices into the plan) delivering positions
    `[first, first + rows)` of the epoch; `seed` seeds its row permutation (None: not shuffled)."""

    blocks: list[int]
    first: int
    rows: int
    seed: int | None


class StreamBatches:
    """One process's batches of a `ParquetSource` (a `RowCountedBatches`): see the module docstring.

    Args:
        source: the source (its columns, target, transform, filter and buffer sizes).
        plan: its files and blocks.
        batch_size: rows per process (the global batch is `batch_size * world`).
        shuffle: a new order every epoch (from the generator passed to `epoch`).
        device: where batches go.
        float_dtype: the dtype of floating-point features.
        prepare: converts each window's targets (None: as the transform gives them).
        rank: this process.
        world: the number of processes.
        continue_at: a row of the global order: the first epoch started at batch `row // global batch`
            starts at that row (`ParquetSource.continue_at`: a resume at another world size); None: every
            epoch on the grid of global batches.
    """

    def __init__(self, source: ParquetSource, plan: StreamPlan, *, batch_size: int | None, shuffle: bool,
                 device: torch.device, float_dtype: torch.dtype = torch.float32,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, rank: int = 0, world: int = 1,
                 continue_at: int | None = None):
        self.source, self.plan = source, plan
        self.n = plan.rows
        self.rank, self.world = rank, world
        self.batch_size = batch_size
        self.global_batch = self.n if batch_size is None else min(batch_size * world, self.n)
        self.shuffle, self.device, self.float_dtype, self.prepare = shuffle, device, float_dtype, prepare
        self._filler: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._continue_at = continue_at  # pending until the epoch it applies to starts
        self._first_row: int | None = None  # this epoch's: the row its batch `_first_row // G` starts at

    def __len__(self) -> int:
        return -(-self.n // self.global_batch)

    def global_rows(self, i: int) -> int:
        """The rows of global batch `i`, summed over the processes (the step's loss weights use it). In an
        epoch continued off the grid (`continue_at`), the batches before the first one have none and the
        first one only its rows from there on."""
        return max(0, min(self.global_batch * (i + 1), self.n) - self._batch_start(i))

    def _batch_start(self, i: int) -> int:
        """The first row of global batch `i` in the epoch's order (its end is always on the grid)."""
        start = i * self.global_batch
        first = self._first_row
        if first is None or start + self.global_batch <= first:
            return start if first is None else start + self.global_batch  # before the first: empty
        return max(start, first)

    @property
    def filler(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One real row, stepped on with weight 0 when this rank's share of a batch is empty (read once,
        on first use; one process never has an empty share, so it reads nothing)."""
        if self.world == 1:
            return torch.empty(0), None
        if self._filler is None:
            x, y = self._convert([(0, _BlockReader(self.source, self.plan).read(0).slice(0, 1))])
            self._filler = (x.contiguous().to(self.device), None if y is None else y.to(self.device))
        return self._filler

    def gather(self, out: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Evaluation outputs as they are: evaluation reads every row in every process (world 1)."""
        return out, y

    # ------------------------------------------------------------------ the order

    def windows(self, generator: torch.Generator | None) -> list[Window]:
        """The epoch's windows, drawn from `generator` (the same on every rank): the block permutation,
        then the key that seeds each window's row permutation."""
        blocks = self.plan.blocks
        if self.shuffle:
            order = torch.randperm(len(blocks), generator=generator).tolist()
            key = int(torch.randint(0, 2**62, (1,), generator=generator))
        else:
            order, key = list(range(len(blocks))), None
        windows: list[Window] = []
        members: list[int] = []
        first = rows = 0
        for index in order:
            kept = blocks[index].kept
            if members and rows + kept > self.source.buffer_rows:
                windows.append(Window(members, first, rows, _window_seed(key, len(windows))))
                members, first, rows = [], first + rows, 0
            members.append(index)
            rows += kept
        windows.append(Window(members, first, rows, _window_seed(key, len(windows))))
        return windows

    def global_order(self, generator: torch.Generator | None) -> Iterator[np.ndarray]:
        """The epoch's delivery order, window by window, as positions in the plan's rows (the blocks in
        file order, kept rows only): a test and measurement aid, it reads no data."""
        starts = np.cumsum([0] + [b.kept for b in self.plan.blocks])
        for window in self.windows(generator):
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in window.blocks])
            yield rows[_window_order(window, np.arange(window.rows))]

    def _positions(self, window: Window, start: int) -> np.ndarray:
        """This rank's delivery positions within `window` (relative to its first), from global batch `start` on."""
        G, lo, hi = self.global_batch, max(window.first, self._batch_start(start)), window.first + window.rows
        if self.world == 1:  # every position
            return np.arange(lo - window.first, hi - window.first)
        parts = []
        for batch in range(lo // G, -(-hi // G)):
            offset, size = shard_bounds(self.global_rows(batch), self.rank, self.world)
            begins = self._batch_start(batch)
            first = max(begins + offset, lo)
            last = min(begins + offset + size, hi)
            if last > first:
                parts.append(np.arange(first - window.first, last - window.first))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _sizes(self, start: int) -> Iterator[int]:
        """This rank's rows in each global batch from `start` on."""
        for batch in range(start, len(self)):
            yield shard_bounds(self.global_rows(batch), self.rank, self.world)[1]

    # ------------------------------------------------------------------ reading

    def epoch(self, generator: torch.Generator | None, start: int = 0) -> Iterator[tuple]:
        """This rank's batches of one epoch from global batch `start` on (a share may have 0 rows). The
        order is drawn now, before any data is read; so is whether the epoch continues off the grid (a
        pending `continue_at` whose batch is `start`: every later epoch is on it)."""
        pending, self._continue_at = self._continue_at, None
        applies = pending is not None and pending // self.global_batch == start and pending < self.n
        self._first_row = pending if applies else None
        return self._epoch(self.windows(generator), start)

    def _epoch(self, windows: list[Window], start: int) -> Iterator[tuple]:
        with _prefetched(self._chunks(windows, start), self.source.prefetch, self.source.workers) as ready:
            pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            held = 0
            for size in self._sizes(start):
                while held < size:
                    x, y = next(ready)
                    pending.append((x.to(self.device, non_blocking=True),
                                    None if y is None else y.to(self.device, non_blocking=True)))
                    held += len(x)
                if not pending:  # an empty share (of the last batch only), after this rank's last row
                    x, y = self.filler
                    yield x[:0], (None if y is None else y[:0])
                    continue
                batch, pending = _take_front(pending, size)
                held -= size
                yield batch

    def _chunks(self, windows: list[Window], start: int) -> Iterator[Callable[[], Batch]]:
        """One job per window still to come: it reads this rank's rows of the window and converts them, in
        delivery order (the jobs run on the reader threads). Windows before batch `start` and blocks holding
        none of this rank's rows are not read."""
        readers = threading.local()  # a reader per thread: its cache of sliced row groups is not shared
        for window in windows:
            if window.first + window.rows <= self._batch_start(start):
                continue
            positions = self._positions(window, start)
            if len(positions):
                yield functools.partial(self._window_rows, readers, window, positions)

    def _window_rows(self, readers: threading.local, window: Window, positions: np.ndarray) -> Batch:
        return_freed_memory()  # the windows consumed since: their pages go back before this one is read
        reader = getattr(readers, "reader", None)
        if reader is None:
            reader = readers.reader = _BlockReader(self.source, self.plan)
        parts, order = reader.window_rows(window, _window_order(window, positions))
        in_order = window.seed is None and len(order) == window.rows  # the whole window, unshuffled
        return self._convert(parts, None if in_order else order)

    def _convert(self, parts: list[tuple[int, pa.Table]], order: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(X, y)` of rows `order` (None: all, in order) of the concatenated `(block, table)` parts: the
        source's transform (or the columns as float32), the target prepared. The transform sees each block's
        rows in file order, so its errors name the file and the row group; the delivery order is then one row
        gather (the default transform gathers each column while it copies it)."""
        source = self.source
        if source.transform is None:
            table = parts[0][1] if len(parts) == 1 else pa.concat_tables([table for _, table in parts])
            return self._prepared(*default_transform(table, source.columns, source.target, order))
        converted = [self._transform(block, table) for block, table in parts]
        x = converted[0][0] if len(converted) == 1 else torch.cat([x for x, _ in converted])
        ys = [y for _, y in converted]
        y = None if ys[0] is None else ys[0] if len(ys) == 1 else torch.cat(ys)  # type: ignore[arg-type]
        if order is not None:
            x, y = gather_rows(x, order), (None if y is None else gather_rows(y, order))
        return self._prepared(x, y)

    def _transform(self, block: int, table: pa.Table) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The source's transform of rows of one block; an error in it names the block's file and row group."""
        assert self.source.transform is not None
        where = self.plan.blocks[block]
        path = self.plan.files[where.file]
        try:
            x, y = self.source.transform(table)
        except Exception as error:
            raise _named(error, f"{path}: row group {where.row_group}: {error}") from error
        if len(x) != table.num_rows or (y is not None and len(y) != table.num_rows):
            raise StreamError(f"{path}: row group {where.row_group}: the transform returned {len(x)} rows of X"
                              f"{'' if y is None else f' and {len(y)} of y'} for {table.num_rows} rows; "
                              "it must keep every row, in order.")
        return x, y

    def _prepared(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.is_floating_point() and x.dtype != self.float_dtype:
            x = x.to(self.float_dtype)
        if y is not None and self.prepare is not None:
            y = self.prepare(y)
        return x, y


def _named(error: _E, message: str) -> _E | StreamError:
    """`error` as the same type with `message` (one that names where it happened), when that type can be
    built from a message alone; otherwise a `StreamError` with it. The class is kept, so the CLI maps the
    error as it would the transform's own (a user error stays exit 2, a bug stays exit 1)."""
    try:
        named = type(error)(message)
    except Exception:
        return StreamError(message)
    return named if str(named) == message else StreamError(message)


def _window_seed(key: int | None, index: int) -> int | None:
    if key is None:
        return None
    digest = hashlib.sha256(f"{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _window_order(window: Window, positions: np.ndarray) -> np.ndarray:
    """The window's rows (indices into its blocks' kept rows, in block order) at delivery `positions`."""
    if window.seed is None:
        return positions
    permutation = np.random.default_rng(window.seed).permutation(window.rows)
    if len(positions) == window.rows:  # every position, in order (one process): the permutation itself
        return permutation
    return permutation[positions]


def _take_front(parts: list[tuple[torch.Tensor, torch.Tensor | None]], size: int
                ) -> tuple[tuple[torch.Tensor, torch.Tensor | None], list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """The first `size` rows of the concatenated `(x, y)` parts (at least one), and the parts left."""
    taken, rest, need = [], list(parts), size
    while need and rest:
        x, y = rest.pop(0)
        taken.append((x[:need], None if y is None else y[:need]))
        if len(x) > need:
            rest.insert(0, (x[need:], None if y is None else y[need:]))
        need -= len(taken[-1][0])
    if not taken:  # size 0
        x, y = parts[0]
        return (x[:0], None if y is None else y[:0]), rest
    if len(taken) == 1:
        return taken[0], rest
    ys = [y for _, y in taken]
    return (torch.cat([x for x, _ in taken]), None if ys[0] is None else torch.cat(ys)), rest  # type: ignore[arg-type]


def default_transform(table: pa.Table, columns: Sequence[str], target: str | None, order: np.ndarray | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows `order` of `table` (None: all): the columns as a float32 matrix and the target as stored (a 1-D
    tensor), or None without one. The columns are copied chunk by chunk into a row-major matrix in file
    order, then its rows are gathered once (`gather_rows`)."""
    x = _in_order(table, columns)
    return (x if order is None else gather_rows(x, order)), _target(table, target, order)


def _in_order(table: pa.Table, columns: Sequence[str]) -> torch.Tensor:
    """The columns as a row-major float32 matrix, chunk by chunk (no concatenated copy of a column)."""
    x = np.empty((table.num_rows, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        at = 0
        for chunk in table.column(name).chunks:
            x[at: at + len(chunk), j] = _numeric(pa.chunked_array([chunk]), name)
            at += len(chunk)
    return torch.from_numpy(x)


def _target(table: pa.Table, target: str | None, order: np.ndarray | None) -> torch.Tensor | None:
    """The target column (rows `order`, None: all) as a 1-D tensor of its own dtype, or None without one."""
    if target is None:
        return None
    values = _numeric(table.column(target), target)
    return torch.from_numpy(np.take(values, order) if order is not None else np.array(values))  # a copy: writable


def _numeric(column: pa.ChunkedArray, name: str) -> np.ndarray:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)):
        raise StreamError(f"column {name!r} is {column.type}, not numeric: pass a transform (e.g. a fitted "
                          "preprocessor) that encodes it.")
    return column.to_numpy()  # may be a read-only view of the Arrow buffer: the callers copy


class _BlockReader:
    """Reads blocks (their kept rows) of a plan, naming the file and the row group when that fails."""

    def __init__(self, source: ParquetSource, plan: StreamPlan):
        self.source, self.plan = source, plan
        self.columns = [*source.columns, *([source.target] if source.target is not None else [])]
        self._recent: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()  # row groups sliced into blocks

    def read(self, index: int) -> pa.Table:
        """The kept rows of block `index`, in file order."""
        block = self.plan.blocks[index]
        table = self._row_group(block.file, block.row_group).slice(block.start, block.stop - block.start)
        if self.source.rows is not None:
            path = self.plan.files[block.file]
            table = table.filter(_mask(self.source.rows, block.file, path, block.row_group, block.start, block.stop))
        return table

    def _row_group(self, file: int, group: int) -> pa.Table:
        cached = self._recent.get((file, group))
        if cached is not None:
            return cached
        fragment, path = self.plan.fragments[file], self.plan.files[file]
        try:
            # one reader thread: Arrow decodes the columns on its own threads; several: one thread each is enough
            # (two readers, median of 4 epochs: 7.8 against 6.6 M rows a second; bench/STREAM.md)
            table = fragment.subset(row_group_ids=[group]).to_table(columns=self.columns, schema=self.plan.schema,
                                                                    use_threads=self.source.workers == 1)
        except (OSError, pa.ArrowException) as error:
            raise StreamError(f"{path}: row group {group}: cannot be read ({error}).") from None
        if self.source.transform is None:
            for name in self.columns:
                if table.column(name).null_count:
                    raise StreamError(f"{path}: row group {group}: column {name!r} has "
                                      f"{table.column(name).null_count} missing values; pass a transform that "
                                      "fills them (e.g. a fitted preprocessor).")
        if self.source.block_rows is not None:  # the next block may be another slice of the same row group
            self._recent[(file, group)] = table
            while len(self._recent) > 2:
                self._recent.popitem(last=False)
        return table

    def window_rows(self, window: Window, rows: np.ndarray) -> tuple[list[tuple[int, pa.Table]], np.ndarray]:
        """Rows `rows` of `window` (distinct indices into its blocks' kept rows), reading only the blocks
        they are in: `(block, table)` of each block's wanted rows in file order, and the index of each of
        `rows` in their concatenation. Arrow keeps the file order (a sorted take, or none when a block's
        rows are all wanted); the caller gathers the delivery order once, on the converted tensors."""
        if len(rows) == window.rows:  # the whole window (one process): no take
            return [(i, self.read(i)) for i in window.blocks], rows
        by_file = np.argsort(rows, kind="stable")
        wanted = rows[by_file]
        bounds = np.cumsum([0] + [self.plan.blocks[i].kept for i in window.blocks])
        cuts = np.searchsorted(wanted, bounds)  # wanted[cuts[m]:cuts[m + 1]] are in block m
        parts = []
        for member, block in enumerate(window.blocks):
            if cuts[member + 1] > cuts[member]:
                table = self.read(block)
                local = wanted[cuts[member]: cuts[member + 1]] - bounds[member]
                parts.append((block, table if len(local) == table.num_rows else table.take(pa.array(local))))
        order = np.empty(len(rows), dtype=np.int64)
        order[by_file] = np.arange(len(rows))
        return parts, order


class _prefetched:
    """`with _prefetched(jobs, depth, workers) as ready:` runs the `jobs` (callables) on `workers` background
    threads, at most `max(depth, workers) + 1` ahead of the one being consumed, and yields their results in the
    jobs' order (depth 0: each job in this thread, when its result is wanted). A job's error is raised
    where its result would have been yielded. The threads stop when the block ends, however it ends: the
    jobs not started are cancelled and the running ones finish."""

    def __init__(self, jobs: Iterator[Callable[[], Any]], depth: int, workers: int = 1):
        self.jobs, self.depth, self.workers = jobs, depth, max(1, workers)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __enter__(self) -> Iterator[Any]:
        if self.depth == 0:
            return (job() for job in self.jobs)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="fitloop-stream-reader")
        return self._consume(self._pool)

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _consume(self, pool: concurrent.futures.ThreadPoolExecutor) -> Iterator[Any]:
        ahead: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
        jobs = iter(self.jobs)
        while True:
            while len(ahead) < max(self.depth, self.workers) + 1:
                job = next(jobs, None)
                if job is None:
                    break
                ahead.append(pool.submit(job))
            if not ahead:
                return
            yield ahead.popleft().result()
