"""The table workflow from Python, with `fitloop train`'s defaults and decisions (the command line calls these).

    run = train("wine.csv", target="cultivar", out="runs/wine", epochs=50)    # a RunResult
    run = train(arrow_table_or_dataframe, target="cultivar", out="runs/wine")
    loaded = load_run("runs/wine")
    preds = loaded.predict("new.csv")                  # also a pyarrow.Table or a pandas.DataFrame
    report = loaded.evaluate(labelled_table)            # {"metrics": ..., "baseline": ...}

Settings are the run config's keys, by name (`epochs=50`, `hidden=[32]`, `split=[0.8, 0.2]`) or dotted
(`**{"data.seed": 1}`), on top of `config` (a `RunConfig`, a TOML file's path, or a dict of settings):
defaults < config < settings, through the resolver `fitloop train` uses for its flags.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..tune.size_search import SizeSearchResult
from ..tune.tuner import TuneResult
from .config import (
    DEFAULT_DROPOUT,
    RECIPES,
    ConfigError,
    RunConfig,
    TrainSection,
    load_toml,
    resolve_run_config,
    settings_overrides,
)
from .decisions import DryRun, describe_plan
from .pipeline import RunResult, check_out, default_out, merge_run_json, resume_run, train_table
from .reading import in_memory
from .runs import LoadedRun, load_run
from .search import SearchOptions, search_table, write_search
from .stream_train import is_streamed_run, resume_streamed, train_or_stream
from .tuning import tune_table

__all__ = ["train", "resume", "size_search", "search_and_train", "tune", "dry_run", "load_run", "run_config",
           "SizedRun", "LoadedRun", "RunResult", "TuneResult"]

Log = Callable[[str], None]


def run_config(data: Any = None, target: str | None = None, config: Any = None,
               **settings: Any) -> tuple[RunConfig, pa.Table | None]:
    """The resolved `RunConfig` of a call (defaults < `config` < `data`, `target` and `settings`), and the
    table when `data` is one in memory (then `data.path` is unset).

    Args:
        data: a file path (`data.path`), a ``pyarrow.Table`` or a ``pandas.DataFrame`` (its index left out).
        target: the column to predict (`data.target`).
        config: a `RunConfig` (copied, never changed), a TOML file's path, or a dict of settings.
        settings: more settings, by name or dotted (`settings_overrides`).

    Raises:
        ConfigError: unknown settings, or values of the wrong type.
        TypeError: `data` or `config` of a kind not listed above.
    """
    table = in_memory(data)
    if data is not None and table is None and not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data: expected a file path, a pyarrow.Table or a pandas.DataFrame, got "
                        f"{type(data).__name__}.")
    given: dict[str, Any] = {}
    if data is not None:
        given["data.path"] = None if table is not None else os.fspath(data)
    if target is not None:
        given["data.target"] = target
    if isinstance(config, RunConfig) and not given and not settings:
        return copy.deepcopy(config), table  # `fitloop train`: the flags are already resolved
    return resolve_run_config(*_config_layers(config), given, settings_overrides(settings)), table


def _config_layers(config: Any) -> list[Mapping[str, Any]]:
    """`config` as layers of dotted overrides: a `RunConfig`'s explicit settings, a TOML file's, a dict's."""
    if config is None:
        return []
    if isinstance(config, RunConfig):
        return [{f"{section}.{key}": value for section, values in config.to_dict().items()
                 for key, value in values.items() if f"{section}.{key}" in config.explicit}]
    if isinstance(config, (str, os.PathLike)):
        return [load_toml(os.fspath(config))]
    if isinstance(config, Mapping):
        return [settings_overrides(config)]
    raise TypeError(f"config: expected a RunConfig, a TOML file's path or a dict, got {type(config).__name__}.")


