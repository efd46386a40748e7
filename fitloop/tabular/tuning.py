"""`fitloop tune` on a table: each trial is a `fitloop train` run with the trial's settings.

    result = tune_table(cfg, out="runs/tuned", trials=20, jobs=2)          # fitloop.tabular.tune(...) from Python
    result = tune_table(None, out="runs/tuned", resume=True)              # after a stop or a kill

A parameter of the space is a run setting by name (`lr`, `weight_decay`, `dropout`, `batch_size`,
`optimizer`, ...) or dotted (`train.lr`), as `fitloop.tabular.train(**settings)` takes them; `width` and
`depth` make `model.hidden` (`[width] * depth`). `[data]` settings cannot be tuned: every trial keeps the
same split and preprocessing, so that their runs can be compared and ensembled. Every trial reads the
data, splits and preprocesses it exactly as `fitloop train` does, with the same seed, and writes a normal
run directory (`OUT/trials/NNNN/`) that `fitloop predict`, `report`, `serve` and `export` read.

The tune directory holds, besides `fitloop.tune.tuner`'s files, `config.toml` (the settings every trial
starts from) and `space.toml` (the space searched), which `--resume` reads back.
"""

from __future__ import annotations

import os
import time as clock
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..distributed import is_main_process
from ..files import atomic_write_bytes
from ..tune.pruning import TrialCallback
from ..tune.report import write_tune_report
from ..tune.space import DEFAULT_TABLE_SPACE, SpaceError, check_space, load_space, space_toml, suggest
from ..tune.tuner import TuneResult, check_budget, read_settings, search, start_search
from ..tune.workers import TrialRunner, WorkerSettings
from .config import LEGACY_DEFAULTS, ConfigError, RunConfig, load_toml, resolve_run_config, settings_overrides
from .ensemble import EnsembleError, build_ensemble
from .pipeline import resume_run, train_table

__all__ = ["TableTrials", "tune_table", "table_space", "trial_config", "DEFAULT_TRIALS", "SPACE_FILE",
           "CONFIG_FILE"]

DEFAULT_TRIALS = 20  # when neither a number of trials nor a time is given
SPACE_FILE, CONFIG_FILE = "space.toml", "config.toml"
_SIZES = ("width", "depth")


