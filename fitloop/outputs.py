"""Where fitloop may write, and what it may replace: nothing a user types destroys their files.

`--overwrite` (and `train_table(overwrite=True)`) replaces a directory only when it is empty or a fitloop
run directory (its run.json carries the run format marker, or its config.toml starts with fitloop's header
for a run killed before its run.json), and then deletes only the entries fitloop writes there. Anything
else stops before a byte is touched, with an error that names the directory, what is in it and how to go
on. The same checks guard the files other commands replace (`--config-out`, `fitloop report --out`).

    check_out_dir("runs/wine", overwrite=True, inputs=["wine.csv"])   # raises OutputPathError, or returns
    clear_run_dir(Path("runs/wine"))                                  # fitloop's entries only

Torch-free: the CLI checks `--out` before it imports anything heavy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import CONFIG_HEADER, RUN_FORMAT
from .runlock import LOCK_NAME

__all__ = ["OutputPathError", "RUN_DIR_ENTRIES", "TUNE_FORMAT", "is_run_dir", "foreign_entries", "check_out_dir",
           "check_out_file", "check_report_dir", "clear_run_dir"]

# Every name fitloop writes at the top of a run directory (the Checkpointer, `fitloop train`, `report`,
# `export`, `size-search`). Only these are deleted when a run directory is replaced.
RUN_DIR_ENTRIES = frozenset({
    "run.json", "config.toml", "config.json", "metrics.json", "test_predictions.csv", "history.jsonl",
    "history.csv", "splits.json", "model", "checkpoints", "tensorboard", "report.html", "plots", "export",
    "size_search.json", "size_search.txt", "size_search.png", LOCK_NAME,
    # `fitloop tune`: the study's journal (and its lock), the trials' runs, the best run, the ensemble
    "tune.json", "space.toml", "study.journal", "study.journal.lock", "trials", "best", "ensemble",
    "data-cache",  # a streamed CSV converted once to Parquet (fitloop.tabular.csv_cache)
})
TUNE_FORMAT = "fitloop-tune/1"  # tune.json's marker: a search made with the Python API has no config.toml
_REPORT_TITLE = "<title>fitloop report:"  # report.html's head (fitloop.report.html)
_TMP = re.compile(r"\.(.+)\.[^.]+\.tmp")  # fitloop.files.atomic_write_bytes' temporary name


class OutputPathError(ValueError):
    """An output path fitloop must not write or replace (a ValueError: the CLI's exit 2)."""


def is_run_dir(path: Path) -> bool:
    """True when `path` is a directory that fitloop made as a run directory."""
    run_json = path / "run.json"
    if run_json.is_file():
        try:
            meta = json.loads(run_json.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("format") == RUN_FORMAT
    if _json_format(path / "tune.json") == TUNE_FORMAT:  # a `fitloop tune` directory
        return True
    return _starts_with(path / "config.toml", CONFIG_HEADER)  # killed before its run.json was written


def _json_format(path: Path) -> Any:
    """The `"format"` of a JSON object file, or None (missing, unreadable, not an object)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return meta.get("format") if isinstance(meta, dict) else None


def _starts_with(path: Path, marker: str, head: int = 1024) -> bool:
    """`marker` stands in the first `head` characters of the file (fitloop writes it there)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return marker in f.read(head)
    except OSError:
        return False


def _is_fitloop_file(path: Path, marker: str) -> bool:
    """A regular file whose beginning fitloop wrote (a config.toml header, a report title)."""
    return path.is_file() and not path.is_symlink() and _starts_with(path, marker)


def _is_fitloop_entry(name: str) -> bool:
    """One of fitloop's names, or the temporary file of an atomic write to one (`.NAME.<random>.tmp`)."""
    if name in RUN_DIR_ENTRIES:
        return True
    match = _TMP.fullmatch(name)
    return match is not None and match.group(1) in RUN_DIR_ENTRIES


def foreign_entries(path: Path) -> list[str]:
    """The entries of directory `path` that fitloop did not write (all of them unless it is a run directory),
    sorted, folders with a trailing '/'."""
    run_dir = is_run_dir(path)
    names = []
    for entry in sorted(path.iterdir(), key=lambda e: e.name):
        if run_dir and _is_fitloop_entry(entry.name):
            continue
        names.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return names


def _describe(names: list[str]) -> str:
    count = len(names)
    noun = "file or folder" if count == 1 else "files or folders"
    shown = ", ".join(names[:3]) + (", ..." if count > 3 else "")
    return f"holds {count} {noun} that fitloop did not write, e.g. {shown}"


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


def _check_not_protected(path: str | os.PathLike, option: str, what: str) -> Path:
    """Refuse an empty path, the current directory (or one above it), the home directory and the root."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError(f"{option} is empty: name a directory of its own for {what}, e.g. {option} runs/exp1.")
    target = _resolved(Path(text))
    cwd = Path.cwd().resolve()
    where = None
    if target == Path(target.anchor):
        where = "the root of the file system"
    elif target == _resolved(Path.home()):
        where = "your home directory"
    elif target == cwd:
        where = "the current directory"
    elif target in cwd.parents:
        where = "a directory that contains the current directory"
    if where is not None:
        raise OutputPathError(f"{option} {text}: is {where}; fitloop writes {what} into a directory of its own. "
                              f"Choose one, e.g. {option} runs/exp1.")
    return target


def _check_inputs_outside(target: Path, option: str, text: str, inputs: Iterable[str | os.PathLike | None]) -> None:
    for item in inputs:
        if not item:
            continue
        source = _resolved(Path(item))
        if source == target or target in source.parents:
            raise OutputPathError(f"{option} {text}: contains the input file {item}; replacing it would delete "
                                  f"your data. Choose an {option} outside it, e.g. {option} runs/exp1.")


def check_out_dir(path: str | os.PathLike, *, overwrite: bool, option: str = "--out",
                  inputs: Iterable[str | os.PathLike | None] = (), what: str = "the run") -> Path:
    """Check that `path` may become a run directory; raise `OutputPathError` naming the problem if not.

    A new or empty directory is fine. An existing run directory needs `overwrite` (its fitloop entries are
    then replaced). A directory holding anything fitloop did not write is never replaced.

    Args:
        path: the directory asked for.
        overwrite: whether the user asked to replace an existing run directory.
        option: the option's name for messages (`--out`).
        inputs: files the run reads (the data file): they must not live inside `path`.
        what: what goes into the directory, for messages.

    Returns:
        `path` as a `Path`.
    """
    text = os.fspath(path)
    target = _check_not_protected(text, option, what)
    _check_inputs_outside(target, option, text, inputs)
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{option} {text}: exists and is not a directory; choose another {option}.")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    foreign = foreign_entries(out)
    if foreign:
        kind = "is a fitloop run directory but also" if is_run_dir(out) else "is not a fitloop run directory: it"
        raise OutputPathError(f"{option} {text}: {kind} {_describe(foreign)}, so fitloop will not replace it. "
                              f"Choose another {option} (a new or empty directory), or move those files "
                              f"yourself.")
    if not overwrite:
        raise OutputPathError(f"{option} {text}: holds a fitloop run; pass --overwrite to replace it, or choose "
                              f"another {option}.")
    return out


def check_out_file(path: str | os.PathLike, *, overwrite: bool, option: str, header: str,
                   inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check that fitloop may write the file `path`: never an input, and an existing file only with
    `overwrite` and only when fitloop wrote it (its text starts with `header`)."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError(f"{option} is empty: name the file to write, e.g. {option} plan.toml.")
    target = _resolved(Path(text))
    for item in inputs:
        if item and _resolved(Path(item)) == target:
            raise OutputPathError(f"{option} {text}: is the input file {item}; writing there would replace your "
                                  f"data. Choose another {option}.")
    out = Path(text)
    if out.is_dir():
        raise OutputPathError(f"{option} {text}: is a directory; name a file, e.g. {option} {out / 'config.toml'}.")
    if not out.exists() and not out.is_symlink():
        return out
    if not _is_fitloop_file(out, header):
        raise OutputPathError(f"{option} {text}: exists and fitloop did not write it, so it is never replaced. "
                              f"Choose another {option}, or move the file yourself.")
    if not overwrite:
        raise OutputPathError(f"{option} {text}: already exists; pass --overwrite to replace it, or choose "
                              f"another {option}.")
    return out


def check_report_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that `report.html` and `plots/` may be written into directory `path` (created when missing):
    nothing there of the same name that fitloop did not write."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError(f"{option} is empty: name the directory for report.html and plots/, "
                              f"e.g. {option} reports/exp1.")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{option} {text}: it is a file; pass a directory for report.html and plots/ "
                              f"(created when missing).")
    if not out.is_dir() or is_run_dir(out):
        return out
    html, plots = out / "report.html", out / "plots"
    ours = _is_fitloop_file(html, _REPORT_TITLE)
    if (html.exists() or html.is_symlink()) and not ours:
        raise OutputPathError(f"{option} {text}: holds a report.html that fitloop did not write; it is never "
                              f"replaced. Choose another {option}, or move the file yourself.")
    if plots.exists() and not ours and (not plots.is_dir() or any(plots.iterdir())):
        raise OutputPathError(f"{option} {text}: holds a plots/ that fitloop did not write (no fitloop "
                              f"report.html beside it); it is never replaced. Choose another {option}.")
    return out


def clear_run_dir(run_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete fitloop's entries in `run_dir`, except `keep` and the lock this process holds on it
    (`fitloop.runlock`). Anything else in the directory is left alone."""
    for entry in run_dir.iterdir():
        if not _is_fitloop_entry(entry.name) or entry.name in (LOCK_NAME, *keep):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
