"""The one training step: forward, loss, penalty, input noise, accumulation, backward, clipping,
the NaN/inf check, the optimizer step and the step bookkeeping.

`Trainer.train_step` calls it for every batch; closure optimizers (LBFGS), the LR finder and
`compile="step"` use the same object, and every path composes the same pieces
(`fitloop.step.functions`), so they cannot drift apart. It uses only the Trainer's public surface
(`model`, `optimizer`, `scheduler`, `scaler`, `strategy`, `config`, `state`, `params`, `forward`,
`compute_loss`, `log`).

One call, in order::

    x = x + noise                              (input_noise, training only)
    out = trainer.forward(x); loss = trainer.compute_loss(out, y); total = loss + penalty
    zero_grad                                  (first micro-batch of an accumulation group)
    (total * share).backward()                 (share: the micro-batch's part of the group's rows)
    at the group's last micro-batch:
        clip (unscaling fp16 gradients first); check loss and gradients for NaN/inf;
        optimizer.step(); state.step += 1; state.epoch_lr; a per-step scheduler steps

A closure optimizer (LBFGS) runs forward, loss, backward and clipping inside its closure; with
`on_nonfinite="skip"` the closure's first evaluation is checked, and a NaN/inf one leaves the step
before the optimizer changes anything.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .. import _fastpath
from .batches import BatchSource, RowCountedBatches, ShardedBatchSource
from .functions import (
    add_input_noise,
    apply_update,
    clip_,
    first_nonfinite,
    loss_is_finite,
    nonfinite_poison,
    penalised_loss,
)

if TYPE_CHECKING:
    from ..trainer import Trainer
    from .compiled import CompiledStep

__all__ = ["TrainingStep", "NonFiniteError", "FirstBatchCheck"]


_NO_OP = contextlib.nullcontext()

FirstBatchCheck = Callable[["Trainer", torch.Tensor, "torch.Tensor | None"], None]
"""`(trainer, output, target)`: checks run once, on the fit's first batch between the forward pass and the loss."""


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


class _StepSkipped(Exception):
    """Raised inside a closure optimizer's closure to leave its step before it changes anything."""


