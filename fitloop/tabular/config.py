"""A table run's configuration: `[data]`, `[model]` and `[train]`, from TOML, flags, `--set` or Python settings.

`fitloop train` flags, a TOML file (`--config run.toml`), `--set section.key=value` and the keyword
settings of `fitloop.tabular.train` all become one dict of dotted overrides applied by `resolve_run_config`
(`settings_overrides` maps the keyword settings); the result is a `RunConfig`, saved as
`RUN_DIR/config.toml` with `RunConfig.to_toml`. Plain Python: importing it does not import torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..config import CONFIG_HEADER, TrainConfig
from ..data.fractions import check_fractions
from ..mlp_checks import check_mlp

__all__ = ["CONFIG_HEADER", "RunConfig", "DataSection", "ModelSection", "TrainSection", "ConfigError",
           "resolve_run_config", "load_toml", "parse_set", "parse_value", "Budget", "training_budget",
           "LEGACY_DEFAULTS", "settings_overrides", "tomllib_module", "dotted_overrides",
           "check_seed"]


# `train.log` / `--log`: the loggers the CLI can add (fitloop.callbacks: TensorBoardLogger, MLflowLogger).
LOGGER_NAMES = ("tensorboard", "mlflow")


class ConfigError(ValueError):
    """A setting that is unknown or has a value of the wrong type; the message names the key."""


# The seeds torch's generators take (a 64-bit integer, signed or not): outside them `manual_seed` fails
# with "Overflow when unpacking long long", which names neither the setting nor the range.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1

# The flag and an example of each list setting, for the message about an empty item.
_LIST_FLAGS = {"data.split": ("--split", "0.7,0.15,0.15"), "model.hidden": ("--hidden", "64,32"),
               "data.drop": ("--drop", "notes,row_id"), "train.log": ("--log", "tensorboard,mlflow")}


def check_seed(name: str, seed: int) -> None:
    """Raise `ConfigError` naming `name` when `seed` is outside the range torch's generators take."""
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ConfigError(f"{name}: got {seed}, outside the range of a seed; pass a whole number from "
                          f"{SEED_MIN} to {SEED_MAX} (e.g. 0).")


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
        max_categories: text columns with more distinct values keep their `max_categories` most frequent (the
            rest share one slot); ID-like ones (more distinct values than half their rows) are dropped.
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
        if any(not isinstance(f, (int, float)) or not math.isfinite(f) for f in self.split):
            # NaN passes every comparison in check_fractions and then fails the split as a bare float error
            raise ConfigError(f"data.split (--split): got {self.split!r}; each fraction must be a finite "
                              "number from 0 to 1, e.g. 0.7,0.15,0.15.")
        try:
            check_fractions(self.split, name="data.split (--split)", example="0.7,0.15,0.15")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.decimal not in (None, ",", "."):
            raise ConfigError(f"data.decimal (--decimal): got {self.decimal!r}; pass ',' or '.'.")
        if self.max_categories < 1:
            raise ConfigError(f"data.max_categories: got {self.max_categories}; pass a whole number >= 1.")
        if self.seed is not None:
            check_seed("data.seed", self.seed)


