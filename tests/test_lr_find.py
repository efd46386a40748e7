"""The lr finder: the sweep, the suggestion, the plot, and exact restoration of every state."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import fitloop as fl


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    X = torch.randn(3, 6, generator=g)[y] + 0.5 * torch.randn(n, 6, generator=g)
    return X, y


def make_trainer(**kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    settings = dict(epochs=1, batch_size=16, lr=1e-3, quiet=True, seed=0, input_noise=0.05)
    settings.update(kw)
    return fl.Trainer(model, loss="cross_entropy", optimizer="adam", **settings)


def snapshot(trainer):
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "training": trainer.model.training,
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "lr": [g["lr"] for g in trainer.optimizer.param_groups],
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "generator": trainer.generator.get_state(),
        "step": trainer.global_step,
        "epoch": trainer.epoch,
    }


def assert_same(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["training"] == b["training"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr"] == b["lr"]
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert a["python_rng"] == b["python_rng"]
    assert np.array_equal(a["numpy_rng"], b["numpy_rng"])
    assert torch.equal(a["generator"], b["generator"])
    assert (a["step"], a["epoch"]) == (b["step"], b["epoch"])


def test_lr_find_curve_and_suggestion(tmp_path):
    trainer = make_trainer()
    res = trainer.lr_find(data(), start_lr=1e-5, end_lr=1.0, num_steps=40, plot=tmp_path / "lr.png")
    n = len(res.lrs)
    assert 5 < n <= 40 and len(res.losses) == len(res.raw_losses) == n
    assert res.lrs[0] == pytest.approx(1e-5)
    ratios = np.diff(np.log(res.lrs))
    assert np.allclose(ratios, math.log(1e5) / 39)  # exponential sweep
    assert 1e-5 <= res.suggested_lr <= 1.0
    assert (tmp_path / "lr.png").stat().st_size > 1000
    assert res.figure is not None


def test_lr_find_stops_when_the_loss_diverges():
    res = make_trainer(input_noise=0.0).lr_find(data(), start_lr=1e-3, end_lr=1e6, num_steps=100)
    assert res.stopped_early and len(res.lrs) < 100


def test_lr_find_restores_everything_exactly():
    trainer = make_trainer(scheduler="cosine", epochs=3)
    trainer.fit(data())  # optimizer state, a scheduler, a used generator
    trainer.model.eval()  # an unusual mode must be kept too
    before = snapshot(trainer)
    trainer.lr_find(data(), num_steps=20)
    assert_same(before, snapshot(trainer))


def test_lr_find_before_fit_restores_fresh_state():
    trainer = make_trainer()
    before = snapshot(trainer)
    trainer.lr_find(data(), num_steps=10)
    after = snapshot(trainer)
    assert_same(before, after)
    assert after["optimizer"]["state"] == {}


def test_training_after_lr_find_is_identical():
    # One after the other: both runs share the global RNG, which each first fit() seeds.
    a = make_trainer(epochs=1)
    a.fit(data())
    a.lr_find(data(), num_steps=15)
    a.fit(data())
    b = make_trainer(epochs=1)
    b.fit(data())
    b.fit(data())
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_lr_find_arguments_validated():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="start_lr"):
        trainer.lr_find(data(), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        trainer.lr_find(data(), num_steps=1)


def test_a_step_the_sweep_skipped_does_not_leak_into_the_next_fit():
    X, y = data()
    bad = X.clone()
    bad[:8, 0] = float("nan")  # the sweep's steps on these rows are NaN, skipped, and end it
    a = make_trainer()
    a.lr_find((bad, y), num_steps=10)
    assert a.state.discard == 0
    a.fit(data())
    b = make_trainer()
    b.fit(data())
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
