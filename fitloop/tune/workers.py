"""The trial loop that runs in each worker: claim a trial, run it, tell the study how it ended.

    run_workers(runner, settings)        # jobs=1: in this process; jobs=N: N spawned processes

One worker is one process, or, under torchrun, one group of ranks that runs each trial together: rank 0
claims the trial from the study and broadcasts its parameters and run directory, every rank trains it, and
rank 0 reports each epoch's validation loss and broadcasts the pruner's answer (the distributed
`Collective`), so all ranks stop at the same epoch. The other ranks never touch the study.

With `jobs=N` each process sets torch's threads to `max(1, cores // N)`, so the workers do not
oversubscribe the machine, and dies with the process that started it (Linux: `PR_SET_PDEATHSIG`), so a
`kill -9` of the tune command leaves no worker behind to run on while the search is resumed.
"""

from __future__ import annotations

import abc
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distributed import is_main_process, world_size
from ..distributed.group import Collective, init_from_env
from ..extras import require
from .pruning import TrialCallback
from .study import JOURNAL, JournalLock, claim_trial, open_study

__all__ = ["TrialRunner", "WorkerSettings", "TrialEnd", "run_workers", "run_worker", "trial_line",
           "worker_threads"]


class TrialRunner(abc.ABC):
    """Runs one trial: draws its parameters from `trial`, trains with `callback` among the Trainer's
    callbacks, into `run_dir` (or continues `resume_dir`, the run of a killed trial, when given)."""

    @abc.abstractmethod
    def run(self, trial: Any, run_dir: Path, callback: TrialCallback, resume_dir: Path | None) -> Any:
        """Train the trial; returns what the caller may keep of it (e.g. the Trainer), or None."""

    def draw(self, trial: Any) -> dict[str, Any] | None:
        """The trial's parameters drawn up front (then `run` draws the same again), or None when only `run`
        can draw them (define-by-run). Under torchrun rank 0 draws them here, to broadcast them."""
        return None


@dataclass
class WorkerSettings:
    """What every worker of one search shares.

    Attributes:
        out_dir: the tune directory (the journal, `trials/`).
        n_trials: the budget: COMPLETE + PRUNED trials in all (None: until `deadline`).
        deadline: no trial starts after this `time.time()` (None: no limit).
        seed: the sampler's seed (`fitloop.tune.study.sampler_seed` varies it per worker).
        pruner: "asha", "hyperband" or "none".
        jobs: the workers running at once.
        quiet: print no line per trial.
    """

    out_dir: Path
    n_trials: int | None
    deadline: float | None
    seed: int = 0
    pruner: str = "asha"
    jobs: int = 1
    quiet: bool = False


@dataclass
class TrialEnd:
    """How a trial ended, as the study records it and the trial's line shows it."""

    number: int
    state: str
    value: float | None
    epochs: int
    params: dict[str, Any]
    seconds: float
    kept: Any = None


def worker_threads(jobs: int) -> int:
    """torch's intra-op threads for each of `jobs` workers: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def trial_line(end: TrialEnd) -> str:
    """The one line printed for a finished trial."""
    value = "-" if end.value is None else f"{end.value:.4g}"
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in end.params.items())
    return (f"trial {end.number:>4}  {end.state.lower():<8}  val_loss {value:<10}  epochs {end.epochs:<4}  "
            f"{end.seconds:6.1f}s  {params}")


def run_workers(runner: TrialRunner, settings: WorkerSettings) -> TrialEnd | None:
    """Run the search to its budget: in this process (`jobs` 1, or under torchrun), or in `jobs` spawned
    processes. Returns the best trial this process ran when it ran them itself (with what it kept)."""
    if settings.jobs <= 1 or world_size() > 1:
        return run_worker(runner, settings, worker=0)
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(settings.jobs, mp_context=context, initializer=_in_child,
                             initargs=(os.getpid(), worker_threads(settings.jobs))) as pool:
        futures = [pool.submit(run_worker, runner, settings, index, False) for index in range(settings.jobs)]
        for future in futures:
            future.result()  # a worker's error is raised here, with its own class and message
    return None


def _in_child(parent: int, threads: int) -> None:
    """A spawned worker: share the cores, and die with the tune process (Linux)."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes  # the prctl call: only in a worker on Linux

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before the line above: go with it
        os._exit(1)


