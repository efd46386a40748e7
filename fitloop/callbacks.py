"""Callbacks: a few named events, dispatched by the Trainer in a visible loop.

Events, in the order a run fires them::

    on_fit_start(trainer)
    for each epoch:
        on_epoch_start(trainer, epoch)              epoch counts from 1
        on_train_batch_end(trainer, step, loss)     after every training batch; loss is a tensor
        on_validation_end(trainer, logs)            only when fit() was given validation data
        on_epoch_end(trainer, epoch, logs)          the same logs dict
        on_checkpoint(trainer, path)                when a checkpoint was written this epoch
    on_fit_end(trainer)                             also after an early stop

For each event the Trainer calls the callbacks in the order they were given (its own
`ProgressPrinter` last). The epoch's `logs` dict is complete before the first callback runs:
`epoch`, `loss` and train metrics, `val_loss` and `val_` metrics when validating, `lr`, `time`,
and `grad_norm` when clipping. It is the dict stored in `trainer.history`.

A callback asks the run to stop by setting `trainer.should_stop = True` (and `trainer.stop_reason`),
never by raising: the Trainer finishes the current epoch's events, then `on_fit_end` runs.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Callback", "EarlyStopping", "ProgressPrinter", "EVENTS"]

EVENTS = ("on_fit_start", "on_epoch_start", "on_train_batch_end", "on_validation_end", "on_epoch_end",
          "on_checkpoint", "on_fit_end")


class Callback:
    """Base class: override the events you need; each default does nothing.

    `state_dict`/`load_state_dict` let a callback's counters survive a resume.
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_train_batch_end(self, trainer: Trainer, step: int, loss) -> None:
        """`loss` is the step's loss as a tensor: reading it as a float syncs the device."""

    def on_validation_end(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, path: str) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def overrides(cb: Callback, event: str) -> bool:
    """Whether `cb` implements `event` (so the Trainer skips no-op hooks on the hot path)."""
    return getattr(type(cb), event, None) is not getattr(Callback, event)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    Args:
        monitor: a key of the epoch logs, e.g. `"val_loss"` or `"val_accuracy"`.
        mode: `"min"` or `"max"`; `None` picks `"max"` for accuracy/F1/precision/recall/R2.
        patience: epochs in a row without improvement after which the run stops.
        min_delta: smallest change that counts as an improvement.
        restore_best_weights: at the end of `fit`, load the weights of the best epoch (on by
            default), whether the run stopped early or not.

    The reason is printed (unless the trainer is quiet) and recorded in `trainer.stop_reason` and
    in `self.reason`; the best epoch and value are in `best_epoch` and `best`.

    Example:
        >>> stopper = fl.EarlyStopping("val_loss", patience=5, min_delta=1e-4)
        >>> trainer = fl.Trainer(model, loss="cross_entropy", callbacks=[stopper], epochs=200)
    """

    def __init__(self, monitor: str = "val_loss", mode: str | None = None, patience: int = 10,
                 min_delta: float = 0.0, restore_best_weights: bool = True):
        if mode is None:
            maximize = ("accuracy", "f1", "precision", "recall", "r2")
            mode = "max" if any(monitor.endswith(k) for k in maximize) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}.")
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}.")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best_weights = abs(min_delta), restore_best_weights
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.reason: str | None = None
        self._best_weights: dict | None = None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not in the logs; "
                           f"available: {sorted(logs)}. Pass a validation set or another monitor.")
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.reason = (f"early stopping at epoch {epoch}: {self.monitor} did not improve by more "
                               f"than {self.min_delta:g} for {self.wait} epochs; best {self.best:.6g} "
                               f"at epoch {self.best_epoch}")
                trainer.should_stop = True
                trainer.stop_reason = self.reason

    def on_fit_end(self, trainer):
        if self.restore_best_weights and self._best_weights is not None and self.best_epoch != trainer.epoch:
            trainer.model.load_state_dict(self._best_weights)
            trainer.log(f"Restored the weights of epoch {self.best_epoch} ({self.monitor}={self.best:.6g}).")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "reason": self.reason,
                "best_weights": copy.copy(self._best_weights)}

    def load_state_dict(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.reason = state.get("reason")
        self._best_weights = state.get("best_weights")


class ProgressPrinter(Callback):
    """Prints one line per epoch at a cadence: epochs 1-3, every `every`-th and the last.

    With `every=500` this is the classic tutorial's `if epoch <= 3 or epoch % 500 == 0`.
    """

    def __init__(self, every: int | None = None, stream=None):
        self.every = every
        self.stream = stream

    def on_fit_start(self, trainer):
        if self.every is None:
            self.every = max(1, trainer.target_epochs // 10)

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch <= 3 or epoch % self.every == 0 or epoch == trainer.target_epochs or trainer.should_stop:
            print(format_logs(epoch, trainer.target_epochs, logs), file=self.stream or sys.stdout, flush=True)


# The values an epoch line shows; the history keeps everything.
HEADLINE = ("loss", "accuracy", "r2", "grad_norm", "skipped_steps")


def format_logs(epoch: int, epochs: int, logs: dict[str, Any]) -> str:
    width = len(str(epochs))
    parts = [f"Epoch {epoch:>{width}}/{epochs}"]
    for k, v in logs.items():
        if k.removeprefix("val_") not in HEADLINE or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    parts.append(f"({logs.get('time', 0.0):.2f}s)")
    return "  ".join(parts)
