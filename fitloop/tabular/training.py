"""How long a table run trains, and what it says about it: the pieces `fitloop.tabular.pipeline` adds to a run.

    start_linear_path(cfg, model, task, classes, X_train, y_train)   # the linear path starts at the ridge fit
    callbacks = length_callbacks(cfg, patience)                      # EarlyStopping, TimeLimit
    start_early_stopping(cfg, trainer, callbacks, val)               # the initial model is "epoch 0"
    note = still_improving(trainer.history, trainer.stop_reason)     # "train longer with --epochs N"

The budget itself (epochs, patience, checkpoints from the number of training rows) is
`fitloop.tabular.config.training_budget`, the one rule the run and a dry run share.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import torch

from .._fastpath import unwrap_model
from ..callbacks import Callback, EarlyStopping, TimeLimit, VerdictReporter
from ..diagnose.verdict import STANDARDISED, capacity_probe, per_row_losses, rows_of, val_standard_error
from ..models import MLPSpec, SkipMLP, build_model, fit_linear_path, fit_logistic_path
from ..tabm import TabM, TabMSpec, fit_bins
from .config import Budget, RunConfig

__all__ = ["LOGIT_SCALE", "start_linear_path", "length_callbacks", "start_early_stopping",
           "best_epoch", "still_improving", "budget_fields", "prepare_verdict",
           "capacity_probe_for", "paired_confirm",
           "FirstStep", "process_age"]

# linear_init for classification: the one-hot targets the linear start fits, as logits (+-2 around the mean)
LOGIT_SCALE = 4.0
# the capacity probe a plateau verdict runs (`capacity_probe_for`): widths, and a short budget
PROBE_WIDEN, PROBE_WIDTH, PROBE_STEPS, PROBE_MAX_EPOCHS = 4, 128, 300, 60


def start_linear_path(cfg: RunConfig, model: Any, task: str, classes: list[Any] | None, X: Any, y: Any
                      ) -> float | None:
    """With `model.linear_init`, start a `SkipMLP`'s or `TabM`'s linear path at the ridge fit of the training rows
    `X`, `y` (regression: the standardized target; classification: one-hot classes scaled to logits).
    Call after seeding: the hidden layers keep their seeded initial weights.

    Returns:
        The ridge penalty used (`model.ridge`, or the one GCV chose), or None when the model starts as built.
    """
    if not (cfg.model.linear_init and isinstance(model, (SkipMLP, TabM)) and model.skip is not None):
        return None
    if task == "classification" and cfg.model.logistic_c is not None and \
            fit_logistic_path(model, X, y, cfg.model.logistic_c):
        return None
    t = y if task != "classification" else LOGIT_SCALE * torch.nn.functional.one_hot(y, len(classes or [])).float()
    return fit_linear_path(model, X, t, None if cfg.model.ridge == "gcv" else float(cfg.model.ridge))


def length_callbacks(cfg: RunConfig, patience: int | None) -> list[Any]:
    """Early stopping (the budget's `patience`, `None` when off, and `rel_delta`) and the `max_time` limit."""
    out: list[Any] = []
    if patience:
        out.append(EarlyStopping(patience=patience, rel_delta=cfg.train.early_stopping_rel_delta))
    if cfg.train.max_time:
        out.append(TimeLimit(cfg.train.max_time))
    return out


def start_early_stopping(cfg: RunConfig, trainer: Any, callbacks: list, val: Any, se_rows: Any = None) -> None:
    """With `train.early_stopping_from_start`, the model as initialised is early stopping's "epoch 0":
    its val_loss (one evaluation before training) is the one to beat, by one standard error of that
    val_loss (the one-standard-error rule: on a statistical tie the simpler start wins), and a run in
    which no epoch beats it keeps those weights. With `model.linear_init` that start is the linear
    fit, so the run never ends worse on its validation rows than the linear model it started from.
    Without `model.linear_init` the start is random weights, nothing worth keeping: no epoch 0 then.
    `se_rows`: the `(X, y)` rows that standard error is estimated on, when `val` is not in memory (a streamed
    run passes a sample of its validation rows); default `val`. It also tells the run's verdict what its
    losses are in (`prepare_verdict`)."""
    prepare_verdict(cfg, trainer)
    stopper = next((cb for cb in callbacks if isinstance(cb, EarlyStopping)), None)
    if stopper is None or val is None or not (cfg.train.early_stopping_from_start and cfg.model.linear_init):
        return
    scores = trainer.evaluate(val)
    rows = val if se_rows is None else se_rows
    margin = val_standard_error(trainer, rows) if cfg.train.early_stopping_se else 0.0
    logs = {f"val_{key}": value for key, value in scores.items() if isinstance(value, (int, float))}
    confirm = paired_confirm(rows) if cfg.train.early_stopping_paired else None
    stopper.start_from(float(scores["loss"]), trainer.model, margin, logs, confirm)


def paired_confirm(rows: Any) -> Any:
    """Early stopping's end-of-fit check (`EarlyStopping.start_from(confirm=...)`): the kept epoch replaces the
    initial model only when its validation loss is lower by more than one standard error of the per-row
    differences `start_i - kept_i` over `rows` (in-memory `(X, y)`). Rows that both models find easy or hard
    cancel out of a paired difference, so the rule tells a real gain from noise with far fewer rows than
    the unpaired standard error of one model's loss. The model is left with the kept epoch's weights."""

    def confirm(trainer: Any, start_weights: dict[str, Any]) -> bool:
        kept = per_row_losses(trainer, rows)
        if kept is None or len(kept) < 2:
            return True
        model = unwrap_model(trainer.model)
        kept_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(start_weights)
        start = per_row_losses(trainer, rows)
        model.load_state_dict(kept_weights)
        gain = start - kept  # type: ignore[operator]
        return bool(gain.mean() > gain.std() / len(gain) ** 0.5)

    return confirm


def prepare_verdict(cfg: RunConfig, trainer: Any) -> None:
    """What a table run's verdict needs beyond the history: the units of its losses (a regression model trains
    on the standardised target: `fitloop.diagnose.verdict.STANDARDISED`) and a capacity probe, run only when
    the verdict is a plateau (`capacity_probe_for`)."""
    for cb in trainer.callbacks:
        if isinstance(cb, VerdictReporter):
            cb.units = STANDARDISED if trainer.task == "regression" else None
            cb.probe = capacity_probe_for(cfg)


def capacity_probe_for(cfg: RunConfig) -> Any:
    """The probe a table run's verdict calls on a plateau: the run's model, larger and without dropout or
    skip, trained about `PROBE_STEPS` optimizer steps (at most `PROBE_MAX_EPOCHS` epochs) on the same rows. An
    MLP is made `PROBE_WIDEN` times wider (at least `PROBE_WIDTH` units a layer; two layers for a linear
    model); a TabM twice as wide. It returns None (no probe) for a model without a spec (nothing to widen)
    and for rows not in memory."""

    def probe(trainer: Any) -> dict[str, Any] | None:
        spec = getattr(trainer.model, "spec", None)
        train = rows_of(trainer.train_data)  # a streamed run's rows are not read again for a probe
        if not isinstance(spec, (MLPSpec, TabMSpec)) or train is None or rows_of(trainer.val_data) is None:
            return None
        if isinstance(spec, TabMSpec):
            hidden = [2 * width for width in spec.hidden]
        else:
            hidden = [max(PROBE_WIDTH, PROBE_WIDEN * width) for width in spec.hidden] or [PROBE_WIDTH, PROBE_WIDTH]
        wider = build_model(dataclasses.replace(spec, hidden=hidden, dropout=0.0, skip=False))
        fit_bins(wider, train[0])
        rows = len(train[0])
        steps_per_epoch = max(1, math.ceil(rows / cfg.train.batch_size)) if cfg.train.batch_size else 1
        epochs = min(PROBE_MAX_EPOCHS, math.ceil(PROBE_STEPS / steps_per_epoch))
        result = capacity_probe(trainer, wider, epochs, optimizer=cfg.train.optimizer)
        result["model"] = f"hidden={hidden}, {result['model']}"
        return result

    return probe


def best_epoch(callbacks: list, history: list[dict[str, Any]]) -> int | None:
    """The epoch whose weights the run keeps: early stopping's best, else the lowest val_loss, else the last."""
    stopper = next((cb for cb in callbacks if isinstance(cb, EarlyStopping)), None)
    if stopper is not None and (stopper.best_epoch or stopper.from_start):
        return stopper.best_epoch  # 0: no epoch beat the initial model (`train.early_stopping_from_start`)
    if history and "val_loss" in history[0]:
        return min(history, key=lambda h: h["val_loss"])["epoch"]
    return history[-1]["epoch"] if history else None


def still_improving(history: list[dict[str, Any]], stop_reason: str | None, kept: int | None = None) -> str | None:
    """The note for a run whose best epoch is its last one, with how to train longer; else None.

    The best epoch is the one whose weights the run keeps (`kept`, from `best_epoch`: early stopping's
    choice, which may keep an earlier epoch, or the initial model, on a near-tie), else the lowest recorded
    val_loss: a run that ended while its validation loss was still falling. Without validation rows there
    is no held-out loss to judge by, so it says nothing.
    """
    if not history or "val_loss" not in history[-1]:
        return None
    epochs = history[-1]["epoch"]
    best = kept if kept is not None else min(history, key=lambda h: h["val_loss"])["epoch"]
    if best != epochs:
        return None
    if stop_reason and stop_reason.startswith("time limit"):
        how = f"the time limit ended it: pass a larger --max-time (now {stop_reason.split('max_time ')[-1]})"
    else:
        how = f"train longer with --epochs {2 * epochs}"
    return (f"the model was still improving: the best val_loss was at the last epoch ({epochs}), so more "
            f"training would likely help; {how}")


def budget_fields(budget: Budget | None) -> dict[str, Any] | None:
    """`run.json`'s `"budget"`: what the run was set to train."""
    if budget is None:
        return None
    return {"epochs": budget.epochs, "steps_per_epoch": budget.steps_per_epoch, "steps": budget.steps,
            "batch_size": budget.batch_size, "patience": budget.patience, "max_time": budget.max_time,
            "decided": budget.decided}


def process_age() -> float | None:
    """Seconds since this process started (from /proc, 10 ms resolution): the interpreter's own start-up
    and the imports before `main` count too. None where /proc is not there."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class FirstStep(Callback):
    """A callback that records how long the command took to reach its first training step (imports,
    reading, preprocessing and set-up included): the start-up cost a user waits through. `seconds`
    counts from `t0` (the command's `main`), `since_launch` from the process's start (Linux; None
    elsewhere), `cpu` is the process's CPU seconds by then (steadier than wall time on a busy machine)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.seconds: float | None = None
        self.since_launch: float | None = None
        self.cpu: float | None = None

    def on_train_batch_end(self, trainer: Any, step: int, loss: Any) -> None:
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.t0
            self.since_launch = process_age()
            self.cpu = time.process_time()
