"""Files that never end up half-written: atomic writes (temporary file, fsync, rename, directory
fsync) for bundles, checkpoints and the CLI's run files, and the version stamp they carry."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["atomic_write_bytes", "write_json_atomic", "versions", "fsync_dir"]

_UMASK = os.umask(0)
os.umask(_UMASK)
# Test hook: called with the temporary path after the first half of a file is written (tests kill the
# process there to prove a partial write is never picked up).
_on_partial_write: Callable[[str], None] | None = None


def fsync_dir(path: Path) -> None:
    """Flush directory `path`'s entries to disk, so that a file just renamed into it survives a crash."""
    with contextlib.suppress(OSError):  # not every platform/filesystem allows it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same directory (`.NAME.<random>.tmp`),
    fsync, rename, fsync the directory. A crash leaves either the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if _on_partial_write is not None:
                f.flush()
                _on_partial_write(tmp)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """`obj` as JSON, written with `atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=str) + "\n").encode())


def versions() -> dict[str, str]:
    """The fitloop, torch and Python versions, as stored in run files, checkpoints and bundles."""
    import torch  # here, not at the top: the CLI imports this module before it needs torch (`fitloop --help`)

    return {"fitloop": __version__, "torch": torch.__version__, "python": platform.python_version()}
