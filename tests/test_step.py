"""fitloop.step: the one training step. Accumulation over micro-batches (equal to one big batch),
clipping by norm or by value (the norm is logged), the penalty and noise helpers, and the step used on
its own (as the LR finder does) equal to a hand-written step."""

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


# ---------------------------------------------------------------------------------- the step on its own


def test_penalty_and_input_noise_helpers():
    from fitloop.step import add_input_noise, penalty

    ps = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    assert penalty(ps, "l2", 0.5).item() == 0.5 * (1 + 4 + 9)
    assert penalty(ps, "l1", 2.0).item() == 2.0 * (1 + 2 + 3)
    ints = torch.arange(4)
    assert add_input_noise(ints, 0.1) is ints  # integer inputs (embeddings) are never noised
    x = torch.zeros(3)
    assert add_input_noise(x, 0.0) is x
    torch.manual_seed(0)
    noisy = add_input_noise(x, 0.5)
    torch.manual_seed(0)
    assert torch.equal(noisy, 0.5 * torch.randn(3))


def test_a_single_training_step_equals_a_hand_written_one():
    import fitloop as fl
    from fitloop.step import TrainingStep

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    hand = copy.deepcopy(model)
    t = fl.Trainer(model, "mse", "sgd", lr=0.1, quiet=True, penalty=("l2", 0.01), clip_grad_norm=0.5)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    loss, out = TrainingStep(t, schedule=False)(x, y)
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    hand_loss = nn.functional.mse_loss(hand(x), y)
    (hand_loss + 0.01 * sum(p.pow(2).sum() for p in hand.parameters())).backward()
    torch.nn.utils.clip_grad_norm_(list(hand.parameters()), 0.5)
    opt.step()
    assert torch.equal(loss, hand_loss.detach()) and out.shape == (8, 1)
    for p, q in zip(model.parameters(), hand.parameters()):
        assert torch.equal(p, q)
    assert t.state.step == 1 and len(t.state.grad_norms) == 1
