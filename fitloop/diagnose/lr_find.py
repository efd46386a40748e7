"""The learning-rate finder: sweep the lr exponentially over a few steps, watch the loss.

The sweep trains for real (forward, backward, optimizer step at each lr), then puts everything
back: model weights and buffers, train/eval mode, optimizer state and lr, scheduler, the
Trainer's data generator and step counters, and the Python, NumPy and torch RNGs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..step.eager import TrainingStep
from .restore import restored

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["LRFinderResult", "lr_find"]


@dataclass
class LRFinderResult:
    """The curve of an lr sweep.

    Attributes:
        lrs: the learning rate of each step.
        losses: the smoothed (bias-corrected exponential moving average) training loss at each step.
        raw_losses: the loss of each step as measured.
        suggested_lr: the lr where the smoothed loss falls fastest (steepest negative slope
            against log lr), a common starting point; `None` when the curve is too short.
        stopped_early: the sweep stopped because the loss diverged.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float] = field(default_factory=list)
    suggested_lr: float | None = None
    stopped_early: bool = False

    def plot(self, path: str | os.PathLike | None = None):
        """Draw loss against lr (log scale), marking the suggestion; save to `path` when given.

        matplotlib is imported here, and the figure is drawn with the Agg canvas without touching
        pyplot's global backend. Returns the matplotlib `Figure`.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # the `plot` extra
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        if self.suggested_lr is not None:
            ax.axvline(self.suggested_lr, color="tab:red", linestyle="--",
                       label=f"suggested lr {self.suggested_lr:.2g}")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=100)
        return fig


def suggest_lr(lrs: list[float], losses: list[float], skip_start: int = 3, skip_end: int = 3) -> float | None:
    """The lr of the steepest descent of the smoothed loss against log(lr)."""
    n = len(losses)
    if n - skip_start - skip_end < 2:
        return None
    lo, hi = skip_start, n - skip_end
    slope = np.gradient(np.asarray(losses[lo:hi]), np.log(np.asarray(lrs[lo:hi])))
    return float(lrs[lo + int(np.argmin(slope))])


def lr_find(trainer: Trainer, train: Any, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            smooth: float = 0.98, diverge: float = 4.0, plot: str | os.PathLike | bool | None = None
            ) -> LRFinderResult:
    """Train `num_steps` steps with the lr growing exponentially from `start_lr` to `end_lr`.

    Args:
        trainer: the Trainer whose model, loss, optimizer and settings are used.
        train: training data, in any form `fit` accepts; cycled if shorter than `num_steps` batches.
        start_lr: the sweep's first lr (`0 < start_lr < end_lr`).
        end_lr: the sweep's last lr.
        num_steps: optimizer steps in the sweep.
        smooth: the factor of the exponential moving average of the loss (0 for none).
        diverge: stop once the smoothed loss exceeds `diverge` times its minimum (or is not finite).
        plot: a file path to save the plot to (PNG etc.); `True` draws the figure into
            `result.figure` without saving; `None`/`False` for no plot.

    Returns:
        An `LRFinderResult` with `lrs`, smoothed `losses` and `suggested_lr`.

    Each sweep step is one batch and one optimizer step (`accumulate` is not applied); the
    penalty, input noise, clipping and precision settings are.

    Example:
        >>> res = trainer.lr_find(train, plot="lr_find.png")
        >>> trainer2 = fl.Trainer(model, loss="cross_entropy", lr=res.suggested_lr)
    """
    if not (0 < start_lr < end_lr):
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}.")
    if num_steps < 2:
        raise ValueError(f"lr_find: num_steps must be >= 2, got {num_steps}.")
    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    stopped = False
    with restored(trainer):  # everything the sweep touches is put back exactly
        batches = trainer.batches(train, train=True)
        # the one training step, one batch per optimizer step, no scheduler; a NaN/inf step is skipped
        # (not applied) and ends the sweep
        step = TrainingStep(trainer, schedule=False, on_nonfinite="skip")
        trainer.model.train()
        gamma = (end_lr / start_lr) ** (1 / (num_steps - 1))
        avg, best = 0.0, math.inf
        while len(lrs) < num_steps and not stopped:
            for x, y in batches.epoch(trainer.generator):
                lr = start_lr * gamma ** len(lrs)
                for g in trainer.optimizer.param_groups:
                    g["lr"] = lr
                loss, _ = step(x, y)
                value = loss.item()  # one sync per step: the sweep must watch the loss to stop
                avg = smooth * avg + (1 - smooth) * value
                smoothed = avg / (1 - smooth ** (len(lrs) + 1)) if smooth else value
                lrs.append(lr)
                raw.append(value)
                losses.append(smoothed)
                if not math.isfinite(smoothed) or (len(lrs) > 1 and smoothed > diverge * best):
                    stopped = True
                    break
                best = min(best, smoothed)
                if len(lrs) >= num_steps:
                    break
    finite = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
    result = LRFinderResult(lrs=lrs, losses=losses, raw_losses=raw, stopped_early=stopped,
                            suggested_lr=suggest_lr([a for a, _ in finite], [b for _, b in finite]))
    if plot:
        result.figure = result.plot(None if plot is True else plot)  # type: ignore[attr-defined]
    return result
