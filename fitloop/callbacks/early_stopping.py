"""EarlyStopping: stop when a monitored value stops improving, and restore the best weights."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .._fastpath import unwrap_model
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    Args:
        monitor: a key of the epoch logs, e.g. `"val_loss"` or `"val_accuracy"`.
        mode: `"min"` or `"max"`; `None` picks `"max"` for accuracy/F1/precision/recall/R2.
        patience: epochs in a row without improvement after which the run stops.
        min_delta: smallest change that counts as an improvement.
        rel_delta: smallest change that counts, as a fraction of the best value so far (e.g. `0.02`:
            2% better); both must be exceeded. Near-ties then keep the earlier epoch, which on a
            small validation set is as likely to be the better one.
        restore_best_weights: at the end of `fit`, load the weights of the best epoch (on by
            default), whether the run stopped early or not.

    The reason is printed (unless the trainer is quiet) and recorded in `trainer.stop_reason` and
    in `self.reason`; the best epoch and value are in `best_epoch` and `best`. `start_from(value, model)`
    before `fit` makes the initial model "epoch 0", the one to beat (`best_epoch == 0`: none did).

    Example:
        >>> stopper = fl.EarlyStopping("val_loss", patience=5, min_delta=1e-4)
        >>> trainer = fl.Trainer(model, loss="cross_entropy", callbacks=[stopper], epochs=200)
    """

    def __init__(self, monitor: str = "val_loss", mode: str | None = None, patience: int = 10,
                 min_delta: float = 0.0, restore_best_weights: bool = True, rel_delta: float = 0.0):
        if mode is None:
            maximize = ("accuracy", "f1", "precision", "recall", "r2")
            mode = "max" if any(monitor.endswith(k) for k in maximize) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}.")
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}.")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        if not 0.0 <= rel_delta < 1.0:
            raise ValueError(f"EarlyStopping: rel_delta must be in [0, 1), got {rel_delta}.")
        self.min_delta, self.restore_best_weights = abs(min_delta), restore_best_weights
        self.rel_delta = rel_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.from_start = False  # `start_from` made the initial model "epoch 0"
        self.start_margin = 0.0  # what an epoch must gain over that start
        self.start_logs: dict[str, Any] = {}  # that start's validation scores
        self.stopped_epoch = 0
        self.reason: str | None = None
        self._best_weights: dict[str, Any] | None = None
        self.confirm: Any = None  # `start_from`'s check that the kept epoch really beats the start
        self.start_value = math.nan
        self._start_weights: dict[str, Any] | None = None

    def _margin(self) -> float:
        """How much better than the best so far an epoch must be to count as better."""
        margin = max(self.min_delta, self.rel_delta * abs(self.best)) if math.isfinite(self.best) else 0.0
        if self.from_start and self.best_epoch == 0:
            margin = max(margin, self.start_margin)
        return margin

    def _improved(self, value: float) -> bool:
        margin = self._margin()
        if self.mode == "min":
            return value < self.best - margin
        return value > self.best + margin

    def start_from(self, value: float, model: Any, margin: float = 0.0, logs: dict[str, Any] | None = None,
                   confirm: Any = None) -> None:
        """Count the model as it is now (before any training) as "epoch 0" with `monitor` at `value`.

        Later epochs must then beat it (by the same margins, and by `margin`) to count as better, and
        when none does, `on_fit_end` restores these weights: a run never ends worse on `monitor` than
        its start (e.g. a model initialised at a linear fit). Call before `fit`; a resumed run's state
        replaces it.

        Args:
            value: the monitored value of the model as it is (e.g. `trainer.evaluate(val)["loss"]`).
            model: the module whose weights are kept (`trainer.model`).
            margin: how much better than `value` an epoch must be to replace the start (e.g. one standard
                error of `value`: the one-standard-error rule keeps the simpler start on a statistical tie).
            logs: the start's other validation scores (`{"val_accuracy": ...}`), kept in `start_logs` so
                that a run that keeps the start can show them (`fitloop runs`' best-validation column).
            confirm: `confirm(trainer, start_weights) -> bool`, called at the end of fit with the kept epoch's
                weights in the model: False puts the start back (e.g. the kept epoch is not better than the
                start by one standard error of their paired per-row differences:
                `fitloop.tabular.training.paired_confirm`). The start's weights are kept (and checkpointed) for it.
        """
        self.best, self.best_epoch, self.wait = float(value), 0, 0
        self.confirm, self.start_value = confirm, float(value)
        if confirm is not None:
            self._start_weights = _weights(model)
        self.from_start, self.start_margin = True, abs(float(margin))
        self.start_logs = dict(logs or {})
        if self.restore_best_weights:
            self._best_weights = _weights(model)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not in the logs; "
                           f"available: {sorted(logs)}. Pass a validation set or another monitor.")
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_weights = _weights(trainer.model)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.reason = (f"early stopping at epoch {epoch}: {self.monitor} did not improve by more "
                               f"than {self._margin():.3g} for {self.wait} epochs; best {self.best:.6g} "
                               f"at epoch {self.best_epoch}"
                               + (" (the initial model)" if self.best_epoch == 0 else ""))
                trainer.should_stop = True
                trainer.stop_reason = self.reason

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self._best_weights is not None and self.best_epoch != trainer.epoch:
            # best_epoch 0: the weights `start_from` recorded, before any training
            unwrap_model(trainer.model).load_state_dict(self._best_weights)
            trainer.log(f"Restored the weights of epoch {self.best_epoch} ({self.monitor}={self.best:.6g}).")
        if self.confirm is not None and self.from_start and self.best_epoch and self._start_weights is not None \
                and not self.confirm(trainer, self._start_weights):
            unwrap_model(trainer.model).load_state_dict(self._start_weights)
            why = (f"kept epoch 0 (the initial model): epoch {self.best_epoch}'s {self.monitor} ({self.best:.6g}) is "
                   f"not better than its {self.start_value:.6g} by one standard error of their per-row differences")
            trainer.log(why[0].upper() + why[1:] + ".")
            if trainer.stop_reason:
                trainer.stop_reason = self.reason = f"{trainer.stop_reason}; {why}"
            self.best_epoch, self.best = 0, self.start_value

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "reason": self.reason, "from_start": self.from_start,
                "start_margin": self.start_margin, "start_logs": dict(self.start_logs),
                "best_weights": copy.copy(self._best_weights), "start_value": self.start_value,
                "start_weights": copy.copy(self._start_weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.reason = state.get("reason")
        self.from_start = bool(state.get("from_start", False))
        self.start_margin = float(state.get("start_margin", 0.0))
        self.start_logs = dict(state.get("start_logs") or {})  # checkpoints before issue 24 have none
        self.start_value = float(state.get("start_value", math.nan))
        self._start_weights = state.get("start_weights")
        weights = state.get("best_weights")
        if weights is not None:  # checkpoints of DDP runs before the weights were kept unwrapped: "module." keys
            weights = dict(weights)
            consume_prefix_in_state_dict_if_present(weights, "module.")
        self._best_weights = weights


def _weights(model: Any) -> dict[str, Any]:
    """A copy of the unwrapped model's state dict: the same keys with or without DDP/FSDP, at any world size."""
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}
