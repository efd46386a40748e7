"""Hyperparameter search over whole Trainers: `fitloop.tune.tune`, on Optuna, pruned, parallel, safe to kill.

    def build(trial):                                   # Optuna's define-by-run
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trainer = fl.Trainer(make_model(trial), loss="mse", lr=lr, epochs=20,
                             run_dir=trial.user_attrs["run_dir"])      # optional: a run directory per trial
        return trainer, (X_train, y_train), (X_val, y_val)

    result = fitloop.tune.tune(build, n_trials=30, timeout=3600, n_jobs=2, out="runs/tuned")
    result.best_trial.params, result.best_trial.value, result.best_run_dir, result.model

`build(trial)` returns the Trainer and the data to fit it on: `(trainer, train, val)`. The search adds its
`TrialCallback` in front of the Trainer's callbacks, fits, and records the trial's value: its best
validation loss. With an `EarlyStopping(restore_best=True)` among the callbacks the trial's model is that
epoch's too. For the table workflow use `fitloop.tabular.tune` (the default table space, or a space file).

The tune directory::

    OUT/tune.json             the search's settings, then its result (best trial, counts)
    OUT/study.journal         the Optuna journal: every trial, its parameters, values and state
    OUT/trials/0000/ ...      each trial's run directory (when the Trainer has one)
    OUT/best/                 a copy of the best trial's run directory (without its checkpoints)

`tune(..., resume=True)` (`fitloop tune --resume OUT`) continues a search that was stopped or killed:
see `fitloop.tune.study` for how no trial is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..bundle import load
from ..distributed import is_main_process
from ..distributed.group import barrier
from ..files import write_json_atomic
from ..outputs import TUNE_FORMAT, OutputPathError, check_out_dir, clear_run_dir
from ..runlock import hold_run_dir
from .pruning import TrialCallback
from .study import JOURNAL, PRUNERS, JournalLock, open_study, requeue_stale, state_counts
from .workers import TrialRunner, WorkerSettings, run_workers

__all__ = ["tune", "search", "TuneResult", "FitTrials", "TUNE_FILE", "TUNE_FORMAT", "read_settings",
           "default_tune_out", "check_budget"]

TUNE_FILE = "tune.json"
BEST_DIR = "best"


@dataclass
class TuneResult:
    """What a search found.

    Attributes:
        study: the Optuna study (every trial, `study.trials_dataframe()`, Optuna's plots).
        best_trial: the best COMPLETE trial (`FrozenTrial`: `.params`, `.value`, `.user_attrs`), or None.
        best_run_dir: `OUT/best`, the copy of the best trial's run directory (None without run directories).
        out_dir: the tune directory.
        counts: trials per state (`COMPLETE`, `PRUNED`, `FAIL`, ...).
        trainer: the best trial's Trainer, when this process ran it (`n_jobs=1`), else None.
        extras: what the table workflow adds (`ensemble`, `report`: paths).
    """

    study: Any
    best_trial: Any
    best_run_dir: Path | None
    out_dir: Path
    counts: dict[str, int]
    trainer: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        """The best model: the Trainer's when kept, else loaded from `best_run_dir/model` (`fl.load`)."""
        if self.trainer is not None:
            return self.trainer.model
        if self.best_run_dir is None or not (self.best_run_dir / "model").is_dir():
            return None
        return load(self.best_run_dir / "model")


class FitTrials(TrialRunner):
    """The trials of a define-by-run `build(trial) -> (trainer, train, val)`; picklable when `build` is a
    module-level function (needed for `n_jobs > 1`)."""

    def __init__(self, build: Callable[[Any], Any]):
        self.build = build

    def run(self, trial: Any, run_dir: Path, callback: TrialCallback, resume_dir: Path | None) -> Any:
        made = self.build(trial)
        if not (isinstance(made, tuple) and len(made) == 3) or made[2] is None:
            raise TypeError("tune: build(trial) must return (trainer, train, val): the Trainer and the data "
                            f"to fit it on, validation data included; got {type(made).__name__}.")
        trainer, train, val = made
        trainer.callbacks.insert(0, callback)  # before fit: the Trainer reads its callbacks when a fit starts
        checkpointer = trainer.checkpointer
        if resume_dir is not None and checkpointer is not None and (resume_dir / "checkpoints").is_dir():
            trainer.resume(train, val)  # the killed trial's run, from its last checkpoint
        else:
            trainer.fit(train, val)
        return trainer


def default_tune_out() -> Path:
    """`runs/tune-<timestamp>`: a search's directory when none is given."""
    return Path("runs") / f"tune-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_budget(n_trials: int | None, timeout: float | None, jobs: int, pruner: str) -> None:
    """The budget's settings, each named as the Python argument.

    Raises:
        ValueError: no budget, a count below 1, a timeout that is not > 0, an unknown pruner.
    """
    if n_trials is None and timeout is None:
        raise ValueError("tune: give a budget: n_trials, a timeout, or both.")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"tune: n_trials must be a whole number >= 1, got {n_trials!r}.")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"tune: timeout must be seconds > 0, got {timeout!r}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"tune: n_jobs must be a whole number >= 1, got {jobs!r}.")
    if pruner not in PRUNERS:
        raise ValueError(f"tune: pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}.")


