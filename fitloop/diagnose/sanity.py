"""`trainer.sanity_check(train)`: can the model learn at all? Overfit one small batch, then put it all back.

A network that cannot drive the loss of 16 rows towards zero in a couple of hundred steps has a bug
before it has a capacity problem: a detached output, frozen parameters, a loss that ignores the target,
an lr far too small or too large. Minutes before a long run, this says so in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..devices import thread_policy
from ..step.eager import TrainingStep
from .checks import first_step_checks
from .restore import restored

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["SanityResult", "sanity_check"]


@dataclass
class SanityResult:
    """What `sanity_check` found.

    Attributes:
        can_learn: the batch's loss fell to at most `threshold` times its start.
        initial_loss: the batch's loss (eval mode) before the steps.
        final_loss: the batch's loss (eval mode) after the steps.
        steps: optimizer steps taken.
        rows: rows in the batch.
        message: one line for the user: the verdict, and what to check when it failed.
    """

    can_learn: bool
    initial_loss: float
    final_loss: float
    steps: int
    rows: int
    message: str

    def __bool__(self) -> bool:
        return self.can_learn


def _batch_loss(trainer: Trainer, x: torch.Tensor, y: torch.Tensor | None, train: Any = None) -> float:
    """The batch's loss in eval mode; with `train` (the data it came from), the fit's first-step guards
    (class targets, loss shapes) check the output and the data before the loss."""
    model = trainer.model
    was = model.training
    model.eval()  # no dropout: the loss of the weights, not of a random mask
    try:
        with torch.no_grad():
            out = trainer.forward(x)
            if train is not None:
                first_step_checks(trainer, out, y, train=train, val=None)
            return float(trainer.compute_loss(out, y))
    finally:
        model.train(was)


def sanity_check(trainer: Trainer, train: Any, *, rows: int = 16, steps: int = 300,
                 threshold: float = 0.5) -> SanityResult:
    """Train `steps` optimizer steps on the first `rows` rows of `train`'s first batch, with the Trainer's
    model, loss, optimizer and lr, and report whether the loss fell to `threshold` times its start.

    Everything is put back afterwards: weights, optimizer state, train/eval modes, step counters, the
    data generator and the Python, NumPy and torch RNGs (exactly: `Trainer.load_state_dict`).

    Args:
        trainer: the Trainer to check.
        train: training data in any form `fit` accepts.
        rows: rows in the batch to overfit.
        steps: optimizer steps on it.
        threshold: the fraction of the starting loss the batch's loss must reach.

    Returns:
        A `SanityResult` (truthy when the model can learn).

    Raises:
        ValueError: for the mistakes `fit`'s first step stops on (the guards' class-target and loss-shape
            checks, with the same messages): class labels outside the model's outputs, an output shape
            the target would broadcast against.

    Example:
        >>> report = trainer.sanity_check(train)
        >>> print(report.message)
        sanity check: the model can learn: the loss of 16 rows fell from 1.02 to 0.0031 in 300 steps.
    """
    if rows < 1 or steps < 1 or not 0 < threshold < 1:
        raise ValueError(f"sanity_check: need rows >= 1, steps >= 1 and 0 < threshold < 1; got rows={rows}, "
                         f"steps={steps}, threshold={threshold}.")
    with thread_policy(trainer.device, trainer.params, trainer.config.threads), restored(trainer):
        x, y = next(iter(trainer.batches(train, train=True).epoch(trainer.generator)))
        x, y = x[:rows], None if y is None else y[:rows]
        step = TrainingStep(trainer, schedule=False, on_nonfinite="skip")
        trainer.model.train()
        first = _batch_loss(trainer, x, y, train)  # the guards first: the errors fit would raise
        try:
            for _ in range(steps):
                step(x, y)
        except RuntimeError as e:  # e.g. "element 0 of tensors does not require grad": a detached output
            return SanityResult(False, first, first, 0, len(x), f"sanity check: the model cannot learn: the "
                                f"training step failed ({e}). Check that forward keeps the graph (no .detach(), "
                                ".item() or torch.no_grad inside it).")
        last = _batch_loss(trainer, x, y)
    n = len(x)
    ok = last <= threshold * first or last < 1e-6
    if ok:
        msg = f"the model can learn: the loss of {n} rows fell from {first:.4g} to {last:.4g} in {steps} steps."
    elif not last == last or last > first:  # NaN, or rising
        msg = (f"the loss of {n} rows rose from {first:.4g} to {last:.4g} in {steps} steps: the lr "
               f"({trainer.optimizer.param_groups[0]['lr']:g}) is probably too high; try one 10x lower.")
    elif last > 0.99 * first:
        msg = (f"the loss of {n} rows did not move ({first:.4g} -> {last:.4g} in {steps} steps). Check that the "
               "loss depends on the parameters (no .detach() or argmax inside forward, parameters not frozen) "
               "and that the target is the one you mean; then try a higher lr.")
    else:
        msg = (f"the loss of {n} rows only fell from {first:.4g} to {last:.4g} in {steps} steps (the check wants "
               f"{threshold:g}x). Try a higher lr or more steps (steps=...), or a bigger model.")
    return SanityResult(ok, first, last, steps, n, f"sanity check: {msg}")
