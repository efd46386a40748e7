"""The command line's run configuration: `[data]`, `[model]` and `[train]`, from TOML, flags and `--set`.

`fitloop train` flags, a TOML file (`--config run.toml`) and `--set section.key=value` all become
one dict of dotted overrides applied by `resolve_run_config`; the result is a `RunConfig`, saved
as `RUN_DIR/config.toml` with `RunConfig.to_toml`. Plain Python: importing it does not import torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig
from ..data.fractions import check_fractions
from ..mlp_checks import check_mlp

__all__ = ["CONFIG_HEADER", "RunConfig", "DataSection", "ModelSection", "TrainSection", "ConfigError",
           "resolve_run_config", "load_toml", "parse_set", "parse_value"]


CONFIG_HEADER = "# fitloop run configuration"  # config.toml's first line (how `resume` knows a run's file)


# `train.log` / `--log`: the loggers the CLI can add (fitloop.callbacks: TensorBoardLogger, MLflowLogger).
LOGGER_NAMES = ("tensorboard", "mlflow")


class ConfigError(ValueError):
    """A setting that is unknown or has a value of the wrong type; the message names the key."""


@dataclass
class DataSection:
    """`[data]`: which file, which column to predict, how to split it.

    Attributes:
        path: CSV/TSV(.gz)/Parquet file.
        target: column to predict.
        task: `"classification"` or `"regression"`; inferred from the target when `None`.
        drop: columns to leave out of the features.
        id: row-id column, never a feature, copied into the predictions.
        split: train/val/test fractions (they sum to 1); stratified by class for classification.
        seed: seed of the split; `None` uses `train.seed`.
        encoding: text encoding of CSV/TSV files.
        delimiter: field separator; `None` detects `,` `;` tab or `|` from the first lines.
        decimal: decimal mark (`","` or `"."`) of numbers written as text; `None` detects it.
        max_categories: text columns with more distinct values are dropped (ID-like).
    """

    path: str | None = None
    target: str | None = None
    task: str | None = None
    drop: list[str] = field(default_factory=list)
    id: str | None = None
    split: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    seed: int | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None
    decimal: str | None = None
    max_categories: int = 50

    def validate(self) -> None:
        if self.task is not None and self.task not in ("classification", "regression"):
            raise ConfigError(f"data.task: got {self.task!r}; choose 'classification' or 'regression'.")
        try:
            check_fractions(self.split, name="data.split (--split)", example="0.7,0.15,0.15")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.decimal not in (None, ",", "."):
            raise ConfigError(f"data.decimal (--decimal): got {self.decimal!r}; pass ',' or '.'.")
        if self.max_categories < 1:
            raise ConfigError(f"data.max_categories: got {self.max_categories}; pass a whole number >= 1.")


@dataclass
class ModelSection:
    """`[model]`: the MLP (`MLPSpec` minus the sizes the data decides)."""

    hidden: list[int] = field(default_factory=lambda: [64, 32])
    activation: str = "relu"
    dropout: float = 0.0

    def validate(self) -> None:
        try:
            check_mlp(self.hidden, self.activation, self.dropout, names=_MODEL_NAMES)
        except ValueError as e:
            raise ConfigError(str(e)) from None


_MODEL_NAMES = {"hidden": "model.hidden (--hidden)", "activation": "model.activation", "dropout": "model.dropout"}


@dataclass
class TrainSection(TrainConfig):
    """`[train]`: every `TrainConfig` setting, plus the optimizer and loss by name and early stopping.

    Attributes:
        optimizer: any `torch.optim` name (`adam`, `adamw`, `sgd`, ...).
        loss: loss name; `None` picks `cross_entropy` (classification) or `mse` (regression).
        early_stopping: patience in epochs on `val_loss` (best weights restored); `0`/`None` is off.
        log: loggers besides the run directory, from `LOGGER_NAMES` (`--log tensorboard,mlflow`);
            kept in `config.toml`, so `fitloop resume` keeps logging to them.
    """

    epochs: int = 50
    optimizer: str = "adam"
    loss: str | None = None
    early_stopping: int | None = 10
    log: list[str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if self.early_stopping is not None and self.early_stopping < 0:
            raise ConfigError(f"train.early_stopping: got {self.early_stopping}; pass a patience >= 0 "
                              "(epochs), or 0 to turn it off.")
        for name in self.log:
            if name not in LOGGER_NAMES:
                raise ConfigError(f"train.log (--log): unknown logger {name!r}; choose from "
                                  f"{', '.join(LOGGER_NAMES)}, comma-separated (--log tensorboard,mlflow).")

    def trainer_config(self) -> TrainConfig:
        """The plain `TrainConfig` part (what the `Trainer` takes)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class RunConfig:
    """Everything `fitloop train` needs, in three sections: `data`, `model`, `train`.

    Build it with `resolve_run_config` from a TOML file and/or dotted overrides, and save it with
    `to_toml`; loading the saved file gives back an equal config.
    """

    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)

    SECTIONS = ("data", "model", "train")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}
        if out["train"]["penalty"] is not None:
            out["train"]["penalty"] = list(out["train"]["penalty"])
        return out

    def to_toml(self) -> str:
        """TOML text (`None` settings are left out when that is the default, written as `"none"` otherwise)."""
        import tomli_w

        doc: dict[str, dict[str, Any]] = {}
        for s, values in self.to_dict().items():
            defaults = dataclasses.asdict(type(getattr(self, s))())
            doc[s] = {k: "none" if v is None else v for k, v in values.items()
                      if not (v is None and defaults.get(k) is None)}
        try:
            text = tomli_w.dumps(doc)
        except TypeError as e:
            raise ConfigError(f"cannot write the run configuration as TOML: {e}") from None
        return CONFIG_HEADER + " (resolved: defaults < --config file < flags < --set).\n\n" + text


