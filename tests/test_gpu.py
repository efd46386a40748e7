"""CUDA-only checks; each skips with a clear reason on a machine without a GPU."""

import pytest
import torch
from torch import nn

import fitloop as fl

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU (none available here)")]


class NoSyncTrainer(fl.Trainer):
    """Every training step runs under torch.cuda.set_sync_debug_mode('error'): any host-device
    synchronisation inside a step (an .item(), a .cpu(), a data-dependent shape) raises."""

    def train_step(self, batch):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return super().train_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("kw", [{}, {"clip_grad_norm": 1.0}, {"accumulate": 2}, {"precision": "bf16"},
                                {"scheduler": "onecycle"}])
def test_no_host_device_sync_per_step(kw):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 16, generator=g)
    y = (X[:, :4].sum(1) > 0).long()
    fl.seed_everything(0)
    model = fl.build_mlp(fl.MLPSpec(16, [64, 64], 2))
    t = NoSyncTrainer(model, loss="cross_entropy", optimizer="adam", lr=1e-3, epochs=2, batch_size=128,
                      device="cuda", quiet=True, **kw)
    hist = t.fit((X, y), (X[:512], y[:512]))
    assert hist[-1]["loss"] < hist[0]["loss"] + 0.1


def test_compile_on_cuda_matches_eager_to_tolerance():
    X = torch.randn(1024, 8)
    y = X.sum(1, keepdim=True)
    results = []
    for compile in (False, True):
        fl.seed_everything(0)
        t = fl.Trainer(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), epochs=3, batch_size=64,
                       device="cuda", compile=compile, quiet=True)
        results.append(t.fit((X, y))[-1]["loss"])
    assert results[1] == pytest.approx(results[0], rel=1e-3)


@pytest.mark.parametrize("kw", [{}, {"scheduler": "onecycle", "clip_grad_norm": 1.0}])
def test_compiled_step_on_cuda_matches_eager_without_a_sync_per_step(kw, monkeypatch):
    """compile="step" on the GPU: every compiled call after the one that compiles runs under
    set_sync_debug_mode("error"), and the result matches the eager Trainer to tolerance."""
    from fitloop.step.compiled import CompiledStep

    original = CompiledStep.__call__

    def no_sync(self, x, y):
        if self._fn is None or (self._fn, x.shape) not in self._compiled:
            return original(self, x, y)  # this call compiles
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, x, y)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    monkeypatch.setattr(CompiledStep, "__call__", no_sync)
    X = torch.randn(1000, 8)
    y = X.sum(1, keepdim=True)
    results = []
    for compile in (False, "step"):
        fl.seed_everything(0)
        t = fl.Trainer(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), epochs=3, batch_size=64,
                       device="cuda", compile=compile, quiet=True, **kw)
        results.append([h["loss"] for h in t.fit((X, y))])
    assert t.training_step.compiled.steps == t.global_step - 1
    assert results[1] == pytest.approx(results[0], rel=1e-3)
