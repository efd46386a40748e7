"""The learning-rate finder: sweep the lr exponentially over a few steps, watch the loss.

The sweep trains for real (forward, backward, optimizer step at each lr), then puts everything
back: model weights and buffers, train/eval mode, optimizer state and lr, scheduler, the
Trainer's data generator and step counters, and the Python, NumPy and torch RNGs.
"""

from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import TensorBatches

if TYPE_CHECKING:
    from .trainer import Trainer

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
        from matplotlib.backends.backend_agg import FigureCanvasAgg
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


def _rng_state(trainer: Trainer) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generator": trainer.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(trainer: Trainer, state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    trainer.generator.set_state(state["generator"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_find(trainer: Trainer, train, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            smooth: float = 0.98, diverge: float = 4.0, plot: str | os.PathLike | bool | None = None
            ) -> LRFinderResult:
    """Train `num_steps` steps with the lr growing exponentially from `start_lr` to `end_lr`.

    Args:
        trainer: the Trainer whose model, loss, optimizer and settings are used.
        train: training data, in any form `fit` accepts; cycled if shorter than `num_steps` batches.
        start_lr, end_lr: the range of the sweep (`0 < start_lr < end_lr`).
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
    if trainer._needs_closure:
        raise ValueError("lr_find: not supported for closure optimizers such as LBFGS.")
    # Everything the sweep touches, copied so it can be put back exactly.
    saved = {
        "model": copy.deepcopy(trainer.model.state_dict()),
        "training": {name: m.training for name, m in trainer.model.named_modules()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": None if trainer.scheduler is None else copy.deepcopy(trainer.scheduler.state_dict()),
        "scaler": None if trainer.scaler is None else copy.deepcopy(trainer.scaler.state_dict()),
        "rng": _rng_state(trainer),
        "state": copy.deepcopy(trainer.state),
        "grad_norms": list(trainer._grad_norms),
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in trainer._params],
    }
    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    stopped = False
    try:
        batches = trainer._batches(train, train=True)
        trainer.model.train()
        gamma = (end_lr / start_lr) ** (1 / (num_steps - 1))
        avg, best = 0.0, math.inf
        step = 0
        while step < num_steps and not stopped:
            for batch in batches.epoch(trainer.generator):
                lr = start_lr * gamma**step
                for g in trainer.optimizer.param_groups:
                    g["lr"] = lr
                x, y = batch if isinstance(batches, TensorBatches) else trainer._to_device(batch)
                loss = _sweep_step(trainer, x, y)
                value = loss.item()  # one sync per step: the sweep must watch the loss to stop
                avg = smooth * avg + (1 - smooth) * value
                smoothed = avg / (1 - smooth ** (step + 1)) if smooth else value
                lrs.append(lr)
                raw.append(value)
                losses.append(smoothed)
                step += 1
                if not math.isfinite(smoothed) or (step > 1 and smoothed > diverge * best):
                    stopped = True
                    break
                best = min(best, smoothed)
                if step >= num_steps:
                    break
    finally:
        trainer.model.load_state_dict(saved["model"])
        for name, m in trainer.model.named_modules():
            m.train(saved["training"][name])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        if saved["scheduler"] is not None:
            trainer.scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"] is not None:
            trainer.scaler.load_state_dict(saved["scaler"])
        _set_rng_state(trainer, saved["rng"])
        vars(trainer.state).update(vars(saved["state"]))  # in place: others may hold trainer.state
        trainer._grad_norms = saved["grad_norms"]
        for p, g in zip(trainer._params, saved["grads"]):
            p.grad = g
    finite = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
    result = LRFinderResult(lrs=lrs, losses=losses, raw_losses=raw, stopped_early=stopped,
                            suggested_lr=suggest_lr([a for a, _ in finite], [b for _, b in finite]))
    if plot:
        result.figure = result.plot(None if plot is True else plot)  # type: ignore[attr-defined]
    return result


def _sweep_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A plain training step (no accumulation, no scheduler, no step counting)."""
    cfg = trainer.config
    if cfg.input_noise and x.is_floating_point():
        x = x + cfg.input_noise * torch.randn_like(x)
    trainer.optimizer.zero_grad(set_to_none=True)
    out = trainer.forward(x)
    loss = trainer.compute_loss(out, y)
    total = loss + trainer._penalty() if cfg.penalty is not None else loss
    if trainer.scaler is not None:
        trainer.scaler.scale(total).backward()
        trainer.scaler.unscale_(trainer.optimizer)
    else:
        total.backward()
    if cfg.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainer._params, cfg.clip_grad_norm)
    if cfg.clip_grad_value:
        torch.nn.utils.clip_grad_value_(trainer._params, cfg.clip_grad_value)
    if trainer.scaler is not None:
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    else:
        trainer.optimizer.step()
    return loss.detach()
