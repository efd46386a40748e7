"""Every shortcut that uses a private torch name, each with a public-API fallback.

This is the only fitloop module allowed to touch torch internals (names under `torch._`, optimizer
internals such as `_opt_called`, `__wrapped__` or the step-hook dicts, `_orig_mod`). Each shortcut
is chosen by a capability check: on a torch that lacks the private name, the public fallback runs
and the results are the same. `FITLOOP_FASTPATH=0` in the environment turns every shortcut off
(read when a `fit` starts); the test suite runs the core trainer tests both ways and asserts
identical weights and histories.

The shortcuts and what they save (2 shared CPU cores, torch 2.13; BENCHMARKS.md):

* `optimizer_step`: calls `Optimizer.step` underneath torch's profiler-range and hook wrapper
  when nothing is there to notice (-11 us/step on a small model).
* `zero_grad`: sets `p.grad = None` directly unless the optimizer overrides `zero_grad`
  (-13 us/step: `zero_grad()` opens a profiler range and checks hooks). Public API only, but a
  microsecond shortcut all the same, so it lives here and is switchable.
* `nonfinite_grads`: one fused NaN/inf check over all gradients with torch's AMP kernel
  (~2 us instead of ~6 us); its fallback and its search for the bad parameter are the step's own
  check (`fitloop.step.functions`).
* `scale_grads`, `clamp_grads`: clipping's in-place edits of the gradients with torch's foreach kernels
  (`torch._foreach_mul_`, `_foreach_clamp_min_`/`_max_`: one call per device and dtype, as
  `clip_grad_norm_` and `clip_grad_value_` do) instead of one call per tensor (`fitloop.step.functions.scale_`
  and `clamp_`). The same arithmetic: the results are bit-identical.
* `private_code`: a private copy of a function's code object, so that dynamo's per-code-object
  cache (8 entries, then a silent eager fallback) is per CompiledStep, not per process.
* `build_optimizer`, `optimizer_state_dict` and the step above skip torch's `_disable_dynamo` /
  `_use_grad` wrappers while `torch._dynamo` is not imported: their first call imports it, 1.2 s of
  a 2.5 s `fitloop train` start-up on a small table (BENCHMARKS.md, "Start-up"). Nothing can be
  compiling before dynamo is imported, so the wrappers have nothing to do then.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .step.functions import (
    CONCAT_LIMIT,
    ClampInPlace,
    ScaleInPlace,
    all_finite,
    clamp_,
    first_nonfinite_of,
    scale_,
)

__all__ = ["enabled", "optimizer_step", "zero_grad", "nonfinite_grads", "sparse_values", "scale_grads", "clamp_grads",
           "private_code", "mark_optimizer_stepped", "unwrap_model", "compile_errors", "build_optimizer",
           "optimizer_state_dict"]


def enabled() -> bool:
    """False when `FITLOOP_FASTPATH=0` (or `false`/`off`/`no`) is set: every shortcut then takes its
    public fallback."""
    return os.environ.get("FITLOOP_FASTPATH", "1").strip().lower() not in ("0", "false", "off", "no")


# --------------------------------------------------------------------------- optimizer step


def optimizer_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function that runs `optimizer.step()`, built once per fit.

    The shortcut calls the step underneath torch's wrapper when, at that call, no step hook is
    registered (global or on this optimizer), no profiler runs and nothing replaced `step` on the
    instance (other than an LR scheduler's call tracker); then it marks the optimizer as stepped,
    as the wrapper does for the schedulers' order check. Otherwise, and on a torch without these
    internals, it is `optimizer.step()`.
    """
    if not enabled():
        return lambda: optimizer.step()  # looked up per call: an override added later is seen
    from torch.optim import optimizer as optmod

    cls_step = type(optimizer).step
    inner = getattr(cls_step, "__wrapped__", None)
    global_pre = getattr(optmod, "_global_optimizer_pre_hooks", None)
    global_post = getattr(optmod, "_global_optimizer_post_hooks", None)
    pre = getattr(optimizer, "_optimizer_step_pre_hooks", None)
    post = getattr(optimizer, "_optimizer_step_post_hooks", None)
    profiling = getattr(getattr(torch._C, "_autograd", None), "_profiler_enabled", None)
    if not getattr(cls_step, "hooked", False) or inner is None or profiling is None \
            or any(not isinstance(h, dict) for h in (global_pre, global_post, pre, post)):
        return lambda: optimizer.step()
    inner = _without_use_grad(inner, optimizer)
    opt_dict = optimizer.__dict__

    def step() -> None:
        override = opt_dict.get("step")
        if (global_pre or global_post or pre or post or profiling()
                or (override is not None and not getattr(override, "_wrapped_by_lr_sched", False))):
            optimizer.step()
            return
        inner(optimizer)
        optimizer._opt_called = True  # type: ignore[attr-defined]  # what an LR scheduler's tracker records

    return step


