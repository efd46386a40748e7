"""Batching for the training loop: both paths are driven by the Trainer's `torch.Generator`.

* **In-memory tensors** (`Split`, or an `(X, y)` pair): the whole set is moved to the training
  device once and each batch is an index slice of a seeded permutation (`TensorBatches`). No
  per-sample Python, no `DataLoader`.
* **A `TensorDataset`, a `Subset` of one, or a `DataLoader` over one with the default collate** (the
  tutorials' data code) is in-memory data too: batched by index on the device like `(X, y)`, honouring
  the loader's `batch_size`, `shuffle` and `drop_last` (the order follows the Trainer's seed).
* **Any other `Dataset` or `DataLoader`**: batches come from a `DataLoader` whose sampler draws its
  permutation from the Trainer's own generator, so the order is seeded and resumable (`LoaderBatches`).
* **A `ParquetSource`** (`fitloop.data.stream`): a table larger than memory, read block by block in a
  seeded global order that does not depend on the number of processes (`StreamBatches`).
* **Several processes** (a process group of more than one rank): in-memory data is sharded per rank by
  `fitloop.data.sharding.ShardedBatches`, the DataLoader path uses a `DistributedSampler`.

The generator state at the start of an epoch plus the index of the next batch is enough to
reproduce the rest of the epoch exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
)

from ..metrics import normalize_task
from .checks import guard_settings, warn
from .gather import gather_rows
from .sharding import DistributedEpochSampler, ShardedBatches
from .splitting import Split
from .stream import ParquetSource, StreamBatches

__all__ = ["TensorBatches", "LoaderBatches", "COPY_LIMIT", "make_batches", "prepare_target", "in_memory", "Batches"]


class TensorBatches:
    """Batches of in-memory tensors by index slicing, on the training device.

    The permutation of each epoch is drawn from the Trainer's generator on the CPU (so it is the
    same on every device) and moved to the device once per epoch.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None, batch_size: int | None, shuffle: bool,
                 drop_last: bool = False):
        self.X, self.y = X, y
        self.n = len(X)
        self.batch_size = self.n if batch_size is None else min(batch_size, self.n)
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    world = 1  # one process (ShardedBatches is the several-process kind)

    def global_rows(self, i: int) -> int:
        """The rows of batch `i` (the accumulation shares use it)."""
        return min(self.batch_size, self.n - i * self.batch_size)

    def epoch(self, generator: torch.Generator | None, start: int = 0) -> Iterator[tuple]:
        """Yield the batches of one epoch from batch index `start` on.

        When shuffling, the epoch's rows are gathered once into a shuffled copy and each batch is a
        contiguous slice of it (a view): two gathers per epoch instead of two per step. Batch `i`
        holds exactly the rows `perm[i*b:(i+1)*b]` either way. Above `COPY_LIMIT` bytes the copy
        would cost too much memory, and each batch is gathered on its own.
        """
        b, X, y = self.batch_size, self.X, self.y
        if self.shuffle and self.n > 1 and b < self.n:
            perm = torch.randperm(self.n, generator=generator).to(X.device, non_blocking=True)
            nbytes = X.nbytes + (0 if y is None else y.nbytes)
            if nbytes <= COPY_LIMIT:
                perm = perm[start * b:]  # resuming mid-epoch: only the rows still to come
                X, y = gather_rows(X, perm), (None if y is None else gather_rows(y, perm))
                for i in range(0, len(self) - start):
                    yield X[i * b: (i + 1) * b], (None if y is None else y[i * b: (i + 1) * b])
                return
            for i in range(start, len(self)):
                idx = perm[i * b: (i + 1) * b]
                yield gather_rows(X, idx), (None if y is None else gather_rows(y, idx))
        else:  # no shuffle, or one full batch (its row order does not change the step)
            for i in range(start, len(self)):
                yield X[i * b: (i + 1) * b], (None if y is None else y[i * b: (i + 1) * b])


