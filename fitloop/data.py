"""Data: seeded train/validation/test splits and fast batching.

Two paths feed the training loop:

* **In-memory tensors** (`Split`, or an `(X, y)` pair): the whole set is moved to the training
  device once and each batch is an index slice of a seeded permutation. No per-sample Python,
  no `DataLoader`.
* **Any `Dataset` or `DataLoader`**: batches come from a `DataLoader` whose sampler draws its
  permutation from the Trainer's own generator, so the order is seeded and resumable.

Both paths are driven by the Trainer's `torch.Generator`: the state at the start of an epoch plus
the index of the next batch is enough to reproduce the rest of the epoch exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["Split", "split", "as_tensor"]


def as_tensor(a, name: str) -> torch.Tensor:
    """Turn a NumPy array, a list or a tensor into a tensor, without copying when possible.

    Float64 arrays become float32 (models are float32 by default); integer arrays stay integer.
    """
    if isinstance(a, torch.Tensor):
        t = a
    elif isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{name}: got a NumPy array of dtype object; convert it to numbers first "
                            f"(for example {name}.astype('float32')).")
        t = torch.from_numpy(np.ascontiguousarray(a))
    elif isinstance(a, (list, tuple)):
        t = torch.as_tensor(np.asarray(a))
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or a NumPy array, got {type(a).__name__}.")
    if t.dtype == torch.float64:
        t = t.float()
    return t


class Split(Dataset):
    """One part of a split: features `X`, targets `y` and the row `indices` it came from.

    It is a `torch.utils.data.Dataset`, so it also works with any `DataLoader`, but the Trainer
    batches it by index slicing on the device.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None, indices: torch.Tensor | None = None,
                 name: str = "data"):
        X = as_tensor(X, "X")
        y = None if y is None else as_tensor(y, "y")
        if y is not None and len(X) != len(y):
            raise ValueError(f"X and y have different lengths: len(X)={len(X)}, len(y)={len(y)}. "
                             "Pass one target per row.")
        self.X, self.y, self.name = X, y, name
        self.indices = torch.arange(len(X)) if indices is None else torch.as_tensor(indices)

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i):
        return (self.X[i], self.y[i]) if self.y is not None else self.X[i]

    def __repr__(self) -> str:
        ys = "" if self.y is None else f", y={tuple(self.y.shape)} {self.y.dtype}"
        return f"Split({self.name}: X={tuple(self.X.shape)} {self.X.dtype}{ys})"