def train(data: Any = None, target: str | None = None, *, out: str | os.PathLike | None = None,
          config: Any = None, overwrite: bool = False, log: Log | None = None, argv: list[str] | None = None,
          t_command: float | None = None, stream: bool | None = None, memory_budget: str | int | None = None,
          split_column: str | None = None, **settings: Any) -> RunResult:
    """Train on a table as `fitloop train` does and write the run directory.

    Args:
        data: a CSV/TSV(.gz)/Parquet path, a ``pyarrow.Table`` or a ``pandas.DataFrame`` (in memory:
            `run.json` says so, and `resume` needs the table again); None: `data.path` of `config`.
        target: the column to predict.
        out: the run directory (default ``runs/<target>-<timestamp>``).
        config: a `RunConfig`, a TOML file's path, or a dict of settings (see `run_config`).
        settings: more settings, by name or dotted, on top of `config` (see `run_config`).
        overwrite: replace an existing run directory (only what fitloop wrote).
        log: where progress lines go (default: nowhere).
        argv: the command line, for `run.json`.
        t_command: the command's start time (`time.perf_counter()`), for `run.json`'s timings.
        stream: a file (or a directory or glob of Parquet files) is streamed instead of read into memory:
            True always, None when it would not fit `memory_budget` (`fitloop.tabular.stream_train`).
        memory_budget: bytes or a size like ``"4G"``; default: half the available memory.
        split_column: a column of train/val/test values to split by (the table is then streamed).

    Returns:
        The `RunResult`: `run_dir`, `metrics`, `baseline`, `rows`, `timings`, ...; `.load()` opens the run.

    Raises:
        ConfigError, TableError, ValueError: bad settings or data (nothing is written).
    """
    cfg, table = run_config(data, target, config, **settings)
    if table is None and cfg.data.path:  # a file: in memory or streamed, as it fits
        return train_or_stream(cfg, out, stream=stream, memory_budget=memory_budget, split_column=split_column,
                               overwrite=overwrite, log=log, argv=argv, t_command=t_command)
    return train_table(cfg, out=out, overwrite=overwrite, log=log, argv=argv, t_command=t_command, data=table)


def resume(run_dir: str | os.PathLike, *, data: Any = None, force: bool = False, log: Log | None = None,
           quiet: bool | None = None) -> RunResult:
    """Resume an interrupted run from its last checkpoint (`fitloop resume`), then evaluate it.

    Args:
        run_dir: the run directory.
        data: a run that trained on a table in memory: that table again (``pyarrow.Table`` or DataFrame).
        force: resume even when the data or the settings changed since the checkpoint.
        log: where progress lines go.
        quiet: print nothing but errors (None: as the run's config says).
    """
    table = in_memory(data)
    if data is not None and table is None:
        raise TypeError(f"data: expected the run's table (a pyarrow.Table or a pandas.DataFrame), got "
                        f"{type(data).__name__}; a run trained on a file reads it again by itself.")
    if table is None and is_streamed_run(run_dir):  # streamed: its Parquet (or CSV cache) again, in one pass
        return resume_streamed(run_dir, force=force, log=log, quiet=quiet)
    return resume_run(run_dir, force=force, log=log, quiet=quiet, data=table)


def dry_run(data: Any = None, target: str | None = None, *, config: Any = None, world: int | None = None,
            **settings: Any) -> DryRun:
    """Every decision `train` would take on the same arguments (`fitloop train --dry-run`); trains nothing.

    `world`: the processes that would train together (default: this one, or torchrun's).
    """
    cfg, table = run_config(data, target, config, **settings)
    return describe_plan(cfg, world=world, data=table)


@dataclass
class SizedRun:
    """What `size_search` did: the search, and the run of the chosen size (None when no size learned anything).

    Attributes:
        search: the `SizeSearchResult` (every trial, the choice and the reason).
        run: the `RunResult` of training the chosen size, or None.
        run_dir: the run directory (with the search's files even when no model was trained).
    """

    search: SizeSearchResult
    run: RunResult | None
    run_dir: Path


def size_search(data: Any = None, target: str | None = None, *, out: str | os.PathLike | None = None,
                config: Any = None, overwrite: bool = False, log: Log | None = None, argv: list[str] | None = None,
                t_command: float | None = None, widths: tuple[int, ...] | None = None,
                depths: tuple[int, ...] | None = None, trial_epochs: int | None = None, max_trials: int = 16,
                max_seconds: float | None = None, jobs: int = 1, target_loss: float | None = None,
                gap_tolerance: float = 0.25, val_margin: float = 0.1, **settings: Any) -> SizedRun:
    """`fitloop size-search`: find the network size the table supports, then train it into `out`.

    The arguments are `train`'s, plus the search's (`fitloop.tabular.search.SearchOptions`); the hidden
    layers are the search's to choose. The trials' table goes to `log`; the search's files go to the run
    directory (`size_search.json`, `.txt`, `.png`).
    """
    if "hidden" in settings or "model.hidden" in settings:
        raise ConfigError("size_search chooses the hidden layers itself; leave out hidden (or use train).")
    options = SearchOptions(widths, depths, trial_epochs, max_trials, max_seconds, jobs, target_loss, gap_tolerance,
                            val_margin)
    options.validate()
    cfg, table = run_config(data, target, config, **settings)
    return search_and_train(cfg, options, table=table, out=out, overwrite=overwrite, log=log, argv=argv,
                            t_command=t_command)