# Data up to this size is shuffled as one copy per epoch (see TensorBatches.epoch).
COPY_LIMIT = 512 * 2**20


class _EpochSampler(Sampler[int]):
    """Index sampler for the DataLoader path: a seeded permutation per epoch, resumable by batch."""

    def __init__(self, n: int, shuffle: bool):
        self.n, self.shuffle = n, shuffle
        self.generator: torch.Generator | None = None
        self.start_index = 0

    def __len__(self) -> int:
        return self.n - self.start_index

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        return iter(order[self.start_index:].tolist())


class LoaderBatches:
    """Batches from any `Dataset` through a `DataLoader` whose order the Trainer controls.

    A user's own `DataLoader` is used as it is; then the data order is the loader's business and
    resuming mid-epoch skips the batches already seen. Batches are yielded as `(x, y)` on
    `device` (`y` None when the dataset yields bare tensors).
    """

    def __init__(self, data: Any, batch_size: int | None, shuffle: bool, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = False, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1):
        self.device = torch.device(device)
        self.sampler: _EpochSampler | DistributedEpochSampler | None
        if world > 1:  # every rank its share of the dataset (a user's loader: rebuilt around its dataset)
            loader = data if isinstance(data, DataLoader) else None
            if loader is not None and loader.batch_size is None:
                raise ValueError("data: a DataLoader with its own batch_sampler cannot be sharded over the "
                                 "processes; pass its Dataset (and batch_size=), or shard it yourself.")
            if loader is not None and not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
                raise ValueError(f"data: a DataLoader with its own sampler ({type(loader.sampler).__name__}) cannot "
                                 "be sharded over the processes (each rank would need its part of that "
                                 "sampler's order); pass a DataLoader with shuffle=True/False, or give each "
                                 "rank its own sampler and DataLoader yourself.")
            ds: Any = loader.dataset if loader is not None else data
            shuffle = isinstance(loader.sampler, RandomSampler) if loader is not None else shuffle
            self.sampler = DistributedEpochSampler(ds, world, rank, shuffle)
            self.loader = DataLoader(ds, batch_size=loader.batch_size if loader is not None else
                                     (len(ds) if batch_size is None else batch_size), sampler=self.sampler,
                                     num_workers=num_workers if loader is None else loader.num_workers,
                                     collate_fn=None if loader is None else loader.collate_fn,
                                     pin_memory=pin_memory, drop_last=drop_last if loader is None else loader.drop_last,
                                     generator=torch.Generator())
        elif isinstance(data, DataLoader):
            self.loader, self.sampler = data, None
        else:
            n = len(data)
            self.sampler = _EpochSampler(n, shuffle)
            self.loader = DataLoader(data, batch_size=n if batch_size is None else batch_size,
                                     sampler=self.sampler, num_workers=num_workers,
                                     pin_memory=pin_memory, drop_last=drop_last,
                                     persistent_workers=False,
                                     generator=torch.Generator())
        self._len = len(self.loader)

    def __len__(self) -> int:
        return self._len

    def epoch(self, generator: torch.Generator | None, start: int = 0) -> Iterator[tuple]:
        """Yield the batches of one epoch from batch index `start` on, as `(x, y)` on the device."""
        for batch in self._epoch(generator, start):
            yield self._to_device(batch)

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True), None
        if isinstance(batch, (tuple, list)):
            x = batch[0].to(self.device, non_blocking=True)
            y = batch[1].to(self.device, non_blocking=True) if len(batch) > 1 else None
            return x, y
        raise TypeError(f"batch: expected a tensor or an (x, y) tuple from the DataLoader, got "
                        f"{type(batch).__name__}; override Trainer.train_step for other batch types.")

    def _epoch(self, generator: torch.Generator | None, start: int) -> Iterator[Any]:
        if self.sampler is None:  # user-built loader: skip what was already seen
            it = iter(self.loader)
            for _ in range(start):
                next(it)
            yield from it
            return
        if isinstance(self.sampler, DistributedEpochSampler):
            self.sampler.begin_epoch(generator, start * (self.loader.batch_size or 1))
        else:
            self.sampler.generator = generator
        if generator is not None:
            # The DataLoader draws its workers' base seed from its own generator; seed that from the
            # epoch's start state so it never consumes the global RNG (which dropout uses) and a
            # mid-epoch resume sees the same seed.
            digest = hashlib.sha256(generator.get_state().numpy().tobytes()).digest()
            epoch_seed = int.from_bytes(digest[:8], "little")
            self.loader.generator.manual_seed(epoch_seed & (2**63 - 1))
        if isinstance(self.sampler, _EpochSampler):
            self.sampler.start_index = start * (self.loader.batch_size or 1)
        yield from self.loader
        self.sampler.start_index = 0


