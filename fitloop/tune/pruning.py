"""The tuner inside a trial's loop: report each epoch's validation loss, stop the trial when it is pruned.

    callback = TrialCallback(decide)        # decide(epoch, val_loss) -> True to prune (the tuner's rule)
    trainer = Trainer(..., callbacks=[callback])
    trainer.fit(train, val)
    callback.kept, callback.best, callback.pruned_at

The callback knows nothing of Optuna: `decide` reports the value to the study and asks its pruner (on
rank 0 under torchrun, which then broadcasts the answer: `fitloop.tune.workers`). A pruned trial stops
at the end of the epoch through the Trainer's stop flag; the callback never raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..callbacks.base import Callback
from ..callbacks.early_stopping import EarlyStopping

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["TrialCallback", "PRUNED_REASON"]

PRUNED_REASON = "pruned by the tuner"


class TrialCallback(Callback):
    """Reports `monitor` (the validation loss) after each epoch and stops the fit when `decide` says so.

    Args:
        decide: called with the epoch (from 1) and its value; returns True to prune the trial.
        monitor: the epoch log the trial is judged on (`val_loss`: lower is better).

    Attributes:
        kept: the value of the model the fit ends with, set at its end: the trial's value. With early
            stopping that restores its best weights, its best (the starting model's value when no epoch beat
            it by its margin); otherwise the last epoch's. None until the fit ends, or without a value.
        best: the lowest value seen (epochs of an earlier, resumed part of the run included), or None.
        pruned_at: the epoch at which the trial was pruned, or None.
        epochs: the epochs the trial has run.
    """

    def __init__(self, decide: Callable[[int, float], bool], monitor: str = "val_loss"):
        self.decide = decide
        self.monitor = monitor
        self.best: float | None = None
        self.kept: float | None = None
        self.last: float | None = None
        self.pruned_at: int | None = None
        self.epochs = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        # a resumed trial: the epochs before the kill count towards its best value (they are not re-run)
        for logs in trainer.history:
            self._record(logs)

    def on_validation_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        value = self._record(logs)
        if value is None or self.pruned_at is not None:
            return
        if self.decide(int(logs["epoch"]), value):
            self.pruned_at = int(logs["epoch"])
            trainer.should_stop = True
            trainer.stop_reason = f"{PRUNED_REASON} at epoch {self.pruned_at}"

    def on_fit_end(self, trainer: Trainer) -> None:
        """The kept model's value: the search must rank the models the trials keep, not epochs they dropped
        (a run whose early stopping keeps its linear start would otherwise be scored by a better epoch)."""
        stopper = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)), None)
        kept = self.last
        if (stopper is not None and stopper.restore_best_weights and stopper.monitor == self.monitor
                and math.isfinite(stopper.best)):
            kept = float(stopper.best)
        self.kept = kept if kept is not None and math.isfinite(kept) else None

    def _record(self, logs: dict[str, Any]) -> float | None:
        self.epochs = max(self.epochs, int(logs.get("epoch", 0)))
        raw = logs.get(self.monitor)
        if raw is None:
            return None
        value = float(raw)
        self.last = value
        if math.isfinite(value) and (self.best is None or value < self.best):
            self.best = value
        return value
