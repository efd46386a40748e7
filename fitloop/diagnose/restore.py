"""Put a Trainer back exactly as it was after a diagnostic trained it for real (LR finder, sanity check)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["restored"]


@contextlib.contextmanager
def restored(trainer: Trainer) -> Iterator[None]:
    """Everything the body changes is put back on exit: model weights and buffers, train/eval mode of every
    module, optimizer state and lr, scheduler, the data generator, step counters, history, callback
    states, the Python, NumPy and torch RNGs (`Trainer.state_dict()`/`load_state_dict()`), and the
    parameters' `.grad`."""
    saved = copy.deepcopy(trainer.state_dict())
    training = {name: m.training for name, m in trainer.model.named_modules()}
    grads = [None if p.grad is None else p.grad.detach().clone() for p in trainer.params]
    try:
        yield
    finally:
        trainer.load_state_dict(saved)
        for name, m in trainer.model.named_modules():
            m.train(training[name])
        for p, grad in zip(trainer.params, grads):
            p.grad = grad
