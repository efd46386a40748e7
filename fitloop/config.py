"""Training settings as one dataclass: keyword arguments, TOML files and CLI flags resolve to it."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "RunConfig", "DataSection", "ModelSection", "TrainSection", "ConfigError",
           "resolve_run_config", "load_toml", "parse_set"]

PRECISIONS = ("fp32", "bf16", "fp16")
# run.json's "format": what `fitloop predict/evaluate/resume/report` look for (here: no torch import needed).
RUN_FORMAT = "fitloop-run"
# Settings that may differ on resume (they do not change the numbers a run produces): left out of
# the config fingerprint and of the resume check. The one list both use.
RESUME_IGNORED = ("quiet", "print_every", "run_dir", "device", "num_workers", "epochs")


@dataclass
class TrainConfig:
    """Every setting of a `Trainer` that is plain data (so it can be saved, hashed and compared).

    Objects (the model, a loss callable, an optimizer instance, callbacks, metric objects) are
    passed to the `Trainer` directly; everything here can also be given as a keyword argument.

    Attributes:
        epochs: number of passes over the training data.
        batch_size: rows per step; `None` trains on the full batch.
        lr: learning rate; `None` keeps the optimizer's own default.
        seed: seeds the data order, dropout and noise (everything fitloop controls).
        device: `"auto"` (cuda, then mps, then cpu), or any torch device string.
        task: `"regression"`, `"binary"`, `"multiclass"` (or `"classification"`); inferred from
            the loss when `None`.
        quiet: print nothing.
        print_every: print epochs 1-3, every `print_every`-th and the last; `None` picks about ten lines.
        optimizer_kwargs: extra keyword arguments for an optimizer given by name.
        weight_decay: weight decay passed to the optimizer (decoupled for AdamW).
        fused: use torch's fused optimizer kernels; `None` decides by model size.
        scheduler_interval: `"step"` or `"epoch"`; `None` uses the scheduler's natural interval.
        accumulate: gradient accumulation: micro-batches per optimizer step.
        clip_grad_norm: clip the global gradient norm to this value (the norm is logged).
        clip_grad_value: clip each gradient element to `[-v, v]`.
        precision: `"fp32"`, `"bf16"` (autocast on CPU and CUDA) or `"fp16"` (CUDA, with GradScaler).
        compile: `True` (or `"model"`) runs the model through `torch.compile`; `"step"` compiles
            the whole training step (forward, loss, gradients, clipping, Adam/AdamW/SGD update)
            into one graph, the fast path for small models (see `fitloop.compiled_step`).
        penalty: `("l1" | "l2", strength)` added to the training loss, or `None`.
        input_noise: standard deviation of Gaussian noise added to float inputs in training only.
        train_metrics: compute task metrics on the training batches each epoch; `None` = on,
            except for full-batch training (one step per epoch) where it would cost more than the step.
        shuffle: reshuffle the training data every epoch.
        num_workers: DataLoader workers for the Dataset path.
        threads: torch intra-op threads; `None` leaves torch's default, except small models on
            CPU which use 1 thread (see BENCHMARKS.md); an int sets it.
        deterministic: `torch.use_deterministic_algorithms(True)`.
        run_dir: directory for the run (config, history, checkpoints, model bundle).
        checkpoint_every_steps: also checkpoint every N optimizer steps (mid-epoch).
        checkpoint_every_epochs: checkpoint every N epochs (0 for never).
        keep_last: how many recent checkpoints to keep (the best one is kept as well).
        monitor: logged value that decides the best checkpoint.
        mode: `"min"` or `"max"` for `monitor`.
        on_nonfinite: `"stop"` (raise, naming the step) or `"skip"` the step.
    """

    epochs: int = 10
    batch_size: int | None = 64
    lr: float | None = 1e-3
    seed: int = 0
    device: str = "auto"
    task: str | None = None
    quiet: bool = False
    print_every: int | None = None
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    fused: bool | None = None
    scheduler_interval: str | None = None
    accumulate: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    precision: str = "fp32"
    compile: bool | str = False
    penalty: tuple[str, float] | None = None
    input_noise: float = 0.0
    train_metrics: bool | None = None
    shuffle: bool = True
    num_workers: int = 0
    threads: int | None = None
    deterministic: bool = False
    run_dir: str | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_epochs: int = 1
    keep_last: int = 2
    monitor: str = "val_loss"
    mode: str = "min"
    on_nonfinite: str = "stop"

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_kwargs(cls, base: TrainConfig | None = None, **kwargs) -> TrainConfig:
        """A config from `base` (or the defaults) with `kwargs` applied; unknown names get a
        suggestion."""
        names = {f.name for f in dataclasses.fields(cls)}
        for k in kwargs:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"Trainer got an unknown setting {k!r}.{hint} "
                                f"Valid settings: {', '.join(sorted(names))}.")
        d = dataclasses.asdict(base) if base is not None else {}
        d.update(kwargs)
        return cls(**d)

    def validate(self) -> None:
        def bad(name: str, value, fix: str):
            raise ValueError(f"{name}: got {value!r}; {fix}")

        if not isinstance(self.epochs, int) or self.epochs < 0:
            bad("epochs", self.epochs, "pass a whole number >= 0.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            bad("batch_size", self.batch_size, "pass a whole number >= 1, or None for full-batch training.")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            bad("lr", self.lr, "pass a learning rate > 0, e.g. lr=1e-3.")
        if not isinstance(self.accumulate, int) or self.accumulate < 1:
            bad("accumulate", self.accumulate, "pass a whole number >= 1 (micro-batches per optimizer step).")
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, f"choose one of {PRECISIONS}.")
        if self.task is not None and self.task not in ("regression", "binary", "multiclass", "classification"):
            bad("task", self.task, "choose 'regression', 'binary', 'multiclass' or 'classification'.")
        if self.penalty is not None:
            pen: tuple[Any, ...] = tuple(self.penalty)
            try:
                ok = len(pen) == 2 and pen[0] in ("l1", "l2") and float(pen[1]) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                bad("penalty", self.penalty, "pass ('l1', strength) or ('l2', strength), e.g. ('l2', 1e-4).")
            self.penalty = (str(pen[0]), float(pen[1]))
        if self.input_noise < 0:
            bad("input_noise", self.input_noise, "pass a standard deviation >= 0.")
        for name in ("clip_grad_norm", "clip_grad_value"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                bad(name, v, "pass a value > 0, or None to turn clipping off.")
        if self.mode not in ("min", "max"):
            bad("mode", self.mode, "choose 'min' or 'max'.")
        if self.on_nonfinite not in ("stop", "skip"):
            bad("on_nonfinite", self.on_nonfinite, "choose 'stop' or 'skip'.")
        if self.scheduler_interval not in (None, "step", "epoch"):
            bad("scheduler_interval", self.scheduler_interval, "choose 'step' or 'epoch'.")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            bad("checkpoint_every_steps", self.checkpoint_every_steps, "pass a whole number >= 1 or None.")
        if self.keep_last < 1:
            bad("keep_last", self.keep_last, "keep at least 1 checkpoint.")
        if self.compile not in (False, True, "model", "step"):
            bad("compile", self.compile, "pass True or 'model' (compile the model), 'step' (compile the whole "
                "training step) or False.")
        if self.threads is not None and self.threads < 1:
            bad("threads", self.threads, "pass a whole number >= 1 or None.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["penalty"] is not None:
            d["penalty"] = list(d["penalty"])
        return d

    def fingerprint(self, ignore: tuple[str, ...] = RESUME_IGNORED) -> str:
        """A short hash of the settings that change the training result (used to refuse a resume
        with a different config); `RESUME_IGNORED` settings are left out."""
        d = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- run config
# The command line's settings: `fitloop train` flags, a TOML file (`--config run.toml`) and `--set
# section.key=value` all become one dict of dotted overrides applied by `resolve_run_config`.


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
        delimiter: field separator (default `,`, or tab for `.tsv`).
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
    max_categories: int = 50

    def validate(self) -> None:
        if self.task is not None and self.task not in ("classification", "regression"):
            raise ConfigError(f"data.task: got {self.task!r}; choose 'classification' or 'regression'.")
        fr = self.split
        if len(fr) not in (2, 3) or any(f < 0 for f in fr) or fr[0] <= 0:
            raise ConfigError(f"data.split (--split): got {fr}; pass 2 or 3 fractions (train, val[, test]), "
                              f"each >= 0 with train > 0, e.g. 0.7,0.15,0.15.")
        if abs(sum(fr) - 1.0) > 1e-6:
            raise ConfigError(f"data.split (--split): the fractions {fr} add up to {sum(fr):.6g}, not 1; "
                              f"e.g. 0.7,0.15,0.15.")
        if self.max_categories < 1:
            raise ConfigError(f"data.max_categories: got {self.max_categories}; pass a whole number >= 1.")


@dataclass
class ModelSection:
    """`[model]`: the MLP (`MLPSpec` minus the sizes the data decides)."""

    hidden: list[int] = field(default_factory=lambda: [64, 32])
    activation: str = "relu"
    dropout: float = 0.0

    def validate(self) -> None:
        from .models import ACTIVATIONS

        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"model.hidden (--hidden): layer sizes must be >= 1, got {self.hidden}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation: unknown {self.activation!r}; choose one of "
                              f"{sorted(ACTIVATIONS)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}.")


@dataclass
class TrainSection(TrainConfig):
    """`[train]`: every `TrainConfig` setting, plus the optimizer and loss by name and early stopping.

    Attributes:
        optimizer: any `torch.optim` name (`adam`, `adamw`, `sgd`, ...).
        loss: loss name; `None` picks `cross_entropy` (classification) or `mse` (regression).
        early_stopping: patience in epochs on `val_loss` (best weights restored); `0`/`None` is off.
    """

    epochs: int = 50
    optimizer: str = "adam"
    loss: str | None = None
    early_stopping: int | None = 10

    def validate(self) -> None:
        super().validate()
        if self.early_stopping is not None and self.early_stopping < 0:
            raise ConfigError(f"train.early_stopping: got {self.early_stopping}; pass a patience >= 0 "
                              "(epochs), or 0 to turn it off.")

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
        lines = ["# fitloop run configuration (resolved: defaults < --config file < flags < --set)."]
        for s in self.SECTIONS:
            lines.append(f"\n[{s}]")
            defaults = dataclasses.asdict(type(getattr(self, s))())
            for k, v in self.to_dict()[s].items():
                if v is None and defaults.get(k) is None:
                    continue
                lines.append(f"{k} = {_toml_value('none' if v is None else v)}")
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else ("nan" if v != v else
                                                                                  ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to TOML.")


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
