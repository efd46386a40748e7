"""The files of a run directory, as the run-directory callback (`Checkpointer`) writes them.

    runs/exp1/
      config.json       the resolved TrainConfig and its fingerprint
      run.json          status, versions, timings, the verdict (`RunDirectory.info`)
      history.jsonl     one JSON line per epoch, appended and flushed as it goes
      history.csv       the same epochs' scalar values as CSV (rewritten with the jsonl on resume)
      splits.json       the row indices of the train/val splits (when the data carries them)
      checkpoints/      ckpt-000001-e1-s12.safetensors ..., `latest` and `best` pointer files

Only rank 0 writes (the other ranks keep the same bookkeeping and write nothing). Every file is
written atomically, so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint_format import find_checkpoints, serialize
from ..config import RUN_FORMAT
from ..distributed import is_main_process
from ..distributed.group import barrier
from ..files import atomic_write_bytes, write_json_atomic
from ..runlock import RunLock, hold_run_dir
from .fingerprints import split_row_indices
from .loggers import HistoryCSV

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = ["RunDirectory", "resolve_run_dir", "now"]


def now() -> str:
    """The local time with its offset, to the second (run.json's timestamps)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def resolve_run_dir(run_dir: Any) -> Path:
    """The directory for `run_dir`: `True` or `"auto"` picks a new `runs/<timestamp>`."""
    if run_dir is True or run_dir == "auto":
        base = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, suffix = base, 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        return path
    return Path(run_dir)


class RunDirectory:
    """One run directory's files: run.json, config.json, splits.json, the history, the checkpoint files.

    Args:
        path: the directory (created on the first fit).

    Attributes:
        path: the directory.
        checkpoints: its `checkpoints/` folder.
        info: run.json's content, as last written.
    """

    def __init__(self, path: Path):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.info: dict[str, Any] = {}
        self._csv = HistoryCSV(path / "history.csv")
        self._lock: RunLock | None = None
        self._session_start = time.perf_counter()
        self._elapsed_before = 0.0  # the earlier sessions' seconds (a resumed run)

    # ---- the lock

    def lock(self) -> None:
        """Hold the directory for this process while a fit runs (one live process per run, `fitloop.runlock`)."""
        if is_main_process() and self._lock is None:
            self._lock = hold_run_dir(self.path)

    def release(self) -> None:
        """Let the directory go (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---- starting a session

    def holds_a_run(self) -> bool:
        """Whether an earlier run wrote here (run.json or a checkpoint)."""
        return (self.path / "run.json").exists() or bool(find_checkpoints(self.path))

    def create(self, config: TrainConfig, train_data: Any, val_data: Any, run_info: dict[str, Any]) -> None:
        """A fresh run: config.json, splits.json, empty history files; run.json's first fields."""
        barrier()  # every rank has looked (`holds_a_run`) before rank 0 writes
        if is_main_process():
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path / "config.json", {"config": config.to_dict(),
                                                          "fingerprint": config.fingerprint()})
            splits = {part: rows for part, rows in (("train", split_row_indices(train_data)),
                                                    ("val", split_row_indices(val_data))) if rows is not None}
            if splits:
                write_json_atomic(self.path / "splits.json", splits)
            (self.path / "history.jsonl").write_text("")
            self._csv.rewrite([])
        self.info = {"format": RUN_FORMAT, "format_version": 1, "created": now(), "sessions": 1,
                     "elapsed_s": 0.0, **run_info}

    def continue_run(self, checkpoint: Path, history: list[dict[str, Any]]) -> None:
        """A resumed run: the history files as the checkpoint has them, run.json's session count."""
        self.rewrite_history(history)
        self.info = _read_json(self.path / "run.json") or {"created": now()}
        self.info["sessions"] = self.info.get("sessions", 0) + 1
        self.info["resumed_from"] = checkpoint.name

    def start_session(self, **fields: Any) -> None:
        """The fit starts: the session's clock, run.json with `fields` (status "running", ...)."""
        if is_main_process():
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._session_start = time.perf_counter()
        self._elapsed_before = float(self.info.get("elapsed_s", 0.0))
        self.write_info(**fields)

    def elapsed(self) -> float:
        """Seconds of training over every session of the run."""
        return self._elapsed_before + time.perf_counter() - self._session_start

    # ---- run.json and the history

    def write_info(self, **changes: Any) -> None:
        """Update run.json's fields (and its `updated` time)."""
        self.info.update(changes, updated=now())
        if is_main_process():
            write_json_atomic(self.path / "run.json", self.info)

    def append_history(self, logs: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """One epoch's line in history.jsonl, and history.csv (whose columns may grow with `history`)."""
        # No fsync per epoch (it cost ~4 ms an epoch, more than the epoch itself on a small table): a
        # killed process loses nothing the OS already has, and a resume rewrites this file from the
        # checkpoint's history (`rewrite_history`), which is written with fsync.
        if is_main_process():
            with open(self.path / "history.jsonl", "a") as f:
                f.write(json.dumps(logs, default=str) + "\n")
            self._csv.append(logs, history)

    def rewrite_history(self, history: list[dict[str, Any]]) -> None:
        """Both history files, as `history` has them."""
        text = "".join(json.dumps(logs, default=str) + "\n" for logs in history)
        if is_main_process():
            atomic_write_bytes(self.path / "history.jsonl", text.encode())
            self._csv.rewrite(history)

    def cleanup_temps(self) -> None:
        """Remove the temporary files an atomic write left when its process was killed."""
        for folder in (self.path, self.checkpoints, self.path / "model"):
            if folder.is_dir() and is_main_process():
                for temp in folder.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        temp.unlink()

    # ---- checkpoint files

    def next_seq(self) -> int:
        """The sequence number of the next checkpoint (one more than the highest on disk)."""
        found = self.checkpoints.iterdir() if self.checkpoints.is_dir() else []
        seqs = [int(m.group(1)) for path in found
                if (m := re.match(r"^ckpt-(\d{6,})-", path.name)) and not path.name.startswith(".")]
        return max(seqs, default=0) + 1

    def write_checkpoint(self, name: str, state: dict[str, Any], *, best: bool) -> Path:
        """Write checkpoint `name` and point `latest` (and, when it is the `best`, `best`) at it."""
        path = self.checkpoints / name
        if is_main_process():
            atomic_write_bytes(path, serialize(state))
            atomic_write_bytes(self.checkpoints / "latest", (name + "\n").encode())
            if best:
                atomic_write_bytes(self.checkpoints / "best", (name + "\n").encode())
        return path

    def prune(self, to_keep: Callable[[list[Path]], set[str]]) -> None:
        """Delete the checkpoints (and FSDP's shard folders) whose names `to_keep(newest first)` leaves out."""
        found = find_checkpoints(self.path) if is_main_process() else []
        keep = to_keep(found)
        for path in found:
            if path.name not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
                    shutil.rmtree(path.with_suffix(".dcp"), ignore_errors=True)  # FSDP: its shards


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