def _section_types(section: str) -> dict[str, Any]:
    import typing

    cls = {"data": DataSection, "model": ModelSection, "train": TrainSection}[section]
    return typing.get_type_hints(cls)


def parse_value(text: str) -> Any:
    """A `--set` value with TOML literal rules (`0.01`, `true`, `[64, 32]`, `"x"`); bare words are strings."""
    tomllib = _tomllib()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def _tomllib():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading TOML on Python 3.10 needs the 'tomli' package (pip install tomli).") from None
    return tomllib


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check/convert `value` for a field annotated `hint`; strings like "64,32" become lists."""
    import types
    import typing

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{key}: got {value!r} ({type(value).__name__}); expected {expected}.")

    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _coerce(key, value, inner[0]) if len(inner) == 1 else value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [parse_value(p) for p in value.split(",") if p.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a table, e.g. {momentum = 0.9}")
        return dict(value)
    return value


def _flatten(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in d.items():
        if section not in RunConfig.SECTIONS:
            close = difflib.get_close_matches(section, RunConfig.SECTIONS, n=1)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"{where}: unknown section [{section}].{hint} Sections: "
                              f"{', '.join(RunConfig.SECTIONS)}.")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: {section!r} must be a section ([{section}]) of key = value lines.")
        for k, v in values.items():
            out[f"{section}.{k}"] = v
    return out


def load_toml(path: str) -> dict[str, Any]:
    """A TOML config file as dotted overrides (`{"train.lr": 0.01, ...}`)."""
    from pathlib import Path

    tomllib = _tomllib()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: config file not found.")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None
    return _flatten(d, path)


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set section.key=value` items as dotted overrides."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.01.")
        out[key.strip()] = parse_value(text)
    return out


def resolve_run_config(*layers: Mapping[str, Any]) -> RunConfig:
    """Apply layers of dotted overrides (later wins) to the defaults and validate the result.

    Every source goes through here: a TOML file (`load_toml`), command-line flags and `--set`.

    Raises:
        ConfigError: unknown keys (with a suggestion) or values of the wrong type.
    """
    values: dict[str, dict[str, Any]] = {s: {} for s in RunConfig.SECTIONS}
    for layer in layers:
        for key, value in layer.items():
            section, _, name = key.partition(".")
            if section not in RunConfig.SECTIONS:
                close = difflib.get_close_matches(key, _all_keys(), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown setting {key!r}.{hint} Sections are {', '.join(RunConfig.SECTIONS)}.")
            types_ = _section_types(section)
            if name not in types_:
                close = difflib.get_close_matches(name, list(types_), n=1)
                hint = f" Did you mean '{section}.{close[0]}'?" if close else ""
                raise ConfigError(f"unknown setting {key!r}.{hint} Settings of [{section}]: "
                                  f"{', '.join(sorted(types_))}.")
            values[section][name] = _coerce(key, value, types_[name])
    try:
        cfg = RunConfig(DataSection(**values["data"]), ModelSection(**values["model"]),
                        TrainSection(**values["train"]))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # TrainConfig.validate names the field; add the section
        raise ConfigError(f"train.{e}") from None
    cfg.data.validate()
    cfg.model.validate()
    return cfg


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s in RunConfig.SECTIONS for k in _section_types(s)]
