"""Search spaces as data: a dict (or a TOML file) of parameters, each with its type and its range.

    space = load_space("space.toml")              # checked: errors name the file, the parameter and the key
    params = suggest(trial, space)                # {"lr": 0.0031, "width": 96, ...} from an Optuna trial

The format, one table per parameter (the same in Python as a dict of dicts)::

    [lr]                          # a float: low <= x <= high, sampled on a log scale with log = true
    type = "float"
    low = 1e-4
    high = 3e-2
    log = true

    [depth]                       # an int: low <= n <= high (log = true and step = k are allowed too)
    type = "int"
    low = 1
    high = 3

    [batch_size]                  # one of the choices (numbers, strings or booleans)
    type = "categorical"
    choices = [32, 64, 128]

Keys per type: ``float`` and ``int`` take ``low``, ``high`` and optionally ``log`` (needs low > 0) or
``step`` (not both); ``categorical`` takes ``choices``. What a parameter's name means is up to the caller:
the table workflow reads it as a run setting (`fitloop.tabular.tuning`).

Plain Python: importing it imports neither torch nor Optuna.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from typing import Any

import tomli_w
import tomllib

__all__ = ["SpaceError", "DEFAULT_TABLE_SPACE", "check_space", "load_space", "suggest", "space_toml"]

# The table model's default space. Weight decay includes 0 as a choice (a log scale cannot reach it);
# width and depth make the hidden layers (`[width] * depth`).
DEFAULT_TABLE_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "weight_decay": {"type": "categorical", "choices": [0.0, 1e-5, 1e-4, 1e-3]},
    "width": {"type": "int", "low": 16, "high": 256, "log": True},
    "depth": {"type": "int", "low": 1, "high": 3},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
}

_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
         "categorical": {"type", "choices"}}


class SpaceError(ValueError):
    """A search space that cannot be used; the message names the file, the parameter and the key."""


def load_space(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and check a TOML search space (the format is in this module's docstring).

    Raises:
        SpaceError: the file is not TOML, or a parameter is malformed (named with its key).
        OSError: the file cannot be read.
    """
    where = os.fspath(path)
    with open(where, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise SpaceError(f"{where}: not valid TOML: {e}.") from None
    return check_space(raw, where)


def check_space(space: Mapping[str, Any], where: str = "space") -> dict[str, dict[str, Any]]:
    """`space` checked: a non-empty mapping of parameter names to specs; returns a copy.

    Args:
        space: the parameters, as `DEFAULT_TABLE_SPACE` writes them.
        where: the file (or "space") the messages name.

    Raises:
        SpaceError: the first problem found, e.g. "space.toml: [lr]: low must be below high (got 0.1, 0.01)".
    """
    if not isinstance(space, Mapping) or not space:
        raise SpaceError(f"{where}: no parameters; write one table per parameter, e.g. [lr] with type = "
                         "\"float\", low = 1e-4, high = 0.03, log = true.")
    return {str(name): _check_param(str(name), spec, where) for name, spec in space.items()}


def _check_param(name: str, spec: Any, where: str) -> dict[str, Any]:
    """One parameter checked (see `check_space`)."""
    at = f"{where}: [{name}]"
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{at}: expected a table with type = \"float\", \"int\" or \"categorical\", got "
                         f"{spec!r}.")
    kind = spec.get("type")
    if kind not in _KEYS:
        raise SpaceError(f"{at}: type must be \"float\", \"int\" or \"categorical\", got {kind!r}.")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise SpaceError(f"{at}: unknown key {unknown[0]!r} for a {kind}; its keys are "
                         f"{', '.join(sorted(_KEYS[kind]))}.")
    if kind == "categorical":
        _check_choices(at, spec.get("choices"))
    else:
        _check_range(at, kind, spec)
    return copy.deepcopy(dict(spec))


def _check_choices(at: str, choices: Any) -> None:
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{at}: choices must be a non-empty list, e.g. choices = [32, 64, 128]; got {choices!r}.")
    for value in choices:
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise SpaceError(f"{at}: choices: {value!r} is not a number, a string or a boolean.")


def _check_range(at: str, kind: str, spec: Mapping[str, Any]) -> None:
    number = int if kind == "int" else (int, float)
    for key in ("low", "high"):
        value = spec.get(key)
        if value is None:
            raise SpaceError(f"{at}: {key} is missing; a {kind} needs low and high.")
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise SpaceError(f"{at}: {key} must be {'a whole number' if kind == 'int' else 'a finite number'}, "
                             f"got {value!r}.")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise SpaceError(f"{at}: low must not be above high (got low = {low}, high = {high}).")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{at}: log must be true or false, got {log!r}.")
    if log and low <= 0:
        raise SpaceError(f"{at}: log = true needs low > 0 (got low = {low}); use a categorical with 0 among "
                         "its choices to include 0.")
    if step is not None:
        if log:
            raise SpaceError(f"{at}: step and log = true cannot be combined; choose one.")
        if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
            raise SpaceError(f"{at}: step must be a number > 0, got {step!r}.")


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Each parameter of `space` drawn from an Optuna trial (`trial.suggest_*`), in the space's order."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step") or 1,
                                             log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))
    return params


def space_toml(space: Mapping[str, Mapping[str, Any]]) -> str:
    """The space as TOML text (what `load_space` reads back)."""
    return tomli_w.dumps({name: dict(spec) for name, spec in space.items()})