def read_settings(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a search wrote in `OUT/tune.json` (what `--resume` continues with).

    Raises:
        OutputPathError: `out_dir` is not a tune directory.
    """
    path = Path(out_dir) / TUNE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("format") != TUNE_FORMAT:
        raise OutputPathError(f"{out_dir}: not a tune directory (no readable {TUNE_FILE}); pass the --out of "
                              "an earlier `fitloop tune`.")
    return info


def tune(objective: Callable[[Any], Any] | TrialRunner, *, n_trials: int | None = None,
         timeout: float | None = None, n_jobs: int = 1, out: str | os.PathLike | None = None, seed: int = 0,
         pruner: str | None = None, resume: bool = False, overwrite: bool = False, quiet: bool = True) -> TuneResult:
    """Search hyperparameters with Optuna (TPE, seeded) and return the study and the best model.

    Args:
        objective: `build(trial) -> (trainer, train, val)` (see the module docstring), or a `TrialRunner`.
        n_trials: the budget in finished trials (COMPLETE + PRUNED), over every worker and resume (a resumed
            search keeps its own unless `n_trials` or `timeout` is given).
        timeout: no new trial starts after this many seconds (of this call).
        n_jobs: trials run at once, each in its own spawned process (`build` must be picklable).
        out: the tune directory (default ``runs/tune-<timestamp>``).
        seed: the sampler's seed.
        pruner: "asha" (successive halving, the default), "hyperband" or "none" (resumed: its own).
        resume: continue the search in `out` (a stopped or killed one): its unfinished trials run again.
        overwrite: replace an earlier search in `out` (only fitloop's entries).
        quiet: print no line per trial.

    Raises:
        ValueError: a bad budget or pruner; `out` may not be written (`OutputPathError`).
        MissingExtraError: Optuna is not installed (`pip install 'fitloop[tune]'`).
    """
    if resume:
        saved = read_settings(default_tune_out() if out is None else out)
        n_trials = saved.get("n_trials") if n_trials is None and timeout is None else n_trials
        pruner = pruner or saved.get("pruner")
    pruner = pruner or "asha"
    check_budget(n_trials, timeout, n_jobs, pruner)
    runner = objective if isinstance(objective, TrialRunner) else FitTrials(objective)
    settings = {"kind": "python", "n_trials": n_trials, "seed": seed, "pruner": pruner, "jobs": n_jobs}
    out_dir = start_search(out, resume=resume, overwrite=overwrite, settings=settings)
    return search(runner, out_dir, WorkerSettings(out_dir, n_trials, None if timeout is None else
                                                  time.time() + timeout, seed, pruner, n_jobs, quiet))


def start_search(out: str | os.PathLike | None, *, resume: bool, overwrite: bool, settings: dict[str, Any],
                 inputs: tuple[str | None, ...] = ()) -> Path:
    """The tune directory, checked (a new search: as `--out`; a resumed one: its `tune.json`), with the
    search's settings written (rank 0). A resumed search keeps its settings but the budget given now."""
    out_dir = Path(out) if out is not None else default_tune_out()
    if resume:
        saved = read_settings(out_dir)
        settings = {**saved, **{k: v for k, v in settings.items() if v is not None}}
    elif is_main_process():  # rank 0 alone: the others would find the files it writes next
        _check_new_search(out_dir, overwrite, inputs)
    if is_main_process():
        with hold_run_dir(out_dir):  # refuses a directory a live search holds, naming its pid
            if not resume:
                clear_run_dir(out_dir)
            write_json_atomic(out_dir / TUNE_FILE, {**settings, "format": TUNE_FORMAT, "status": "running"})
    barrier()
    return out_dir


def _check_new_search(out_dir: Path, overwrite: bool, inputs: tuple[str | None, ...]) -> None:
    """`out_dir` may take a new search (`check_out_dir`); one that holds a search says how to continue it."""
    try:
        check_out_dir(out_dir, overwrite=overwrite, inputs=inputs, what="the search")
    except OutputPathError as e:
        if (out_dir / TUNE_FILE).is_file() and not overwrite:
            raise OutputPathError(f"{e} It holds a search: continue it with `fitloop tune --resume {out_dir}` "
                                  "(tune(..., resume=True) in Python).") from None
        raise


def search(runner: TrialRunner, out_dir: Path, settings: WorkerSettings) -> TuneResult:
    """Run the workers in `out_dir` to the budget (after re-queueing the trials a kill left RUNNING), then
    copy the best trial's run to `OUT/best` and write the result into `tune.json` (rank 0)."""
    main = is_main_process()
    lock = JournalLock(out_dir / f"{JOURNAL}.lock")
    with hold_run_dir(out_dir) if main else contextlib.nullcontext():
        if main:
            stale = requeue_stale(open_study(out_dir, lock, seed=settings.seed, pruner=settings.pruner), lock)
            if stale and not settings.quiet:
                print(f"resuming: trial(s) {', '.join(map(str, stale))} stopped unfinished; each runs again.",
                      flush=True)
        barrier()
        best_end = run_workers(runner, settings)
        if not main:
            return TuneResult(None, None, None, out_dir, {})
        study = open_study(out_dir, lock, seed=settings.seed, pruner=settings.pruner)
        return _result(study, out_dir, best_end)


def _result(study: Any, out_dir: Path, best_end: Any) -> TuneResult:
    """The result: the best COMPLETE trial, its run copied to `OUT/best`, `tune.json` updated."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    best_dir = _copy_best(out_dir, best)
    counts = state_counts(study)
    kept = best_end.kept if best_end is not None and best is not None and best_end.number == best.number else None
    info = json.loads((out_dir / TUNE_FILE).read_text(encoding="utf-8"))
    info.update({"status": "finished", "counts": counts, "best": None if best is None else {
        "number": best.number, "value": best.value, "params": best.params, "run_dir": best.user_attrs.get("run_dir"),
        "epochs": best.user_attrs.get("epochs")}})
    write_json_atomic(out_dir / TUNE_FILE, info)
    return TuneResult(study, best, best_dir, out_dir, counts, kept)


def _copy_best(out_dir: Path, best: Any) -> Path | None:
    """`OUT/best`: the best trial's run directory copied (its checkpoints and lock left out), replacing the
    copy of an earlier best; None when that trial has no run directory."""
    source = Path(best.user_attrs.get("run_dir", "")) if best is not None else None
    if source is None or not (source / "model").is_dir():
        return None
    target, staging = out_dir / BEST_DIR, out_dir / f".{BEST_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
