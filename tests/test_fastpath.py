"""fitloop._fastpath: every private-torch shortcut has a public fallback with identical results.

`FITLOOP_FASTPATH=0` turns every shortcut off; the runs below train the same configurations both
ways and assert identical weights (`torch.equal`) and histories. The capability checks are tested
by taking the private names away, as a future torch might.
"""

import math

import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop import _fastpath


def _data(n=60, nan_row=None):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    if nan_row is not None:
        X[nan_row, 0] = float("nan")
    return X, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 1))


CASES = {
    "adam-fused": dict(optimizer="adam"),
    "sgd-momentum-onecycle": dict(optimizer=("sgd", {"momentum": 0.9}), scheduler="onecycle"),
    "adamw-accumulate-clip": dict(optimizer="adamw", accumulate=3, clip_grad_norm=0.5, batch_size=7),
    "rmsprop-penalty-noise": dict(optimizer="rmsprop", penalty=("l2", 1e-3), input_noise=0.05, clip_grad_value=0.3),
    "lbfgs": dict(optimizer="lbfgs", lr=0.5, batch_size=None),
    "skip-nonfinite": dict(optimizer="sgd", on_nonfinite="skip", nan_row=5),
    "adam-clip-both-skip-nonfinite": dict(optimizer="adam", clip_grad_norm=0.5, clip_grad_value=0.1,
                                          on_nonfinite="skip", nan_row=5),
    "lbfgs-clip-skip-nonfinite": dict(optimizer="lbfgs", lr=0.1, clip_grad_norm=0.5, on_nonfinite="skip", nan_row=5),
    "dataset": dict(optimizer="adam", dataset=True),
}


def _run(case, monkeypatch, fast: bool):
    monkeypatch.setenv("FITLOOP_FASTPATH", "1" if fast else "0")
    kw = dict(CASES[case])
    nan_row = kw.pop("nan_row", None)
    dataset = kw.pop("dataset", False)
    optimizer = kw.pop("optimizer")
    settings = dict(epochs=3, batch_size=16, lr=0.01, quiet=True, seed=0)
    settings.update(kw)
    X, y = _data(nan_row=nan_row)
    train = torch.utils.data.TensorDataset(X, y) if dataset else (X, y)
    t = fl.Trainer(_model(), "mse", optimizer, **settings)
    t.fit(train, _data(24))
    history = [{k: v for k, v in h.items() if k != "time"} for h in t.history]
    return t, history


@pytest.mark.parametrize("case", list(CASES))
def test_fastpath_off_gives_identical_weights_and_history(case, monkeypatch):
    fast, h_fast = _run(case, monkeypatch, fast=True)
    slow, h_slow = _run(case, monkeypatch, fast=False)
    for (name, p), q in zip(fast.model.named_parameters(), slow.model.parameters()):
        assert torch.equal(p, q), name
    assert repr(h_fast) == repr(h_slow)  # repr: NaN entries compare equal too
    if case == "skip-nonfinite":
        assert h_fast[-1]["skipped_steps"] == 3  # one bad batch per epoch, skipped both ways
    if case.endswith("-skip-nonfinite"):  # with clipping, and LBFGS's closure step
        assert h_fast[-1]["skipped_steps"] == 3 and all(torch.isfinite(p).all() for p in fast.model.parameters())
    assert all(math.isfinite(h["loss"]) for h in h_fast)  # a skipped batch is left out of the epoch's loss


def test_the_switch_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("FITLOOP_FASTPATH", raising=False)
    assert _fastpath.enabled()
    for off in ("0", "false", "off", "no", " OFF "):
        monkeypatch.setenv("FITLOOP_FASTPATH", off)
        assert not _fastpath.enabled()
    monkeypatch.setenv("FITLOOP_FASTPATH", "1")
    assert _fastpath.enabled()


def _grads_with(bad: str | None):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model(torch.randn(4, 3)).sum().backward()
    if bad is not None:
        dict(model.named_parameters())[bad].grad[0] = float("inf")
    return list(model.named_parameters())


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("bad", [None, "0.weight", "1.bias"])
def test_nonfinite_grads_names_the_first_bad_parameter_both_ways(bad, fast, monkeypatch):
    monkeypatch.setenv("FITLOOP_FASTPATH", "1" if fast else "0")
    check = _fastpath.nonfinite_grads(_grads_with(bad))
    assert check() == bad
    assert check() == bad  # the fused check's flag is reset after a hit


@pytest.mark.parametrize("cat_limit", [1 << 20, 0])  # one concatenated check, or tensor by tensor
def test_nonfinite_grads_without_the_private_kernel(cat_limit, monkeypatch):
    monkeypatch.delattr(torch, "_amp_foreach_non_finite_check_and_unscale_")
    monkeypatch.setattr(_fastpath, "_CAT_LIMIT", cat_limit)
    assert _fastpath.nonfinite_grads(_grads_with("1.bias"))() == "1.bias"
    assert _fastpath.nonfinite_grads(_grads_with("0.weight"))() == "0.weight"
    assert _fastpath.nonfinite_grads(_grads_with(None))() is None


def test_sparse_values_fallback_coalesces(monkeypatch):
    g = torch.sparse_coo_tensor([[0, 0, 2]], [1.0, 2.0, float("nan")], (4,), check_invariants=True)
    monkeypatch.setenv("FITLOOP_FASTPATH", "0")
    assert torch.equal(_fastpath.sparse_values(g).isnan(), torch.tensor([False, True]))


def test_optimizer_step_without_torch_internals_is_the_public_step(monkeypatch):
    opt = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    monkeypatch.delattr(type(opt).step, "__wrapped__")  # a torch whose wrapper hides the inner step
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    step = _fastpath.optimizer_step(opt)
    step()
    assert calls == [1]  # went through torch's wrapper, which runs the hooks


def test_optimizer_step_shortcut_stands_aside_for_hooks_added_later(monkeypatch):
    monkeypatch.setenv("FITLOOP_FASTPATH", "1")
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    step = _fastpath.optimizer_step(opt)
    p.grad = torch.ones(2)
    step()
    assert torch.equal(p.detach(), torch.full((2,), 0.9))
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    step()
    assert calls == ["pre"]


def test_zero_grad_shortcut_and_fallback(monkeypatch):
    class Counting(torch.optim.SGD):
        calls = 0

        def zero_grad(self, set_to_none=True):
            Counting.calls += 1
            super().zero_grad(set_to_none)

    for env in ("1", "0"):
        monkeypatch.setenv("FITLOOP_FASTPATH", env)
        p = nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        _fastpath.zero_grad(torch.optim.SGD([p], lr=0.1))()
        assert p.grad is None
    p.grad = torch.ones(2)
    monkeypatch.setenv("FITLOOP_FASTPATH", "1")
    _fastpath.zero_grad(Counting([p], lr=0.1))()  # an override is always called
    assert Counting.calls == 1 and p.grad is None


def test_private_code_copies_or_returns_the_function(monkeypatch):
    def f(x):
        return x + 1

    monkeypatch.setenv("FITLOOP_FASTPATH", "1")
    g = _fastpath.private_code(f)
    assert g is not f and g.__code__ is not f.__code__ and g(1) == 2
    monkeypatch.setenv("FITLOOP_FASTPATH", "0")
    assert _fastpath.private_code(f) is f


def test_unwrap_model_strips_compile_and_leaves_plain_modules():
    m = nn.Linear(2, 1)
    assert _fastpath.unwrap_model(m) is m
    assert _fastpath.unwrap_model(torch.compile(m)) is m
