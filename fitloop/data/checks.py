"""Checks on data, as plain functions (no Trainer): class targets, feature scales, leakage between splits,
loss shapes against targets, and the `GuardWarning` they give. `fl.split`, the batch makers and `fitloop
train` call them directly; `fitloop.diagnose` runs them as the guards of a fit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import GUARD_NAMES
from ..distributed import is_main_process
from ..warn import warn_user

__all__ = ["GuardWarning", "check_leakage", "check_loss_shapes", "check_class_targets", "check_scales",
           "guard_settings", "warn", "data_tensors"]

SCALE_RATIO = 100.0  # feature scales further apart than this get the `unscaled` warning
_SHOW = 5  # bad values / rows shown in a message
_REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)


class GuardWarning(UserWarning):
    """A guard found something that is probably a mistake but may be intended."""


def guard_settings(guards: dict[str, Any] | bool) -> dict[str, Any]:
    """Every guard's setting: `True`/`False` (`"warn"`/`"error"` for leakage) from a `TrainConfig.guards`."""
    if isinstance(guards, bool):
        return dict.fromkeys(GUARD_NAMES, guards)
    return {name: guards.get(name, True) for name in GUARD_NAMES}


def warn(message: str) -> None:
    """A `GuardWarning`, from the main process only, shown at the user's line that led to it (`warn_user`)."""
    if is_main_process():
        warn_user(message, GuardWarning)


def _rows(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:_SHOW])
    return shown + (f", ... ({len(idx)} rows)" if len(idx) > _SHOW else "")


def _values(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:_SHOW].tolist())
    return shown + (", ..." if len(values) > _SHOW else "")


# ------------------------------------------------------------------------------- the data as tensors


