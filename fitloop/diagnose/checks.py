"""The guards' checks on a fit: the first-step check `TrainingStep` runs between the forward pass and the loss,
and `Trainer.evaluate`'s. The checks on data themselves are plain functions in `fitloop.data.checks` (no
Trainer), re-exported here; `fitloop.diagnose.guards` describes them and holds the callback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..data.checks import (
    GuardWarning,
    check_class_targets,
    check_leakage,
    check_loss_shapes,
    check_scales,
    data_tensors,
    guard_settings,
    warn,
)
from ..metrics import normalize_task
from ..optim import MembersLoss

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["GuardWarning", "check_leakage", "check_loss_shapes", "check_class_targets", "check_scales",
           "guard_settings", "first_step_checks", "eval_checks", "warn", "data_tensors"]

_FIT = object()  # first_step_checks' default: the fit's own data


# ------------------------------------------------------------------------------------- the first step


def first_step_checks(trainer: Trainer, out: torch.Tensor, y: torch.Tensor | None,
                      train: Any = _FIT, val: Any = _FIT) -> None:
    """Run by the fit's `TrainingStep` on its first batch, between the forward pass and the loss: the
    output's real shape is known, nothing has been applied yet, and no extra forward pass is needed.
    `sanity_check` runs it on its batch too, with its own `train` data (and no `val`).

    Class targets are read from the host copy of the whole training (and validation) data when it is
    in memory, so the rows named are rows of the data; for a Dataset, the first batch's.

    Args:
        trainer: the Trainer whose settings (`config.guards`), task and loss the checks read.
        out: the model's output on the batch.
        y: the batch's targets (None: nothing to check).
        train: the training data the batch comes from; default: the fit's (`trainer.train_data`).
        val: the validation data; default: the fit's (`trainer.val_data`).
    """
    s = guard_settings(trainer.config.guards)
    if y is None or not isinstance(out, torch.Tensor) or trainer.config.guards is False:
        return
    train = trainer.train_data if train is _FIT else train
    val = trainer.val_data if val is _FIT else val
    if out.ndim == 3 and isinstance(trainer.loss_fn, MembersLoss):  # (batch, k, out): one member's output
        out = out[:, 0]
    n_outputs = out.shape[1] if out.ndim >= 2 else 1
    task = normalize_task(trainer.task, n_outputs)
    if s["class_targets"] and task in ("multiclass", "binary"):
        parts = [("train y", data_tensors(train)[1]), ("val y", data_tensors(val)[1])]
        if parts[0][1] is None:
            parts = [("y (the first batch)", y)]
        for name, yy in parts:
            if yy is not None:
                check_class_targets(yy, task, n_outputs if task == "multiclass" else None, where=name)
        full_y = parts[0][1]
        if task == "multiclass" and full_y is not None and full_y.ndim == 1 and len(full_y) and out.ndim == 2:
            seen = int(full_y.max()) + 1
            if 2 <= seen < n_outputs:
                warn(f"class targets: the model has {n_outputs} outputs but the training labels only use "
                     f"0..{seen - 1} ({seen} classes). If there are {seen} classes, use out_features={seen}; "
                     "if some classes are just rare, this is fine (guards={'class_targets': False}).")
    if s["loss_shapes"]:
        X = data_tensors(train)[0]
        check_loss_shapes(trainer.loss_fn, tuple(out.shape), tuple(y.shape), len(X) if X is not None else len(y))


def eval_checks(trainer: Trainer, out: torch.Tensor, y: torch.Tensor, where: str = "evaluate") -> None:
    """`Trainer.evaluate`'s guards, on the whole data's outputs and targets before its loss: the class
    targets (labels in 0..C-1, binary 0/1) and the loss shapes, with the fit's messages.

    Raises:
        ValueError: as `check_class_targets` and `check_loss_shapes`, the message starting with `where`.
    """
    s = guard_settings(trainer.config.guards)
    if trainer.config.guards is False or not isinstance(out, torch.Tensor) or not isinstance(y, torch.Tensor):
        return
    n_outputs = out.shape[1] if out.ndim >= 2 else 1
    task = normalize_task(trainer.task, n_outputs)
    if s["class_targets"] and task in ("multiclass", "binary"):
        check_class_targets(y, task, n_outputs if task == "multiclass" else None, where=f"{where} y")
    if s["loss_shapes"]:
        try:
            check_loss_shapes(trainer.loss_fn, tuple(out.shape), tuple(y.shape), len(y))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
