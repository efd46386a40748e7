"""The MLP's settings checked in plain Python (no torch): `MLPSpec` and the command line's `[model]` use it.

`ACTIVATION_CLASSES` names the activations an MLP can use; `fitloop.models.ACTIVATIONS` maps the
same names to the `torch.nn` classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["ACTIVATION_CLASSES", "check_mlp"]

# activation name -> the torch.nn class that implements it
ACTIVATION_CLASSES: dict[str, str] = {
    "relu": "ReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "identity": "Identity",
}


def check_mlp(hidden: Sequence[int], activation: str, dropout: float, *, in_features: int | None = None,
              out_features: int | None = None, names: Mapping[str, str] | None = None) -> None:
    """Check an MLP's layer sizes, activation and dropout.

    Args:
        hidden: hidden layer sizes (each >= 1; empty for a linear model).
        activation: one of `ACTIVATION_CLASSES`.
        dropout: in [0, 1).
        in_features: the input size, also checked (>= 1) when given.
        out_features: the output size, also checked (>= 1) when given.
        names: how each message names the setting, by field (`hidden`, `activation`, `dropout`);
            default `MLPSpec` for all three.

    Raises:
        ValueError: the first setting that is out of range, named as `names` says.
    """
    label = {"hidden": "MLPSpec", "activation": "MLPSpec", "dropout": "MLPSpec", **(names or {})}
    sizes = [s for s in (in_features, *hidden, out_features) if s is not None]
    if any(s < 1 for s in sizes):
        if in_features is None and out_features is None:
            got = f"{list(hidden)}"
        else:
            got = f"in_features={in_features}, hidden={list(hidden)}, out_features={out_features}"
        raise ValueError(f"{label['hidden']}: layer sizes must be >= 1, got {got}.")
    if activation not in ACTIVATION_CLASSES:
        raise ValueError(f"{label['activation']}: unknown activation {activation!r}; "
                         f"choose one of {sorted(ACTIVATION_CLASSES)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{label['dropout']}: dropout must be in [0, 1), got {dropout}.")