class _DatasetPart(torch.utils.data.Subset):
    """A `Subset` that remembers which part of the split it is."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], name: str):
        super().__init__(dataset, indices)
        self.name = name

    def __repr__(self) -> str:
        return f"Subset({self.name}: {len(self)} rows)"


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) not in (2, 3):
        raise ValueError(f"fractions: expected 2 or 3 numbers (train, val[, test]), got {fractions!r}.")
    if any(f < 0 for f in fr) or fr[0] <= 0:
        raise ValueError(f"fractions: got {fractions!r}; each must be >= 0 and the train fraction > 0.")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fr):.6g}). "
                         "For example fractions=(0.7, 0.15, 0.15).")
    return fr


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Rows per part: largest-remainder rounding, train takes what is left, every non-zero part >= 1."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):  # a requested part never comes out empty when rows allow
        if f > 0 and counts[i] == 0 and n > sum(1 for g in fractions if g > 0):
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _split_indices(n: int, fractions, seed: int, labels: torch.Tensor | None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=gen)
        bounds = np.cumsum([0, *_counts(n, fractions)])
        return [perm[bounds[i]: bounds[i + 1]] for i in range(len(fractions))]
    # Stratified: split each class by the fractions, then shuffle each part.
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        bounds = np.cumsum([0, *_counts(len(idx), fractions)])
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i]: bounds[i + 1]])
    out = []
    for p in parts:
        cat = torch.cat(p)
        out.append(cat[torch.randperm(len(cat), generator=gen)])
    return out


def split(X, y=None, *, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
          stratify=None) -> tuple:
    """Split data into train/validation/test parts: seeded, reproducible and disjoint.

    Args:
        X: features as a tensor or NumPy array, or one `torch.utils.data.Dataset` (then `y` is None).
        y: targets, one per row of `X`.
        fractions: `(train, val, test)` or `(train, test)`; they sum to 1. A zero fraction gives
            `None` for that part (for example no validation set).
        seed: seed of the split's own generator; the same seed gives the same rows.
        stratify: `True` to keep class proportions of `y` in every part (classification), or an
            array of labels to stratify on; `None` for a plain random split.

    Returns:
        A tuple with one entry per fraction: `Split` objects (tensors `X`, `y` and the original row
        `indices`) for array input, `torch.utils.data.Subset` objects (with `.indices`) for a Dataset.

    Raises:
        ValueError: fractions that don't sum to 1, X and y of different lengths, empty data.

    Example:
        >>> train, val, test = fl.split(X, y, fractions=(0.7, 0.15, 0.15), seed=0)
        >>> train.indices[:5]  # which original rows are training rows
    """
    fr = _check_fractions(fractions)
    names = ("train", "val", "test") if len(fr) == 3 else ("train", "test")
    if isinstance(X, Dataset) and not isinstance(X, Split):
        if y is not None:
            raise TypeError("y: pass either a Dataset alone or (X, y) arrays, not both.")
        n = len(X)  # type: ignore[arg-type]
        labels = _stratify_labels(stratify, None, n)
    else:
        if isinstance(X, Split):
            X, y = X.X, X.y
        X = as_tensor(X, "X")
        if y is not None:
            y = as_tensor(y, "y")
            if len(X) != len(y):
                raise ValueError(f"X and y have different lengths: len(X)={len(X)}, len(y)={len(y)}. "
                                 "Pass one target per row.")
        n = len(X)
        labels = _stratify_labels(stratify, y, n)
    if n == 0:
        raise ValueError("split: the data is empty (0 rows). Check how X was loaded or filtered.")
    parts = _split_indices(n, fr, seed, labels)
    out = []
    for name, f, idx in zip(names, fr, parts):
        if f == 0:
            out.append(None)
        elif isinstance(X, Dataset):
            out.append(_DatasetPart(X, idx.tolist(), name))
        else:
            out.append(Split(X[idx], None if y is None else y[idx], idx, name))
    return tuple(out)


def _stratify_labels(stratify, y, n: int) -> torch.Tensor | None:
    if stratify is None or stratify is False:
        return None
    if stratify is True:
        if y is None:
            raise ValueError("stratify=True needs y (class labels); pass stratify=labels for a Dataset.")
        labels = y
    else:
        labels = as_tensor(stratify, "stratify")
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"stratify: expected one class label per row ({n}), got shape {tuple(labels.shape)}.")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("stratify: labels look continuous (regression target); stratify only by classes.")
    return labels


# --------------------------------------------------------------------------- batching


@dataclass
class EpochOrder:
    """Where the data order of an epoch comes from: the generator state at its start and the
    index of the next batch. Saved in checkpoints for exact resume."""

    generator_state: torch.Tensor
    next_batch: int = 0


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
                X, y = X[perm], (None if y is None else y[perm])
                for i in range(0, len(self) - start):
                    yield X[i * b: (i + 1) * b], (None if y is None else y[i * b: (i + 1) * b])
                return
            for i in range(start, len(self)):
                idx = perm[i * b: (i + 1) * b]
                yield X[idx], (None if y is None else y[idx])
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
    resuming mid-epoch skips the batches already seen.
    """

    def __init__(self, data, batch_size: int | None, shuffle: bool, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = False):
        if isinstance(data, DataLoader):
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

    def epoch(self, generator: torch.Generator | None, start: int = 0) -> Iterator:
        if self.sampler is None:  # user-built loader: skip what was already seen
            it = iter(self.loader)
            for _ in range(start):
                next(it)
            yield from it
            return
        self.sampler.generator = generator
        if generator is not None:
            # The DataLoader draws its workers' base seed from its own generator; seed that from the
            # epoch's start state so it never consumes the global RNG (which dropout uses) and a
            # mid-epoch resume sees the same seed.
            digest = hashlib.sha256(generator.get_state().numpy().tobytes()).digest()
            epoch_seed = int.from_bytes(digest[:8], "little")
            self.loader.generator.manual_seed(epoch_seed & (2**63 - 1))
        self.sampler.start_index = start * self.loader.batch_size
        yield from self.loader
        self.sampler.start_index = 0
