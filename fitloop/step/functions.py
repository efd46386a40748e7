"""The training step's pieces as functions of tensors: the loss (input noise, penalty), clipping by norm
and by value, the NaN/inf check and the optimizer update.

Every path of the step composes these, none re-derives them: the eager step and the closure step
(`fitloop.step.eager`), the compiled graph (`fitloop.step.compiled`, which traces them) and the
shortcuts of `fitloop._fastpath`. A change here changes every path. Like optax's gradient
transformations they take tensors and return new ones (no Trainer, no optimizer object), except those
named with a trailing underscore (torch's convention): `clip_` edits the gradients in place (the eager
and closure paths: `.grad` keeps its identity, which DDP's bucket views, FSDP's DTensor gradients and
users' hooks rely on), and the update functions write the optimizer's own state tensors in place so
that checkpoints keep torch's format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.optim.adam import adam as torch_adam  # torch's functional Adam (public: torch.optim.adam.__all__)

__all__ = ["add_input_noise", "penalty", "penalised_loss", "total_norm", "clip_coefficient", "clip_by_norm",
           "clip_by_value", "clip", "scale_", "clamp_", "clip_", "loss_is_finite", "nonfinite_poison", "finite_flags",
           "all_finite", "first_nonfinite", "first_nonfinite_of", "CONCAT_LIMIT", "apply_update",
           "masked_adam_update", "masked_sgd_update"]

ScaleInPlace = Callable[[Sequence[torch.Tensor], torch.Tensor], None]
"""`(grads, coefficient)`: multiplies every gradient by the coefficient in place (`scale_`, or a faster
equivalent from `fitloop._fastpath.scale_grads`)."""
ClampInPlace = Callable[[Sequence[torch.Tensor], float], None]
"""`(grads, max_value)`: clamps every gradient to `[-max_value, max_value]` in place (`clamp_`, or a faster
equivalent from `fitloop._fastpath.clamp_grads`)."""

# all_finite checks gradients up to this many elements as one concatenated copy (one kernel instead of one
# per tensor); larger models are checked tensor by tensor (no memory spike).
CONCAT_LIMIT = 1 << 20

# torch.nn.utils.clip_grad_norm_'s guard against a zero norm
_NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------- the loss


def add_input_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """Gaussian noise of standard deviation `std` added to float inputs (training only)."""
    return x + std * torch.randn_like(x) if std and x.is_floating_point() else x


def penalty(params: Iterable[torch.Tensor], kind: str, strength: float) -> torch.Tensor:
    """`strength` times the sum of squares (`"l2"`) or of absolute values (`"l1"`) of `params`."""
    if kind == "l2":
        return strength * sum(p.pow(2).sum() for p in params)  # type: ignore[return-value]
    return strength * sum(p.abs().sum() for p in params)  # type: ignore[return-value]


def penalised_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], out: torch.Tensor,
                   y: torch.Tensor | None, params: Iterable[torch.Tensor],
                   penalty_spec: tuple[str, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(total, loss)`: the loss of `out` against `y`, and that loss plus the penalty on `params`.

    Args:
        loss_fn: `(output, target) -> scalar` (`Trainer.compute_loss`).
        penalty_spec: `(kind, strength)` as in `TrainConfig.penalty`, or None for no penalty.
    """
    loss = loss_fn(out, y)
    return (loss + penalty(params, *penalty_spec) if penalty_spec is not None else loss), loss


# --------------------------------------------------------------------------------------------- clipping


def total_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, as `torch.nn.utils.clip_grad_norm_` computes it."""
    return torch.nn.utils.get_total_norm(grads)


def clip_coefficient(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor that brings gradients of total norm `norm` down to at most `max_norm`: torch's
    `clip_grad_norm_` formula, `max_norm / (norm + 1e-6)` capped at 1 (a tensor: no host sync). Both
    `clip_by_norm` and `clip_` scale by it."""
    return torch.clamp(max_norm / (norm + _NORM_EPS), max=1.0)


def clip_by_norm(grads: Sequence[torch.Tensor], max_norm: float, norm: torch.Tensor) -> list[torch.Tensor]:
    """The gradients scaled so that their total norm (`norm`) is at most `max_norm`, out of place."""
    coef = clip_coefficient(norm, max_norm)
    return [g * coef.to(g.device) for g in grads]


def clip_by_value(grads: Sequence[torch.Tensor], max_value: float) -> list[torch.Tensor]:
    """Every gradient element clamped to `[-max_value, max_value]` (torch's `clip_grad_value_`), out of place."""
    return [g.clamp(-max_value, max_value) for g in grads]


