import pytest
import torch

import fitloop as fl


def test_build_mlp_from_spec():
    spec = fl.MLPSpec(4, hidden=[8, 6], out_features=3, activation="tanh", dropout=0.1)
    m = fl.build_mlp(spec)
    assert m(torch.randn(5, 4)).shape == (5, 3)
    assert m.spec is spec
    assert sum(isinstance(x, torch.nn.Dropout) for x in m) == 2
    assert fl.MLPSpec.from_dict(spec.to_dict()) == spec


def test_mlp_spec_errors():
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        fl.MLPSpec(3, [4], 1, activation="relux")
    with pytest.raises(ValueError, match="dropout must be in"):
        fl.MLPSpec(3, [4], 1, dropout=1.5)
    with pytest.raises(ValueError, match=r"MLPSpec: layer sizes must be >= 1, got in_features=3, hidden=\[4, 0\], "
                                         r"out_features=1\."):
        fl.MLPSpec(3, [4, 0], 1)
    with pytest.raises(ValueError, match="layer sizes must be >= 1"):
        fl.MLPSpec(0, [4], 1)


def test_activation_names_are_checked_without_torch():
    """`mlp_checks` (plain Python, used by the CLI's [model] too) and `ACTIVATIONS` name the same activations."""
    from fitloop.mlp_checks import ACTIVATION_CLASSES
    from fitloop.models import ACTIVATIONS

    assert list(ACTIVATIONS) == list(ACTIVATION_CLASSES)
    assert all(cls is getattr(torch.nn, ACTIVATION_CLASSES[name]) for name, cls in ACTIVATIONS.items())
    for name in ACTIVATIONS:
        assert isinstance(fl.build_mlp(fl.MLPSpec(2, [3], 1, activation=name))[1], ACTIVATIONS[name])


def test_function_model_updates_user_tensor_in_place():
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    m = fl.FunctionModel(lambda x, w, b: w * x + b, params)
    assert torch.equal(m(torch.tensor([2.0])), torch.tensor([2.0]))
    with torch.no_grad():
        m.params[0].add_(1.0)
    assert params.tolist() == [2.0, 1.0]  # shares storage with the user's tensor


def test_function_model_with_list_of_params():
    w, b = torch.ones(3, requires_grad=True), torch.zeros(1, requires_grad=True)
    m = fl.FunctionModel(lambda x, w, b: x @ w + b, [w, b])
    assert m(torch.ones(2, 3)).tolist() == [3.0, 3.0]