@dataclass
class ModelSection:
    """`[model]`: the model (`fitloop.tabm.TabMSpec` or `MLPSpec`, minus the sizes the data decides).

    Attributes:
        kind: ``"tabm"`` (the default: a k-member parameter-efficient ensemble MLP with piecewise-linear
            embeddings of the numeric columns, `fitloop.tabm.TabM`) or ``"mlp"`` (the plain MLP of
            fitloop 0.1, `MLPSpec`). `hidden = []` is a linear model of either kind.
        hidden: the hidden layers' widths; `None` (unset) picks the kind's default (`DEFAULT_HIDDEN`). The kind
            also brings its training recipe (`RECIPES`: batch size, learning rate, early stopping's margin).
        k: tabm: the ensemble's members.
        embedding: tabm: the numeric columns' embedding, ``"piecewise"``, ``"periodic"`` or ``"none"``.
        d_embedding: tabm: each numeric column's embedding width.
        n_bins: tabm: the piecewise-linear bins (quantiles of the training rows), or periodic frequencies.
        skip: a linear path from the inputs to the outputs beside the hidden layers (`MLPSpec.skip`).
        linear_init: start the skip path at the ridge-regression fit of the training rows
            (`fitloop.models.fit_linear_path`), so training starts from what a linear model reaches.
        ridge: that fit's L2 penalty, relative to the mean squared input; `"gcv"` (the default) picks
            it by generalized cross-validation on the training rows (`fitloop.models.gcv_ridge`).
        logistic_c: classification: the linear start is instead the multinomial logistic-regression fit
            with this inverse L2 strength (scikit-learn's `C`; `fitloop.models.fit_logistic_path`);
            `none`: the ridge fit of one-hot classes scaled to logits.
    """

    kind: str = "tabm"
    hidden: list[int] | None = None
    activation: str = "relu"
    dropout: float | None = None
    k: int = 8
    embedding: str = "piecewise"
    d_embedding: int = 8
    n_bins: int = 16
    skip: bool = True
    linear_init: bool = True
    ridge: float | str = "gcv"
    logistic_c: float | None = 1.0

    def validate(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind (--model): got {self.kind!r}; choose {' or '.join(MODEL_KINDS)} "
                              f"(tabm: the default ensemble MLP; mlp: the plain MLP).")
        if self.hidden is None:
            self.hidden = list(DEFAULT_HIDDEN[self.kind])
        if self.dropout is None:
            self.dropout = DEFAULT_DROPOUT[self.kind]
        try:
            check_mlp(self.hidden, self.activation, self.dropout, names=_MODEL_NAMES)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.k < 1:
            raise ConfigError(f"model.k: got {self.k}; pass the ensemble's members, a whole number >= 1 (e.g. 8).")
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(f"model.embedding: got {self.embedding!r}; choose one of {', '.join(EMBEDDINGS)}.")
        if self.d_embedding < 1 or self.n_bins < 1:
            raise ConfigError(f"model.d_embedding and model.n_bins: got {self.d_embedding} and {self.n_bins}; "
                              f"pass whole numbers >= 1 (e.g. 8 and 16).")
        if isinstance(self.ridge, str) and self.ridge.strip().lower() == "gcv":
            self.ridge = "gcv"
        elif isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not self.ridge > 0:
            raise ConfigError(f"model.ridge: got {self.ridge!r}; pass a penalty > 0 (e.g. 0.01), or \"gcv\" to "
                              "choose it by generalized cross-validation.")
        if self.logistic_c is not None and not self.logistic_c > 0:
            raise ConfigError(f"model.logistic_c: got {self.logistic_c}; pass a C > 0 (e.g. 1.0), or none.")


MODEL_KINDS = ("tabm", "mlp")
EMBEDDINGS = ("piecewise", "periodic", "none")  # fitloop.tabm.EMBEDDINGS (this module imports no torch)
DEFAULT_HIDDEN = {"tabm": (128, 128), "mlp": (64, 32)}
DEFAULT_DROPOUT = {"tabm": 0.1, "mlp": 0.0}
_MODEL_NAMES = {"hidden": "model.hidden (--hidden)", "activation": "model.activation", "dropout": "model.dropout"}


