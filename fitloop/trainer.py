"""The Trainer: fit, evaluate, predict, save; `train_step` and `eval_step` for customisation.

The Trainer owns its state explicitly (`TrainState`): the data-order generator and the position
in the epoch's permutation, the step counters, the device. Nothing lives in hidden iterators, so a
checkpoint of that state plus the RNGs resumes a run exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import callbacks as cbmod
from .callbacks import Callback, ProgressPrinter
from .config import TrainConfig
from .data import LoaderBatches, Split, TensorBatches, as_tensor
from .metrics import MetricSet, normalize_task, to_python
from .models import FunctionModel
from .optim import make_loss, make_optimizer, make_scheduler, task_of_loss, unhooked_step

__all__ = ["Trainer", "TrainState", "seed_everything", "pick_device", "NonFiniteError"]

# Models with fewer parameters than this run with one intra-op thread on CPU (see BENCHMARKS.md).
SMALL_MODEL_PARAMS = 100_000


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` picks cuda, then mps, then cpu; anything else is passed to `torch.device`."""
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: got {device!r} but CUDA is not available here; use device='auto' or 'cpu'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class TrainState:
    """Where a run is. Saved in every checkpoint; restoring it (with the RNGs) resumes exactly."""

    epoch: int = 0                 # completed epochs
    batch: int = 0                 # next batch index within the current epoch
    step: int = 0                  # optimizer steps taken in total
    target_epochs: int = 0         # fit() trains until `epoch == target_epochs`
    epoch_generator_state: torch.Tensor | None = None  # data generator at the start of this epoch
    skipped_steps: int = 0         # steps skipped with on_nonfinite="skip"
    epoch_losses: list = field(default_factory=list)   # losses of this epoch's steps so far
    epoch_sizes: list = field(default_factory=list)    # rows of each of those steps
    epoch_time: float = 0.0        # seconds spent in this epoch before a resume