def clip(grads: Sequence[torch.Tensor], max_norm: float | None,
         max_value: float | None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """`(clipped gradients, their total norm before clipping)`: by norm, then by value, as configured;
    out of place (the compiled graph's gradients are values, not `.grad`).

    The norm is None (and the gradients are returned as they are) when neither clipping is on; it is
    computed for clipping by value too, because the run logs it (`grad_norm`).
    """
    if not (max_norm or max_value):
        return list(grads), None
    norm = total_norm(grads)
    clipped = clip_by_norm(grads, max_norm, norm) if max_norm else list(grads)
    if max_value:
        clipped = clip_by_value(clipped, max_value)
    return clipped, norm


def scale_(grads: Sequence[torch.Tensor], coef: torch.Tensor) -> None:
    """Every gradient multiplied by `coef` in place (the coefficient copied once per device)."""
    on_device: dict[torch.device, torch.Tensor] = {}
    for g in grads:
        if g.device not in on_device:
            on_device[g.device] = coef.to(g.device)
        g.mul_(on_device[g.device])


def clamp_(grads: Sequence[torch.Tensor], max_value: float) -> None:
    """Every gradient element clamped to `[-max_value, max_value]` in place."""
    for g in grads:
        g.clamp_(-max_value, max_value)


def clip_(grads: Sequence[torch.Tensor], max_norm: float | None, max_value: float | None, *,
          scale: ScaleInPlace = scale_, clamp: ClampInPlace = clamp_) -> torch.Tensor | None:
    """`clip`, in place: the same gradients (same tensors, same storage) clipped by norm, then by value, as
    configured; returns their total norm before clipping (None when neither clipping is on).

    Bit-identical to torch's `clip_grad_norm_` and `clip_grad_value_`, and to `clip`.

    Args:
        scale: multiplies the gradients by the coefficient in place (`fitloop._fastpath.scale_grads`).
        clamp: clamps them in place (`fitloop._fastpath.clamp_grads`).
    """
    if not (max_norm or max_value):
        return None
    norm = total_norm(grads)
    if max_norm:
        scale(grads, clip_coefficient(norm, max_norm))
    if max_value:
        clamp(grads, max_value)
    return norm


# --------------------------------------------------------------------------------------------- NaN/inf


def loss_is_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite (reads it: one host sync, none on the CPU)."""
    return math.isfinite(loss.item())


def nonfinite_poison(loss: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 when `loss` is finite, NaN when not, as a scalar of `dtype` (no host sync).

    Multiplying a rank's loss by it before the backward pass leaves a finite loss exactly as it is and
    makes every gradient NaN otherwise: the all-reduced gradients then tell every rank of a loss only
    one rank saw as NaN/inf.
    """
    return torch.where(torch.isfinite(loss.detach()), 1.0, float("nan")).to(dtype)


def finite_flags(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One bool per tensor: whether all its values are finite (a tensor on the first tensor's device:
    reading it is the only sync). The tensors may live on several devices (a model split over them)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    if not flags:
        return torch.ones(0, dtype=torch.bool)
    device = flags[0].device
    return torch.stack([flag.to(device) for flag in flags])


def all_finite(tensors: Sequence[torch.Tensor], concat_limit: int = CONCAT_LIMIT) -> torch.Tensor:
    """Whether every value of every tensor is finite: `finite_flags(tensors).all()`, in fewer kernels.

    Tensors of one dtype on one device with at most `concat_limit` elements in all are checked as one
    concatenated copy (14 us instead of 46 for 6 small tensors); others tensor by tensor, with no such copy.
    """
    if len(tensors) == 1:
        return torch.isfinite(tensors[0]).all()
    # one concatenated copy needs one dtype and one device
    one_kind = len({(t.dtype, t.device) for t in tensors}) == 1
    if tensors and one_kind and sum(t.numel() for t in tensors) <= concat_limit:
        return torch.cat([t.reshape(-1) for t in tensors]).isfinite().all()
    return finite_flags(tensors).all() if tensors else torch.tensor(True)


def first_nonfinite(names: Sequence[str], flags: Sequence[bool]) -> str | None:
    """The first name whose flag (from `finite_flags`) is False, or None."""
    return next((name for name, ok in zip(names, flags) if not ok), None)


def first_nonfinite_of(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> str | None:
    """The name of the first tensor holding NaN/inf, or None: `first_nonfinite` of `finite_flags`, read with
    one host sync."""
    flags = finite_flags(tensors)
    if type(flags) is torch.Tensor:
        return first_nonfinite(names, flags.tolist())
    # a tensor subclass (FSDP's DTensor parameters) has no tolist(): its flags are read one by one, and
    # bool() agrees on each across the ranks
    return first_nonfinite(names, [bool(flag) for flag in flags.unbind()])


# --------------------------------------------------------------------------------------------- the update


def apply_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 optimizer_step: Callable[[], None]) -> None:
    """The eager update: the optimizer's own step on the gradients in `.grad`, through fp16's GradScaler
    when there is one (it skips a step whose gradients overflowed and lowers its scale).

    Args:
        optimizer_step: runs `optimizer.step()` (`fitloop._fastpath.optimizer_step`).
    """
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer_step()


def _zeroed_unless(ok: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients where `ok`, zeros where not: a NaN/inf gradient must not reach the masked-out update's
    arithmetic (NaN * 0 is NaN)."""
    return [torch.where(ok, g, torch.zeros((), dtype=g.dtype, device=g.device)) for g in grads]


def masked_adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[list[torch.Tensor]],
                       hp: torch.Tensor, flags: tuple, ok: torch.Tensor) -> None:
    """torch's own Adam/AdamW update, `torch.optim.adam.adam` (single-tensor, capturable: lr and betas
    are tensors, so a scheduler does not recompile), run on copies of the parameters and state and
    written back where `ok`: a NaN/inf step changes nothing. The copies cost nothing measurable on small
    models (bench/studies/COMPILED_UPDATE.md).

    Args:
        params: one parameter group's parameters (updated in place where `ok`).
        grads: their gradients (already clipped).
        states: per parameter its state tensors: step, exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad).
        hp: `(lr, beta1, beta2)` as one float64 tensor.
        flags: `(amsgrad, maximize, decoupled_weight_decay, weight_decay, eps)`: graph constants.
        ok: a bool tensor: apply the step or change nothing.
    """
    lr, b1, b2 = hp.unbind()
    grads = _zeroed_unless(ok, grads)
    amsgrad, maximize, decoupled, wd, eps = flags
    olds = [list(params)] + [[s[k] for s in states] for k in range(len(states[0]))]
    news = [[t.clone() for t in ts] for ts in olds]
    torch_adam(news[0], grads, news[2], news[3], news[4] if amsgrad else [], news[1], foreach=False,
               capturable=True, decoupled_weight_decay=decoupled, amsgrad=amsgrad, beta1=b1, beta2=b2, lr=lr,
               weight_decay=wd, eps=eps, maximize=maximize)
    for old_ts, new_ts in zip(olds, news):
        for old, new in zip(old_ts, new_ts):
            old.copy_(torch.where(ok, new, old))


def masked_sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[list[torch.Tensor]],
                      hp: torch.Tensor, flags: tuple, ok: torch.Tensor) -> None:
    """torch.optim.SGD's update (its single-tensor formula, written as tensor ops); no change at all when
    not `ok`. `hp` is `(lr, momentum, dampening, weight_decay)`, `flags` `(nesterov, maximize,
    has_momentum, has_weight_decay)`, `states` per parameter `[momentum_buffer]` (or `[]`).

    Not torch's functional `torch.optim.sgd.sgd`: it takes lr and momentum only as Python floats
    (`param.add_(grad, alpha=-lr)`, `if momentum != 0`). As tensors, fullgraph compilation fails
    ("data-dependent branching"); as floats, each scheduled value is a new graph constant, and 5 lr values
    compiled 5 graphs (6.4 s). tests/test_compiled.py checks this formula against torch.optim.SGD.
    """
    lr, momentum, dampening, wd = hp.unbind()
    grads = _zeroed_unless(ok, grads)
    okf = ok.to(torch.float64)
    nesterov, maximize, has_momentum, has_wd = flags
    keep_mom = torch.where(ok, momentum, torch.ones_like(momentum))
    for p, g, bufs in zip(params, grads, states):
        if maximize:
            g = -g
        if has_wd:
            g = g + wd.to(g.dtype) * p
        if has_momentum:
            buf = bufs[0]
            buf.mul_(keep_mom.to(buf.dtype)).add_(((1 - dampening) * okf).to(buf.dtype) * g)
            g = g + momentum.to(g.dtype) * buf if nesterov else buf
        p.sub_((lr * okf).to(p.dtype) * g)
