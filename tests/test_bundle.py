import json

import pytest
import torch
from torch import nn

import fitloop as fl


def test_save_load_mlp_from_spec(tmp_path):
    fl.seed_everything(0)
    X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    tr = fl.Trainer(fl.build_mlp(fl.MLPSpec(4, [8], 3)), loss="cross_entropy", epochs=2, quiet=True)
    tr.fit((X, y))
    tr.evaluate((X, y))
    tr.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["fitloop.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "fitloop.json").read_text())
    assert meta["spec"]["hidden"] == [8] and meta["task"] == "multiclass"
    assert meta["versions"]["torch"] == torch.__version__ and "accuracy" in meta["metrics"]
    model = fl.load(tmp_path / "m")
    assert torch.equal(model(X), tr.predict(X))


def test_custom_module_needs_model_argument(tmp_path):
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    fl.Trainer(m, quiet=True).save(tmp_path / "b")
    with pytest.raises(ValueError, match=r"without a stored spec; pass the model"):
        fl.load(tmp_path / "b")
    m2 = fl.load(tmp_path / "b", model=nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    x = torch.randn(5, 2)
    assert torch.equal(m2(x), m(x))


def test_shape_mismatch_names_parameters(tmp_path):
    fl.Trainer(nn.Linear(2, 1), quiet=True).save(tmp_path / "b")
    with pytest.raises(ValueError, match=r"weight: saved \(1, 2\) vs model \(1, 3\)"):
        fl.load(tmp_path / "b", model=nn.Linear(3, 1))


def test_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a fitloop model bundle"):
        fl.load(tmp_path)


def test_function_model_roundtrip(tmp_path):
    params = torch.tensor([2.0, 1.0], requires_grad=True)
    tr = fl.Trainer(lambda x, w, b: w * x + b, params=params, quiet=True)
    tr.save(tmp_path / "f")
    p2 = torch.zeros(2, requires_grad=True)
    m = fl.load(tmp_path / "f", model=fl.FunctionModel(lambda x, w, b: w * x + b, p2))
    assert p2.tolist() == [2.0, 1.0] and m(torch.tensor([1.0])).item() == 3.0
