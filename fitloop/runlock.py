"""One live process per run directory: a lock file holding the owner's pid.

    lock = hold_run_dir("runs/exp1")     # RunLockedError (naming the pid) if a live process holds it
    ...                                  # train, checkpoint, write the bundle
    lock.release()

The lock is ``RUN_DIR/.lock``, a JSON line with the holder's pid, host and start time, locked with
``flock``: the operating system drops the lock when its process dies, however it dies (SIGKILL
included), so a stale file left by a killed run never blocks a resume. Holding is re-entrant within a
process (the command line holds the directory around the whole run, the run-directory callback
holds it around `fit`). Where ``fcntl`` is missing (Windows), the file is created exclusively and a
holder whose pid no longer runs counts as stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RunLockedError", "RunLock", "hold_run_dir", "lock_holder"]

LOCK_NAME = ".lock"
_held: dict[str, list[Any]] = {}  # resolved run dir -> [fd, holds]


class RunLockedError(RuntimeError):
    """The run directory belongs to another live process (the message names its pid)."""

    def __init__(self, run_dir: str | os.PathLike, holder: dict[str, Any]):
        self.pid = holder.get("pid")
        since = f", since {holder['started']}" if holder.get("started") else ""
        host = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
        super().__init__(
            f"{run_dir}: this run directory is in use by another fitloop process (pid {self.pid}{host}{since}). "
            f"Wait for it to finish or stop it (`kill {self.pid}`), or use another run directory (--out).")


class RunLock:
    """A hold on a run directory; `release` (or leaving a ``with`` block) lets it go."""

    def __init__(self, key: str):
        self.key, self.released = key, False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        entry = _held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.key]
            with contextlib.suppress(OSError):
                os.unlink(Path(self.key) / LOCK_NAME)  # while still locked: nobody else sees a free file
            os.close(entry[0])

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8") or "{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _pid_lock(path: Path) -> int | None:
    """Without `flock` (Windows, some network filesystems): exclusive create; stale when the pid is gone."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path).get("pid")
            if holder != os.getpid() and _pid_alive(holder):
                return None
            with contextlib.suppress(OSError):
                os.unlink(path)


def _try_lock(path: Path) -> int | None:
    """An fd holding the lock on `path`, or None when another live process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return _pid_lock(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            os.close(fd)
            return None
        except OSError:  # pragma: no cover - the filesystem does not lock (ENOLCK, EINVAL)
            os.close(fd)
            return _pid_lock(path)
        try:  # the holder may have released (unlinked) the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def hold_run_dir(run_dir: str | os.PathLike) -> RunLock:
    """Take the run directory (creating it) for this process; re-entrant within the process.

    Raises:
        RunLockedError: another live process holds it (the message names the pid).
    """
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(d)
    if key in _held:
        _held[key][1] += 1
        return RunLock(key)
    path = d / LOCK_NAME
    fd = _try_lock(path)
    if fd is None:
        raise RunLockedError(run_dir, _read(path))
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    _held[key] = [fd, 1]
    return RunLock(key)


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds the run directory (``{"pid", "host", "started"}``), or None if nobody alive does."""
    d = Path(run_dir)
    path = d / LOCK_NAME
    if not path.is_file() or os.path.realpath(d) in _held:
        return None
    try:
        lock = hold_run_dir(d)
    except RunLockedError:
        return _read(path) or {"pid": None}
    lock.release()
    return None