class TrainingStep:
    """The training step of one `fit` (or of an LR sweep), built from the Trainer's settings.

    Args:
        trainer: the Trainer whose model, optimizer, scheduler and state the step uses.
        batches: the epoch's batch source, used for the accumulation shares; `None` for single steps
            (no accumulation).
        schedule: step a per-step scheduler after each optimizer step (off for the LR sweep).
        on_nonfinite: `"stop"` or `"skip"`; defaults to the config's.
        compiled: a `fitloop.step.compiled.CompiledStep` that runs the step as one graph once the
            optimizer state exists (`compile="step"`).
        first_batch_check: run once, on the first batch between the forward pass and the loss, when
            `batches` is given and the guards are on (the Trainer passes
            `fitloop.diagnose.checks.first_step_checks`).
    """

    def __init__(self, trainer: Trainer, batches: BatchSource | None = None, *, schedule: bool = True,
                 on_nonfinite: str | None = None, compiled: CompiledStep | None = None,
                 first_batch_check: FirstBatchCheck | None = None):
        cfg = trainer.config
        self.trainer = trainer
        self.batches = batches
        self.accumulate = cfg.accumulate if batches is not None else 1
        self.schedule = schedule
        self.on_nonfinite = on_nonfinite or cfg.on_nonfinite
        self.compiled = compiled
        self.closure = isinstance(trainer.optimizer, torch.optim.LBFGS)  # re-evaluates the loss itself
        # On the CPU reading the loss costs no device sync, so every step is checked; elsewhere the
        # epoch's loss is checked at its end, unless skipping bad steps needs the per-step answer. A closure
        # optimizer is checked per step only to skip (a NaN loss that stops a run stops it at the epoch's end).
        per_step = trainer.device.type == "cpu" and not self.closure
        self.check_every_step = per_step or self.on_nonfinite == "skip"
        self._optimizer_step = _fastpath.optimizer_step(trainer.optimizer)
        self._zero_grad = _fastpath.zero_grad(trainer.optimizer)
        self._bad_gradient = _fastpath.nonfinite_grads(list(trainer.model.named_parameters()))
        self._scale_grads = _fastpath.scale_grads()  # clipping's in-place edits (foreach kernels)
        self._clamp_grads = _fastpath.clamp_grads()
        # the fit's step (it has the epoch's batches) runs the guards' first-step checks once
        checks_on = batches is not None and cfg.guards is not False
        self._first_batch_check = first_batch_check if checks_on else None
        # in-memory batches know their sizes; several processes (fitloop.data.sharding): each rank's loss
        # is weighted by its share of the batch
        self._row_counted = batches if isinstance(batches, RowCountedBatches) else None
        world = self._row_counted.world if self._row_counted is not None else 1
        self.weighted = self.accumulate > 1 or world > 1
        self.filler = batches.filler if isinstance(batches, ShardedBatchSource) else None
        strategy = trainer.strategy
        self._no_sync = strategy.no_sync if strategy is not None and self.accumulate > 1 else None
        # several processes: a loss only this rank sees as NaN/inf poisons its gradients, so that the
        # all-reduced gradients tell every rank, and all of them skip (or stop at) the same step
        self._poison = self.check_every_step and strategy is not None

    # ------------------------------------------------------------------ the step

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: returns the detached loss and output (tensors: no host sync)."""
        if self.compiled is not None and self.compiled.ready():
            return self._compiled_step(x, y)
        t, i = self.trainer, self.trainer.state.batch
        x = add_input_noise(x, t.config.input_noise)
        if self.closure:
            return self._closure_step(x, y)
        rows = len(x)
        if rows == 0 and self.filler is not None:  # this rank has no row of the batch: join with weight 0
            x, y = self.filler
        with self._sync(i):  # DDP/FSDP: no gradient all-reduce on micro-batches that don't step
            total, loss, out = self.loss(x, y)  # forward, loss, + penalty
            if i % self.accumulate == 0:  # the first micro-batch of an accumulation group
                self._zero_grad()
            if self.weighted:
                share = self._share(i, rows)
                total = total * share if share != 1.0 else total
            if self._poison and self.ends_step(i):  # x 1 when finite (exact), x NaN when not: no host sync
                total = total * nonfinite_poison(loss, total.dtype)
            self.backward(total)
        if rows == 0 and self.filler is not None:
            loss, out = torch.zeros_like(loss), out[:0]
        if self.ends_step(i):
            self.clip()
            if self.finite(loss):  # or the step is skipped (on_nonfinite="skip"), or NonFiniteError
                apply_update(t.optimizer, t.scaler, self._optimizer_step)  # optimizer.step() (fitloop._fastpath)
                self.stepped()
        return loss.detach(), out.detach()

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(total, loss, out)`: the forward pass, the loss, and the loss plus the penalty."""
        t = self.trainer
        out = t.forward(x)
        if self._first_batch_check is not None:  # loss shapes, class targets: before the first loss
            check, self._first_batch_check = self._first_batch_check, None
            check(t, out, y)
        total, loss = penalised_loss(t.compute_loss, out, y, t.params, t.config.penalty)
        return total, loss, out

    def backward(self, total: torch.Tensor) -> None:
        scaler = self.trainer.scaler
        (scaler.scale(total) if scaler is not None else total).backward()

    def finite(self, loss: torch.Tensor) -> bool:
        """Whether the step may be applied: the loss and every gradient are finite (checked per step on
        the CPU, or when skipping bad steps; elsewhere the epoch's loss is checked at its end)."""
        if not self.check_every_step:
            return True
        loss_ok = loss_is_finite(loss)
        # with fp16's GradScaler, overflowing gradients are normal: its step skips them and lowers the scale
        # (a closure optimizer steps without the scaler, so its gradients are checked)
        scaled = self.trainer.scaler is not None and not self.closure
        bad = self._bad_gradient() if not scaled else None
        if loss_ok and bad is None:
            return True
        self._zero_grad()
        self.nonfinite(loss, loss_ok, bad)
        return False

    def clip(self, record: bool = True) -> None:
        """Clip the gradients in `.grad` in place, as configured (`fitloop.step.functions.clip_`); record
        their total norm (before clipping) per step."""
        t, cfg = self.trainer, self.trainer.config
        if not (cfg.clip_grad_norm or cfg.clip_grad_value):
            return
        if t.scaler is not None and not self.closure:
            t.scaler.unscale_(t.optimizer)
        grads = [g for p in t.params if (g := p.grad) is not None]
        # in place: `.grad` stays the same tensor (DDP's bucket views, FSDP's DTensors, hooks see it)
        norm = clip_(grads, cfg.clip_grad_norm, cfg.clip_grad_value, scale=self._scale_grads,
                     clamp=self._clamp_grads)
        if record and norm is not None:
            t.state.grad_norms.append(norm.detach())  # a tensor (no sync), averaged per epoch

    def stepped(self) -> None:
        """The bookkeeping of a step taken: the count, the lr it used, a per-step scheduler."""
        t = self.trainer
        t.state.step += 1
        t.state.epoch_lr = t.optimizer.param_groups[0]["lr"]
        if self.schedule and t.scheduler is not None and t.scheduler_interval == "step":
            t.scheduler.step()

    def check_epoch_loss(self, loss: float) -> None:
        """Without a per-step check (off the CPU, or LBFGS), a NaN/inf epoch loss stops the run here."""
        if self.check_every_step or math.isfinite(loss) or self.on_nonfinite != "stop":
            return
        raise NonFiniteError(
            f"Training stopped after epoch {self.trainer.state.epoch}: the epoch's loss is {loss}. On "
            f"{self.trainer.device.type} (or with a closure optimizer such as LBFGS) the loss is checked once per "
            "epoch (a per-step check would sync the device every step). The last good checkpoint was "
            "kept. Try a lower learning rate, or check the data for NaN/inf.")

    def nonfinite(self, loss: torch.Tensor, loss_ok: bool, bad_param: str | None) -> None:
        """A step with a NaN/inf loss or gradient, not applied: count it (`skip`) or raise."""
        state = self.trainer.state
        if self.on_nonfinite == "skip":
            state.skipped_steps += 1
            state.discard = state.batch % self.accumulate + 1  # the step's micro-batches, this one included
            return
        what = (f"the loss is {loss.item()}" if not loss_ok
                else f"the gradient of parameter {bad_param!r} is not finite")
        where = f"epoch {state.epoch + 1}, step {state.batch + 1} of the epoch (global step {state.step + 1})"
        grad_note = f"; the gradient of {bad_param!r} is not finite too" if bad_param and not loss_ok else ""
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        raise NonFiniteError(f"Training stopped at {where}: {what}{grad_note}. The last good checkpoint was "
                             f"kept. Try a lower learning rate (lr is {lr:g}), check the data for NaN/inf, "
                             "or pass on_nonfinite='skip'.")

    # ------------------------------------------------------------------ variants

    def _closure_step(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimizers such as LBFGS evaluate the loss several times per step, through a closure. The first
        evaluation is at the step's starting point: when it is checked (`check_every_step`) and not finite,
        the step is left there, before the optimizer changed its parameters or its state."""
        first: list[tuple[torch.Tensor, torch.Tensor]] = []

        def closure() -> torch.Tensor:
            self._zero_grad()
            total, loss, out = self.loss(x, y)
            total.backward()  # unscaled: GradScaler has no closure support (closure optimizers step plainly)
            self.clip(record=not first)
            if not first:
                first.append((loss.detach(), out.detach()))
                if not self.finite(loss):  # counted as skipped (or NonFiniteError)
                    raise _StepSkipped
            return total

        try:
            self.trainer.optimizer.step(closure)  # type: ignore[arg-type]
        except _StepSkipped:
            return first[0]
        self.stepped()
        return first[0]

    def _compiled_step(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same step as one graph (`compile="step"`, see fitloop.step.compiled)."""
        cs, t = self.compiled, self.trainer
        assert cs is not None
        compiled_before = cs.compile_seconds
        loss, out, finite, ok, norm = cs(x, y)
        if cs.compile_seconds != compiled_before:
            t.log(f"compile='step': compiled the training step for batches of {x.shape[0]} rows in "
                  f"{cs.compile_seconds - compiled_before:.1f} s.")
        if norm is not None:
            t.state.grad_norms.append(norm.detach())
        if self.check_every_step and not ok.item():  # the graph changed nothing: report it as eager does
            flags = finite.tolist()
            self.nonfinite(loss, flags[-1], first_nonfinite(cs.all_names, flags[:-1]))
            return loss, out
        self.stepped()
        return loss, out

    # ------------------------------------------------------------------ accumulation

    def ends_step(self, i: int) -> bool:
        """Whether batch `i` of the epoch ends an optimizer step: its accumulation group's last, or the
        epoch's."""
        k = self.accumulate
        return k == 1 or (i + 1) % k == 0 or i + 1 == len(self.batches)  # type: ignore[arg-type]

    def _sync(self, i: int) -> contextlib.AbstractContextManager[Any]:
        """`no_sync` of the DDP/FSDP model on the micro-batches that don't end a step, else nothing."""
        return self._no_sync(self.trainer.model) if self._no_sync is not None and not self.ends_step(i) else _NO_OP

    def _share(self, i: int, rows: int) -> float:
        """The weight of micro-batch `i`'s mean loss: its share of the rows of its accumulation group, times
        the number of processes (DDP averages the ranks' gradients), so that k micro-batches on N ranks of a
        mean-reduced loss give the gradient of one batch of all their rows (also when the epoch's last group
        is short, its last batch smaller, or a rank's share of it smaller or empty)."""
        assert self.batches is not None  # weighted steps have batches
        k = self.accumulate
        first = i - i % k
        n_micro = min(k, len(self.batches) - first)
        source = self._row_counted
        if source is not None:  # in-memory batches: sizes are known
            return rows * source.world / sum(source.global_rows(j) for j in range(first, first + n_micro))
        return 1.0 / n_micro  # loaders: assume equal batch sizes
