"""Losses, optimizers and learning-rate schedulers by name or by object."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import _fastpath

__all__ = ["LOSSES", "make_loss", "MembersLoss", "make_optimizer", "optimizer_names", "make_scheduler", "task_of_loss",
           "step_scheduler_epoch"]

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
    "cross_entropy": nn.CrossEntropyLoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
}

_Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau

_TASK_OF_LOSS = {
    nn.MSELoss: "regression", nn.L1Loss: "regression", nn.HuberLoss: "regression",
    nn.SmoothL1Loss: "regression", nn.CrossEntropyLoss: "multiclass", nn.NLLLoss: "multiclass",
    nn.BCEWithLogitsLoss: "binary",
}


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def make_loss(loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss from a name in `LOSSES` or any callable `(output, target) -> scalar tensor`."""
    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSSES:
            raise ValueError(f"loss: unknown name {loss!r}.{_suggest(key, LOSSES)} "
                             f"Valid names: {', '.join(LOSSES)}; or pass any callable(output, target).")
        return LOSSES[key]()
    if callable(loss):
        return loss
    raise TypeError(f"loss: expected a name or a callable, got {type(loss).__name__}.")


def task_of_loss(loss_fn) -> str | None:
    """'regression', 'binary' or 'multiclass' for the built-in losses (also inside a wrapper that keeps the loss
    as `.base`, such as `fitloop.tabm.MembersLoss`); None when it can't tell."""
    loss_fn = getattr(loss_fn, "base", loss_fn)
    for cls, task in _TASK_OF_LOSS.items():
        if isinstance(loss_fn, cls):
            return task
    return None


def optimizer_names() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class in `torch.optim`, by lower-case name."""
    out = {}
    for name, obj in vars(torch.optim).items():
        base = torch.optim.Optimizer
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base:
            out[name.lower()] = obj
    return out


# Optimizers fitloop runs fused by default. Measured on CPU (BENCHMARKS.md): fused Adam's step takes
# 0.26-0.50x the time of torch's default at every size from 2 to 1.9M parameters; fused SGD ranges
# from 0.86x to 1.38x, so SGD keeps torch's default. `fused=True` asks for it on any optimizer
# that has it.
_FUSED_DEFAULT = {"adam", "adamw"}


def make_optimizer(optimizer, params: list[nn.Parameter], lr: float | None,
                   kwargs: dict | None = None, fused: bool | None = None) -> torch.optim.Optimizer:
    """Build an optimizer.

    Args:
        optimizer: a name (any `torch.optim` class, case-insensitive: `"adam"`, `"sgd"`, `"lbfgs"`),
            a `(name, kwargs)` pair, an `Optimizer` instance (used as it is), or a callable
            `params -> Optimizer`.
        params: the parameters to optimize.
        lr: learning rate; `None` keeps the optimizer's default (or the instance's own lr).
        kwargs: extra keyword arguments for the optimizer class.
        fused: use torch's fused implementation; `None` chooses: on for Adam and AdamW (faster at
            every size measured), off otherwise, unless the user passed `foreach`/`fused` themselves.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            for g in optimizer.param_groups:
                g["lr"] = lr
                if "initial_lr" in g:
                    g["initial_lr"] = lr
        return optimizer
    kwargs = dict(kwargs or {})
    if isinstance(optimizer, tuple) and len(optimizer) == 2 and isinstance(optimizer[0], str):
        optimizer, extra = optimizer
        kwargs.update(extra)
    if isinstance(optimizer, str):
        names = optimizer_names()
        key = optimizer.lower().replace("_", "")
        if key not in names:
            raise ValueError(f"optimizer: unknown name {optimizer!r}.{_suggest(key, names)} "
                             f"Valid names: {', '.join(sorted(names))}; or pass an Optimizer instance.")
        cls = names[key]
        if lr is not None:
            kwargs["lr"] = lr
        wants_fused = fused if fused is not None else key in _FUSED_DEFAULT
        if (wants_fused and "fused" in inspect.signature(cls.__init__).parameters and "fused" not in kwargs
                and "foreach" not in kwargs and all(p.is_floating_point() and not p.is_sparse for p in params)):
            kwargs["fused"] = True
        try:
            return _fastpath.build_optimizer(cls, params, kwargs)
        except TypeError as e:
            raise TypeError(f"optimizer {optimizer!r}: {e}. Check the keyword arguments "
                            f"{sorted(kwargs)} against torch.optim.{cls.__name__}.") from None
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer: the factory returned {type(opt).__name__}, not a torch Optimizer.")
        return make_optimizer(opt, params, lr)
    raise TypeError(f"optimizer: expected a name, a (name, kwargs) pair, an Optimizer or a factory, "
                    f"got {type(optimizer).__name__}.")