@dataclass
class TrainSection(TrainConfig):
    """`[train]`: every `TrainConfig` setting, plus the optimizer and loss by name and early stopping.

    `epochs`, `early_stopping` and `checkpoint_every_epochs` not given by the user are decided from
    the data by `training_budget` (about `budget_steps` optimizer steps); what is written to
    `RUN_DIR/config.toml` is the decided value.

    Attributes:
        optimizer: any `torch.optim` name (`adam`, `adamw`, `sgd`, ...).
        loss: loss name; `None` picks `cross_entropy` (classification) or `mse` (regression).
        early_stopping: patience in epochs on `val_loss` (best weights restored); `0`/`None` is off.
        log: loggers besides the run directory, from `LOGGER_NAMES` (`--log tensorboard,mlflow`);
            kept in `config.toml`, so `fitloop resume` keeps logging to them.
        early_stopping_rel_delta: a better `val_loss` counts only when it is this fraction below the
            best so far (`EarlyStopping(rel_delta=...)`).
        early_stopping_from_start: the model as initialised counts as epoch 0 for early stopping: its
            val_loss is the one to beat, and a run in which no epoch beats it keeps the initial weights
            (the linear fit; only with `model.linear_init`, since a random start is nothing to keep)
            (`EarlyStopping.start_from`).
        early_stopping_se: with `early_stopping_from_start`, an epoch replaces the initial model only
            when its val_loss is lower by more than one standard error of the initial val_loss (over the
            validation rows): the one-standard-error rule, so a statistical tie keeps the linear start.
        early_stopping_paired: with `early_stopping_from_start`, the epoch early stopping kept replaces the
            initial model only when it beats it by more than one standard error of the per-row differences of
            their validation losses (checked at the end of training: `fitloop.tabular.training.paired_confirm`):
            the same rule on the paired comparison, which the rows' own spread does not swamp.
        scheduler: a learning-rate schedule by name (`fitloop.optim.SCHEDULER_NAMES`, e.g. `cosine`,
            `warmup_cosine`); `None` or `"none"` keeps the lr constant.
        budget_steps: the optimizer steps the default budget aims at (see `training_budget`).
        max_time: stop after the epoch in which training reached this many seconds (`None`: no limit).
    """

    epochs: int = 50
    optimizer: str = "adam"
    loss: str | None = None
    early_stopping: int | None = 10
    log: list[str] = field(default_factory=list)
    early_stopping_rel_delta: float = 0.05
    early_stopping_from_start: bool = True
    early_stopping_se: bool = True
    early_stopping_paired: bool = False
    scheduler: str | None = None
    budget_steps: int = 3000
    max_time: float | None = 600.0

    def validate(self) -> None:
        self._validate_epochs()
        super().validate()
        check_seed("train.seed (--seed)", self.seed)
        if self.early_stopping is not None and self.early_stopping < 0:
            raise ConfigError(f"train.early_stopping: got {self.early_stopping}; pass a patience >= 0 "
                              "(epochs), or 0 to turn it off.")
        for name in self.log:
            if name not in LOGGER_NAMES:
                raise ConfigError(f"train.log (--log): unknown logger {name!r}; choose from "
                                  f"{', '.join(LOGGER_NAMES)}, comma-separated (--log tensorboard,mlflow).")
        if isinstance(self.scheduler, str) and self.scheduler.strip().lower() == "none":
            self.scheduler = None
        if self.budget_steps < 1:
            raise ConfigError(f"train.budget_steps: got {self.budget_steps}; pass a number of steps >= 1.")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError(f"train.max_time: got {self.max_time}; pass seconds > 0, or none for no limit.")

    def _validate_epochs(self) -> None:
        """A table run trains at least one epoch. The library's `TrainConfig` allows 0 (a Trainer that only
        evaluates), but a run of 0 epochs would be saved and listed as a trained run of the untrained model."""
        if isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs < 1:
            raise ConfigError(f"train.epochs: got {self.epochs}; pass a whole number >= 1 (--epochs N, the epochs "
                              "to train), or leave --epochs out to decide it from the data. To score a trained "
                              "run's model on a table without training, use `fitloop evaluate RUN_DIR DATA`.")

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
    # the dotted keys the user gave (flags, TOML, --set): these win over data-dependent defaults
    explicit: frozenset[str] = field(default_factory=frozenset, compare=False)

    SECTIONS = ("data", "model", "train")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}
        if out["train"]["penalty"] is not None:
            out["train"]["penalty"] = list(out["train"]["penalty"])
        return out

    def to_toml(self) -> str:
        """TOML text (`None` settings are left out when that is the default, written as `"none"` otherwise)."""
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
    cls = {"data": DataSection, "model": ModelSection, "train": TrainSection}[section]
    return typing.get_type_hints(cls)


def parse_value(text: str) -> Any:
    """A `--set` value with TOML literal rules (`0.01`, `true`, `[64, 32]`, `"x"`); bare words are strings."""
    tomllib = tomllib_module()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def tomllib_module() -> Any:
    """The TOML reader: the standard library's `tomllib`, else the `tomli` package on Python 3.10.

    Raises:
        ConfigError: Python 3.10 without `tomli` installed.
    """
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
            value = _list_items(key, value)
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


def _list_items(key: str, text: str) -> list[Any]:
    """A comma-separated list setting ("64,32") as its items; blank text is the empty list.

    Raises:
        ConfigError: an empty item ("64,,32", a trailing comma): dropping it would silently change
            the meaning (two split fractions instead of three), so the message names the setting.
    """
    if not text.strip():
        return []
    parts = text.split(",")
    empty = [i + 1 for i, part in enumerate(parts) if not part.strip()]
    if empty:
        flag, example = _LIST_FLAGS.get(key, ("", "a,b"))
        raise ConfigError(f"{key}{f' ({flag})' if flag else ''}: got {text!r}, whose item {empty[0]} of "
                          f"{len(parts)} is empty; separate the values with single commas and no trailing "
                          f"comma, e.g. {example}.")
    return [parse_value(part) for part in parts]