Batches = TensorBatches | ShardedBatches | LoaderBatches | StreamBatches  # what a Trainer iterates over


def make_batches(data: Any, *, train: bool, batch_size: int | None, shuffle: bool, device: torch.device,
                 float_dtype: torch.dtype = torch.float32, task: str | None = None,
                 num_workers: int = 0, split: str = "data", guards: dict[str, Any] | bool = True) -> Batches:
    """The batch source for `data`, which yields `(x, y)` on `device` (`y` None when unlabelled).

    In-memory data (`(X, y)`, a `Split`, a `TensorDataset`, a `Subset` of one or a default-collate
    `DataLoader` over one) goes to the device once, float features in `float_dtype` and targets in the
    dtype `task`'s loss expects (`prepare_target`; `split` names the data in its messages; `guards`, a
    `TrainConfig.guards`, switches its float-class-target warning off with `{"class_targets": False}`), and is
    batched by index slicing; a loader's `batch_size`, `shuffle` and `drop_last` replace the given ones.
    Other `Dataset`s and `DataLoader`s go through a DataLoader. Evaluation (`train=False`) uses bigger
    batches and never shuffles. In a process group of several ranks, each rank gets its shard
    (`fitloop.data.sharding`); `batch_size` is per process.
    """
    if isinstance(data, ParquetSource):  # streamed: read block by block (fitloop.data.stream)
        rank, world = _ranks()
        warn_floats = bool(guard_settings(guards)["class_targets"])
        return data.batches(train=train, batch_size=batch_size, shuffle=shuffle, device=device,
                            float_dtype=float_dtype, rank=rank, world=world,
                            prepare=None if task is None else
                            lambda y: prepare_target(y, task, float_dtype, split, warn_floats=warn_floats))
    drop_last = False
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = Split(data[0], data[1])
    memory = in_memory(data)
    if memory is not None:
        data, opts = memory
        batch_size, shuffle, drop_last = opts.get("batch_size", batch_size), opts.get("shuffle", shuffle), \
            opts.get("drop_last", False)
    if isinstance(data, Split):
        n = len(data)
    elif isinstance(data, (Dataset, DataLoader)):
        n = len(data.dataset if isinstance(data, DataLoader) else data)  # type: ignore[arg-type]
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        raise TypeError("data: got a bare tensor/array; pass (X, y), a Split from fl.split, or a Dataset.")
    else:
        raise TypeError(f"data: expected (X, y), a Split, a Dataset or a DataLoader, got {type(data).__name__}.")
    if n == 0:
        raise ValueError("data: the dataset is empty (0 rows); nothing to train or evaluate on.")
    # evaluation has no backward pass: bigger batches are fine, bounded to keep memory modest
    bs = batch_size if train or batch_size is None else max(batch_size, min(n, 8192))
    rank, world = _ranks()
    if isinstance(data, Split):
        X = data.X.to(device)
        warn_floats = bool(guard_settings(guards)["class_targets"])
        y = data.y if data.y is None or task is None else prepare_target(data.y, task, float_dtype, split,
                                                                         warn_floats=warn_floats)
        if X.is_floating_point():
            X = X.to(float_dtype)
        y = None if y is None else y.to(device)
        if world > 1:
            return ShardedBatches(X, y, bs, shuffle=train and shuffle, rank=rank, world=world,
                                  drop_last=train and drop_last)
        return TensorBatches(X, y, bs, shuffle=train and shuffle, drop_last=train and drop_last)
    return LoaderBatches(data, bs, shuffle=train and shuffle, num_workers=num_workers,
                         pin_memory=device.type == "cuda", device=device,
                         rank=rank, world=world if train else 1)  # evaluation: every rank sees everything


