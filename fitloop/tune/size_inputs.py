"""`fl.size_search`'s inputs: its arguments checked (each error names the argument and the fix), the data
as `(X, y)` tensors with matching feature counts, the trivial baseline's loss, and the message for a
worker pool that broke (most often: `jobs > 1` called at a script's top level, without the main guard).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..data import as_tensor

__all__ = ["check_arguments", "as_xy", "check_features", "baseline", "broken_pool_message"]


def check_arguments(make_model: Callable[..., Any] | None, sizes: Sequence[Any] | None, widths: Sequence[int],
                    depths: Sequence[int], ints: dict[str, Any], fractions: dict[str, Any],
                    max_seconds: float | None) -> None:
    """Raise a `ValueError` naming the bad argument and the fix.

    Args:
        ints: name -> value of the whole-number budgets (>= 1).
        fractions: name -> value of the margins and tolerances (numbers >= 0).
    """
    if make_model is not None and not sizes:
        raise ValueError("size_search: with make_model, pass sizes=[...] (smallest first), e.g. sizes=[8, 16, 32].")
    if make_model is None and sizes is not None:
        raise ValueError("size_search: sizes= is the ladder of a make_model factory, and none was given; pass "
                         "make_model=... as well, or widths=/depths= for the built-in MLP.")
    if make_model is None:
        for name, ladder in (("widths", widths), ("depths", depths)):
            vals = list(ladder) if isinstance(ladder, (list, tuple, range)) else None
            if (not vals or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals) or min(vals) < 1
                    or any(b <= a for a, b in zip(vals, vals[1:]))):
                raise ValueError(f"size_search: {name} must be whole numbers >= 1 in increasing order (smallest "
                                 f"first), e.g. {name}=(4, 8, 16); got {ladder!r}.")
    for name, v in ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"size_search: {name} must be a whole number >= 1, got {v!r}.")
    for name, v in {**fractions, **({} if max_seconds is None else {"max_seconds": max_seconds})}.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf") and \
                name != "max_seconds":
            fix = "or None for no limit" if name == "max_seconds" else "e.g. 0.1 for 10%"
            raise ValueError(f"size_search: {name} must be a number >= 0 ({fix}), got {v!r}.")


def as_xy(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(X, y)` tensors from `(X, y)` tensors/arrays or a `Split`."""
    X, y = (data.X, data.y) if hasattr(data, "X") and hasattr(data, "y") else (data if isinstance(data, (
        tuple, list)) and len(data) == 2 else (None, None))
    if X is None or y is None:
        raise TypeError(f"size_search: {name} must be (X, y) tensors/arrays or a Split from fl.split, got "
                        f"{type(data).__name__}.")
    return as_tensor(X, f"{name} X"), as_tensor(y, f"{name} y")


def check_features(Xtr: torch.Tensor, Xva: torch.Tensor) -> None:
    """The train and val inputs must have the same features (every trial's first layer reads them)."""
    ftr, fva = tuple(Xtr.shape[1:]), tuple(Xva.shape[1:])
    if ftr != fva:
        what = (f"{ftr[0]} and {fva[0]} features" if len(ftr) == len(fva) == 1
                else f"features of shape {ftr} and {fva}")
        raise ValueError(f"size_search: train X and val X have {what} (train X {tuple(Xtr.shape)}, val X "
                         f"{tuple(Xva.shape)}); they must have the same columns, in the same order. Split one "
                         "table into both (fl.split), or select the same columns for each.")


def baseline(loss_fn: Any, ytr: torch.Tensor, yva: torch.Tensor, out_features: int) -> float | None:
    """The loss of the trivial prediction (train mean; class prior) on the validation targets."""
    with torch.no_grad():
        if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) and ytr.ndim == 1:
            counts = torch.bincount(ytr.long(), minlength=out_features).double()
            logits = torch.log((counts + 1e-3) / (counts + 1e-3).sum()).float()
            out = logits.expand(len(yva), -1)
            if isinstance(loss_fn, nn.NLLLoss):
                out = torch.log_softmax(out, dim=1)
            return float(loss_fn(out, yva.long()))
        if isinstance(loss_fn, nn.BCEWithLogitsLoss):
            p = ytr.float().mean().clamp(1e-4, 1 - 1e-4)
            return float(loss_fn(torch.log(p / (1 - p)).expand(yva.shape), yva.float()))
        if isinstance(loss_fn, (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)):
            center = ytr.float().median(dim=0).values if isinstance(loss_fn, nn.L1Loss) else ytr.float().mean(dim=0)
            return float(loss_fn(center.expand(yva.shape), yva.float()))
    return None


def broken_pool_message(jobs: int, error: BaseException) -> str:
    """Why a pool of spawned trial workers broke, and the fix."""
    detail = ("this worker re-ran the script's size_search while starting" if "bootstrapping" in str(error)
              else f"{type(error).__name__}: {error}")
    return (f"size_search: jobs={jobs} runs trials in spawned worker processes, and a worker ended abruptly "
            f"({detail}). The usual cause: the call is at the top level of a script, so "
            "each worker re-runs the script while it starts. Put the call under `if __name__ == \"__main__\":` "
            "(the workers then skip it), or use jobs=1. If it is already guarded, a worker crashed or ran out "
            "of memory: try fewer jobs.")