def table_space(space: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """The space to search: the default table space (None), a dict, or a TOML file, checked.

    Raises:
        SpaceError: a malformed parameter, or a name that is no run setting (named, with a suggestion).
    """
    if space is None:
        return check_space(DEFAULT_TABLE_SPACE, "the default space")
    where = os.fspath(space) if isinstance(space, (str, os.PathLike)) else "space"
    checked = load_space(where) if isinstance(space, (str, os.PathLike)) else check_space(space)
    for name in checked:
        if name in _SIZES:
            continue
        try:
            key = next(iter(settings_overrides({name: None})))
        except ConfigError as e:
            raise SpaceError(f"{where}: [{name}]: {e}") from None
        if key.startswith("data."):
            raise SpaceError(f"{where}: [{name}]: {key} cannot be tuned: every trial keeps the same data, split "
                             "and preprocessing. Tune [train] or [model] settings, or width and depth.")
    return checked


def trial_config(base: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """`base` with a trial's parameters (width and depth as `model.hidden`), resolved as `fitloop train`
    resolves its flags: settings the user gave stay, the ones decided from the data are decided again."""
    settings = {k: v for k, v in params.items() if k not in _SIZES}
    if any(k in params for k in _SIZES):
        hidden = base.model.hidden or []
        width = params.get("width", hidden[0] if hidden else 64)
        depth = params.get("depth", max(1, len(hidden)))
        settings["hidden"] = [int(width)] * int(depth)
    given = {f"{section}.{key}": value for section, values in base.to_dict().items()
             for key, value in values.items() if f"{section}.{key}" in base.explicit}
    cfg = resolve_run_config(given, settings_overrides(settings))
    cfg.train.quiet = True  # the search prints one line per trial
    return cfg


@dataclass
class TableTrials(TrialRunner):
    """The trials of a table search: each one `train_table` of `trial_config(cfg, params)` into its run
    directory, or the killed trial's run continued (`resume_run`) from its last checkpoint.

    Attributes:
        cfg: the settings every trial starts from.
        space: the parameters searched (`table_space`).
        table: the data when it is a table in memory (None: `cfg.data.path`).
    """

    cfg: RunConfig
    space: dict[str, dict[str, Any]]
    table: pa.Table | None = None

    def draw(self, trial: Any) -> dict[str, Any]:
        """Every parameter of the space, drawn from `trial` (rank 0 broadcasts them under torchrun)."""
        return suggest(trial, self.space)

    def run(self, trial: Any, run_dir: Path, callback: TrialCallback, resume_dir: Path | None) -> Any:
        params = suggest(trial, self.space)  # the values `draw` drew (a trial returns them again)
        if resume_dir is not None and _resumable(resume_dir):
            return resume_run(resume_dir, quiet=True, data=self.table, callbacks=[callback])
        cfg = trial_config(self.cfg, params)
        return train_table(cfg, out=run_dir, overwrite=True, data=self.table, callbacks=[callback])


def _resumable(run_dir: Path) -> bool:
    """A killed trial's run that stopped mid-training (not one that finished but was not told)."""
    return (run_dir / CONFIG_FILE).is_file() and not (run_dir / "metrics.json").is_file()


def tune_table(cfg: RunConfig | None, *, table: pa.Table | None = None, out: str | os.PathLike | None = None,
               trials: int | None = None, time: float | None = None, jobs: int = 1,
               space: Mapping[str, Any] | str | os.PathLike | None = None, pruner: str | None = None,
               resume: bool = False, overwrite: bool = False, quiet: bool = True,
               ensemble: bool = True) -> TuneResult:
    """Search a table's hyperparameters; each trial a run directory, the best copied to `OUT/best`.

    Args:
        cfg: the resolved settings every trial starts from (None with `resume`: the search's own).
        table: the data when it is a table in memory (a resumed search needs it again).
        out: the tune directory (default ``runs/tune-<timestamp>``).
        trials: finished trials in all (default `DEFAULT_TRIALS` when `time` is not given either).
        time: no new trial starts after this many seconds.
        jobs: trials at once, each in its own process.
        space: the parameters searched (see `table_space`); a resumed search keeps its own.
        pruner: "asha" (the default), "hyperband" or "none"; a resumed search keeps its own unless given.
        resume: continue the search in `out` (with its own budget unless `trials` or `time` is given).
        overwrite: replace an earlier search in `out` (only what fitloop wrote).
        quiet: print no line per trial.
        ensemble: also build the ensemble of the best trials (`OUT/ensemble`).

    Raises:
        ConfigError, SpaceError, TableError, ValueError: bad settings, space or data (before any trial).
    """
    if resume:
        cfg, checked, saved = _saved_search(out)
        trials = saved.get("n_trials") if trials is None and time is None else trials
        pruner = pruner or saved.get("pruner") or "asha"
    else:
        if cfg is None:
            raise ConfigError("tune_table: pass the run settings (cfg), or resume=True with the tune directory.")
        checked = table_space(space)
        if cfg.data.path and table is None:  # a resume finds the data from any directory
            cfg.data.path = str(Path(cfg.data.path).resolve())
        trials = DEFAULT_TRIALS if trials is None and time is None else trials
        pruner = pruner or "asha"
    check_budget(trials, time, jobs, pruner)
    settings = {"kind": "table", "n_trials": trials, "seed": cfg.train.seed, "pruner": pruner, "jobs": jobs,
                "target": cfg.data.target}
    out_dir = start_search(out, resume=resume, overwrite=overwrite, settings=settings, inputs=(cfg.data.path,))
    if not resume and is_main_process():
        atomic_write_bytes(out_dir / CONFIG_FILE, cfg.to_toml().encode("utf-8"))
        atomic_write_bytes(out_dir / SPACE_FILE, space_toml(checked).encode("utf-8"))
    deadline = None if time is None else clock.time() + time
    result = search(TableTrials(cfg, checked, table), out_dir,
                    WorkerSettings(out_dir, trials, deadline, cfg.train.seed, pruner, jobs, quiet))
    if is_main_process() and result.best_trial is not None:
        _finish(result, table, ensemble)
    return result


def _saved_search(out: str | os.PathLike | None) -> tuple[RunConfig, dict[str, dict[str, Any]], dict[str, Any]]:
    """The run settings, the space and the search's own settings (`tune.json`) of the search in `out`."""
    if out is None:
        raise ConfigError("resume: pass the tune directory (out=..., or fitloop tune --resume OUT).")
    out_dir = Path(out)
    saved = read_settings(out_dir)  # not a tune directory at all: said so first
    if not (out_dir / CONFIG_FILE).is_file() or not (out_dir / SPACE_FILE).is_file():
        raise ConfigError(f"{out_dir}: not a table search (no {CONFIG_FILE} and {SPACE_FILE}); pass the --out of "
                          "an earlier `fitloop tune`.")
    given = load_toml(str(out_dir / CONFIG_FILE))
    legacy = {k: v for k, v in LEGACY_DEFAULTS.items() if k not in given}
    return resolve_run_config(legacy, given), load_space(out_dir / SPACE_FILE), saved


def _finish(result: TuneResult, table: pa.Table | None, ensemble: bool) -> None:
    """After the search: the ensemble of the best trials (`OUT/ensemble`) and the search's report
    (`OUT/report.html`). The ensemble's candidates are the complete trials, best first, then the pruned
    ones (each a finished run of the epochs it had): greedy selection is never worse than its best
    candidate, and a pruned model can still add to the average."""
    trials = result.study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state.name == "COMPLETE" and t.value is not None),
                      key=lambda t: (t.value, t.number))
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    run_dirs = [t.user_attrs["run_dir"] for t in [*complete, *pruned] if "run_dir" in t.user_attrs
                and (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file()]
    if ensemble and len(run_dirs) >= 2:
        try:
            result.extras["ensemble"] = build_ensemble(run_dirs, result.out_dir / "ensemble", overwrite=True,
                                                       data=table)
        except EnsembleError as e:
            result.extras["ensemble_note"] = f"no ensemble: {e}"
    try:
        result.extras["report"] = write_tune_report(result.study, result.out_dir)
    except ImportError as e:  # matplotlib (the plot extra) missing: the search itself is done
        result.extras["report_note"] = f"no report: {e}"
