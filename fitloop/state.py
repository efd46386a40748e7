"""`TrainState`: where a run is, everything a resume needs besides the model, optimizer and RNGs.

Nothing that a resume needs lives in hidden iterators or loose attributes: the position in the
epoch's permutation, the step counters, the epoch's losses, outputs and gradient norms so far, the
lr, whether the run was seeded, the history, the stop flag and its reason, the epoch's timer.
`Trainer.state_dict()` saves it with the model, optimizer, scheduler, callbacks and RNG states;
`Trainer.load_state_dict()` puts it back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["TrainState", "rng_state", "set_rng_state", "seed_everything", "TOP_LEVEL_KEYS"]

# A checkpoint keeps these TrainState fields at its top level, beside "train_state" (its layout since fitloop 0.1)
TOP_LEVEL_KEYS = ("history", "should_stop", "stop_reason")


@dataclass
class TrainState:
    """Where a run is. Saved in every checkpoint; restoring it (with the RNGs) resumes exactly.

    The epoch-local fields (`epoch_*`, `outputs`, `grad_norms`) hold the current epoch's
    progress: a checkpoint written mid-epoch carries them, so the resumed epoch's logs equal an
    uninterrupted run's. `batch % accumulate` is the position inside a gradient-accumulation group;
    checkpoints are written only where it is 0 (between optimizer steps). `history` holds one dict
    per finished epoch; a callback asks the run to stop by setting `should_stop` (and `stop_reason`),
    which the Trainer's `should_stop`/`stop_reason` properties forward here.
    """

    epoch: int = 0                 # completed epochs
    batch: int = 0                 # next batch index within the current epoch
    step: int = 0                  # optimizer steps taken in total
    target_epochs: int = 0         # fit() trains until `epoch == target_epochs`
    skipped_steps: int = 0         # steps skipped with on_nonfinite="skip"
    seeded: bool = False           # the global RNGs were seeded (a resume restores them instead)
    epoch_generator_state: torch.Tensor | None = None  # data generator at the start of this epoch
    epoch_losses: list[torch.Tensor] = field(default_factory=list)  # losses of this epoch's steps so far
    epoch_sizes: list[int] = field(default_factory=list)            # rows of each of those steps
    epoch_time: float = 0.0        # seconds spent in this epoch before a resume
    epoch_lr: float = 0.0          # lr of the last step taken (the history records it)
    outputs: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)  # for train metrics
    grad_norms: list[torch.Tensor] = field(default_factory=list)  # per step, when clipping
    discard: int = 0               # a skipped step's micro-batches, left out of the epoch's loss by `record`
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict of logs per finished epoch
    should_stop: bool = False      # a callback asked the run to stop
    stop_reason: str | None = None  # why (printed, and run.json's message)
    epoch_started: float | None = None  # time.perf_counter() when this epoch (or its resumed part) started

    def start_timer(self) -> None:
        """The epoch (or the part of it a resume continues) starts now."""
        self.epoch_started = time.perf_counter()

    def epoch_seconds(self) -> float:
        """Seconds spent in the current epoch, across resumes."""
        running = time.perf_counter() - self.epoch_started if self.epoch_started is not None else 0.0
        return self.epoch_time + running

    def stop_timer(self) -> None:
        """A fit ends: an unfinished epoch keeps the time spent in it (a later fit or resume adds to it)."""
        if self.epoch_started is not None and self.batch:
            self.epoch_time = self.epoch_seconds()
        self.epoch_started = None

    def start_epoch(self, generator_state: torch.Tensor) -> None:
        """Forget the last epoch's progress; remember where this epoch's data order starts."""
        self.epoch_generator_state = generator_state
        self.epoch_losses, self.epoch_sizes, self.outputs, self.grad_norms = [], [], [], []
        self.epoch_time = 0.0

    def record(self, loss: torch.Tensor, rows: int, output: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
        """One batch done: its loss, its row count, its (output, target) for the train metrics. After a
        step skipped with on_nonfinite="skip" (`discard` set), its micro-batches are left out instead: the
        epoch's loss and metrics are those of the steps applied."""
        self.batch += 1
        if self.discard:
            earlier, self.discard = self.discard - 1, 0  # this step's micro-batches recorded before this one
            if earlier:
                del self.epoch_losses[-earlier:], self.epoch_sizes[-earlier:]
                if output is not None:
                    del self.outputs[-earlier:]
            return
        self.epoch_losses.append(loss)
        self.epoch_sizes.append(rows)
        if output is not None:
            self.outputs.append(output)

    def finish_epoch(self) -> tuple[dict[str, Any], list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Count the epoch as done. Returns its train logs (`loss`, `skipped_steps`, `grad_norm`, as
        tensors) and the outputs gathered for the train metrics."""
        self.epoch += 1
        self.batch = 0
        logs: dict[str, Any] = {"loss": self.epoch_loss()}
        if self.skipped_steps:
            logs["skipped_steps"] = self.skipped_steps
        if self.grad_norms:
            logs["grad_norm"] = finite_mean(torch.stack(self.grad_norms))
        outputs, self.outputs, self.grad_norms = self.outputs, [], []
        return logs, outputs

    def epoch_loss(self) -> torch.Tensor:
        """The epoch's loss: the mean of the step losses weighted by rows (one reduction per epoch)."""
        losses, sizes = self.epoch_losses, self.epoch_sizes
        if not losses:  # every step of the epoch was skipped (on_nonfinite="skip")
            return torch.tensor(float("nan"))
        if len(losses) == 1:
            return losses[0]
        stacked = torch.stack(losses)
        if sizes[-1] == sizes[0]:
            return stacked.mean()
        w = torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)
        return (stacked * w).sum() / sum(sizes)

    def state_dict(self) -> dict[str, Any]:
        """A plain dict (tensors, numbers, lists). Epoch-local progress is kept only mid-epoch, with the
        time spent in the epoch so far."""
        mid = self.batch != 0
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "target_epochs": self.target_epochs,
            "skipped_steps": self.skipped_steps, "seeded": self.seeded,
            "epoch_generator_state": self.epoch_generator_state if mid else None,
            "epoch_losses": list(self.epoch_losses) if mid else [],
            "epoch_sizes": list(self.epoch_sizes) if mid else [],
            "epoch_time": self.epoch_seconds() if mid else self.epoch_time,
            "epoch_lr": float(self.epoch_lr),
            "outputs": [list(o) for o in self.outputs] if mid else [],
            "grad_norms": list(self.grad_norms) if mid else [],
            "history": list(self.history), "should_stop": self.should_stop, "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, d: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore from `state_dict()`; epoch-local tensors go to `device`."""
        for k in ("epoch", "batch", "step", "target_epochs", "skipped_steps", "epoch_time", "epoch_lr"):
            setattr(self, k, d[k])
        self.seeded = bool(d.get("seeded", True))
        self.discard = 0  # only ever set between a skipped step and its `record` (lr_find's skips end here)
        self.epoch_generator_state = d["epoch_generator_state"]
        self.epoch_losses = [t.to(device) for t in d["epoch_losses"]]
        self.epoch_sizes = list(d["epoch_sizes"])
        self.outputs = [(o[0].to(device), None if o[1] is None else o[1].to(device)) for o in d["outputs"]]
        self.grad_norms = [t.to(device) for t in d["grad_norms"]]
        self.history = list(d["history"])
        self.should_stop, self.stop_reason = d["should_stop"], d["stop_reason"]

    def checkpoint_entries(self) -> dict[str, Any]:
        """`state_dict()` in a checkpoint's layout: `train_state`, and `TOP_LEVEL_KEYS` beside it."""
        flat = self.state_dict()
        return {"train_state": {key: value for key, value in flat.items() if key not in TOP_LEVEL_KEYS},
                **{key: flat[key] for key in TOP_LEVEL_KEYS}}

    def load_checkpoint_entries(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore from a checkpoint's (or `Trainer.state_dict()`'s) entries, as `checkpoint_entries` lays them out."""
        flat = {**state["train_state"], **{key: state[key] for key in TOP_LEVEL_KEYS}}
        for key in ("outputs", "grad_norms"):  # checkpoints of fitloop <= 0.1 kept these at the top level
            flat.setdefault(key, state.get(key, []))
        self.load_state_dict(flat, device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The states of the data-order `generator` and of the Python, NumPy, torch and CUDA RNGs."""
    state: dict[str, Any] = {"data_generator": generator.get_state(), "python": random.getstate(),
                             "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    """Put back what `rng_state` returned."""
    generator.set_state(state["data_generator"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def finite_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of the finite entries (no host sync); NaN when there are none.

    An epoch's `grad_norm` is the mean over the steps that were applied: a step skipped for a non-finite
    gradient has a non-finite norm, which would otherwise turn the whole epoch's value into NaN.
    """
    finite = values.isfinite()
    return torch.where(finite, values, 0).sum() / finite.sum()
