"""When the run-directory callback writes a checkpoint, and which checkpoints it keeps.

A checkpoint is due every `checkpoint_every_steps` optimizer steps, every `checkpoint_every_epochs`
epochs, at the run's last epoch, and `checkpoint_every_seconds` after the last one (which bounds the
work a kill loses in a long epoch). With several processes each rank's clock differs, so the
time-based checkpoint is the one the ranks agreed on (`agree_save`, through `DistributedSync`), never a
rank's own clock. The newest `keep_last` checkpoints are kept, and the best one by `monitor`/`mode`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = ["SavePolicy"]


class SavePolicy:
    """The checkpoint schedule and the keep rules, from a `TrainConfig`.

    Attributes:
        best: `{"name", "value", "monitor", "epoch"}` of the best checkpoint so far, or None. Saved in
            every checkpoint (through the Checkpointer's `state_dict`).
        last_saved_step: the global step of the last checkpoint written (-1 before the first).
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.best: dict[str, Any] | None = None
        self.last_saved_step = -1
        self._last_save_time = time.perf_counter()
        self._agreed = False  # several processes: every rank agreed that a time-based checkpoint is due

    def restart_clock(self) -> None:
        """A fit starts: the time-based checkpoint counts from now."""
        self._last_save_time = time.perf_counter()

    def saved(self, step: int) -> None:
        """A checkpoint was written at global step `step`."""
        self.last_saved_step, self._last_save_time = step, time.perf_counter()

    def time_due(self) -> bool:
        """Whether `checkpoint_every_seconds` have passed since the last checkpoint, by this process's clock."""
        seconds = self.config.checkpoint_every_seconds
        return seconds is not None and seconds > 0 and time.perf_counter() - self._last_save_time >= seconds

    def agree_save(self) -> None:
        """Every rank agreed that a time-based checkpoint is due: the next step (or epoch end) writes one."""
        self._agreed = True

    def due_at_step(self, step: int, *, agreed_only: bool) -> bool:
        """Whether to checkpoint after optimizer step `step`: every N steps, or the time-based one.

        Args:
            step: the global step just taken.
            agreed_only: several processes: the time-based checkpoint only when the ranks agreed on it.
        """
        every = self.config.checkpoint_every_steps
        timed = self._take_agreed() if agreed_only else self.time_due()
        return step != self.last_saved_step and (bool(every and step % every == 0) or timed)

    def due_at_epoch_end(self, epoch: int, *, last: bool) -> bool:
        """Whether to checkpoint at the end of epoch `epoch`: the run's `last` epoch, every N epochs, or
        the time-based checkpoint the ranks agreed on."""
        every = self.config.checkpoint_every_epochs
        agreed = self._take_agreed()  # taken in any case: an agreement holds for one sync point only
        return last or agreed or bool(every and epoch % every == 0)

    def _take_agreed(self) -> bool:
        agreed, self._agreed = self._agreed, False
        return agreed

    def update_best(self, name: str, logs: dict[str, Any] | None, epoch: int) -> None:
        """Make checkpoint `name` the best when its `logs` beat the best so far on `monitor` (else `loss`)."""
        if logs is None:
            return
        key = self.config.monitor if self.config.monitor in logs else "loss"
        raw = logs.get(key)
        value = float(raw) if isinstance(raw, (int, float)) and math.isfinite(raw) else None
        if value is None:
            return
        if self.best is None or self._better(value, self.best["value"]):
            self.best = {"name": name, "value": value, "monitor": key, "epoch": epoch}

    def _better(self, value: float, than: float) -> bool:
        return value < than if self.config.mode == "min" else value > than

    def is_best(self, name: str) -> bool:
        """Whether checkpoint `name` is the best one."""
        return self.best is not None and self.best["name"] == name

    def to_keep(self, checkpoints: list[Path]) -> set[str]:
        """The names among `checkpoints` (newest first) to keep: the newest `keep_last` and the best."""
        keep = {path.name for path in checkpoints[: self.config.keep_last]}
        if self.best is not None:
            keep.add(self.best["name"])
        return keep
