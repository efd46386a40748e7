"""The study: an Optuna journal file in the tune directory, safe to share between processes and to kill.

    lock = JournalLock(out / "study.journal.lock")
    study = open_study(out, lock, seed=0, pruner="asha", worker=0)
    requeue_stale(study, lock)        # after a kill: each RUNNING trial FAIL, its params enqueued once
    trial = claim_trial(study, lock, n_trials=20)   # None once COMPLETE + PRUNED + RUNNING reach the budget

Why each piece:

* The journal (`optuna.storages.JournalStorage` over `JournalFileBackend`) is an append-only file of
  operations: no database server, and a killed writer loses at most its last line, which `open_study`
  cuts off (`repair_journal`) before Optuna reads it.
* `JournalLock` is an `fcntl.flock` on a lock file. The kernel releases it when its holder dies, so a
  `kill -9` never leaves a lock behind (Optuna's default symlink lock waits out a grace period then).
  It is re-entrant in a process, so a claim can hold it around Optuna's own writes.
* The budget counts finished trials (COMPLETE and PRUNED) plus the RUNNING ones, checked and asked for
  under the lock: N workers finish exactly `n_trials` between them.
* A trial left RUNNING by a killed process (nothing else runs in a tune directory: its lock says so) is
  marked FAIL and its parameters are enqueued once, with `retry_of` naming it, so it is neither lost nor
  counted twice. The retry continues the killed trial's run directory from its checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..extras import require

__all__ = ["JOURNAL", "STUDY_NAME", "PRUNERS", "JournalLock", "repair_journal", "open_study", "claim_trial",
           "requeue_stale", "state_counts", "finished", "sampler_seed"]

JOURNAL = "study.journal"
STUDY_NAME = "fitloop"
PRUNERS = ("asha", "hyperband", "none")


class JournalLock:
    """An exclusive, re-entrant `flock` on `path`, released by the kernel if the process dies.

    It has Optuna's journal-lock interface (`acquire`, `release`) and is a context manager (`held`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> bool:
        """Block until this process holds the lock; returns True (Optuna's interface)."""
        import fcntl  # POSIX only: imported where the lock is taken

        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        self._depth += 1
        return True

    def release(self) -> None:
        """Release one level of the lock; the last one closes the file (and so unlocks it)."""
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker takes the path, not the open file
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


def repair_journal(path: Path) -> bool:
    """Cut a last line that a killed writer left without its line break; returns whether it did.

    Optuna reads such a line as the end of the log, but the next append would be glued to it and the
    journal would no longer parse. Call it under the journal's lock.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        data_end = f.seek(0, os.SEEK_END)
        keep = _last_line_end(f, data_end)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


def _last_line_end(f: Any, end: int, chunk: int = 1 << 16) -> int:
    """The offset just after the last b"\\n" before `end` (0 when there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        found = f.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def sampler_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The TPE sampler's seed for one worker's session: different for each worker and each resume, so
    parallel workers and a resumed search do not draw the same random start-up points again, and the
    same for the same seed, worker and study."""
    return (seed * 1_000_003 + worker * 7_919 + trials_so_far) % 2**32


def _pruner(optuna: Any, name: str) -> Any:
    """`asha`: successive halving (ASHA); `hyperband`: Hyperband over it; `none`: no pruning.

    ASHA's first rung is Optuna's "auto": nothing is pruned before a first trial completes, and the first
    rung is at 1/100 of that trial's epochs (at least 1), with a reduction factor of 3 (a third of the trials
    go on at each rung). From epoch 1 with a factor of 4 (the first version), 5 of 6 trials of a small search
    were pruned after one epoch and no ensemble could be built; now the first trial always completes.
    """
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource="auto", reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner: got {name!r}; choose from {', '.join(PRUNERS)}.")


def open_study(out_dir: Path, lock: JournalLock, *, seed: int, pruner: str, worker: int = 0) -> Any:
    """The tune directory's study (created on first use): TPE seeded by `sampler_seed`, the named pruner.

    Raises:
        MissingExtraError: Optuna is not installed (`pip install 'fitloop[tune]'`).
        ValueError: an unknown pruner.
    """
    optuna = require("optuna", "tune", "fitloop tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # fitloop prints its own line per trial
    path = out_dir / JOURNAL
    with lock.held():
        repair_journal(path)
        backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
        storage = optuna.storages.JournalStorage(backend)
        existing = optuna.load_study(study_name=STUDY_NAME, storage=storage) if path.stat().st_size else None
        count = len(existing.get_trials(deepcopy=False)) if existing is not None else 0
        sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, worker, count))
        return optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                                   pruner=_pruner(optuna, pruner), direction="minimize", load_if_exists=True)


def state_counts(study: Any) -> dict[str, int]:
    """How many trials are in each state, by the state's name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def finished(study: Any) -> int:
    """The trials the budget has spent: COMPLETE and PRUNED."""
    counts = state_counts(study)
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def claim_trial(study: Any, lock: JournalLock, n_trials: int | None) -> Any:
    """A new trial (an enqueued retry first), or None when finished plus running trials reach `n_trials`.

    Checked and asked under the lock, so that parallel workers never go past the budget together.
    """
    with lock.held():
        counts = state_counts(study)
        spent = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) + counts.get("RUNNING", 0)
        if n_trials is not None and spent >= n_trials:
            return None
        return study.ask()


def requeue_stale(study: Any, lock: JournalLock) -> list[int]:
    """Mark every RUNNING trial FAIL and enqueue its parameters once (`retry_of`: its number); returns their
    numbers. Only call it when no live process works on the study (the tune directory's lock is held).

    The parameters are enqueued before the trial is marked, and a trial that already has a retry is only
    marked: a kill between the two steps neither loses the trial nor enqueues it twice.
    """
    optuna = require("optuna", "tune", "fitloop tune")
    with lock.held():
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        stale = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        for trial in stale:
            if trial.number not in retried:
                attrs = {"retry_of": trial.number}
                if "run_dir" in trial.user_attrs:
                    attrs["resume_dir"] = trial.user_attrs["run_dir"]
                study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return [t.number for t in stale]
