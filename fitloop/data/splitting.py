"""Seeded train/validation/test splits of tensors, arrays or any `Dataset`.

`split` is the public entry point (`fitloop.split`); `split_indices` is the row-index split itself,
shared with the table pipeline (`fitloop train` splits its rows with it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import check_leakage
from .fractions import check_fractions

__all__ = ["Split", "split", "as_tensor", "split_indices", "split_counts"]


def as_tensor(a: Any, name: str) -> torch.Tensor:
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

    def __getitem__(self, i: Any) -> Any:
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


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
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


def split_indices(n: int, fractions: Sequence[float], seed: int,
                  labels: torch.Tensor | None) -> list[torch.Tensor]:
    """Row indices of each part (one tensor per fraction), from a generator seeded with `seed`.

    With `labels`, each class is split by the fractions on its own (stratified), then each part is
    shuffled. `fractions` are taken as checked (see `check_fractions`).
    """
    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=gen)
        bounds = np.cumsum([0, *split_counts(n, fractions)])
        return [perm[bounds[i]: bounds[i + 1]] for i in range(len(fractions))]
    # Stratified: split each class by the fractions, then shuffle each part.
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        bounds = np.cumsum([0, *split_counts(len(idx), fractions)])
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i]: bounds[i + 1]])
    out = []
    for p in parts:
        cat = torch.cat(p)
        out.append(cat[torch.randperm(len(cat), generator=gen)])
    return out


def split(X: Any, y: Any = None, *, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
          stratify: bool | Any = None, leakage: str | bool = "warn") -> tuple[Any, ...]:
    """Split data into train/validation/test parts: seeded, reproducible and disjoint.

    Args:
        X: features as a tensor or NumPy array, or one `torch.utils.data.Dataset` (then `y` is None).
        y: targets, one per row of `X`.
        fractions: `(train, val, test)` or `(train, test)`; they sum to 1. A zero fraction gives
            `None` for that part (for example no validation set).
        seed: seed of the split's own generator; the same seed gives the same rows.
        stratify: `True` to keep class proportions of `y` in every part (classification), or an
            array of labels to stratify on; `None` for a plain random split.
        leakage: rows of X that occur, identical, in more than one part give a `GuardWarning` with the
            counts (`"warn"`), an error (`"error"`), or nothing (`False`). Array input only.

    Returns:
        A tuple with one entry per fraction: `Split` objects (tensors `X`, `y` and the original row
        `indices`) for array input, `torch.utils.data.Subset` objects (with `.indices`) for a Dataset.

    Raises:
        ValueError: fractions that don't sum to 1, X and y of different lengths, empty data; identical
            rows in two parts with `leakage="error"`.

    Example:
        >>> train, val, test = fl.split(X, y, fractions=(0.7, 0.15, 0.15), seed=0)
        >>> train.indices[:5]  # which original rows are training rows
    """
    fr = check_fractions(fractions)
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
    parts = split_indices(n, fr, seed, labels)
    out: list[Split | _DatasetPart | None] = []
    for name, f, idx in zip(names, fr, parts):
        if f == 0:
            out.append(None)
        elif isinstance(X, Dataset):
            out.append(_DatasetPart(X, idx.tolist(), name))
        else:
            out.append(Split(X[idx], None if y is None else y[idx], idx, name))
    if leakage and not isinstance(X, Dataset):
        check_leakage(dict(zip(names, out)), mode=leakage)
    return tuple(out)


def _stratify_labels(stratify: Any, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
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
