"""TimeLimit: stop a run once its training has taken a given wall time (an upper bound on the budget)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["TimeLimit"]

_clock = time.perf_counter  # the clock it reads (a test replaces it)


class TimeLimit(Callback):
    """Stop after the epoch during which the training time reached `seconds`.

    The time counts every session of a run (a resumed run continues the count, through the
    callback's state in each checkpoint). It is checked at the end of each epoch, so an epoch is
    never cut in half and the history stays complete. `fitloop train` adds one with
    `train.max_time` (`--max-time`).

    Args:
        seconds: the limit, > 0.

    Example:
        >>> trainer = fl.Trainer(model, epochs=10_000, callbacks=[fl.callbacks.TimeLimit(60)])
    """

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise ValueError(f"TimeLimit: seconds must be > 0, got {seconds!r}.")
        self.seconds = float(seconds)
        self.elapsed = 0.0  # training seconds of earlier sessions (from a checkpoint)
        self.reason: str | None = None
        self._t0: float | None = None
        self._base = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._t0, self._base = _clock(), self.elapsed

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self._t0 is None:
            return
        self.elapsed = self._base + _clock() - self._t0
        if self.elapsed >= self.seconds and not trainer.should_stop and epoch < trainer.target_epochs:
            self.reason = (f"time limit at epoch {epoch}: training took {self.elapsed:.1f}s >= max_time "
                           f"{self.seconds:g}s")
            trainer.should_stop = True
            trainer.stop_reason = self.reason

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed = float(state["elapsed"])
        self.reason = state.get("reason")
