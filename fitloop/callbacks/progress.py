"""ProgressPrinter: one line per epoch at a cadence, like the classic tutorial loop."""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

from ..distributed import is_main_process
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["ProgressPrinter", "format_logs"]


class ProgressPrinter(Callback):
    """Prints one line per epoch at a cadence: epochs 1-3, every `every`-th and the last.

    With `every=500` this is the classic tutorial's `if epoch <= 3 or epoch % 500 == 0`.
    """

    def __init__(self, every: int | None = None, stream: IO[str] | None = None):
        self.every = every
        self.stream = stream

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.every is None:
            self.every = max(1, trainer.target_epochs // 10)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        every = self.every or 1
        if not is_main_process():  # only rank 0 prints
            return
        if epoch <= 3 or epoch % every == 0 or epoch == trainer.target_epochs or trainer.should_stop:
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