def run_worker(runner: TrialRunner, settings: WorkerSettings, worker: int, keep: bool = True) -> TrialEnd | None:
    """Claim and run trials until the budget or the deadline; returns the best one (with what the runner
    kept of it when `keep`)."""
    device = init_from_env() if world_size() > 1 else None  # under torchrun: the group comes first
    collective = Collective(device or torch.device("cpu"))
    study = lock = None
    if is_main_process():
        lock = JournalLock(settings.out_dir / f"{JOURNAL}.lock")
        study = open_study(settings.out_dir, lock, seed=settings.seed, pruner=settings.pruner, worker=worker)
    best: TrialEnd | None = None
    while True:
        claimed = _claim(runner, study, lock, settings) if is_main_process() else None
        task = collective.broadcast(None if claimed is None else claimed[1])
        if task is None:
            return best
        end = _run_one(runner, study, claimed[0] if claimed else None, task, collective)
        if not keep:
            end.kept = None
        if is_main_process() and not settings.quiet:
            print(trial_line(end), flush=True)
        if end.state == "COMPLETE" and end.value is not None and (best is None or best.value is None
                                                                  or end.value < best.value):
            best = end


def _claim(runner: TrialRunner, study: Any, lock: Any, settings: WorkerSettings
           ) -> tuple[Any, dict[str, Any]] | None:
    """Rank 0: the next trial and what the other ranks need of it, or None when the search is over.

    Raises:
        ValueError: under torchrun, a runner that cannot draw its parameters before it trains.
    """
    if settings.deadline is not None and time.time() >= settings.deadline:
        return None
    trial = claim_trial(study, lock, settings.n_trials)
    if trial is None:
        return None
    if runner.draw(trial) is None and world_size() > 1:
        study.tell(trial, state=require("optuna", "tune", "fitloop tune").trial.TrialState.FAIL)
        raise ValueError("tune: under torchrun every rank trains the same trial, so rank 0 draws its parameters "
                         "first; a define-by-run build(trial) cannot: tune a table (fitloop tune), or run "
                         "build's search on one process per trial (n_jobs).")
    resume_dir = trial.user_attrs.get("resume_dir")
    run_dir = resume_dir or str(settings.out_dir / "trials" / f"{trial.number:04d}")
    trial.set_user_attr("run_dir", run_dir)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("threads", torch.get_num_threads())
    return trial, {"number": trial.number, "params": dict(trial.params), "run_dir": run_dir,
                   "resume_dir": resume_dir}


def _run_one(runner: TrialRunner, study: Any, trial: Any, task: dict[str, Any], collective: Collective) -> TrialEnd:
    """Run one trial on every rank; rank 0 tells the study how it ended."""
    optuna = require("optuna", "tune", "fitloop tune")
    if trial is None:  # another rank than 0: the parameters rank 0 drew (or the retry's), fixed
        trial = optuna.trial.FixedTrial(task["params"], number=task["number"])
        trial.set_user_attr("run_dir", task["run_dir"])
    callback = TrialCallback(_decider(trial, collective))
    resume_dir = Path(task["resume_dir"]) if task["resume_dir"] else None
    t0 = time.perf_counter()
    try:
        kept = runner.run(trial, Path(task["run_dir"]), callback, resume_dir)
    except Exception as e:  # recorded as FAIL (with the error), then raised: a broken setting stops the search
        if study is not None:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    value = callback.kept if callback.kept is not None else callback.best  # the kept model's, when known
    end = TrialEnd(task["number"], "COMPLETE", value, callback.epochs, dict(trial.params),
                   time.perf_counter() - t0, kept)
    if callback.pruned_at is not None:
        end.state = "PRUNED"
    elif value is None:
        end.state = "FAIL"  # no finite validation loss: nothing to compare
    if study is not None:
        _tell(study, trial, end, callback, optuna)
    return end


def _tell(study: Any, trial: Any, end: TrialEnd, callback: TrialCallback, optuna: Any) -> None:
    trial.set_user_attr("epochs", callback.epochs)
    if callback.pruned_at is not None:
        trial.set_user_attr("pruned_at", callback.pruned_at)
    state = optuna.trial.TrialState[end.state]
    study.tell(trial, end.value if end.state == "COMPLETE" else None, state=state)


def _decider(trial: Any, collective: Collective) -> Callable[[int, float], bool]:
    """The pruning rule of one trial: rank 0 reports the epoch's value and asks the pruner, every rank
    gets its answer."""
    def decide(epoch: int, value: float) -> bool:
        answer = False
        if is_main_process():
            trial.report(value, epoch)
            answer = bool(trial.should_prune())
        return bool(collective.broadcast(answer))
    return decide
