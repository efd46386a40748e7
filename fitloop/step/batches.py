"""What the step and evaluation need of a batch source, as `typing.Protocol`s.

`fitloop.data` has three batch sources (`TensorBatches`, `ShardedBatches`, `LoaderBatches`); the step and
evaluation depend only on these structural types, not on the classes. The narrower protocols are
`runtime_checkable`, so code asks `isinstance(batches, RowCountedBatches)` instead of probing attributes
one `getattr` at a time: a source has the whole set of members or is treated as having none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

__all__ = ["BatchSource", "RowCountedBatches", "ShardedBatchSource"]


@runtime_checkable
class BatchSource(Protocol):
    """Any batch source: its number of batches per epoch, and the epoch's `(x, y)` batches (`y` None for
    unlabelled data) from batch `start` on, in the order `generator` draws (None: the data's order)."""

    def __len__(self) -> int: ...

    def epoch(self, generator: torch.Generator | None, start: int = 0) -> Iterator[tuple]: ...


@runtime_checkable
class RowCountedBatches(BatchSource, Protocol):
    """In-memory batches, whose sizes are known before the epoch (`TensorBatches`, `ShardedBatches`): the
    accumulation shares and the ranks' loss weights come from them. Loaders are not: their batches are
    assumed equal."""

    world: int
    """The number of processes the global batches are split over (1: one process)."""

    def global_rows(self, i: int) -> int:
        """The rows of global batch `i`, summed over the processes."""
        ...


@runtime_checkable
class ShardedBatchSource(RowCountedBatches, Protocol):
    """One rank's share of in-memory batches (`fitloop.data.sharding.ShardedBatches`)."""

    filler: tuple[torch.Tensor, torch.Tensor | None]
    """One real row, run with weight 0 when this rank's share of a batch is empty (it must still join the
    gradient all-reduce)."""

    def gather(self, out: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every rank's evaluation outputs (and targets), in the data's row order."""
        ...
