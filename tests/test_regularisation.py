"""Regularisation: weight decay, L1/L2 penalties (exactly their gradient), input noise in training
only, dropout in MLPSpec models in training only."""

import copy

import pytest
import torch
from helpers import regression_data, trainer_for
from torch import nn

import fitloop as fl


def one_full_batch_step(**kw):
    X, y = regression_data(32)
    model = nn.Linear(3, 1)
    ref = copy.deepcopy(model)
    trainer_for(model, batch_size=None, lr=0.1, **kw).fit((X, y))
    nn.functional.mse_loss(ref(X).reshape(-1), y).backward()
    return model, ref


def test_weight_decay():
    model, ref = one_full_batch_step(weight_decay=0.5)
    for p, r in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, r - 0.1 * (r.grad + 0.5 * r), atol=1e-7)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_penalty_adds_exactly_its_gradient(kind):
    strength = 0.3
    model, ref = one_full_batch_step(penalty=(kind, strength))
    for p, r in zip(model.parameters(), ref.parameters()):
        extra = 2 * strength * r if kind == "l2" else strength * torch.sign(r)
        assert torch.allclose(p, r - 0.1 * (r.grad + extra), atol=1e-7)


def test_penalty_validated():
    with pytest.raises(ValueError, match="penalty"):
        trainer_for(nn.Linear(3, 1), penalty=("l3", 0.1))


def test_input_noise_in_training_only():
    X, y = regression_data(64)
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    ta = trainer_for(a, input_noise=0.5, batch_size=None)
    tb = trainer_for(b, batch_size=None)
    ta.fit((X, y))
    tb.fit((X, y))
    assert not torch.equal(a.weight, b.weight)  # the noise changed the training step
    first, second = ta.evaluate((X, y)), ta.evaluate((X, y))
    assert first == second
    with torch.no_grad():
        expected = nn.functional.mse_loss(a(X).reshape(-1), y).item()
    assert first["loss"] == pytest.approx(expected, rel=1e-6)
    assert torch.equal(ta.predict(X), ta.predict(X))


def test_dropout_in_mlpspec_train_only():
    model = fl.build_mlp(fl.MLPSpec(3, hidden=[32], out_features=1, dropout=0.5))
    assert any(isinstance(m, nn.Dropout) for m in model)
    trainer = trainer_for(model)
    X, _ = regression_data(16)
    assert torch.equal(trainer.predict(X), trainer.predict(X))
    model.train()
    assert not torch.equal(model(X), model(X))
    with pytest.raises(ValueError, match="dropout"):
        fl.MLPSpec(3, hidden=[4], dropout=1.0)
