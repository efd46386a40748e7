"""`compile="step"`: the whole training step as one `torch.compile` graph.

`torch.compile(model)` (`compile=True`) only fuses the forward and backward kernels; on small
models the step's time is framework glue around them: the autograd engine, `Optimizer.step`'s
Python, per-op dispatch (bench/studies/FASTPATH.md has the profile). This module compiles forward, loss,
gradients (`torch.func.grad`), gradient clipping, the NaN/inf check and the optimizer update into
ONE graph, called once per step. It traces the step's own pieces (`fitloop.step.functions`: input
noise, `Trainer.compute_loss` plus the penalty, clipping, the NaN/inf check, the update) and shares the
bookkeeping after the step with the eager step; the Adam/AdamW update is torch's own functional
`torch.optim.adam.adam` traced into the graph, and SGD's is its formula written as tensor ops (why: see
`masked_sgd_update`).

The optimizer stays the user's `torch.optim` object: its `param_groups` (lr, betas, weight decay,
momentum...) are read before every step, so schedulers work, and its state tensors (`step`,
`exp_avg`, `exp_avg_sq`, `momentum_buffer`) are updated in place, so checkpoints, exact resume and
`optimizer.state_dict()` are unchanged. State that does not exist yet is created by one ordinary
eager step (the run's first), exactly as torch creates it.

A step with a NaN/inf loss or gradient changes nothing (every update is masked inside the graph);
the Trainer then raises or counts the skipped step as in eager mode.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from .. import _fastpath
from ..data import TensorBatches
from .batches import BatchSource
from .functions import add_input_noise, clip, finite_flags, masked_adam_update, masked_sgd_update, penalised_loss

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["CompiledStep", "unsupported"]

_KINDS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd"}


def unsupported(trainer: Trainer, batches: BatchSource) -> str | None:
    """Why `compile="step"` cannot run this configuration, or None when it can."""
    cfg = trainer.config
    opt = trainer.optimizer
    if type(opt) not in _KINDS:
        return (f"the optimizer is {type(opt).__name__}; the compiled step implements Adam, AdamW and SGD "
                "(by name or instance)")
    for g in opt.param_groups:
        if g.get("differentiable") or g.get("capturable"):
            return "the optimizer was created with differentiable=True or capturable=True"
        if trainer.device.type != "cpu" and _KINDS[type(opt)] == "adam" and not g.get("fused"):
            # unfused Adam keeps its step counter on the CPU, which one device graph cannot update
            return (f"on {trainer.device.type} it needs the fused Adam/AdamW (fitloop's default); this one was "
                    "created with fused=False")
    if not isinstance(batches, TensorBatches):
        return ("the training data is a Dataset/DataLoader; the compiled step needs in-memory tensors "
                "((X, y) or a Split)")
    if cfg.accumulate > 1:
        return "accumulate > 1 (gradient accumulation)"
    if trainer.scaler is not None:
        return "precision='fp16' (GradScaler)"
    if any(not p.is_floating_point() or p.is_sparse for p in trainer.params):
        return "a parameter is sparse or not floating point"
    return None


class CompiledStep:
    """One training step (forward, loss, gradients, clipping, update) compiled as one graph.

    Call `ready()` before each step: False means the optimizer state does not exist yet and the
    Trainer takes an eager step instead. Calling it with a batch returns `(loss, output, finite, ok,
    grad_norm)`: `finite` is a bool tensor, one per parameter and the loss's last, `ok` their
    conjunction (the step was applied); `grad_norm` is None unless clipping is on.
    """

    @classmethod
    def build(cls, trainer: Trainer, batches: BatchSource, *, overridden: bool = False) -> CompiledStep:
        """The compiled step for `trainer`, or a ValueError that names what it cannot compile and the fix."""
        reason = unsupported(trainer, batches)
        if reason is None and overridden:
            reason = "Trainer.train_step is overridden (the compiled step would bypass the override)"
        if reason:
            raise ValueError(f"compile='step': {reason}. Use compile=True (compiles the model only) or "
                             "compile=False for this run.")
        return cls(trainer)

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.opt = opt = trainer.optimizer
        self.kind = _KINDS[type(opt)]
        by_id = {id(p): n for n, p in trainer.model.named_parameters()}
        self.groups = [[p for p in g["params"] if p.requires_grad] for g in opt.param_groups]
        self.names = [[by_id[id(p)] for p in ps] for ps in self.groups]
        self.all_names = [n for ns in self.names for n in ns]
        # module buffers (BatchNorm's running statistics) are graph inputs too, updated in place
        self.buffer_names = [n for n, _ in trainer.model.named_buffers()]
        self._hp_key: tuple | None = None
        self._flags: tuple | None = None
        self._state_key: tuple | None = None
        self._fn: Any = None
        self._inputs: list[torch.Tensor] = []
        self.steps = 0  # compiled steps taken
        self.compile_seconds = 0.0  # wall time of the calls that compiled (one per batch shape)
        self._compiled: set = set()

    # ------------------------------------------------------------------ optimizer state

    def _group_hp(self, g) -> tuple:
        lr = float(g["lr"])
        if self.kind == "adam":
            b1, b2 = (float(b) for b in g["betas"])
            return (lr, b1, b2)  # eps and weight_decay are graph constants (see _group_flags)
        return (lr, float(g["momentum"]), float(g["dampening"]), float(g["weight_decay"]))

    def _group_flags(self, g) -> tuple:
        """The settings that are graph constants (a change recompiles). For Adam that includes eps and
        weight_decay, which torch's functional Adam takes as Python floats; schedulers change lr and
        betas, which are tensor inputs."""
        if self.kind == "adam":
            decoupled = bool(g.get("decoupled_weight_decay", isinstance(self.opt, torch.optim.AdamW)))
            return (bool(g["amsgrad"]), bool(g["maximize"]), decoupled, float(g["weight_decay"]), float(g["eps"]))
        return (bool(g["nesterov"]), bool(g["maximize"]), g["momentum"] != 0, g["weight_decay"] != 0)

    def ready(self) -> bool:
        """True when every state tensor the update needs exists (after torch's first eager step)."""
        st = self.opt.state
        for g, ps in zip(self.opt.param_groups, self.groups):
            for p in ps:
                s = st.get(p)
                if self.kind == "adam":
                    if not s or "exp_avg" not in s or (g["amsgrad"] and "max_exp_avg_sq" not in s):
                        return False
                elif g["momentum"] != 0 and (not s or s.get("momentum_buffer") is None):
                    return False
        return True

    def _tensors(self) -> list[torch.Tensor]:
        """The graph's inputs besides the batch: per group its parameters, their optimizer state
        and one float64 vector of hyperparameters. Rebuilt only when something changed."""
        groups = self.opt.param_groups
        hp_key = tuple(self._group_hp(g) + self._group_flags(g) for g in groups)
        st = self.opt.state
        # load_state_dict (resume, lr_find) replaces the state tensors: follow their identity
        state_key = tuple(id(st[p].get("exp_avg", st[p].get("momentum_buffer"))) if p in st else 0
                          for ps in self.groups for p in ps)
        if hp_key == self._hp_key and state_key == self._state_key:
            return self._inputs
        flags = tuple(self._group_flags(g) for g in groups)
        if flags != self._flags:
            self._fn = torch.compile(_fastpath.private_code(self._graph(flags)), fullgraph=True, dynamic=False)
            self._flags = flags
        dev = self.groups[0][0].device
        inputs = []
        for g, ps, fl in zip(groups, self.groups, flags):
            inputs += [p.detach() for p in ps]  # aliases: the in-place update reaches the model
            for p in ps:
                inputs += _state_tensors(st.get(p, {}), self.kind, fl)
            # float64, as torch computes lr and the bias corrections in Python floats
            inputs.append(torch.tensor(self._group_hp(g), dtype=torch.float64, device=dev))
        inputs += [b for _, b in self.trainer.model.named_buffers()]
        self._inputs, self._hp_key, self._state_key = inputs, hp_key, state_key
        return inputs

    # ------------------------------------------------------------------ the step

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None):
        tensors = self._tensors()  # first: it (re)builds the compiled function when needed
        key = (self._fn, x.shape)
        first = key not in self._compiled  # a new function or batch shape: this call compiles
        t0 = time.perf_counter() if first else 0.0
        try:
            out = self._fn(tensors, x, y)
        except _fastpath.compile_errors() as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"compile='step': torch.compile could not compile the training step as one graph "
                               f"({reason}). Use compile=True (the model only) or compile=False; "
                               "TORCH_LOGS=graph_breaks shows where it broke.") from e
        if first:
            self._compiled.add(key)
            self.compile_seconds += time.perf_counter() - t0
        self.steps += 1
        return out

    def _graph(self, flags):
        """The step function for these structural settings. It closes over the model, the loss and
        Python constants (dynamo guards on them: a change recompiles); every tensor it updates is an
        input, so resumed or reloaded state tensors need no recompile."""
        t = self.trainer
        cfg = t.config
        model, compute_loss = t.model, t.compute_loss
        noise, pen = cfg.input_noise, cfg.penalty
        autocast = t.autocast_dtype
        device_type = t.device.type
        clip_norm, clip_value = cfg.clip_grad_norm, cfg.clip_grad_value
        names, kind, buffer_names = self.names, self.kind, self.buffer_names
        n_state = [len(_state_tensors(None, kind, fl)) for fl in flags]
        update = masked_adam_update if kind == "adam" else masked_sgd_update

        def loss_of(pd, bd, x, y):  # TrainingStep's noise, forward and loss, on functional parameters
            x = add_input_noise(x, noise)
            if autocast is not None:
                with torch.autocast(device_type, dtype=autocast):
                    out = torch.func.functional_call(model, (pd, bd), (x,))
            else:
                out = torch.func.functional_call(model, (pd, bd), (x,))
            total, loss = penalised_loss(compute_loss, out, y, pd.values(), pen)
            return total, (loss.detach(), out.detach())

        def step(tensors, x, y):
            params, states, hps, i = [], [], [], 0
            for ns, k in zip(names, n_state):
                params.append(tensors[i:i + len(ns)])
                i += len(ns)
                states.append([tensors[i + j * k: i + (j + 1) * k] for j in range(len(ns))])
                i += k * len(ns)
                hps.append(tensors[i])
                i += 1
            flat = {n: p for ns, ps in zip(names, params) for n, p in zip(ns, ps)}
            buffers = dict(zip(buffer_names, tensors[i:]))
            grads, (loss, out) = torch.func.grad(loss_of, has_aux=True)(flat, buffers, x, y)
            flat_grads = [grads[n] for ns in names for n in ns]
            finite = finite_flags(flat_grads + [loss])  # the loss's flag last
            ok = finite.all()
            flat_grads, norm = clip(flat_grads, clip_norm, clip_value)
            grad_list, j = [], 0
            for ns in names:  # back into parameter groups
                grad_list.append(flat_grads[j:j + len(ns)])
                j += len(ns)
            for ps, gs, ss, hp, fl in zip(params, grad_list, states, hps, flags):
                update(ps, gs, ss, hp, fl, ok)  # a NaN/inf step (not ok) changes nothing
            return loss, out, finite, ok, norm

        return step


def _state_tensors(s: dict | None, kind: str, flags: tuple) -> list:
    """The state tensors the update uses, in a fixed order (`s=None`: placeholders, to count them)."""
    s = s if s is not None else {}
    if kind == "adam":
        names = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if flags[0] else ())
    else:
        names = ("momentum_buffer",) if flags[2] else ()
    return [s.get(n) for n in names]
