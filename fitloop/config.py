"""Training settings as one dataclass (`TrainConfig`): keyword arguments of the `Trainer` resolve to it.

The command line's run configuration (`[data]`, `[model]`, `[train]` sections from TOML files,
flags and `--set`) is `fitloop.tabular.config`; its `[train]` section is a `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig"]

PRECISIONS = ("fp32", "bf16", "fp16")
# run.json's "format": what `fitloop predict/evaluate/resume/report` look for (here: no torch import needed).
RUN_FORMAT = "fitloop-run"
CONFIG_HEADER = "# fitloop run configuration"  # config.toml's first line (how `resume` knows a run's file)
# Settings that may differ on resume (they do not change the numbers a run produces): left out of
# the config fingerprint and of the resume check. The one list both use.
RESUME_IGNORED = ("quiet", "print_every", "run_dir", "device", "num_workers", "epochs", "checkpoint_every_seconds",
                  "guards", "strategy", "dist_timeout")
# The checks `fitloop.diagnose.guards` runs at the start of each fit; each one can be switched off on its own.
GUARD_NAMES = ("loss_shapes", "class_targets", "leakage", "unscaled", "divergence")


def _bad(name: str, value: Any, fix: str) -> None:
    raise ValueError(f"{name}: got {value!r}; {fix}")


def _whole(v: Any) -> bool:  # an int, not a bool (True == 1 would slip through)
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """Every setting of a `Trainer` that is plain data (so it can be saved, hashed and compared).

    Objects (the model, a loss callable, an optimizer instance, callbacks, metric objects) are
    passed to the `Trainer` directly; everything here can also be given as a keyword argument.

    Attributes:
        epochs: number of passes over the training data.
        batch_size: rows per step, on each process when several train together; `None` trains on the full batch.
        lr: learning rate; `None` keeps the optimizer's own default.
        seed: seeds the data order, dropout and noise (everything fitloop controls).
        device: `"auto"` (cuda, then mps, then cpu), or any torch device string.
        task: `"regression"`, `"binary"`, `"multiclass"` (or `"classification"`); inferred from
            the loss when `None`.
        quiet: print nothing.
        print_every: print epochs 1-3, every `print_every`-th and the last; `None` picks about ten lines.
        optimizer_kwargs: extra keyword arguments for an optimizer given by name.
        weight_decay: weight decay passed to the optimizer (decoupled for AdamW).
        fused: use torch's fused optimizer kernels; `None` decides by model size.
        scheduler_interval: `"step"` or `"epoch"`; `None` uses the scheduler's natural interval.
        accumulate: gradient accumulation: micro-batches per optimizer step.
        clip_grad_norm: clip the global gradient norm to this value (the norm is logged).
        clip_grad_value: clip each gradient element to `[-v, v]`.
        precision: `"fp32"`, `"bf16"` (autocast on CPU and CUDA) or `"fp16"` (CUDA, with GradScaler).
        compile: `True` (or `"model"`) runs the model through `torch.compile`; `"step"` compiles
            the whole training step (forward, loss, gradients, clipping, Adam/AdamW/SGD update)
            into one graph, the fast path for small models (see `fitloop.step.compiled`).
        penalty: `("l1" | "l2", strength)` added to the training loss, or `None`.
        input_noise: standard deviation of Gaussian noise added to float inputs in training only.
        train_metrics: compute task metrics on the training batches each epoch; `None` = on,
            except for full-batch training (one step per epoch) where it would cost more than the step.
        shuffle: reshuffle the training data every epoch.
        num_workers: DataLoader workers for the Dataset path.
        threads: torch intra-op threads; `None` leaves torch's default, except small models on
            CPU which use 1 thread (see BENCHMARKS.md); an int sets it.
        deterministic: `torch.use_deterministic_algorithms(True)`.
        run_dir: directory for the run (config, history, checkpoints, model bundle).
        checkpoint_every_steps: also checkpoint every N optimizer steps (mid-epoch).
        checkpoint_every_seconds: also checkpoint after an optimizer step when this many seconds have
            passed since the last checkpoint (bounds the work a kill loses in a long epoch); `None` = off.
        checkpoint_every_epochs: checkpoint every N epochs (0 for never).
        keep_last: how many recent checkpoints to keep (the best one is kept as well).
        monitor: logged value that decides the best checkpoint.
        mode: `"min"` or `"max"` for `monitor`.
        on_nonfinite: `"stop"` (raise, naming the step) or `"skip"` the step.
        guards: the silent-bug checks run at the start of each fit (`fitloop.diagnose.guards`), all on
            by default: a dict switching some off (`{"leakage": False}`), `{"leakage": "error"}` to make
            leakage an error, or `False` for none. Names: `GUARD_NAMES`.
        strategy: with several processes (torchrun): `"auto"` or `"ddp"` (DistributedDataParallel) or
            `"fsdp"` (fully_shard); ignored in one process. See `fitloop.distributed.strategy`.
        dist_timeout: seconds a collective waits for another process before the run stops, naming it.
    """

    epochs: int = 10
    batch_size: int | None = 64
    lr: float | None = 1e-3
    seed: int = 0
    device: str = "auto"
    task: str | None = None
    quiet: bool = False
    print_every: int | None = None
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    fused: bool | None = None
    scheduler_interval: str | None = None
    accumulate: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    precision: str = "fp32"
    compile: bool | str = False
    penalty: tuple[str, float] | None = None
    input_noise: float = 0.0
    train_metrics: bool | None = None
    shuffle: bool = True
    num_workers: int = 0
    threads: int | None = None
    deterministic: bool = False
    run_dir: str | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = 300.0
    checkpoint_every_epochs: int = 1
    keep_last: int = 2
    monitor: str = "val_loss"
    mode: str = "min"
    on_nonfinite: str = "stop"
    guards: dict[str, Any] | bool = field(default_factory=dict)
    strategy: str = "auto"
    dist_timeout: float = 60.0

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_kwargs(cls, base: TrainConfig | None = None, **kwargs) -> TrainConfig:
        """A config from `base` (or the defaults) with `kwargs` applied; unknown names get a
        suggestion."""
        names = {f.name for f in dataclasses.fields(cls)}
        for k in kwargs:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"Trainer got an unknown setting {k!r}.{hint} "
                                f"Valid settings: {', '.join(sorted(names))}.")
        d = dataclasses.asdict(base) if base is not None else {}
        d.update(kwargs)
        return cls(**d)

    def validate(self) -> None:
        """Raise a `ValueError` naming the first bad setting and the fix; `penalty` becomes `(str, float)`."""
        self._validate_training()
        self._validate_loop()
        self._validate_guards()

    def _validate_training(self) -> None:
        """What one optimizer step does: the budget, batch, lr, precision, task, regularisation, clipping."""
        if not _whole(self.epochs) or self.epochs < 0:
            _bad("epochs", self.epochs, "pass a whole number >= 0.")
        if self.batch_size is not None and (not _whole(self.batch_size) or self.batch_size < 1):
            _bad("batch_size", self.batch_size, "pass a whole number >= 1, or None for full-batch training.")
        if self.lr is not None and not (_number(self.lr) and self.lr > 0):
            _bad("lr", self.lr, "pass a learning rate > 0, e.g. lr=1e-3.")
        if not _whole(self.accumulate) or self.accumulate < 1:
            _bad("accumulate", self.accumulate, "pass a whole number >= 1 (micro-batches per optimizer step).")
        if self.precision not in PRECISIONS:
            _bad("precision", self.precision, f"choose one of {PRECISIONS}.")
        if self.task is not None and self.task not in ("regression", "binary", "multiclass", "classification"):
            _bad("task", self.task, "choose 'regression', 'binary', 'multiclass' or 'classification'.")
        if self.penalty is not None:
            pen: tuple[Any, ...] = tuple(self.penalty)
            try:
                ok = len(pen) == 2 and pen[0] in ("l1", "l2") and float(pen[1]) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                _bad("penalty", self.penalty, "pass ('l1', strength) or ('l2', strength), e.g. ('l2', 1e-4).")
            self.penalty = (str(pen[0]), float(pen[1]))
        if not _number(self.input_noise) or self.input_noise < 0:
            _bad("input_noise", self.input_noise, "pass a standard deviation >= 0.")
        for name in ("clip_grad_norm", "clip_grad_value"):
            v = getattr(self, name)
            if v is not None and not (_number(v) and v > 0):
                _bad(name, v, "pass a value > 0, or None to turn clipping off.")

    def _validate_loop(self) -> None:
        """The loop around the steps: monitoring, schedules, checkpoints, compilation, processes, threads."""
        if self.mode not in ("min", "max"):
            _bad("mode", self.mode, "choose 'min' or 'max'.")
        if self.on_nonfinite not in ("stop", "skip"):
            _bad("on_nonfinite", self.on_nonfinite, "choose 'stop' or 'skip'.")
        if self.scheduler_interval not in (None, "step", "epoch"):
            _bad("scheduler_interval", self.scheduler_interval, "choose 'step' or 'epoch'.")
        if self.checkpoint_every_steps is not None and (not _whole(self.checkpoint_every_steps)
                                                        or self.checkpoint_every_steps < 1):
            _bad("checkpoint_every_steps", self.checkpoint_every_steps, "pass a whole number >= 1 or None.")
        secs = self.checkpoint_every_seconds
        if secs is not None and not (_number(secs) and secs > 0):
            _bad("checkpoint_every_seconds", secs, "pass a number of seconds > 0 or None.")
        if not _whole(self.keep_last) or self.keep_last < 1:
            _bad("keep_last", self.keep_last, "keep at least 1 checkpoint.")
        if not any(self.compile is c for c in (False, True)) and self.compile not in ("model", "step"):
            _bad("compile", self.compile, "pass True or 'model' (compile the model), 'step' (compile the whole "
                "training step) or False.")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            _bad("strategy", self.strategy, "choose 'auto', 'ddp' or 'fsdp'.")
        if not _number(self.dist_timeout) or self.dist_timeout <= 0:
            _bad("dist_timeout", self.dist_timeout, "pass a number of seconds > 0.")
        if self.threads is not None and (not _whole(self.threads) or self.threads < 1):
            _bad("threads", self.threads, "pass a whole number >= 1 or None.")

    def _validate_guards(self) -> None:
        """`guards`: a bool, or a dict of known guard names to their allowed values."""
        if not isinstance(self.guards, (bool, dict)):
            _bad("guards", self.guards, 'pass a dict such as {"leakage": False}, True (all on) or False (all off).')
        for name, v in (self.guards.items() if isinstance(self.guards, dict) else ()):
            if name not in GUARD_NAMES:
                close = difflib.get_close_matches(str(name), GUARD_NAMES, n=1)
                _bad("guards", self.guards, f"unknown guard {name!r}" + (f" (did you mean {close[0]!r}?)" if close
                    else "") + f"; the guards are {', '.join(GUARD_NAMES)}.")
            allowed: tuple[Any, ...] = (True, False, "warn", "error") if name == "leakage" else (True, False)
            if not any(v is a or (isinstance(a, str) and v == a) for a in allowed):
                _bad(f"guards[{name!r}]", v, f"choose one of {allowed}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["penalty"] is not None:
            d["penalty"] = list(d["penalty"])
        return d

    def fingerprint(self, ignore: tuple[str, ...] = RESUME_IGNORED) -> str:
        """A short hash of the settings that change the training result (used to refuse a resume
        with a different config); `RESUME_IGNORED` settings are left out."""
        d = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