def _without_use_grad(step: Callable, optimizer: torch.optim.Optimizer) -> Callable:
    """The step below torch's `_use_grad` wrapper, which imports torch._dynamo on every call (for its
    graph breaks, which matter only under torch.compile): the same grad mode around the bare step."""
    bare = getattr(step, "__wrapped__", None)
    if getattr(getattr(step, "__code__", None), "co_name", None) != "_use_grad" or bare is None:
        return step
    differentiable = bool(optimizer.defaults.get("differentiable", False))
    compiling = torch.compiler.is_compiling

    def run(opt: torch.optim.Optimizer) -> None:
        if compiling():
            step(opt)
            return
        prev = torch.is_grad_enabled()
        torch.set_grad_enabled(differentiable)
        try:
            bare(opt)
        finally:
            torch.set_grad_enabled(prev)

    return run


def _dynamo_free() -> bool:
    return enabled() and "torch._dynamo" not in sys.modules


def build_optimizer(cls: type[torch.optim.Optimizer], params: list[nn.Parameter],
                    kwargs: dict) -> torch.optim.Optimizer:
    """`cls(params, **kwargs)`. Shortcut, while torch._dynamo is not imported: the constructor's calls
    of `add_param_group` run without torch's `_disable_dynamo` wrapper, whose first call imports
    torch._dynamo (1.2 s). Only the constructor's calls: the instance keeps torch's method."""
    method = torch.optim.Optimizer.add_param_group
    bare = getattr(method, "__wrapped__", None)
    if not _dynamo_free() or bare is None or getattr(cls, "add_param_group", None) is not method:
        return cls(params, **kwargs)
    opt = cls.__new__(cls)
    opt.__dict__["add_param_group"] = types.MethodType(bare, opt)
    try:
        opt.__init__(params, **kwargs)  # type: ignore[misc]
    finally:
        opt.__dict__.pop("add_param_group", None)
    return opt


def optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()`; shortcut while torch._dynamo is not imported: without the
    `_disable_dynamo` wrapper that would import it (every checkpoint calls this)."""
    method = torch.optim.Optimizer.state_dict
    bare = getattr(method, "__wrapped__", None)
    if not _dynamo_free() or bare is None or type(optimizer).state_dict is not method \
            or "state_dict" in optimizer.__dict__:
        return optimizer.state_dict()
    return bare(optimizer)


def mark_optimizer_stepped(optimizer: torch.optim.Optimizer, stepped: bool) -> None:
    """Tell torch's LR schedulers that a restored optimizer did step before its checkpoint.

    They warn "lr_scheduler.step() before optimizer.step()" on their first step unless the
    optimizer's private `_opt_called` flag is set, which a restored optimizer has lost (a resume at
    an epoch's end steps the scheduler before any optimizer step). Without the shortcut the only
    effect is that spurious warning.
    """
    if enabled() and stepped:
        optimizer._opt_called = True  # type: ignore[attr-defined]


def zero_grad(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """`optimizer.zero_grad(set_to_none=True)`, or (shortcut) `p.grad = None` for every parameter
    when the optimizer does not override `zero_grad`: the same effect without its profiler range
    and hook checks."""
    if not enabled() or type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: optimizer.zero_grad(set_to_none=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def clear() -> None:
        for p in params:
            p.grad = None

    return clear


# --------------------------------------------------------------------------- NaN/inf check


def sparse_values(g: torch.Tensor) -> torch.Tensor:
    """The stored values of a sparse gradient (public fallback: coalesce first)."""
    if enabled() and hasattr(g, "_values"):
        return g._values()
    return g.coalesce().values()


# The public fallback's limit for checking the gradients as one concatenated copy
# (`fitloop.step.functions.all_finite`); read at each check, so tests can lower it.
_CAT_LIMIT = CONCAT_LIMIT


def nonfinite_grads(named_params: Sequence[tuple[str, nn.Parameter]]) -> Callable[[], str | None]:
    """A check, built once per fit, that returns the name of the first parameter whose gradient
    holds NaN/inf, or None.

    The shortcut answers "all finite?" with torch's fused AMP non-finite check over all dense gradients
    (a scale of 1, so they are unchanged; 4 us for W2's 6 tensors); the fallback with the step's own
    check, `fitloop.step.functions.all_finite` (14 us). Either way the per-parameter search
    (`finite_flags`, `first_nonfinite`) runs only on a hit.
    """
    kernel = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None) if enabled() else None
    devices = {p.device for _, p in named_params}
    if len(devices) != 1:  # the fused kernel wants one device (gradients live where their parameters do)
        kernel = None
    found = one = None
    if kernel is not None:
        dev = devices.pop()
        found, one = torch.zeros(1, device=dev), torch.ones(1, device=dev)

    def dense_finite(dense: list[torch.Tensor]) -> bool:
        if kernel is None or found is None:
            return bool(all_finite(dense, concat_limit=_CAT_LIMIT))
        kernel(dense, found, one)
        ok = found.item() == 0
        if not ok:
            found.zero_()
        return ok

    def check() -> str | None:
        names, grads = [], []
        for name, p in named_params:
            if p.grad is not None:
                names.append(name)
                grads.append(p.grad)
        dense = [g for g in grads if not g.is_sparse]
        sparse = [sparse_values(g) for g in grads if g.is_sparse]
        if (not dense or dense_finite(dense)) and (not sparse or bool(all_finite(sparse, concat_limit=_CAT_LIMIT))):
            return None
        values = [sparse_values(g) if g.is_sparse else g for g in grads]
        return first_nonfinite_of(names, values)

    return check


# --------------------------------------------------------------------------- clipping in place


def _foreach_groups(grads: Sequence[torch.Tensor]) -> tuple[dict[tuple, list[torch.Tensor]], list[torch.Tensor]]:
    """`(groups, rest)`: the plain dense gradients by (device, dtype), as torch's clipping groups them for
    its foreach kernels, and the others (sparse, tensor subclasses such as DTensor) for the per-tensor path."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    rest = []
    for g in grads:
        if type(g) is torch.Tensor and g.layout == torch.strided:
            groups.setdefault((g.device, g.dtype), []).append(g)
        else:
            rest.append(g)
    return groups, rest


def scale_grads() -> ScaleInPlace:
    """`fitloop.step.functions.scale_` (multiply every gradient by a coefficient in place), built once per
    fit; shortcut: torch's `_foreach_mul_` per device and dtype, as `clip_grad_norm_` calls it."""
    kernel = getattr(torch, "_foreach_mul_", None) if enabled() else None
    if kernel is None:
        return scale_

    def scale(grads: Sequence[torch.Tensor], coef: torch.Tensor) -> None:
        groups, rest = _foreach_groups(grads)
        for (device, _), group in groups.items():
            kernel(group, coef.to(device))
        if rest:
            scale_(rest, coef)

    return scale


def clamp_grads() -> ClampInPlace:
    """`fitloop.step.functions.clamp_` (clamp every gradient to `[-v, v]` in place), built once per fit;
    shortcut: torch's `_foreach_clamp_min_` and `_foreach_clamp_max_`, as `clip_grad_value_` calls them."""
    low = getattr(torch, "_foreach_clamp_min_", None) if enabled() else None
    high = getattr(torch, "_foreach_clamp_max_", None) if enabled() else None
    if low is None or high is None:
        return clamp_

    def clamp(grads: Sequence[torch.Tensor], max_value: float) -> None:
        groups, rest = _foreach_groups(grads)
        for group in groups.values():
            low(group, -max_value)
            high(group, max_value)
        if rest:
            clamp_(rest, max_value)

    return clamp


# --------------------------------------------------------------------------- torch.compile


def private_code(fn: Callable) -> Callable:
    """`fn` with a private copy of its code object (shortcut), or `fn` itself (fallback).

    Dynamo caches compiled graphs per code object (at most `recompile_limit`, 8, then it runs the
    function eagerly without a word); a private copy gives every compiled step its own cache,
    however many Trainers a process builds. The fallback is correct, only slower after the limit.
    """
    if not enabled():
        return fn
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_counter)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _count() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


_counter = _count()


def compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions torch.compile raises when it cannot build a graph."""
    dynamo = getattr(torch, "_dynamo", None)
    exc = getattr(getattr(dynamo, "exc", None), "TorchDynamoException", None)
    return (exc,) if isinstance(exc, type) else (RuntimeError,)


# --------------------------------------------------------------------------- modules


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose weights are saved: without torch.compile's wrapper (`_orig_mod`) and
    without DDP's `module`. Without the private name, a compiled wrapper is returned as it is."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