def _ranks() -> tuple[int, int]:
    """`(rank, world)` of the process group, `(0, 1)` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def in_memory(data: Any) -> tuple[Split, dict[str, Any]] | None:
    """`data` as in-memory tensors when it is a `TensorDataset` (of X, or X and y), a `Subset` of one, or a
    `DataLoader` over one with the default collate and a plain sequential/random sampler; with the
    loader's `batch_size`, `shuffle` and `drop_last`. None for anything else (it goes through a DataLoader).
    """
    opts: dict[str, Any] = {}
    if isinstance(data, DataLoader):
        sampler = data.sampler
        plain = type(sampler) is SequentialSampler or (type(sampler) is RandomSampler and not sampler.replacement
                                                       and sampler.num_samples == len(sampler.data_source))
        if data.collate_fn is not default_collate or data.batch_size is None or not plain \
                or type(data.batch_sampler) is not BatchSampler:
            return None
        opts = {"batch_size": data.batch_size, "shuffle": type(sampler) is RandomSampler, "drop_last": data.drop_last}
        data = data.dataset
    index: torch.Tensor | None = None
    while isinstance(data, Subset) and not isinstance(data, Split):
        idx = torch.as_tensor(data.indices, dtype=torch.long)
        index = idx if index is None else idx[index]
        data = data.dataset
    if isinstance(data, Split) and not opts and index is None:
        return None  # already in memory
    if isinstance(data, Split):
        X, y = data.X, data.y
    elif isinstance(data, TensorDataset) and len(data.tensors) in (1, 2):
        X, y = data.tensors[0], (data.tensors[1] if len(data.tensors) == 2 else None)
    else:
        return None
    if index is not None:
        X, y = X[index], (None if y is None else y[index])
    return Split(X, y), opts


def prepare_target(y: torch.Tensor, task: str, float_dtype: torch.dtype = torch.float32,
                   split: str = "data", *, warn_floats: bool = True) -> torch.Tensor:
    """Targets in the dtype the loss expects, converted once (not per step): class indices as
    int64 for cross-entropy, floats for regression and binary targets.

    Float class targets (`split` names the data in messages: `"train"`, `"val"`): whole numbers are
    converted to int64 with a `GuardWarning` (once per split, under Python's default warning filter; none
    with `warn_floats=False`, the `class_targets` guard switched off);
    fractional or non-finite values raise a `ValueError` naming the split, the rows and the values."""
    kind = normalize_task(task, 2)
    if kind == "multiclass" and y.is_floating_point() and y.ndim == 1:
        if not torch.equal(y, y.round()):
            bad = torch.nonzero(y != y.round()).flatten()[:5].cpu()  # an error path: the sync is fine
            values = ", ".join(f"{v:g}" for v in y.cpu()[bad].tolist())
            raise ValueError(f"{split} y: cross-entropy needs class indices (0..C-1) but y has fractional values "
                             f"(rows {', '.join(map(str, bad.tolist()))}: {values}); "
                             "use a regression loss, or pass integer labels.")
        if warn_floats:
            warn(f"{split} y: the class targets are floats ({y.dtype}); their whole values were converted to class "
                 "indices (int64) for cross-entropy. Pass integer labels (y.long()) to make this explicit, or use "
                 "a regression loss if y is a quantity. (guards={'class_targets': False} switches this off.)")
        return y.long()
    if kind in ("regression", "binary") and not y.is_floating_point():
        return y.to(float_dtype)
    return y
