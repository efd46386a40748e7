"""Small data sets and a quiet Trainer for the feature tests (schedulers, metrics, gradients,
precision, devices, regularisation)."""

import re

import pytest
import torch

import fitloop as fl

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none available here)")


def regression_data(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.linspace(-1, 1, d)
    y = X @ w + 0.1 * torch.randn(n, generator=g)
    return X, y


def classification_data(n=120, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, d, generator=g)
    X = centers[y] + 1.0 * torch.randn(n, d, generator=g)
    return X, y


def trainer_for(model, loss="mse", optimizer="sgd", **kw):
    settings = dict(epochs=1, batch_size=16, lr=0.05, quiet=True, seed=0)
    settings.update(kw)
    return fl.Trainer(model, loss=loss, optimizer=optimizer, **settings)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def exactly(message):
    """A `pytest.raises(match=...)` pattern that matches `message` and nothing else."""
    return "^" + re.escape(message) + "$"
