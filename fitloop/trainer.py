"""The Trainer: `fit` (both loops visible), `evaluate`, `predict`, `save`, `state_dict`.

    fit(train, val)
      for each epoch:                       on_epoch_start
        for each batch:                     train_step -> fitloop.step.TrainingStep
          record the loss                   on_train_batch_end, on_optimizer_step
        validate (eval mode, no_grad)
        log, per-epoch scheduler            on_validation_end, on_epoch_end (checkpoints: a callback)
        stop flag?
                                            on_fit_end (or on_exception)

The Trainer owns its state (`TrainState`: the position, the history, the stop flag; the RNGs, the data
order): `state_dict()` holds everything a resume needs and `load_state_dict()` puts it back; the
run-directory callback uses nothing else.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _fastpath
from .bundle import check_state_shapes, save_bundle
from .callbacks.base import EVENTS, Callback, callback_states, dispatch, handlers, load_callback_states
from .callbacks.checkpoint import Checkpointer
from .callbacks.distributed_sync import DistributedSync
from .callbacks.progress import ProgressPrinter
from .callbacks.verdict import VerdictReporter
from .checkpoint_format import ResumeMismatchError
from .config import TrainConfig
from .data import Split, as_tensor
from .data.batches import Batches, make_batches
from .devices import pick_device, thread_policy
from .diagnose import GuardCallback, lr_find, sanity_check
from .diagnose.checks import eval_checks, first_step_checks
from .distributed import is_main_process
from .distributed.strategy import Strategy
from .evaluation import as_predictions, evaluate_batches, resolved_task, run_eval
from .metrics import MetricSet, normalize_task, to_python
from .models import as_module, trainable_parameters
from .optim import make_loss, make_optimizer, make_scheduler, step_scheduler_epoch, task_of_loss
from .state import TrainState, rng_state, seed_everything, set_rng_state
from .step.compiled import CompiledStep
from .step.eager import NonFiniteError, TrainingStep

__all__ = ["Trainer", "TrainState", "seed_everything", "pick_device", "NonFiniteError"]  # the last three: re-exported

Data = Any  # (X, y) tensors or arrays, a Split, a Dataset or a DataLoader


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
        callbacks: `Callback` objects, called in this order, before the Trainer's own
            `VerdictReporter`, `ProgressPrinter` and run-directory `Checkpointer`.
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

    def __init__(self, model: nn.Module | Callable[..., torch.Tensor], loss: str | Callable[..., torch.Tensor] = "mse",
                 optimizer: Any = "adam", *, scheduler: Any = None, callbacks: Sequence[Callback] | None = None,
                 metrics: Sequence[Any] | Mapping[str, Any] | None = None, params: Sequence[torch.Tensor] | None = None,
                 config: TrainConfig | None = None, **settings: Any):
        self.config = cfg = TrainConfig.from_kwargs(config, **settings)
        model = as_module(model, params)
        self.strategy, self.device = Strategy.setup(cfg)  # several processes (torchrun): group, device, DDP/FSDP
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision: got 'fp16' on device {self.device.type!r}; fp16 training needs "
                             "CUDA (GradScaler). Use precision='bf16' on CPU, or 'fp32'.")
        self.model = model.to(self.device) if self.strategy is None else self.strategy.wrap(model.to(self.device))
        self.params: list[nn.Parameter] = trainable_parameters(model)  # after the wrap: FSDP shards them
        self.loss_fn = make_loss(loss)
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)
        self.task = cfg.task or task_of_loss(self.loss_fn) or "regression"
        kwargs = {**cfg.optimizer_kwargs, **({"weight_decay": cfg.weight_decay} if cfg.weight_decay else {})}
        lr = cfg.lr if (not isinstance(optimizer, torch.optim.Optimizer) or "lr" in settings) else None
        self.optimizer = make_optimizer(optimizer, self.params, lr, kwargs, fused=cfg.fused)
        self.scheduler: Any = None  # built by the first fit (schedules in steps need the epoch's length)
        self.scheduler_interval = "epoch"
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        # several processes: DistributedSync after the user's callbacks (it sees their stop requests), before the
        # Trainer's own (they see the agreed decision)
        sync = [DistributedSync(self.strategy)] if self.strategy is not None else []
        self.callbacks: list[Callback] = [*(callbacks or []), *sync]
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks: expected Callback objects, got {type(cb).__name__}.")
        # then the Trainer's own: the verdict (printed, saved in run.json), the guards (before the first step),
        # the progress display, and last the run directory (it saves what the others decided)
        self.callbacks += [VerdictReporter(), GuardCallback(cfg.guards), *([] if cfg.quiet else [ProgressPrinter(
            cfg.print_every)]), *([Checkpointer(cfg.run_dir, cfg)] if cfg.run_dir else [])]
        self.generator = torch.Generator().manual_seed(cfg.seed)  # data order, on the CPU
        self.state = TrainState(epoch_lr=float(self.optimizer.param_groups[0]["lr"]))
        self.last_metrics: dict[str, Any] | None = None
        self.train_data: Data = None  # what the current (or last) fit trains and validates on
        self.val_data: Data = None
        self.steps_per_epoch = 0
        self.training_step: TrainingStep | None = None  # built per fit (fitloop.step)
        self._scheduler_arg = scheduler
        self._scheduler_state: dict[str, Any] | None = None  # loaded before the scheduler was built
        self._user_metrics = metrics
        self._metric_set: MetricSet | None = None
        self._forward = torch.compile(self.model) if cfg.compile in (True, "model") else self.model
        self._compiled_step: CompiledStep | None = None  # compile="step": kept across fits
        self._keep_outputs = True
        self._handlers: dict[str, list[Callable[..., Any]]] = {}
        self._resuming = False

    # ------------------------------------------------------------------ properties

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.state.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken."""
        return self.state.step

    @property
    def target_epochs(self) -> int:
        """The epoch the current fit trains to."""
        return self.state.target_epochs

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict of logs per finished epoch (`state.history`)."""
        return self.state.history

    @history.setter
    def history(self, value: list[dict[str, Any]]) -> None:
        self.state.history = value

    @property
    def should_stop(self) -> bool:
        """Set it (and `stop_reason`) in a callback to stop the run (`state.should_stop`)."""
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = value

    @property
    def stop_reason(self) -> str | None:
        """Why the run stopped early, or None (`state.stop_reason`)."""
        return self.state.stop_reason

    @stop_reason.setter
    def stop_reason(self, value: str | None) -> None:
        self.state.stop_reason = value

    @property
    def checkpointer(self) -> Checkpointer | None:
        """The run-directory callback, when the Trainer has a `run_dir`."""
        return next((cb for cb in self.callbacks if isinstance(cb, Checkpointer)), None)

    def log(self, msg: str) -> None:
        """Print a message unless the trainer is quiet (only the main process of a distributed run prints)."""
        if not self.config.quiet and is_main_process():
            print(msg, file=sys.stdout, flush=True)

    # ------------------------------------------------------------------ the loop

    def fit(self, train: Data, val: Data = None) -> list[dict[str, Any]]:
        """Train for `epochs` epochs, validating after each one when `val` is given.

        Args:
            train: `(X, y)` tensors or arrays, a `Split` from `fl.split`, a `Dataset` or a `DataLoader`.
            val: the same kinds, or `None` for no validation.

        Returns:
            The history: one dict per epoch with `epoch`, `loss`, the train metrics, `val_loss` and
            `val_` metrics when validating, `lr` and `time` (seconds).
        """
        st = self.state
        with thread_policy(self.device, self.params, self.config.threads):
            train_batches, val_batches, training_step = self._setup_fit(train, val)
            try:
                self._emit("on_fit_start")
                while st.epoch < st.target_epochs and not st.should_stop:
                    if self._begin_epoch():  # a new epoch (not one a resume continues)
                        self._emit("on_epoch_start", st.epoch + 1)
                    for x, y in train_batches.epoch(self.generator, st.batch):
                        loss, out = self.train_step((x, y))
                        st.record(loss, len(x), (out, y) if self._keep_outputs else None)
                        self._emit("on_train_batch_end", st.step, loss)
                        if training_step.ends_step(st.batch - 1):
                            self._emit("on_optimizer_step", st.step)
                        if st.should_stop:
                            break
                    if st.batch < len(train_batches):  # stopped mid-epoch (a signal): no epoch record
                        break
                    logs = self._train_logs()
                    if val_batches is not None:
                        logs.update(evaluate_batches(self, val_batches, prefix="val_"))
                    logs = self._end_epoch(logs)  # lr, per-epoch scheduler, time; appended to history
                    if val_batches is not None:
                        self._emit("on_validation_end", logs)
                    self._emit("on_epoch_end", st.epoch, logs)
                if st.stop_reason:
                    self.log(f"Stopped: {st.stop_reason}.")
                self._emit("on_fit_end")
            except BaseException as error:
                self._emit("on_exception", error)  # every handler runs, even if one raises
                raise
            finally:
                self._end_fit()
        return st.history

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step: forward, loss, zero_grad, backward, optimizer step.

        The base implementation is `fitloop.step.TrainingStep` (penalty, input noise, accumulation,
        clipping, the NaN/inf check, closure optimizers, `compile="step"`). Override to customise;
        return the detached loss and output (tensors: no `.item()`, which would sync the device).
        """
        x, y = batch
        assert self.training_step is not None, "train_step runs inside fit()"
        return self.training_step(x, y)

    def eval_step(self, batch: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        """The model's output for one batch, in eval mode (the caller sets no_grad/inference mode)."""
        x, _ = batch
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's forward pass, under autocast when `precision` asks for it."""
        if self.autocast_dtype is None:
            return self._forward(x)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self._forward(x)

    def compute_loss(self, out: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The loss in fp32. A target of shape (N,) against an output of shape (N, 1) is viewed
        as (N, 1) rather than broadcast to (N, N), the classic silent bug. A loss with a true
        `matches_shapes` attribute (`fitloop.tabm.MembersLoss`) matches the shapes itself."""
        if out.dtype != torch.float32 and out.is_floating_point() and self.autocast_dtype is not None:
            out = out.float()
        if getattr(self.loss_fn, "matches_shapes", False):
            return self.loss_fn(out, y)  # type: ignore[arg-type]
        if y is not None and out.shape != y.shape and y.is_floating_point() and out.numel() == y.numel():
            y = y.view_as(out)
        elif y is not None and out.shape != y.shape and y.is_floating_point() and out.ndim != y.ndim \
                and normalize_task(self.task, 2) != "multiclass":
            raise ValueError(f"loss: model output has shape {tuple(out.shape)} but the target has shape "
                             f"{tuple(y.shape)}; they would broadcast silently. Make the model return one "
                             "value per target (e.g. out_features matching y's columns).")
        return self.loss_fn(out, y)  # type: ignore[arg-type]  # y None: a loss of the output alone

    # ------------------------------------------------------------------ fit's pieces

    def _setup_fit(self, train: Data, val: Data) -> tuple[Any, Any, TrainingStep]:
        """Per-fit set-up: batches, seeds (on a fresh start), epoch target, scheduler, the step."""
        cfg, st = self.config, self.state
        resuming, self._resuming = self._resuming, False
        self.train_data, self.val_data = train, val
        train_batches = self.batches(train, train=True)
        val_batches = None if val is None else self.batches(val, train=False)
        self.steps_per_epoch = len(train_batches)
        if not st.seeded:
            seed_everything(cfg.seed)
            st.seeded = True
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if not resuming:  # a resume continues to the checkpoint's target; a fit trains `epochs` more
            if st.target_epochs <= st.epoch and st.batch == 0:
                st.target_epochs = st.epoch + cfg.epochs
            st.should_stop, st.stop_reason = False, None
        if self._scheduler_arg is not None and self.scheduler is None:
            # A scheduler's constructor resets the lr (OneCycle: the betas too); a loaded state keeps its own.
            groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            self.scheduler, self.scheduler_interval = make_scheduler(
                self._scheduler_arg, self.optimizer, steps_per_epoch=math.ceil(self.steps_per_epoch / cfg.accumulate),
                epochs=cfg.epochs, interval=cfg.scheduler_interval)
            if self._scheduler_state is not None:
                self.scheduler.load_state_dict(self._scheduler_state)
                self._scheduler_state = None
                for g, saved in zip(self.optimizer.param_groups, groups):
                    g.update(saved)
            elif st.step == 0:  # the lr the schedule starts from (later fits keep the last step's)
                st.epoch_lr = float(self.optimizer.param_groups[0]["lr"])
        tm = cfg.train_metrics
        self._keep_outputs = tm if tm is not None else self.steps_per_epoch > 1
        self._metric_set = None
        self._handlers = {e: handlers(self.callbacks, e) for e in EVENTS}
        if cfg.compile == "step" and self._compiled_step is None:  # raises, naming the reason, if it cannot
            self._compiled_step = CompiledStep.build(self, train_batches,
                                                     overridden=type(self).train_step is not Trainer.train_step)
        self.training_step = TrainingStep(self, train_batches, compiled=self._compiled_step,
                                          first_batch_check=first_step_checks)
        return train_batches, val_batches, self.training_step

    def _end_fit(self) -> None:
        """After fit, however it ended: an unfinished epoch keeps its time; callbacks may change now."""
        self.state.stop_timer()
        self._handlers = {}

    def _begin_epoch(self) -> bool:
        """Start an epoch, or continue the one a checkpoint was written in. True for a new one."""
        st = self.state
        st.start_timer()
        if not self.model.training:  # validation puts it back after itself; this is for a first fit
            self.model.train()
        if st.batch == 0:
            st.start_epoch(self.generator.get_state())
            return True
        assert st.epoch_generator_state is not None  # mid-epoch: the epoch's start was recorded
        self.generator.set_state(st.epoch_generator_state)  # replay the epoch's permutation from its start
        return False

    def _train_logs(self) -> dict[str, Any]:
        """Close the epoch's training part: its mean loss, train metrics, skipped steps, grad norm."""
        logs, outputs = self.state.finish_epoch() if self.strategy is None else self.strategy.finish_epoch(self.state)
        if outputs and outputs[0][1] is not None:
            out, y = torch.cat([o for o, _ in outputs]), torch.cat([t for _, t in outputs if t is not None])
            metrics = self.metrics.compute(out, y)
            logs = {"loss": logs.pop("loss"), **metrics, **logs}
        return logs

    def _end_epoch(self, logs: dict[str, Any]) -> dict[str, Any]:
        """The epoch's record: lr, the per-epoch scheduler step, floats, time; NaN check off the CPU."""
        st = self.state
        logs["lr"] = float(st.epoch_lr)  # the lr of the epoch's last step (before an epoch schedule)
        step_scheduler_epoch(self.scheduler, self.scheduler_interval, logs, self.config.monitor)
        logs = {"epoch": st.epoch, **{k: to_python(v) for k, v in logs.items()}}
        if self.training_step is not None:
            self.training_step.check_epoch_loss(logs["loss"])
        logs["time"] = st.epoch_seconds()
        st.history.append(logs)
        return logs

    def _emit(self, event: str, *args: Any) -> None:
        """Call `event` on every callback that implements it, in list order (fitloop.callbacks.base)."""
        found = self._handlers[event] if event in self._handlers else handlers(self.callbacks, event)
        dispatch(found, event, self, *args)

    def notify_checkpoint(self, path: str) -> None:
        """Fire `on_checkpoint(trainer, path)`; called by whatever has just written a checkpoint."""
        self._emit("on_checkpoint", str(path))

    def batches(self, data: Data, *, train: bool) -> Batches:
        """The batch source for `data` (see `fitloop.data.batches.make_batches`): in-memory tensors
        go to the device once; batches are `(x, y)` on the device (`y` None for unlabelled data)."""
        cfg, dtype = self.config, self.params[0].dtype if self.params[0].is_floating_point() else torch.float32
        return make_batches(data, train=train, batch_size=cfg.batch_size, shuffle=cfg.shuffle, device=self.device,
                            float_dtype=dtype, task=self.task, num_workers=cfg.num_workers, guards=cfg.guards,
                            split="train" if train else "val" if data is self.val_data is not None else "evaluate")

    # ------------------------------------------------------------------ evaluation

    @property
    def metrics(self) -> MetricSet:
        """The task's metrics (and the user's), computed once per epoch on whole outputs."""
        if self._metric_set is None:
            self._metric_set = MetricSet(resolved_task(self.task), self._user_metrics)
        return self._metric_set

    def evaluate(self, data: Data) -> dict[str, Any]:
        """Loss and task metrics on labelled data (e.g. the held-out test split), its targets checked by the guards.

        Returns:
            A dict of floats: `loss` plus accuracy/F1/precision/recall (and `confusion_matrix`, a
            nested list) for classification, or MSE/RMSE/MAE/R2 for regression.
        """
        with thread_policy(self.device, self.params, self.config.threads):
            logs = evaluate_batches(self, self.batches(data, train=False), check=eval_checks)
        self.last_metrics = {k: to_python(v) for k, v in logs.items()}
        return self.last_metrics

    def predict(self, X: Any, *, output: str = "raw") -> torch.Tensor:
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
        with thread_policy(self.device, self.params, self.config.threads):
            out, _ = run_eval(self, self.batches(X, train=False), inference=True)
        return as_predictions(out, self.task, output)

    def lr_find(self, train: Data, **options: Any) -> Any:
        """Sweep the lr and suggest one (`fitloop.diagnose.lr_find`); every state is put back exactly."""
        with thread_policy(self.device, self.params, self.config.threads):
            return lr_find(self, train, **options)

    def report(self, path: str | os.PathLike, test: Data = None) -> Any:
        """Write plots and a self-contained `report.html` of the last fit into `path` (`fitloop.report`)."""
        from .report import write_report
        return write_report(self, path, test=test)

    def sanity_check(self, train: Data, **options: Any) -> Any:
        """Overfit one small batch: can the model learn? (`fitloop.diagnose.sanity`); every state is put back."""
        return sanity_check(self, train, **options)

    # ------------------------------------------------------------------ save, state, resume

    def save(self, path: str, *, extra: Mapping[str, Any] | None = None) -> str:
        """Save the model as a bundle: `model.safetensors` + `fitloop.json` (spec, task, metrics,
        versions). Never a pickle. Returns the directory."""
        meta = {"task": self.task, "history_tail": self.history[-1:] if self.history else [],
                "metrics": self.last_metrics, "config": self.config.to_dict()}
        meta.update(extra or {})
        return save_bundle(self.model, path, meta)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this Trainer exactly, as plain data and tensors: the config,
        model, optimizer, scheduler and scaler states, `TrainState`, the RNGs (the data generator's
        included) and every callback's state. `TrainState` brings the history and the stop flag."""
        scheduler = self.scheduler.state_dict() if self.scheduler is not None else self._scheduler_state
        return {
            "config": self.config.to_dict(), "config_hash": self.config.fingerprint(),
            "model": _fastpath.unwrap_model(self.model).state_dict(),
            "optimizer": _fastpath.optimizer_state_dict(self.optimizer), "scheduler": scheduler,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng_state(self.generator), "callbacks": callback_states(self.callbacks),
            **self.state.checkpoint_entries(),  # "train_state", "history", "should_stop", "stop_reason"
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore what `state_dict()` returned (or a checkpoint holds); the next `fit` continues.

        `strict=False` drops the state of callbacks this Trainer does not have instead of refusing it.

        Raises:
            ValueError: the model's parameter shapes differ (naming them).
            ResumeMismatchError: the optimizer, scheduler or callbacks do not fit this Trainer's.
        """
        where = state.get("_path", "the state dict")
        model = _fastpath.unwrap_model(self.model)
        ts = state["train_state"]
        # everything that can refuse the state is checked before anything is changed
        check_state_shapes(model, state["model"], where=str(where))
        has_scheduler = self.scheduler is not None or self._scheduler_arg is not None
        if (state["scheduler"] is not None and not has_scheduler) or \
                (state["scheduler"] is None and has_scheduler and ts["step"] > 0):
            raise ResumeMismatchError(f"{where}: the checkpoint was written "
                                      f"{'without' if state['scheduler'] is None else 'with'} a scheduler, "
                                      f"this trainer has {'one' if has_scheduler else 'none'}.")
        load_callback_states(self.callbacks, state["callbacks"], strict=strict, dry_run=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])  # validates before it changes anything
        except (ValueError, KeyError) as e:
            raise ResumeMismatchError(f"{where}: the optimizer state does not fit this optimizer ({e}).") from None
        model.load_state_dict(state["model"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self._scheduler_state = state["scheduler"]  # loaded when fit builds the scheduler
        _fastpath.mark_optimizer_stepped(self.optimizer, ts["step"] > 0)
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.state.load_checkpoint_entries(state, self.device)
        load_callback_states(self.callbacks, state["callbacks"], strict=strict)
        set_rng_state(self.generator, state["rng"])

    def resume(self, *args: Any, run_dir: str | None = None, checkpoint: str | None = None,
               force: bool = False) -> list[dict[str, Any]]:
        """Continue a run from its latest good checkpoint and finish it.

        Call it on a Trainer built like the interrupted one, with the same data: `trainer.resume(train,
        val)` (its own `run_dir`) or `trainer.resume("runs/exp1", train, val)`. Changed settings or data
        are refused, naming what changed (`force=True` overrides); a different model shape always is.

        Args:
            *args: `[run_dir,] train[, val]`.
            run_dir: the run directory, when not the Trainer's own.
            checkpoint: a specific checkpoint file instead of the latest good one.
            force: resume even when the config or the data changed since the checkpoint.

        Returns:
            The full history, the epochs before the interruption included.
        """
        if args and isinstance(args[0], (str, os.PathLike)):
            run_dir, args = str(args[0]), args[1:]
        if not 1 <= len(args) <= 2:
            raise TypeError("resume: pass the training data (and the validation data) as to fit(): "
                            "trainer.resume(train, val) or trainer.resume('runs/exp1', train, val).")
        train, val = args[0], (args[1] if len(args) > 1 else None)
        ckpt = Checkpointer.attach(self, run_dir or self.config.run_dir, checkpoint)
        state = ckpt.prepare_resume(self, train, val, checkpoint=checkpoint, force=force)
        self.load_state_dict(state, strict=not force)
        ckpt.continue_from(state)  # the next on_fit_start continues the directory
        self._resuming = True
        return self.fit(train, val)

