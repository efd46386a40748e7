"""compile="step": the whole training step as one torch.compile graph (fitloop.step.compiled).

Each compile costs seconds on a small CPU, so the cases are combined: every test compiles once or
twice. The compiled update is torch's formula in a different kernel, so it matches the eager
Trainer to float tolerance, not bit for bit; resume with the same mode is bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.data import TensorBatches
from fitloop.step.compiled import unsupported

pytestmark = pytest.mark.slow


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    y = (X @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(n, 1, generator=g))
    return fl.split(X, y, fractions=(0.75, 0.25), seed=0)


def _fit(compile, optimizer, *, seed=3, epochs=3, data=None, **kw):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    t = fl.Trainer(model, "mse", optimizer, lr=kw.pop("lr", 1e-2), epochs=epochs, batch_size=kw.pop("batch_size", 16),
                   quiet=True, compile=compile, **kw)
    train, val = data or _data()
    return t, t.fit(train, val)


def _close(a: fl.Trainer, b: fl.Trainer, atol=1e-5):
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=atol, rtol=1e-4), (n, (p - q).abs().max().item())


CASES = {
    # fused Adam (fitloop's default) + a per-step scheduler + clipping by norm + an L2 penalty;
    # 72 training rows in batches of 16: the epoch's last batch is short (a second graph)
    "adam": (("adam", {}), dict(scheduler=("onecycle", {"max_lr": 2e-2}), clip_grad_norm=0.5,
                                penalty=("l2", 1e-3))),
    # AdamW's decoupled weight decay, amsgrad, and a per-epoch scheduler
    "adamw": (("adamw", {"amsgrad": True}), dict(weight_decay=0.05, scheduler=("step", {"step_size": 1,
                                                                                     "gamma": 0.5}))),
    # SGD with Nesterov momentum, L2 weight decay and clipping by value
    "sgd": (("sgd", {"momentum": 0.9, "nesterov": True}), dict(weight_decay=1e-3, clip_grad_value=0.1)),
    # SGD with dampened momentum (torch's first step differs: the eager first step creates the buffer)
    "sgd_damp": (("sgd", {"momentum": 0.5, "dampening": 0.3}), dict(batch_size=72)),
}


def test_compiled_step_updates_batchnorm_running_statistics_and_uses_dropout():
    def fit(compile):
        torch.manual_seed(3)
        # no bias before BatchNorm: its gradient is 0 up to float noise, which Adam would scale to lr-sized
        # steps that differ between any two implementations
        model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(8, 1))
        t = fl.Trainer(model, "mse", "adam", lr=1e-2, epochs=2, batch_size=16, quiet=True, compile=compile)
        return t, t.fit(*_data())

    eager, h_eager = fit(False)
    comp, h_comp = fit("step")
    assert comp.training_step.compiled.steps == comp.global_step - 1
    bn_c, bn_e = comp.model[1], eager.model[1]
    assert int(bn_c.num_batches_tracked) == int(bn_e.num_batches_tracked) == comp.global_step
    assert torch.allclose(bn_c.running_mean, bn_e.running_mean, atol=1e-5)
    assert torch.allclose(bn_c.running_var, bn_e.running_var, atol=1e-5)
    _close(comp, eager)
    assert h_comp[-1]["val_loss"] == pytest.approx(h_eager[-1]["val_loss"], rel=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_step_matches_eager(case):
    optimizer, kw = CASES[case]
    eager, h_eager = _fit(False, optimizer, **kw)
    comp, h_comp = _fit("step", optimizer, **kw)
    steps = comp.global_step
    assert steps == eager.global_step
    assert comp.training_step.compiled.steps == steps - 1  # only the first step is eager (it creates the state)
    _close(comp, eager)
    for a, b in zip(h_comp, h_eager):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-6)
        assert a["lr"] == b["lr"]
        if "grad_norm" in b:
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # the optimizer state is torch's own, in torch's format: the checkpoint format is unchanged
    assert comp.optimizer.state_dict()["state"].keys() == eager.optimizer.state_dict()["state"].keys()
    for s_c, s_e in zip(comp.optimizer.state.values(), eager.optimizer.state.values()):
        for k, v in s_e.items():
            assert torch.allclose(s_c[k], v, rtol=1e-4, atol=1e-6), k


def test_compiled_step_resumes_bit_for_bit(tmp_path):
    train, val = _data()

    class Crash(fl.Callback):
        def on_train_batch_end(self, trainer, step, loss):
            if step == 7:  # mid-epoch, after a step checkpoint
                raise RuntimeError("simulated crash")

    kw = dict(checkpoint_every_steps=3, input_noise=0.05)  # noise: the compiled graph's RNG resumes too
    ref, h_ref = _fit("step", ("adam", {}), **kw, run_dir=str(tmp_path / "ref"))
    with pytest.raises(RuntimeError, match="simulated"):
        _fit("step", ("adam", {}), **kw, run_dir=str(tmp_path / "run"), callbacks=[Crash()])
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    t = fl.Trainer(model, "mse", "adam", lr=1e-2, epochs=3, batch_size=16, quiet=True, compile="step",
                   run_dir=str(tmp_path / "run"), **kw)
    hist = t.resume(train, val)
    assert t.training_step.compiled.steps > 0
    strip = lambda h: [{k: v for k, v in e.items() if k != "time"} for e in h]
    assert strip(hist) == strip(h_ref)
    for p, q in zip(t.model.parameters(), ref.model.parameters()):
        assert torch.equal(p, q)


def test_compiled_step_nonfinite_stops_or_skips_without_touching_the_weights():
    train, val = _data()
    X = train.X.clone()
    X[5, 2] = float("nan")
    with pytest.raises(fl.NonFiniteError, match=r"epoch 1, step \d+ of the epoch .*the loss is nan"):
        t, _ = _fit("step", ("adam", {}), data=((X, train.y), val))
    X[5, 2] = float("inf")
    t, hist = _fit("step", ("adam", {}), data=((X, train.y), val), on_nonfinite="skip", epochs=2)
    assert hist[-1]["skipped_steps"] == 2  # the bad row is seen once per epoch
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert all(torch.isfinite(s["exp_avg_sq"]).all() for s in t.optimizer.state.values())
    steps_taken = t.optimizer.state[next(iter(t.model.parameters()))]["step"].item()
    assert steps_taken == t.global_step == 2 * len(range(0, 72, 16)) - 2  # Adam's step skips them too


@pytest.mark.parametrize("optimizer", [("adam", {}), ("sgd", {"momentum": 0.9})])
def test_compiled_step_matches_eager_with_both_clips_and_a_nan_batch(optimizer):
    """Clipping by norm then by value, and a skipped NaN batch, in the graph and in the eager step: the
    same pieces (fitloop.step.functions), so the same run up to float tolerance (different kernels)."""
    train, val = _data()
    X = train.X.clone()
    X[5, 2] = float("nan")
    kw = dict(data=((X, train.y), val), epochs=2, batch_size=24, clip_grad_norm=0.3, clip_grad_value=0.05,
              on_nonfinite="skip")  # 72 rows: 3 equal batches, one graph
    eager, h_eager = _fit(False, optimizer, **kw)
    comp, h_comp = _fit("step", optimizer, **kw)
    assert comp.global_step == eager.global_step == 2 * 3 - 2
    assert comp.training_step.compiled.steps > 0
    _close(comp, eager)
    for a, b in zip(h_comp, h_eager):
        assert a["skipped_steps"] == b["skipped_steps"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-6)
        # the mean over the applied steps: the skipped step's NaN norm is left out, not logged as the epoch's
        assert math.isfinite(b["grad_norm"]) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert h_comp[-1]["skipped_steps"] == 2
    for s_c, s_e in zip(comp.optimizer.state.values(), eager.optimizer.state.values()):
        for k, v in s_e.items():
            assert torch.allclose(s_c[k], v, rtol=1e-4, atol=1e-6), k


def test_compiled_step_refuses_what_it_cannot_compile():
    train, _ = _data()
    model = nn.Linear(4, 1)
    with pytest.raises(ValueError, match=r"compile='step': the optimizer is LBFGS; the compiled step implements "
                                         r"Adam, AdamW and SGD.*Use compile=True"):
        fl.Trainer(model, "mse", "lbfgs", quiet=True, compile="step").fit(train)
    unfused = fl.Trainer(model, "mse", ("adam", {"fused": False}), quiet=True, compile="step", device="cpu")
    unfused.device = torch.device("cuda")  # as on a GPU, where unfused Adam keeps its step count on the CPU
    reason = unsupported(unfused, TensorBatches(train.X, train.y, 16, shuffle=True))
    assert reason.startswith("on cuda it needs the fused Adam/AdamW (fitloop's default)")
    with pytest.raises(ValueError, match=r"compile='step': accumulate > 1"):
        fl.Trainer(model, "mse", "adam", quiet=True, compile="step", accumulate=2).fit(train)
    class Rows(torch.utils.data.Dataset):  # a TensorDataset is in-memory data; any other Dataset is not
        def __len__(self):
            return len(train.X)

        def __getitem__(self, i):
            return train.X[i], train.y[i]

    ds = Rows()
    with pytest.raises(ValueError, match=r"compile='step': the training data is a Dataset/DataLoader"):
        fl.Trainer(model, "mse", "adam", quiet=True, compile="step").fit(ds)
    with pytest.raises(ValueError, match=r"compile: got 'fast'; pass True or 'model'.*'step'"):
        fl.Trainer(model, compile="fast")