# --------------------------------------------------------------------------- schedulers

SCHEDULER_NAMES = ("step", "multistep", "exponential", "cosine", "plateau", "onecycle", "warmup_cosine",
                   "linear", "constant")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the base lr over `warmup_steps`, then cosine decay to
    `min_lr_ratio * lr` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_scheduler(scheduler, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int,
                   interval: str | None):
    """Build a scheduler and decide how often it steps.

    Args:
        scheduler: an `LRScheduler` (or `ReduceLROnPlateau`) instance, a name from `SCHEDULER_NAMES`,
            a `(name, kwargs)` pair, or a callable `optimizer -> scheduler`.
        steps_per_epoch: optimizer steps per epoch, for schedules given in steps (`onecycle`, `warmup_cosine`).
        epochs: the run's epochs, for the same schedules.
        interval: `"step"` or `"epoch"`; `None` takes the scheduler's natural interval (per step for
            `onecycle` and `warmup_cosine`, also given as a `OneCycleLR` instance; per epoch otherwise).
            Always declared, never guessed from the schedule's progress. Schedules given by name
            count their length in that unit.

    `("plateau", {"monitor": "val_accuracy", "mode": "max", "patience": 3})` steps
    `ReduceLROnPlateau` on a logged value once per epoch (default: the config's `monitor`).

    Returns:
        `(scheduler, interval)`.
    """
    sched_mod = torch.optim.lr_scheduler
    if interval not in (None, "step", "epoch"):
        raise ValueError(f"scheduler_interval: expected 'step' or 'epoch', got {interval!r}.")
    if isinstance(scheduler, tuple) and len(scheduler) == 2 and isinstance(scheduler[0], str):
        name, kw = scheduler[0], dict(scheduler[1])
    elif isinstance(scheduler, str):
        name, kw = scheduler, {}
    else:
        name, kw = None, {}
    monitor = kw.pop("monitor", None)
    sched: _Scheduler
    if name is not None:
        natural = "step" if name.lower() in ("onecycle", "warmup_cosine") else "epoch"
        # Schedules are counted in the unit they step in: optimizer steps, or epochs.
        units_per_epoch = steps_per_epoch if (interval or natural) == "step" else 1
        sched = _named_scheduler(name, kw, optimizer, epochs, units_per_epoch)
    else:
        sched = _given_scheduler(scheduler, optimizer)
        natural = "step" if isinstance(sched, sched_mod.OneCycleLR) else "epoch"  # OneCycleLR is defined in steps
    interval = interval or natural
    if monitor is not None:
        if not isinstance(sched, sched_mod.ReduceLROnPlateau):
            raise ValueError("scheduler: 'monitor' is an option of 'plateau' (ReduceLROnPlateau) only.")
        sched.monitor = monitor  # type: ignore[attr-defined]  # read by step_scheduler_epoch
    if isinstance(sched, sched_mod.ReduceLROnPlateau) and interval != "epoch":
        raise ValueError("scheduler: ReduceLROnPlateau steps on a monitored metric once per epoch; "
                         "use scheduler_interval='epoch'.")
    return sched, interval