def data_tensors(data: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`(X, y)` of in-memory data (`(X, y)` pairs, `Split`s); `(None, None)` for Datasets and loaders."""
    if isinstance(getattr(data, "X", None), torch.Tensor) and hasattr(data, "y"):  # a Split
        return data.X, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray)):
        X, y = data
        return torch.as_tensor(X), None if y is None else torch.as_tensor(y)
    return None, None


# ------------------------------------------------------------------------------------- the checks


def check_loss_shapes(loss_fn: Any, out_shape: tuple[int, ...], y_shape: tuple[int, ...], rows: int) -> None:
    """Raise for an output and a target the built-in loss cannot match (they would broadcast, or fail deep
    in torch). Matched, as `Trainer.compute_loss` does: equal shapes, and shapes with the same number of
    elements such as (N, 1) against (N,). Custom loss callables are not checked.

    Raises:
        ValueError: naming both shapes (with the full row count) and the fix.
    """
    out_s, y_s = (rows, *out_shape[1:]), (rows, *y_shape[1:])
    if isinstance(loss_fn, (*_REGRESSION_LOSSES, nn.BCEWithLogitsLoss)):
        if out_shape == y_shape or math.prod(out_shape) == math.prod(y_shape):
            return
        want = y_s[1] if len(y_s) > 1 else 1
        raise ValueError(f"loss: the model's output has shape {out_s} but the target has shape {y_s}; "
                         f"{type(loss_fn).__name__} cannot match them (they would broadcast or fail). Make the "
                         f"model return {want} value(s) per row (out_features={want}), or reshape y. "
                         "(Switch this check off with guards={'loss_shapes': False}.)")
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        if len(out_shape) < 2:
            raise ValueError(f"loss: {type(loss_fn).__name__} needs an output of shape (N, classes), got {out_s}; "
                             "give the model one output per class (out_features = number of classes).")
        if len(y_shape) == len(out_shape) and y_shape != out_shape:
            raise ValueError(f"loss: the model's output has shape {out_s} but the target (class probabilities) "
                             f"has shape {y_s}; they must match, or pass class indices of shape ({rows},).")
        if len(y_shape) not in (len(out_shape), len(out_shape) - 1) or (
                len(y_shape) == len(out_shape) - 1 and y_shape[1:] != out_shape[2:]):
            raise ValueError(f"loss: the model's output has shape {out_s} but the target has shape {y_s}; "
                             f"{type(loss_fn).__name__} needs class indices of shape ({rows},) for an output "
                             f"of shape ({rows}, classes).")


def check_class_targets(y: torch.Tensor, task: str, n_outputs: int | None, *, where: str = "y") -> None:
    """Class targets checked on the host: the same message on every device, before any kernel asserts.

    Args:
        y: the targets (any device; copied to the CPU).
        task: `"multiclass"` (class indices 0..C-1) or `"binary"` (0/1, or probabilities in [0, 1]).
        n_outputs: the model's number of outputs (C), when known.
        where: the name used in messages (`"train y"`, `"val y"`).

    Raises:
        ValueError: fractional or non-finite labels, negative labels, labels >= `n_outputs`, binary
            targets outside [0, 1]; with the bad values and their row positions.
    """
    yc = y.detach().cpu()
    if task == "binary":
        flat = yc.reshape(len(yc), -1).double()
        bad = torch.nonzero(~((flat >= 0) & (flat <= 1)).all(dim=1)).flatten().numpy()
        if len(bad):
            vals = flat[torch.as_tensor(bad)].flatten()
            raise ValueError(f"{where}: binary targets must be 0/1 (or probabilities in [0, 1]) for "
                             f"bce_with_logits, but rows {_rows(bad)} hold {_values(vals.numpy())}. For more "
                             "than two classes use loss='cross_entropy' with class indices.")
        return
    if yc.ndim != 1:  # class probabilities (N, C): the shape check covers them
        return
    if yc.is_floating_point():
        bad = torch.nonzero(~torch.isfinite(yc) | (yc != yc.round())).flatten().numpy()
        if len(bad):
            raise ValueError(f"{where}: cross-entropy expects class indices (whole numbers 0..C-1), but it is "
                             f"float and rows {_rows(bad)} hold {_values(yc[torch.as_tensor(bad)].numpy())}. "
                             "Pass integer labels (y.long()), or use a regression loss such as 'mse'.")
    labels = yc.long()
    bad = torch.nonzero(labels < 0).flatten().numpy()
    if len(bad):
        raise ValueError(f"{where}: class labels must be >= 0, but rows {_rows(bad)} hold "
                         f"{_values(labels[torch.as_tensor(bad)].numpy())}. Map the labels to 0..C-1 first "
                         "(e.g. with np.unique(y, return_inverse=True)).")
    if n_outputs is None or len(labels) == 0:
        return
    bad = torch.nonzero(labels >= n_outputs).flatten().numpy()
    if len(bad):
        raise ValueError(f"{where}: the model has {n_outputs} outputs (classes 0..{n_outputs - 1}), but rows "
                         f"{_rows(bad)} hold labels {_values(labels[torch.as_tensor(bad)].numpy())}. Give the "
                         f"model out_features={int(labels.max()) + 1} (one per class), or map the labels to "
                         f"0..{n_outputs - 1}.")


def check_scales(X: torch.Tensor, ratio: float = SCALE_RATIO) -> str | None:
    """The `unscaled` warning's text when float feature columns' scales (root mean square, which sees an
    offset as well as a spread) differ by more than `ratio`; None when they don't (or X has one column)."""
    if not X.is_floating_point() or X.ndim != 2 or X.shape[1] < 2 or len(X) == 0:
        return None
    rms = X.detach().double().pow(2).mean(dim=0).sqrt().cpu()
    live = torch.nonzero(torch.isfinite(rms) & (rms > 0)).flatten()
    if len(live) < 2:
        return None
    lo, hi = live[rms[live].argmin()], live[rms[live].argmax()]
    if rms[hi] <= ratio * rms[lo]:
        return None
    return (f"inputs: feature scales differ by {float(rms[hi] / rms[lo]):.0f}x (column {int(hi)}: "
            f"{float(rms[hi]):.3g}, column {int(lo)}: {float(rms[lo]):.3g}, root mean square). Unscaled inputs "
            "make the gradient of one weight dwarf the others, so one lr is too big for some and too small for "
            "the rest. Standardise each column with the training rows' mean and std ((X - mean) / std; "
            "fl.Preprocessor or sklearn's StandardScaler do it), or pass guards={'unscaled': False}.")


def _row_keys(X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its bytes as one key (-0.0 as 0.0), for exact comparison, and a 64-bit hash of them, so that
    finding shared rows is a fast integer search (0.2 s for a million rows) with only the hash matches
    compared exactly."""
    a = X.detach().cpu().reshape(len(X), -1)
    if a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()  # NumPy has no bfloat16
    if a.is_floating_point():
        a = a + 0.0  # -0.0 + 0.0 == 0.0: equal numbers get equal bytes
    arr = np.ascontiguousarray(a.numpy())
    raw = arr.view(np.uint8).reshape(len(arr), -1)
    if raw.shape[1] % 8:
        raw = np.pad(raw, ((0, 0), (0, 8 - raw.shape[1] % 8)))
    words = np.ascontiguousarray(raw).view(np.uint64)
    mult = np.random.default_rng(words.shape[1]).integers(1, 2 ** 63, size=words.shape[1], dtype=np.uint64) | 1
    hashes = (words * mult).sum(axis=1, dtype=np.uint64)  # wraps modulo 2**64, as a hash should
    return arr.view(np.dtype((np.void, arr.dtype.itemsize * arr.shape[1]))).ravel(), hashes


def _member(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """`np.isin(values, pool)` by one sort and a binary search (several times faster than isin here)."""
    if len(pool) == 0:
        return np.zeros(len(values), dtype=bool)
    pool = np.sort(pool)
    idx = np.minimum(np.searchsorted(pool, values), len(pool) - 1)
    return pool[idx] == values


def _shared(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Rows of `b` equal to some row of `a`: hashes first, the few hash matches compared exactly."""
    cand = _member(b[1], a[1])
    if not cand.any():
        return 0
    return int(np.isin(b[0][cand], a[0][_member(a[1], b[1][cand])]).sum())


def check_leakage(parts: dict[str, Any], mode: str | bool = "warn") -> dict[tuple[str, str], int]:
    """Count the rows of X that appear, identical, in more than one part (train/val/test). Parts of different
    dtypes are compared in the narrowest float dtype among them (float64 train against float32 val: as
    float32), so a copy kept at lower precision still counts.

    Args:
        parts: part name -> `(X, y)`, a `Split` or an X tensor/array; `None` parts are skipped.
        mode: `"warn"` (or True) for a `GuardWarning`, `"error"` to raise, False to only count.

    Returns:
        `{(part_a, part_b): rows of part_b whose X also occurs in part_a}` for the pairs that share rows.

    Raises:
        ValueError: with `mode="error"`, when any rows are shared.
    """
    if not any(mode is m for m in (True, False)) and mode not in ("warn", "error"):
        raise ValueError(f"leakage: got {mode!r}; choose 'warn', 'error' or False.")
    tensors = {}
    for name, data in parts.items():
        if data is None:
            continue
        X = torch.as_tensor(data) if isinstance(data, (torch.Tensor, np.ndarray)) else data_tensors(data)[0]
        if X is not None and len(X):
            tensors[name] = X
    # one dtype for every part, so that a float64 train row and its float32 copy in val compare equal: the
    # narrowest float dtype among them (the precision the copy kept), else int64 (exact for integers)
    floats = [X.dtype for X in tensors.values() if X.is_floating_point()]
    common = min(floats, key=lambda d: d.itemsize) if floats else torch.int64
    keys = {name: _row_keys(X.to(common)) for name, X in tensors.items()}
    names = list(keys)
    found: dict[tuple[str, str], int] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if keys[a][0].dtype != keys[b][0].dtype:  # different column counts: no row can be shared
                continue
            n = _shared(keys[a], keys[b])
            if n:
                found[(a, b)] = n
    if found and mode:
        sizes = {n: len(k[0]) for n, k in keys.items()}
        counts = "; ".join(f"{n} of {sizes[b]} {b} rows also occur in {a}" for (a, b), n in found.items())
        msg = (f"leakage: identical input rows in more than one split ({counts}). Held-out scores on rows the "
               "model trained on are optimistic. Remove duplicate rows before splitting (e.g. "
               "np.unique(X, axis=0, return_index=True)), or split by group.")
        if mode == "error":
            raise ValueError(msg)
        warn(msg + " (guards={'leakage': 'error'} makes this an error; False switches it off.)")
    return found
