"""Precision and compilation: bf16 autocast (CPU and CUDA), fp16 with a GradScaler (CUDA only),
and compile=True (the saved weights carry no `_orig_mod.` prefix)."""

import time

import numpy as np
import pytest
import torch
from helpers import needs_cuda, regression_data, trainer_for
from torch import nn

import fitloop as fl

# ---------------------------------------------------------------------------------- precision


def test_bf16_autocast_on_cpu_with_fp32_loss():
    seen = {}
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))

    def hook(module, inputs, output):
        seen["linear"] = output.dtype

    model[0].register_forward_hook(hook)

    def loss(out, y):
        seen["loss_input"] = out.dtype
        value = nn.functional.mse_loss(out, y)
        seen["loss"] = value.dtype
        return value

    trainer = trainer_for(model, loss=loss, precision="bf16", device="cpu")
    history = trainer.fit(regression_data())
    assert seen == {"linear": torch.bfloat16, "loss_input": torch.float32, "loss": torch.float32}
    assert np.isfinite(history[0]["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="fp16 training needs CUDA"):
        trainer_for(nn.Linear(3, 1), precision="fp16", device="cpu")


def test_unknown_precision_rejected():
    with pytest.raises(ValueError, match="precision"):
        trainer_for(nn.Linear(3, 1), precision="fp8")


@needs_cuda
@pytest.mark.gpu
def test_fp16_on_cuda_uses_grad_scaler():
    trainer = trainer_for(nn.Linear(3, 1), precision="fp16", device="cuda", epochs=2)
    history = trainer.fit(regression_data())
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    assert np.isfinite(history[-1]["loss"])


@needs_cuda
@pytest.mark.gpu
def test_bf16_on_cuda():
    history = trainer_for(nn.Linear(3, 1), precision="bf16", device="cuda").fit(regression_data())
    assert np.isfinite(history[-1]["loss"])


# ---------------------------------------------------------------------------------- compile


@pytest.mark.slow  # torch.compile builds C++ kernels: about 15 s on 2 CPU cores
def test_compile_saves_without_orig_mod_prefix(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    t0 = time.perf_counter()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    trainer = trainer_for(model, compile=True, batch_size=None, epochs=1)
    trainer.fit(regression_data(32))
    path = trainer.save(str(tmp_path / "bundle"))
    keys = set(safetensors.load_file(str(tmp_path / "bundle" / "model.safetensors")))
    assert keys == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert not any(k.startswith("_orig_mod.") for k in trainer.model.state_dict())
    loaded = fl.load(path, model=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    X = regression_data(8, seed=5)[0]
    assert torch.allclose(loaded(X), model(X))
    assert time.perf_counter() - t0 < 60
