"""Batches of in-memory data for one rank of a distributed run, and the DataLoader path's sampler.

**In-memory data** (`ShardedBatches`): every rank draws the same seeded permutation of all `n` rows per
epoch (the Trainer's generator is seeded alike on every rank). The epoch is cut into *global batches* of
`G = batch_size * world` rows, exactly as one process with `batch_size=G` would cut it, and each global
batch is split between the ranks in rank order. The uneven-tail rule: a global batch of `m` rows gives
each rank `m // world` rows and the first `m % world` ranks one more, so every row is used exactly once
per epoch (no padding, no duplicates); a rank may get no row of the epoch's last batch. The training
step weights each rank's mean loss by `rows * world / m` (`global_rows`), so DDP's average of the ranks'
gradients is the gradient of the global batch's mean loss: the same update as one process. A rank whose
share is empty runs the step on one real row with weight 0 (`filler`), so that it still joins DDP's
all-reduce. Evaluation uses the same layout without shuffling, and `gather` puts every rank's outputs
back together in the original row order.

**Datasets and DataLoaders** (`DistributedEpochSampler`): torch's `DistributedSampler` (its rule: the
epoch is padded by repeating samples so every rank has as many), with `set_epoch` called with a key drawn
from the Trainer's generator, so the order is seeded and a mid-epoch resume replays it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from ..distributed.group import Collective
from .gather import gather_rows

__all__ = ["ShardedBatches", "DistributedEpochSampler", "shard_bounds"]


def shard_bounds(m: int, rank: int, world: int) -> tuple[int, int]:
    """`(offset, rows)` of `rank`'s part of a global batch of `m` rows: `m // world` rows each, one more
    for the first `m % world` ranks, in rank order."""
    base, extra = divmod(m, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class ShardedBatches:
    """This rank's batches of in-memory tensors (already on the device), from one permutation per epoch.

    Args:
        X: all the rows' inputs (every rank holds them).
        y: all the rows' targets; None for unlabelled data.
        batch_size: rows per process (`None`: the global batch is all rows).
        shuffle: a new permutation every epoch (from the generator passed to `epoch`).
        rank: this process.
        world: the number of processes.
        drop_last: leave out the epoch's last global batch when it is short.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None, batch_size: int | None, shuffle: bool, *,
                 rank: int, world: int, drop_last: bool = False):
        self.X, self.y = X, y
        self.n = len(X)
        self.rank, self.world = rank, world
        self.batch_size = batch_size  # per process (as the docs promise)
        self.global_batch = self.n if batch_size is None else min(batch_size * world, self.n)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.filler = (X[:1], None if y is None else y[:1])
        self._collective = Collective(X.device)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def global_rows(self, i: int) -> int:
        """The rows of global batch `i`, summed over the ranks (the step's loss weights use it)."""
        return min(self.global_batch, self.n - i * self.global_batch)

    def _rows(self, order: torch.Tensor, rank: int) -> tuple[torch.Tensor, list[int]]:
        """`rank`'s row indices for the epoch (in batch order) and the size of each of its batches."""
        G, full = self.global_batch, self.n // self.global_batch
        off, size = shard_bounds(G, rank, self.world)
        parts, sizes = [order[: full * G].view(full, G)[:, off: off + size].reshape(-1)], [size] * full
        if len(self) > full:  # the short last global batch
            t_off, t_size = shard_bounds(self.n - full * G, rank, self.world)
            parts.append(order[full * G + t_off: full * G + t_off + t_size])
            sizes.append(t_size)
        return torch.cat(parts), sizes

    def epoch(self, generator: torch.Generator | None, start: int = 0) -> Iterator[tuple]:
        """Yield this rank's batches of one epoch from batch index `start` on (a batch may have 0 rows)."""
        # the same condition as one process's TensorBatches, so the generator is drawn from alike
        if self.shuffle and self.n > 1 and self.global_batch < self.n:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        idx, sizes = self._rows(order, self.rank)
        idx = idx.to(self.X.device, non_blocking=True)
        X, y = gather_rows(self.X, idx), (None if self.y is None else gather_rows(self.y, idx))  # one per epoch
        pos = sum(sizes[:start])
        for size in sizes[start:]:
            yield X[pos: pos + size], (None if y is None else y[pos: pos + size])
            pos += size

    def gather(self, out: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every rank's evaluation outputs (and targets) together, in the data's row order (no shuffle)."""
        c = self._collective
        order = torch.cat([self._rows(torch.arange(self.n), r)[0] for r in range(self.world)]).to(out.device)
        full = torch.empty((self.n, *out.shape[1:]), dtype=out.dtype, device=out.device)
        full[order] = c.gather_rows(out)
        if y is None:
            return full, None
        ys = torch.empty((self.n, *y.shape[1:]), dtype=y.dtype, device=y.device)
        ys[order.to(y.device)] = c.gather_rows(y)
        return full, ys


class DistributedEpochSampler(DistributedSampler):
    """`DistributedSampler` whose epoch is set from the Trainer's generator, resumable by batch."""

    def __init__(self, dataset: Any, world: int, rank: int, shuffle: bool, drop_last: bool = False):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=0, drop_last=drop_last)
        self.start_index = 0

    def begin_epoch(self, generator: torch.Generator | None, start_index: int) -> None:
        """Draw this epoch's key from `generator` (the same on every rank) and skip `start_index` samples."""
        key = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
        self.set_epoch(key)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index
