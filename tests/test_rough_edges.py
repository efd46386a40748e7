"""The rough edges a new user hit (issue 21): each one's message or output, checked exactly."""

import warnings

import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.data.batches import make_batches
from fitloop.diagnose.checks import GuardWarning


def _guard_messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, GuardWarning)]


# ------------------------------------------------------------------ float class targets honour the guard


def _float_class_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 3, generator=g), torch.randint(0, 3, (32,), generator=g).float()


@pytest.mark.parametrize("guards, warned", [(True, True), ({}, True), ({"class_targets": False}, False),
                                            (False, False)])
def test_float_class_target_warning_honours_the_class_targets_guard(guards, warned):
    X, y = _float_class_data()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        batches = make_batches((X, y), train=True, batch_size=8, shuffle=False, device=torch.device("cpu"),
                               task="multiclass", split="train", guards=guards)
    expected = ["train y: the class targets are floats (torch.float32); their whole values were converted to "
                "class indices (int64) for cross-entropy. Pass integer labels (y.long()) to make this explicit, "
                "or use a regression loss if y is a quantity. (guards={'class_targets': False} switches this off.)"]
    assert _guard_messages(rec) == (expected if warned else [])
    assert batches.y.dtype == torch.int64  # converted either way


@pytest.mark.xfail(strict=True, reason="needs fitloop/trainer.py Trainer.batches to pass guards=cfg.guards "
                                       "to make_batches (reported to the coordinator)")
def test_float_class_targets_in_a_fit_honour_the_class_targets_guard():
    X, y = _float_class_data()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fl.Trainer(nn.Linear(3, 3), loss="cross_entropy", epochs=1, quiet=True,
                   guards={"class_targets": False}).fit((X, y))
    assert not [m for m in _guard_messages(rec) if "class targets are floats" in m]