def plain_mlp(cfg: RunConfig) -> None:
    """Make `cfg` a plain MLP's (`model.kind = "mlp"`, and its default dropout unless one was given): the size
    search grows and shrinks an MLP's hidden layers.

    Raises:
        ConfigError: the settings ask for another kind of model.
    """
    if "model.kind" in cfg.explicit and cfg.model.kind != "mlp":
        raise ConfigError(f"size-search grows and shrinks the plain MLP's hidden layers; model.kind (--model) is "
                          f"{cfg.model.kind!r}. Drop --model (or set model.kind = \"mlp\"), or use fitloop train.")
    cfg.model.kind = "mlp"
    if "model.dropout" not in cfg.explicit:
        cfg.model.dropout = DEFAULT_DROPOUT["mlp"]
    defaults = TrainSection()
    for key in RECIPES["tabm"]:  # the MLP trains with the [train] defaults
        if key not in cfg.explicit:
            name = key.partition(".")[2]
            setattr(cfg.train, name, getattr(defaults, name))


def search_and_train(cfg: RunConfig, options: SearchOptions, *, table: pa.Table | None = None,
                     out: str | os.PathLike | None = None, overwrite: bool = False, log: Log | None = None,
                     argv: list[str] | None = None, t_command: float | None = None) -> SizedRun:
    """`size_search` on a resolved config and checked options (`fitloop size-search` checks them itself,
    naming its flags): the search, its files, and the run of the chosen size.

    Args:
        cfg: The run's settings; the search chooses `model.hidden`.
        options: The search's settings, already checked (`SearchOptions.validate`).
        table: The data when it is a table in memory (None: `cfg.data.path`).
        out: The run directory (default ``runs/<target>-<timestamp>``).
        overwrite: Replace an existing run directory (only what fitloop wrote).
        log: Where progress lines and the trials' table go (default: nowhere).
        argv: The command line, for `run.json`.
        t_command: The command's start time (`time.perf_counter()`), for `run.json`.
    """
    log = log or (lambda msg: None)
    plain_mlp(cfg)
    run_dir = check_out(out if out is not None else default_out(cfg.data.target or "run"), overwrite,
                        cfg.data.path)  # before the search: a bad `out` fails in a second, not after it
    result = search_table(cfg, options, log, table)
    log(result.table())
    if result.chosen is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for note in write_search(run_dir, result):
            log(f"note: {note}")
        return SizedRun(result, None, run_dir)
    cfg.model.hidden = list(result.chosen)
    log(f"Training the chosen size (hidden {cfg.model.hidden}) for up to {cfg.train.epochs} epochs.")
    run = train_table(cfg, out=run_dir, overwrite=overwrite, log=log, argv=argv, t_command=t_command, data=table)
    run.notes += write_search(run_dir, result)
    merge_run_json(run_dir, {"size_search": {"chosen": list(result.chosen), "reason": result.reason,
                                              "trials": len(result.trials), "file": "size_search.json"}})
    return SizedRun(result, run, run_dir)



def tune(data: Any = None, target: str | None = None, *, out: str | os.PathLike | None = None,
         trials: int | None = None, time: float | None = None, jobs: int = 1, space: Any = None,
         pruner: str | None = None, resume: bool = False, overwrite: bool = False, config: Any = None,
         quiet: bool = True, ensemble: bool = True, **settings: Any) -> TuneResult:
    """`fitloop tune`: search the table's hyperparameters; each trial a run directory like `train`'s.

    Args:
        data: a CSV/TSV(.gz)/Parquet path, a ``pyarrow.Table`` or a ``pandas.DataFrame``; None with `resume`
            (a search on a table in memory needs the table again).
        target: the column to predict.
        out: the tune directory (default ``runs/tune-<timestamp>``): `trials/NNNN/`, `best/`, `study.journal`.
        trials: finished trials in all (default 20 when `time` is not given either; resumed: the search's own).
        time: no new trial starts after this many seconds.
        jobs: trials at once, each in its own process.
        space: the search space: None (the default table space), a dict or a TOML file
            (`fitloop.tune.space`).
        pruner: "asha" (successive halving, the default), "hyperband" or "none".
        resume: continue the search in `out` after a stop or a kill.
        overwrite: replace an earlier search in `out` (only what fitloop wrote).
        config: a `RunConfig`, a TOML file's path, or a dict of settings every trial starts from.
        quiet: print no line per trial.
        ensemble: also build the ensemble of the best trials (`OUT/ensemble`).
        settings: more settings, by name or dotted, as `train`'s (`epochs=20` for each trial).

    Returns:
        The `TuneResult`: `.study`, `.best_trial`, `.best_run_dir` (open it with `load_run`), `.counts`.
    """
    if resume:
        return tune_table(None, table=in_memory(data), out=out, trials=trials, time=time, jobs=jobs,
                          pruner=pruner, resume=True, quiet=quiet, ensemble=ensemble)
    cfg, table = run_config(data, target, config, **settings)
    return tune_table(cfg, table=table, out=out, trials=trials, time=time, jobs=jobs, space=space, pruner=pruner,
                      overwrite=overwrite, quiet=quiet, ensemble=ensemble)
