"""Devices: pick_device's order and errors, in-memory data moved to the device once, pinned
memory for loaders feeding CUDA."""

import numpy as np
import pytest
import torch
from helpers import needs_cuda, regression_data, trainer_for
from torch import nn

import fitloop as fl
from fitloop.data import LoaderBatches, Split, TensorBatches


def test_pick_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fl.pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert fl.pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert fl.pick_device("auto").type == "cpu"
    assert fl.pick_device("cpu").type == "cpu"


def test_cuda_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        fl.pick_device("cuda")


def test_in_memory_data_moved_once_and_loader_pins_on_cuda():
    trainer = trainer_for(nn.Linear(3, 1))
    X, y = regression_data()
    batches = trainer.batches((X, y), train=True)
    assert isinstance(batches, TensorBatches) and batches.X.device == trainer.device
    loader = trainer.batches(Split(X, y), train=True)
    assert isinstance(loader, TensorBatches)  # a Split is in-memory too
    assert isinstance(trainer.batches(torch.utils.data.TensorDataset(X, y), train=True), TensorBatches)  # in memory

    class Rows(torch.utils.data.Dataset):  # any other Dataset takes the DataLoader path
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return X[i], y[i]

    ds = Rows()
    assert isinstance(trainer.batches(ds, train=True), LoaderBatches)
    assert trainer.batches(ds, train=True).loader.pin_memory is False
    trainer.device = torch.device("cuda")  # no CUDA needed to build the loader
    assert trainer.batches(ds, train=True).loader.pin_memory is True


@needs_cuda
@pytest.mark.gpu
def test_cuda_dataset_path_trains():
    X, y = regression_data()
    trainer = trainer_for(nn.Linear(3, 1), device="cuda")
    history = trainer.fit(torch.utils.data.TensorDataset(X, y))
    assert np.isfinite(history[-1]["loss"]) and next(trainer.model.parameters()).is_cuda