def _named_scheduler(name: str, kw: dict, optimizer: torch.optim.Optimizer, epochs: int,
                     units_per_epoch: int) -> _Scheduler:
    """The scheduler `name` with its defaults, `kw` over them; lengths count `units_per_epoch` per epoch."""
    sched_mod = torch.optim.lr_scheduler
    key = name.lower()
    total = epochs * units_per_epoch
    if key == "step":
        return sched_mod.StepLR(optimizer, **{"step_size": 30, "gamma": 0.1, **kw})
    if key == "multistep":
        return sched_mod.MultiStepLR(optimizer, **kw)
    if key == "exponential":
        return sched_mod.ExponentialLR(optimizer, **{"gamma": 0.95, **kw})
    if key == "cosine":
        return sched_mod.CosineAnnealingLR(optimizer, **{"T_max": total, **kw})
    if key == "linear":
        return sched_mod.LinearLR(optimizer, **{"start_factor": 1.0, "end_factor": 0.0, "total_iters": total, **kw})
    if key == "constant":
        return sched_mod.ConstantLR(optimizer, **{"factor": 1.0, **kw})
    if key == "plateau":
        return sched_mod.ReduceLROnPlateau(optimizer, **kw)
    if key == "onecycle":
        max_lr = kw.pop("max_lr", [g["lr"] for g in optimizer.param_groups])
        return sched_mod.OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=units_per_epoch, **kw)
    if key == "warmup_cosine":
        if "warmup_epochs" in kw:
            kw["warmup_steps"] = kw.pop("warmup_epochs") * units_per_epoch
        kw.setdefault("warmup_steps", max(1, total // 20))
        kw.setdefault("total_steps", total)
        return warmup_cosine(optimizer, **kw)
    raise ValueError(f"scheduler: unknown name {name!r}.{_suggest(key, SCHEDULER_NAMES)} "
                     f"Valid names: {', '.join(SCHEDULER_NAMES)}; or pass a scheduler instance.")


def _given_scheduler(scheduler: object, optimizer: torch.optim.Optimizer) -> _Scheduler:
    """A scheduler instance as it is, or the one a factory `optimizer -> scheduler` builds."""
    sched_mod = torch.optim.lr_scheduler
    if isinstance(scheduler, (sched_mod.LRScheduler, sched_mod.ReduceLROnPlateau)):
        return scheduler
    if callable(scheduler):
        sched = scheduler(optimizer)
        if not isinstance(sched, (sched_mod.LRScheduler, sched_mod.ReduceLROnPlateau)):
            raise TypeError(f"scheduler: the factory returned {type(sched).__name__}, "
                            "not a torch LR scheduler.")
        return sched
    raise TypeError(f"scheduler: expected a name, a (name, kwargs) pair, a scheduler or a factory, "
                    f"got {type(scheduler).__name__}.")


def step_scheduler_epoch(scheduler: object, interval: str, logs: dict, default_monitor: str = "val_loss") -> None:
    """The end-of-epoch scheduler step: `ReduceLROnPlateau` on its monitored value from `logs`
    (the train loss when `val_loss` is monitored without validation data); others plainly."""
    sched_mod = torch.optim.lr_scheduler
    if scheduler is None or interval != "epoch":
        return
    if isinstance(scheduler, sched_mod.ReduceLROnPlateau):
        key = getattr(scheduler, "monitor", None) or default_monitor
        if key == "val_loss" and key not in logs:
            key = "loss"  # no validation set: the default monitor falls back to the train loss
        if key not in logs:
            raise KeyError(f"scheduler: ReduceLROnPlateau monitors {key!r}, which is not in the epoch "
                           f"logs {sorted(logs)}. Pass a validation set or another monitor.")
        scheduler.step(float(logs[key]))
    else:
        scheduler.step()  # type: ignore[attr-defined]


class MembersLoss(nn.Module):
    """A loss for a model that trains k members at once: given the members' outputs `(batch, k, ...)` (a
    `fitloop.tabm.TabM` in training mode) it is the mean of `loss` over the members, each scored against the same
    targets, so every member learns on its own; given an ensemble's `(batch, ...)` (evaluation) it is `loss`.

    Args:
        loss: a loss name (`fitloop.optim.LOSSES`) or a callable `(output, target) -> scalar`.
    """

    matches_shapes = True  # `Trainer.compute_loss` leaves the shapes to `forward`

    def __init__(self, loss: str | Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.base = make_loss(loss)

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.dim() == 3:  # (batch, k, out): the members of a model in training mode
            k = out.shape[1]
            flat = out.flatten(0, 1)
            y = target.repeat_interleave(k, 0)
            if y.is_floating_point() and y.numel() == flat.numel():
                y = y.view_as(flat)
            return self.base(flat, y)
        if target.is_floating_point() and out.shape != target.shape and out.numel() == target.numel():
            target = target.view_as(out)
        return self.base(out, target)