def dotted_overrides(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Parsed TOML (``{"train": {"lr": 0.01}}``) as dotted overrides (``{"train.lr": 0.01}``).

    Args:
        d: The parsed document: one table per section.
        where: The file the document came from, named in errors.

    Raises:
        ConfigError: An unknown section, or a section that is not a table of ``key = value`` lines.
    """
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
    tomllib = tomllib_module()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: config file not found.")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None
    return dotted_overrides(d, path)


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
    cfg.explicit = frozenset(k for layer in layers for k in layer)
    for key, value in RECIPES[cfg.model.kind].items():  # the kind's training recipe, where the user set nothing
        if key not in cfg.explicit:
            section, _, name = key.partition(".")
            setattr(getattr(cfg, section), name, value)
    return cfg


# The training recipe of each model kind: the settings that differ from the [train] defaults, applied where the
# user set nothing (BENCHMARKS.md, "The default model"). A TabM trains on larger batches at a higher learning
# rate (2,048 member rows a step), and every improvement of its validation loss counts (its members' mean is
# smooth, so no 5% margin is needed to tell progress from noise); the one-standard-error rule guards the linear
# start on the paired per-row differences (the unpaired standard error kept the linear start on most tables).
RECIPES: dict[str, dict[str, Any]] = {
    "tabm": {"train.batch_size": 256, "train.lr": 2e-3, "train.early_stopping_rel_delta": 0.0,
             "train.early_stopping_se": False, "train.early_stopping_paired": True},
    "mlp": {},
}


# Values of settings added after a run directory may have been written, as runs before them behaved:
# `resume` of an old run gives a key its legacy value when the run's config.toml lacks it.
LEGACY_DEFAULTS: dict[str, Any] = {"model.kind": "mlp", "model.skip": False, "model.linear_init": False,
                                   "model.ridge": 1e-2, "model.logistic_c": None,
                                   "train.scheduler": None,
                                   "train.max_time": None, "train.early_stopping_rel_delta": 0.0,
                                   "train.early_stopping_from_start": False, "train.early_stopping_se": False,
                                   "train.early_stopping_paired": False}

# The default budget (measured in BENCHMARKS.md, "Tables"): the epochs that make about `budget_steps`
# optimizer steps, within these bounds. The patience counts optimizer steps too: PATIENCE_STEPS steps
# without a better val_loss (at least MIN_PATIENCE epochs) end the run. It used to be a quarter of the
# epochs, which on a 125-row table (2 steps an epoch, 1500 epochs) waited 375 epochs to keep epoch 0.
MIN_EPOCHS, MAX_EPOCHS, MIN_PATIENCE, PATIENCE_STEPS = 10, 2000, 10, 100
# A TabM's minimum patience of MIN_PATIENCE epochs is cut to about this many steps on a table whose epoch has more
# than 100 steps (over 25,600 training rows at batch 256): 10 epochs of a 100,000-row table were 2,740 steps.
MAX_PATIENCE_STEPS = 1000
# A TabM's recipe batch (256) on a table too small for MIN_STEPS_PER_EPOCH of them is cut to about a quarter of the
# training rows (at least MIN_BATCH): an epoch of one step costs a validation pass per step.
MIN_STEPS_PER_EPOCH, MIN_BATCH = 4, 32
CHECKPOINTS_PER_RUN = 10  # about this many epoch checkpoints by default (each costs 5-50 ms of fsyncs)


@dataclass
class Budget:
    """How long a `fitloop train` run trains, decided from the number of training rows.

    Attributes:
        rows: training rows.
        batch_size: rows per step (`None`: full batch).
        steps_per_epoch: optimizer steps per epoch.
        epochs: maximum epochs.
        patience: early-stopping patience in epochs (`None`: off).
        checkpoint_every_epochs: how often an epoch checkpoint is written.
        max_time: training-time limit in seconds (`None`: none).
        decided: the keys this budget set (the others came from the user), e.g. `["train.epochs"]`.
        world: processes training together (each step takes `batch_size` rows on each).
    """

    rows: int
    batch_size: int | None
    steps_per_epoch: int
    epochs: int
    patience: int | None
    checkpoint_every_epochs: int
    max_time: float | None
    decided: list[str]
    world: int = 1

    @property
    def steps(self) -> int:
        """The optimizer steps of a run that trains every epoch."""
        return self.epochs * self.steps_per_epoch

    def describe(self) -> str:
        """One line for the log: the budget and where it came from."""
        how = "data-dependent default" if "train.epochs" in self.decided else "as set"
        stop = f"early stopping after {self.patience} epochs without a better val_loss" if self.patience \
            else "no early stopping"
        limit = f", at most {self.max_time:g}s" if self.max_time else ""
        per = f"{self.steps_per_epoch} step{'s' if self.steps_per_epoch != 1 else ''}"
        return (f"budget ({how}): {self.epochs} epochs x {per} = {self.steps} steps "
                f"(batch {self.batch_size or 'full'}{f' x {self.world} processes' if self.world > 1 else ''}, "
                f"{self.rows} training rows); {stop}{limit}")

    def apply(self, cfg: RunConfig) -> None:
        """Write the decided values into `cfg.train` (what `config.toml` then records)."""
        t = cfg.train
        t.epochs, t.early_stopping, t.checkpoint_every_epochs = self.epochs, self.patience or 0, \
            self.checkpoint_every_epochs
        t.batch_size = self.batch_size


def training_budget(cfg: RunConfig, train_rows: int, world: int = 1) -> Budget:
    """The training budget of a run on `train_rows` rows: the one rule `fitloop train` (and a dry run) uses.

    Small tables get as many epochs as it takes to reach about `train.budget_steps` optimizer steps
    (50 epochs of 4 steps under-train a 250-row table), large ones at least `MIN_EPOCHS`; the
    early-stopping patience is the epochs of about `PATIENCE_STEPS` optimizer steps (at least
    `MIN_PATIENCE`; not capped at the epochs, where it would only fire on the last one, announcing a stop
    that changed nothing): a run ends once its validation loss has stopped improving
    for that long, whatever its maximum; `train.max_time` bounds the wall time. Settings the user gave (`--epochs`,
    `--early-stopping`, `--batch-size`, `train.checkpoint_every_epochs`, in flags, TOML or `--set`)
    are kept as they are. A TabM's recipe batch is cut to about a quarter of the training rows (at least
    `MIN_BATCH`) when the table is too small for `MIN_STEPS_PER_EPOCH` batches.

    Args:
        cfg: the resolved configuration (`cfg.explicit` names what the user set).
        train_rows: rows in the training split.
        world: processes training together (`--nproc` x nodes): each step takes `batch_size` rows on
            every one of them, so an epoch has that many times fewer steps.

    Returns:
        The `Budget`; `budget.apply(cfg)` writes it into the config.
    """
    t, given = cfg.train, cfg.explicit
    bs = t.batch_size
    decided: list[str] = []
    if bs and "train.batch_size" not in given and cfg.model.kind == "tabm":  # the recipe's batch, not the user's
        fewer = max(MIN_BATCH, math.ceil(train_rows / (MIN_STEPS_PER_EPOCH * max(1, world))))
        if fewer < bs:
            bs = fewer
            decided.append("train.batch_size")
    batches = math.ceil(train_rows / (bs * max(1, world))) if bs else 1
    steps_per_epoch = max(1, math.ceil(batches / t.accumulate))
    epochs = t.epochs
    if "train.epochs" not in given:
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(t.budget_steps / steps_per_epoch)))
        decided.append("train.epochs")
    patience = t.early_stopping or None
    if "train.early_stopping" not in given:
        patience = max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / steps_per_epoch))
        if cfg.model.kind == "tabm":  # a large table's epoch is many steps: the minimum stops at MAX_PATIENCE_STEPS
            patience = max(math.ceil(PATIENCE_STEPS / steps_per_epoch),
                           min(patience, math.ceil(MAX_PATIENCE_STEPS / steps_per_epoch)))
        decided.append("train.early_stopping")
    every = t.checkpoint_every_epochs
    if "train.checkpoint_every_epochs" not in given:
        every = max(1, epochs // CHECKPOINTS_PER_RUN)
        decided.append("train.checkpoint_every_epochs")
    return Budget(train_rows, bs, steps_per_epoch, epochs, patience, every, t.max_time, decided, max(1, world))


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s in RunConfig.SECTIONS for k in _section_types(s)]


_SHARED_NAMES = {"seed": "train", "task": "data"}  # a name two sections have: the section of its flag

def settings_overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword settings of `fitloop.tabular.train` as dotted overrides for `resolve_run_config`.

    A name is a key of one section (`epochs=20` is `train.epochs`, `hidden=[32]` is `model.hidden`), or
    a dotted key (`**{"data.seed": 1}`), kept as it is. `seed` and `task`, keys of two sections, go where
    `--seed` and `--task` put them: `train.seed`, `data.task`.

    Raises:
        ConfigError: a name that is no section's key (with a suggestion).
    """
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if "." in name:
            out[name] = value
            continue
        sections = [s for s in RunConfig.SECTIONS if name in _section_types(s)]
        if not sections:
            close = difflib.get_close_matches(name, [key.partition(".")[2] for key in _all_keys()], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown setting {name!r}.{hint} Settings are the keys of [data], [model] and "
                              f"[train] (`fitloop train --help`), by name or as 'section.key'.")
        section = sections[0] if len(sections) == 1 else _SHARED_NAMES[name]
        out[f"{section}.{name}"] = value
    return out
