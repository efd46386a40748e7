"""What happens to the gradients before the optimizer step: accumulation over micro-batches
(equal to one big batch) and clipping by norm or by value (the norm is logged)."""

import copy

import pytest
import torch
from helpers import params_of, regression_data, trainer_for
from torch import nn

# ---------------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("n,b,k", [(32, 8, 4), (30, 8, 4), (40, 8, 3)])
def test_accumulation_equals_one_big_batch(optimizer, n, b, k):
    X, y = regression_data(n, d=5)
    base = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    small, big = copy.deepcopy(base), copy.deepcopy(base)
    trainer_for(small, optimizer=optimizer, batch_size=b, accumulate=k, shuffle=False, lr=0.1).fit((X, y))
    trainer_for(big, optimizer=optimizer, batch_size=b * k, shuffle=False, lr=0.1).fit((X, y))
    for p, q, p0 in zip(small.parameters(), big.parameters(), base.parameters()):
        assert not torch.equal(p, p0)
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- clipping


def test_clip_grad_norm_logs_the_norm_and_clips():
    X, y = regression_data(32)
    model = nn.Linear(3, 1)
    ref = copy.deepcopy(model)
    nn.functional.mse_loss(ref(X).reshape(-1), y).backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    before = params_of(model)
    trainer = trainer_for(model, batch_size=None, lr=0.1, clip_grad_norm=0.01)
    history = trainer.fit((X, y))
    assert history[0]["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    assert norm > 0.01
    step = torch.cat([(p0 - p).reshape(-1) for p0, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(0.1 * 0.01, rel=1e-4)


def test_clip_grad_value_bounds_each_element_and_logs_norm():
    X, y = regression_data(32)
    X = X * 10
    model = nn.Linear(3, 1)
    before = params_of(model)
    history = trainer_for(model, batch_size=None, lr=0.1, clip_grad_value=0.001).fit((X, y))
    assert history[0]["grad_norm"] > 0.001
    for p0, p in zip(before, model.parameters()):
        assert torch.allclose((p0 - p).abs(), torch.full_like(p, 0.1 * 0.001), rtol=1e-4)


def test_no_grad_norm_without_clipping():
    assert "grad_norm" not in trainer_for(nn.Linear(3, 1)).fit(regression_data())[0]