class Trainer:
    """Trains any `nn.Module` (or a plain function with parameters) the way PyTorch intends.

    Args:
        model: an `nn.Module`/`nn.Sequential`, or a callable `fn(x, *params)` together with
            `params=` (see `FunctionModel`).
        loss: a name (`"mse"`, `"l1"`, `"huber"`, `"cross_entropy"`, `"bce_with_logits"`) or any
            callable `(output, target) -> scalar`.
        optimizer: any `torch.optim` name (`"adam"`, `"sgd"`, `"lbfgs"`, ...), a `(name, kwargs)`
            pair, an `Optimizer` instance or a factory `params -> Optimizer`.
        scheduler: an LR scheduler instance, a name (`"cosine"`, `"plateau"`, `"onecycle"`,
            `"warmup_cosine"`, ...), a `(name, kwargs)` pair or a factory `optimizer -> scheduler`.
        callbacks: `Callback` objects, called in this order after the Trainer's own bookkeeping.
        metrics: extra metrics (callables or torchmetrics objects), as a list or a dict.
        params: the parameter tensors of a plain-function model.
        config: a `TrainConfig`; keyword settings below override it.
        **settings: any `TrainConfig` field: `epochs`, `batch_size`, `lr`, `seed`, `device`,
            `quiet`, `task`, `accumulate`, `precision`, `run_dir`, ...

    Example:
        >>> trainer = fl.Trainer(model, loss="mse", optimizer="adam", lr=1e-3, epochs=100)
        >>> history = trainer.fit(train, val)
        >>> trainer.evaluate(test)
        {'loss': 0.021, 'mse': 0.021, 'rmse': 0.145, 'mae': 0.11, 'r2': 0.93}
    """

    def __init__(self, model: nn.Module | Callable, loss="mse", optimizer="adam", *, scheduler=None,
                 callbacks: Sequence[Callback] | None = None, metrics=None, params=None,
                 config: TrainConfig | None = None, **settings):
        self.config = cfg = TrainConfig.from_kwargs(config, **settings)
        if not isinstance(model, nn.Module):
            if params is None or not callable(model):
                raise TypeError(f"model: expected an nn.Module, or a function together with params=[...], "
                                f"got {type(model).__name__}.")
            model = FunctionModel(model, params)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            n = sum(1 for _ in model.parameters())
            raise ValueError(f"model: none of the {n} parameters of {type(model).__name__} requires grad, "
                             "so there is nothing to train. Create them with requires_grad=True "
                             "(or call p.requires_grad_() on each).")
        self.device = pick_device(cfg.device)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision: got 'fp16' on device {self.device.type!r}; fp16 training needs "
                             "CUDA (GradScaler). Use precision='bf16' on CPU, or 'fp32'.")
        self.model = model.to(self.device)
        self.loss_fn = make_loss(loss)
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)
        self.task = cfg.task or task_of_loss(self.loss_fn) or "regression"
        kwargs = dict(cfg.optimizer_kwargs)
        if cfg.weight_decay:
            kwargs["weight_decay"] = cfg.weight_decay
        lr = cfg.lr if (not isinstance(optimizer, torch.optim.Optimizer) or "lr" in settings) else None
        self.optimizer = make_optimizer(optimizer, trainable, lr, kwargs, fused=cfg.fused)
        self._needs_closure = isinstance(self.optimizer, torch.optim.LBFGS)
        self._scheduler_arg = scheduler
        self.scheduler = None
        self.scheduler_interval = "epoch"
        self._user_metrics = metrics
        self.callbacks: list[Callback] = list(callbacks or [])
        if not cfg.quiet:
            self.callbacks.append(ProgressPrinter(cfg.print_every))
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks: expected Callback objects, got {type(cb).__name__}.")
        self.generator = torch.Generator().manual_seed(cfg.seed)  # data order, on the CPU
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.stop_reason: str | None = None
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self._forward = torch.compile(self.model) if cfg.compile in (True, "model") else self.model
        self._compiled_step = None  # compile="step": built by _setup_fit (fitloop.compiled_step)
        self._opt_params = None  # set per fit: the parameters _zero_grad clears (None: call zero_grad)
        self._raw_step = None  # set per fit: optimizer.step without torch's hook wrapper (fitloop.optim)
        self._params = trainable
        self._seeded = False
        self._metric_set: MetricSet | None = None
        self._grad_norms: list[torch.Tensor] = []
        self._epoch_lr = float(self.optimizer.param_groups[0]["lr"])
        self.checkpointer = None  # set by the run-directory machinery (fitloop.checkpoint)
        if cfg.run_dir:
            from .checkpoint import Checkpointer

            self.checkpointer = Checkpointer(cfg.run_dir, cfg)

    # ------------------------------------------------------------------ properties

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.state.epoch

    @property
    def global_step(self) -> int:
        return self.state.step

    @property
    def target_epochs(self) -> int:
        return self.state.target_epochs

    def log(self, msg: str) -> None:
        """Print a message unless the trainer is quiet."""
        if not self.config.quiet:
            print(msg, file=sys.stdout, flush=True)

    @contextlib.contextmanager
    def _threads(self):
        """The intra-op thread policy, applied while fitloop computes and restored afterwards.

        Small models (< `SMALL_MODEL_PARAMS` parameters) on the CPU run with one thread: their ops
        are too small to split, and on a busy machine a split op waits for a descheduled thread
        (measured 5-12x slower per step on 2 shared cores; BENCHMARKS.md). `threads=N` overrides.
        """
        prev = torch.get_num_threads()
        want = self.config.threads
        if want is None and self.device.type == "cpu" and prev > 1 \
                and sum(p.numel() for p in self._params) < SMALL_MODEL_PARAMS:
            want = 1
        if want is None or want == prev:
            yield
            return
        torch.set_num_threads(want)
        try:
            yield
        finally:
            torch.set_num_threads(prev)

    # ------------------------------------------------------------------ data

    def _batches(self, data, *, train: bool):
        """A batch source for `data`: in-memory tensors go to the device once."""
        cfg = self.config
        bs = cfg.batch_size
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = Split(data[0], data[1])
        if isinstance(data, Split):
            if len(data) == 0:
                raise ValueError("data: the dataset is empty (0 rows); nothing to train or evaluate on.")
            X = data.X.to(self.device)
            y = None if data.y is None else self._prepare_target(data.y).to(self.device)
            if X.is_floating_point():
                X = X.to(self._param_dtype())
            return TensorBatches(X, y, bs if train else _eval_batch_size(bs, len(X)), shuffle=train and cfg.shuffle)
        if isinstance(data, (Dataset, DataLoader)):
            n = len(data.dataset if isinstance(data, DataLoader) else data)  # type: ignore[arg-type]
            if n == 0:
                raise ValueError("data: the dataset is empty (0 rows); nothing to train or evaluate on.")
            return LoaderBatches(data, bs if train else _eval_batch_size(bs, n), shuffle=train and cfg.shuffle,
                                 num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        if isinstance(data, (torch.Tensor, np.ndarray)):
            raise TypeError("data: got a bare tensor/array; pass (X, y), a Split from fl.split, or a Dataset.")
        raise TypeError(f"data: expected (X, y), a Split, a Dataset or a DataLoader, got {type(data).__name__}.")

    def _param_dtype(self) -> torch.dtype:
        return self._params[0].dtype if self._params[0].is_floating_point() else torch.float32

    def _prepare_target(self, y: torch.Tensor) -> torch.Tensor:
        """Targets in the dtype the loss expects, converted once (not per step)."""
        task = normalize_task(self.task, 2)
        if task == "multiclass" and y.is_floating_point() and y.ndim == 1:
            if not torch.equal(y, y.round()):
                raise ValueError("y: cross-entropy needs class indices (0..C-1) but y has fractional values; "
                                 "use a regression loss, or pass integer labels.")
            return y.long()
        if task in ("regression", "binary") and not y.is_floating_point():
            return y.to(self._param_dtype())
        return y

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True), None
        if isinstance(batch, (tuple, list)):
            x = batch[0].to(self.device, non_blocking=True)
            y = batch[1].to(self.device, non_blocking=True) if len(batch) > 1 else None
            return x, y
        raise TypeError(f"batch: expected a tensor or an (x, y) tuple from the DataLoader, got "
                        f"{type(batch).__name__}; override Trainer.train_step for other batch types.")

    # ------------------------------------------------------------------ the loop

    def fit(self, train, val=None) -> list[dict[str, Any]]:
        """Train for `epochs` epochs, validating after each one when `val` is given.

        Args:
            train: `(X, y)` tensors or arrays, a `Split` from `fl.split`, a `Dataset` or a `DataLoader`.
            val: the same kinds, or `None` for no validation.

        Returns:
            The history: one dict per epoch with `epoch`, `loss`, the train metrics, `val_loss` and
            `val_` metrics when validating, `lr` and `time` (seconds).
        """
        guard = getattr(self.checkpointer, "guard", None)  # run directory: status, signals, bundle
        with self._threads(), (guard(self) if guard is not None else contextlib.nullcontext()):
            return self._fit(train, val)

    def resume(self, *args, run_dir: str | None = None, checkpoint: str | None = None,
               force: bool = False) -> list[dict[str, Any]]:
        """Continue a run from its latest good checkpoint and finish it.

        Call it on a Trainer built with the same model, loss, optimizer, callbacks and settings, with
        the same data as `fit`: `trainer.resume(train, val)` (the run directory is the Trainer's
        `run_dir`) or `trainer.resume("runs/exp1", train, val)`.

        Args:
            *args: `[run_dir,] train[, val]`.
            run_dir: the run directory, when not the Trainer's own.
            checkpoint: a specific checkpoint file instead of the latest good one.
            force: resume even when the config or the data changed since the checkpoint.

        Returns:
            The full history, the epochs before the interruption included.
        """
        from .checkpoint import resume

        if args and isinstance(args[0], (str, os.PathLike)):
            run_dir, args = str(args[0]), args[1:]
        if not 1 <= len(args) <= 2:
            raise TypeError("resume: pass the training data (and the validation data) as to fit(): "
                            "trainer.resume(train, val) or trainer.resume('runs/exp1', train, val).")
        train, val = args[0], (args[1] if len(args) > 1 else None)
        return resume(self, train, val, run_dir=run_dir, checkpoint=checkpoint, force=force)

    def _fit(self, train, val=None) -> list[dict[str, Any]]:
        st = self.state
        train_batches = self._batches(train, train=True)
        val_batches = None if val is None else self._batches(val, train=False)
        self._setup_fit(train_batches)
        self.should_stop, self.stop_reason = False, None
        if hasattr(self.checkpointer, "on_fit_start"):  # fresh: write the run dir; resume: restore
            self.checkpointer.on_fit_start(self, train, val)
        self._emit("on_fit_start")
        while st.epoch < st.target_epochs and not self.should_stop:
            t0 = time.perf_counter()
            if st.batch == 0:
                self._emit("on_epoch_start", st.epoch + 1)
            logs = self._train_epoch(train_batches)
            if self.should_stop and st.batch != 0:  # interrupted mid-epoch (signal): no epoch record
                break
            if val_batches is not None:
                logs.update(self._evaluate_batches(val_batches, prefix="val_"))
            logs["lr"] = float(self._epoch_lr)  # the lr of the epoch's last step (before an epoch schedule)
            self._step_scheduler_epoch(logs)
            logs = {"epoch": st.epoch, **{k: to_python(v) for k, v in logs.items()}}
            per_step_checked = self._check_on_cpu and not self._needs_closure
            if not per_step_checked and not math.isfinite(logs["loss"]) and self.config.on_nonfinite == "stop":
                raise NonFiniteError(
                    f"Training stopped after epoch {st.epoch}: the epoch's loss is {logs['loss']}. On "
                    f"{self.device.type} (or with a closure optimizer such as LBFGS) the loss is checked once per "
                    "epoch (a per-step check would sync the device every step). The last good checkpoint was "
                    "kept. Try a lower learning rate, or check the data for NaN/inf.")
            logs["time"] = st.epoch_time + time.perf_counter() - t0
            st.epoch_time = 0.0
            self.history.append(logs)
            # Every callback sees the same, complete logs: train keys, val_ keys, lr and time.
            if val_batches is not None:
                self._emit("on_validation_end", logs)
            self._emit("on_epoch_end", st.epoch, logs)
            if self.checkpointer is not None:
                self.checkpointer.on_epoch_end(self, logs)
        if self.stop_reason:
            self.log(f"Stopped: {self.stop_reason}.")
        if self.checkpointer is not None:
            self.checkpointer.on_fit_end(self)
        self._emit("on_fit_end")
        return self.history

    def _setup_fit(self, train_batches) -> None:
        """Per-fit set-up: seeds (on a fresh start), scheduler, epoch target, metric choice."""
        cfg, st = self.config, self.state
        self.steps_per_epoch = len(train_batches)
        if not self._seeded:
            seed_everything(cfg.seed)
            self._seeded = True
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if st.target_epochs <= st.epoch and st.batch == 0:
            st.target_epochs = st.epoch + cfg.epochs
        if self._scheduler_arg is not None and self.scheduler is None:
            self.scheduler, self.scheduler_interval = make_scheduler(
                self._scheduler_arg, self.optimizer, steps_per_epoch=math.ceil(self.steps_per_epoch / cfg.accumulate),
                epochs=cfg.epochs, interval=cfg.scheduler_interval)
        self._epoch_lr = float(self.optimizer.param_groups[0]["lr"])
        tm = cfg.train_metrics
        self._keep_outputs = tm if tm is not None else self.steps_per_epoch > 1
        self._metric_set = None
        self._check_on_cpu = self.device.type == "cpu"
        self._finite_buffers = (torch.zeros(1, device=self.device), torch.ones(1, device=self.device))
        self._named_params = list(self.model.named_parameters())  # once per fit: the check runs every step
        self._raw_step = unhooked_step(self.optimizer)
        plain = type(self.optimizer).zero_grad is torch.optim.Optimizer.zero_grad
        self._opt_params = [p for g in self.optimizer.param_groups for p in g["params"]] if plain else None
        if cfg.compile == "step":
            from .compiled_step import CompiledStep, unsupported

            reason = unsupported(self, train_batches)
            if reason:
                raise ValueError(f"compile='step': {reason}. Use compile=True (compiles the model only) or "
                                 "compile=False for this run.")
            if self._compiled_step is None:
                self._compiled_step = CompiledStep(self)

    def _train_epoch(self, batches) -> dict[str, Any]:
        """Run the steps of one epoch from `state.batch` on; return the train logs (tensors)."""
        st = self.state
        if st.batch == 0:
            st.epoch_generator_state = self.generator.get_state()
            st.epoch_losses, st.epoch_sizes = [], []
            self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        else:  # resuming mid-epoch: replay the epoch's permutation from its start
            self.generator.set_state(st.epoch_generator_state)
            self._outputs = getattr(self, "_outputs", [])
        if not self.model.training:  # validation puts it back after itself; this is for a first fit
            self.model.train()
        n_batches = len(batches)
        batch_end = [cb for cb in self.callbacks if cbmod.overrides(cb, "on_train_batch_end")]
        ckpt = self.checkpointer
        in_memory = isinstance(batches, TensorBatches)
        k = self.config.accumulate
        self._last_micro, self._accum_weight = True, 1.0
        for batch in batches.epoch(self.generator, st.batch):
            x, y = batch if in_memory else self._to_device(batch)
            if k > 1:
                self._last_micro = (st.batch + 1) % k == 0 or st.batch + 1 == n_batches
                self._accum_weight = self._accum_share(batches, st.batch, len(x))
            loss, out = self.train_step((x, y))
            st.epoch_losses.append(loss)
            st.epoch_sizes.append(x.shape[0])
            if self._keep_outputs:
                self._outputs.append((out, y))
            st.batch += 1
            for cb in batch_end:
                cb.on_train_batch_end(self, st.step, loss)
            if ckpt is not None and ckpt.on_step_end(self):
                return {}  # a stop was requested (signal): leave with the position saved
            if self.should_stop and st.batch < n_batches:
                return {}
        st.epoch += 1
        st.batch = 0
        logs: dict[str, Any] = {"loss": _mean_loss(st.epoch_losses, st.epoch_sizes)}
        if self._keep_outputs and self._outputs and self._outputs[0][1] is not None:
            out = torch.cat([o for o, _ in self._outputs])
            y = torch.cat([t for _, t in self._outputs])
            logs.update(self._metrics().compute(out, y))
        if st.skipped_steps:
            logs["skipped_steps"] = st.skipped_steps
        if self._grad_norms:
            logs["grad_norm"] = torch.stack(self._grad_norms).mean()
            self._grad_norms = []
        self._outputs = []
        return logs

    # ------------------------------------------------------------------ steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's forward pass, under autocast when `precision` asks for it."""
        if self._autocast_dtype is None:
            return self._forward(x)
        with torch.autocast(self.device.type, dtype=self._autocast_dtype):
            return self._forward(x)

    def compute_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss in fp32. A target of shape (N,) against an output of shape (N, 1) is viewed
        as (N, 1) rather than broadcast to (N, N), the classic silent bug."""
        if out.dtype != torch.float32 and out.is_floating_point() and self._autocast_dtype is not None:
            out = out.float()
        if y is not None and out.shape != y.shape and y.is_floating_point() and out.numel() == y.numel():
            y = y.view_as(out)
        elif y is not None and out.shape != y.shape and y.is_floating_point() and out.ndim != y.ndim \
                and not self._is_multiclass():
            raise ValueError(f"loss: model output has shape {tuple(out.shape)} but the target has shape "
                             f"{tuple(y.shape)}; they would broadcast silently. Make the model return one "
                             "value per target (e.g. out_features matching y's columns).")
        return self.loss_fn(out, y)

    def _is_multiclass(self) -> bool:
        return normalize_task(self.task, 2) == "multiclass"

    def _penalty(self) -> torch.Tensor:
        kind, strength = self.config.penalty  # type: ignore[misc]
        if kind == "l2":
            return strength * sum(p.pow(2).sum() for p in self._params)
        return strength * sum(p.abs().sum() for p in self._params)

    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step: forward, loss, zero_grad, backward, optimizer step.

        Override to customise. Returns the detached loss and output (tensors: no `.item()`).
        """
        x, y = batch
        cfg = self.config
        if self._compiled_step is not None and self._compiled_step.ready():
            return self._compiled_train_step(x, y)
        if cfg.input_noise and x.is_floating_point():
            x = x + cfg.input_noise * torch.randn_like(x)
        if self._needs_closure:
            return self._closure_step(x, y)
        out = self.forward(x)
        loss = self.compute_loss(out, y)
        total = loss + self._penalty() if cfg.penalty is not None else loss
        first_micro = cfg.accumulate == 1 or self.state.batch % cfg.accumulate == 0
        if first_micro:
            self._zero_grad()
        if cfg.accumulate > 1:
            total = total * self._accum_weight
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        if self._last_micro:
            self._optimizer_step(loss)
        return loss.detach(), out.detach()

    def _compiled_train_step(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The same step as one compiled graph (`compile="step"`, see fitloop.compiled_step)."""
        cs = self._compiled_step
        compiled_before = cs.compile_seconds
        loss, out, finite, ok, norm = cs(x, y)
        if cs.compile_seconds != compiled_before:
            self.log(f"compile='step': compiled the training step for batches of {x.shape[0]} rows in "
                     f"{cs.compile_seconds - compiled_before:.1f} s.")
        if norm is not None:
            self._grad_norms.append(norm.detach())
        if (self._check_on_cpu or self.config.on_nonfinite == "skip") and not ok.item():
            # the graph changed nothing: report it as the eager step would
            flags = finite.tolist()
            bad = next((n for n, f in zip(self._compiled_step.all_names, flags) if not f), None)
            self._nonfinite(loss, flags[-1], bad)
            return loss, out
        self.state.step += 1
        self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        self._step_scheduler_batch()
        return loss, out

    def _zero_grad(self) -> None:
        """`optimizer.zero_grad(set_to_none=True)`. Unless a subclass overrides it, the gradients are set
        to None directly: the same effect without its profiler range and hook checks (~13 us per step,
        5% of a small model's step; BENCHMARKS.md)."""
        if self._opt_params is None:
            self.optimizer.zero_grad(set_to_none=True)
            return
        for p in self._opt_params:
            p.grad = None

    def _accum_share(self, batches, i: int, rows: int) -> float:
        """The weight of micro-batch `i` in its accumulation group: its share of the group's rows, so
        that k micro-batches of a mean-reduced loss give the gradient of one batch of all their rows
        (also when the epoch's last group is short or its last batch smaller)."""
        k = self.config.accumulate
        if k == 1:
            return 1.0
        first = i - i % k
        n_micro = min(k, len(batches) - first)
        b = getattr(batches, "batch_size", None)
        n = getattr(batches, "n", None)
        if isinstance(b, int) and isinstance(n, int):  # in-memory batches: sizes are known
            return rows / (min(first * b + n_micro * b, n) - first * b)
        return 1.0 / n_micro  # loaders: assume equal batch sizes

    def _closure_step(self, x, y):
        """Optimizers such as LBFGS re-evaluate the loss several times per step."""
        outs = []

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            out = self.forward(x)
            loss = self.compute_loss(out, y)
            total = loss + self._penalty() if self.config.penalty is not None else loss
            total.backward()
            if not outs:
                outs.append((loss.detach(), out.detach()))
            return total

        self.optimizer.step(closure)
        self.state.step += 1
        self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        self._step_scheduler_batch()
        return outs[0]

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        cfg = self.config
        if self.scaler is not None and (cfg.clip_grad_norm or cfg.clip_grad_value):
            self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad_norm:
            # The total norm before clipping, kept as a tensor (no sync) and averaged per epoch.
            norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.clip_grad_norm)
            self._grad_norms.append(norm.detach())
        elif cfg.clip_grad_value:
            self._grad_norms.append(torch.nn.utils.get_total_norm(
                [p.grad for p in self._params if p.grad is not None]).detach())
        if cfg.clip_grad_value:
            torch.nn.utils.clip_grad_value_(self._params, cfg.clip_grad_value)
        if not self._check_finite(loss):
            return  # step skipped (on_nonfinite="skip")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self._raw_step is None or not self._raw_step():
            self.optimizer.step()
        self.state.step += 1
        self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        self._step_scheduler_batch()

    def _check_finite(self, loss: torch.Tensor) -> bool:
        """Stop (or skip the step) when the loss or a gradient is NaN/inf.

        On the CPU reading the loss costs no device sync, and the gradients are checked through
        their sum (a bad gradient with a finite loss must stop the step before the update).
        Returns False when the step must be skipped.
        """
        skip = self.config.on_nonfinite == "skip"
        if not skip and not self._check_on_cpu:
            return True  # accelerators: no per-step sync; `_fit` checks the epoch's loss instead
        loss_ok = math.isfinite(loss.item())
        bad_param = _nonfinite_grad(self._named_params, *self._finite_buffers)
        if loss_ok and bad_param is None:
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self._nonfinite(loss, loss_ok, bad_param)
        return False

    def _nonfinite(self, loss: torch.Tensor, loss_ok: bool, bad_param: str | None) -> None:
        """A step with a NaN/inf loss or gradient: count it (on_nonfinite="skip") or raise."""
        st = self.state
        skip = self.config.on_nonfinite == "skip"
        what = (f"the loss is {loss.item()}" if not loss_ok
                else f"the gradient of parameter {bad_param!r} is not finite")
        if skip:
            st.skipped_steps += 1
            return
        where = f"epoch {st.epoch + 1}, step {st.batch + 1} of the epoch (global step {st.step + 1})"
        grad_note = f"; the gradient of {bad_param!r} is not finite too" if bad_param and not loss_ok else ""
        raise NonFiniteError(f"Training stopped at {where}: {what}{grad_note}. The last good checkpoint was "
                             f"kept. Try a lower learning rate (lr is {self.optimizer.param_groups[0]['lr']:g}), "
                             "check the data for NaN/inf, or pass on_nonfinite='skip'.")

    def _step_scheduler_batch(self) -> None:
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()

    def _step_scheduler_epoch(self, logs: dict[str, Any]) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            key = getattr(self.scheduler, "monitor", None) or self.config.monitor
            if key == "val_loss" and key not in logs:
                key = "loss"  # no validation set: the default monitor falls back to the train loss
            if key not in logs:
                raise KeyError(f"scheduler: ReduceLROnPlateau monitors {key!r}, which is not in the epoch "
                               f"logs {sorted(logs)}. Pass a validation set or another monitor.")
            self.scheduler.step(float(logs[key]))
        else:
            self.scheduler.step()

    def eval_step(self, batch) -> torch.Tensor:
        """The model's output for one batch, in eval mode (the caller sets no_grad/inference mode)."""
        x, _ = batch
        return self.forward(x)

    # ------------------------------------------------------------------ evaluation

    def _metrics(self) -> MetricSet:
        if self._metric_set is None:
            self._metric_set = MetricSet(self._resolved_task(), self._user_metrics)
        return self._metric_set

    def _resolved_task(self, out: torch.Tensor | None = None) -> str:
        if self.task != "classification":
            return self.task
        width = out.shape[-1] if out is not None and out.ndim > 1 else 1
        return normalize_task(self.task, width)  # type: ignore[return-value]

    def _run_eval(self, batches, *, inference: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        was_training = self.model.training
        self.model.eval()
        outs, ys = [], []
        ctx = torch.inference_mode() if inference else torch.no_grad()
        try:
            with ctx:
                for batch in batches.epoch(None):
                    x, y = batch if isinstance(batches, TensorBatches) else self._to_device(batch)
                    outs.append(self.eval_step((x, y)))
                    if y is not None:
                        ys.append(y)
        finally:
            self.model.train(was_training)
        out = torch.cat(outs)
        return out, (torch.cat(ys) if ys else None)

    def _evaluate_batches(self, batches, prefix: str = "") -> dict[str, Any]:
        out, y = self._run_eval(batches)
        if y is None:
            raise ValueError("evaluate: the data has no targets (y); use predict() for unlabelled data.")
        with torch.no_grad():
            res: dict[str, Any] = {"loss": self.compute_loss(out, y)}
            res.update(self._metrics().compute(out, y))
        return {prefix + k: v for k, v in res.items()}

    def evaluate(self, data) -> dict[str, Any]:
        """Loss and task metrics on labelled data (e.g. the held-out test split).

        Returns:
            A dict of floats: `loss` plus accuracy/F1/precision/recall (and `confusion_matrix`, a
            nested list) for classification, or MSE/RMSE/MAE/R2 for regression.
        """
        with self._threads():
            logs = self._evaluate_batches(self._batches(data, train=False))
        self.last_metrics = {k: to_python(v) for k, v in logs.items()}
        return self.last_metrics

    def predict(self, X, *, output: str = "raw") -> torch.Tensor:
        """Predictions for new inputs, in eval mode under `torch.inference_mode()`.

        Args:
            X: a tensor or array of inputs, a `Split`, a `Dataset` or a `DataLoader`.
            output: `"raw"` (the model's output), `"class"` (class indices) or `"proba"`
                (class probabilities) for classification.

        Returns:
            A tensor on the CPU with one row per input row.
        """
        if output not in ("raw", "class", "proba"):
            raise ValueError(f"predict: output must be 'raw', 'class' or 'proba', got {output!r}.")
        if isinstance(X, (torch.Tensor, np.ndarray, list)):
            X = Split(as_tensor(X, "X"), None)
        with self._threads():
            out, _ = self._run_eval(self._batches(X, train=False), inference=True)
        out = out.float()
        if output == "raw":
            return out.cpu()
        task = self._resolved_task(out)
        if task == "regression":
            raise ValueError("predict: output='class'/'proba' is for classification; this model does regression.")
        if task == "binary":
            p = torch.sigmoid(out.reshape(-1))
            return (p > 0.5).long().cpu() if output == "class" else torch.stack([1 - p, p], 1).cpu()
        return out.argmax(-1).cpu() if output == "class" else out.softmax(-1).cpu()

    # ------------------------------------------------------------------ lr finder

    def lr_find(self, train, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
                smooth: float = 0.98, diverge: float = 4.0, plot=None):
        """Sweep the learning rate exponentially and suggest one; see `fitloop.lr_finder.lr_find`.

        The model, optimizer, scheduler, data generator and all RNG states are left exactly as
        they were.
        """
        from .lr_finder import lr_find

        return lr_find(self, train, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, smooth=smooth,
                       diverge=diverge, plot=plot)

    # ------------------------------------------------------------------ save

    def save(self, path: str, *, extra: Mapping[str, Any] | None = None) -> str:
        """Save the model as a bundle: `model.safetensors` + `fitloop.json` (spec, task, metrics,
        versions). Never a pickle. Returns the directory."""
        from .io import save_bundle

        meta = {"task": self.task, "history_tail": self.history[-1:] if self.history else [],
                "metrics": getattr(self, "last_metrics", None), "config": self.config.to_dict()}
        if extra:
            meta.update(extra)
        return save_bundle(self.model, path, meta)

    # ------------------------------------------------------------------ callbacks

    def notify_checkpoint(self, path: str) -> None:
        """Fire `on_checkpoint(trainer, path)`; called by whatever has just written a checkpoint."""
        self._emit("on_checkpoint", str(path))

    def _emit(self, event: str, *args) -> None:
        """Call `event` on every callback that implements it, in the order they were given."""
        for cb in self.callbacks:
            if cbmod.overrides(cb, event):
                getattr(cb, event)(self, *args)


def _mean_loss(losses: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """The epoch's loss: the mean of the step losses weighted by rows (one reduction per epoch)."""
    if len(losses) == 1:
        return losses[0]
    stacked = torch.stack(losses)
    if sizes[-1] == sizes[0]:
        return stacked.mean()
    w = torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)
    return (stacked * w).sum() / sum(sizes)


def _nonfinite_grad(named_params: list[tuple[str, nn.Parameter]], found: torch.Tensor,
                    one: torch.Tensor) -> str | None:
    """The name of the first parameter whose gradient holds NaN/inf, or None.

    One fused check over all dense gradients first (torch's AMP non-finite check, ~2 us for a small
    model on CPU, with a scale of 1 so the gradients are unchanged); the per-parameter search runs
    only on a hit. `found` is zero on entry and only ever set to one, so it is reset on a hit alone.
    Sparse gradients (SparseAdam) are checked through their values.
    """
    dense, sparse = [], []
    for _, p in named_params:
        g = p.grad
        if g is not None:
            (sparse if g.is_sparse else dense).append(g)
    if dense:
        torch._amp_foreach_non_finite_check_and_unscale_(dense, found, one)
    if found.item() == 0 and (not sparse or all(torch.isfinite(g._values()).all() for g in sparse)):
        return None
    found.zero_()
    values = lambda g: g._values() if g.is_sparse else g
    return next((n for n, p in named_params if p.grad is not None and not torch.isfinite(values(p.grad)).all()),
                None)


def _eval_batch_size(batch_size: int | None, n: int) -> int | None:
    """Evaluation has no backward pass: bigger batches are fine, bounded to keep memory modest."""
    return None if batch_size is None else max(batch_size, min(n, 8192))
