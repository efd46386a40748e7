"""Warnings that point at the user's code, as scikit-learn's do: `warn_user` issues a warning from the first
frame of the stack that belongs to neither fitloop nor an installed library (the standard library,
site-packages), so Python shows the user's `trainer.fit(...)` line, not `fitloop/callbacks/base.py`.

A fixed `stacklevel` cannot do this: the same check runs under `fit`, `resume`, `sanity_check` and a callback,
each at its own depth. Python 3.12's `skip_file_prefixes` would, but fitloop supports 3.11. Frames of other
libraries between fitloop's own (contextlib's context managers, torch's wrappers) are passed over too, so a
fitloop call made through them still points at the user.

Every `warnings.warn` in fitloop goes through here. It imports neither torch nor numpy.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import warnings
from functools import cache
from types import FrameType

__all__ = ["warn_user", "user_frame"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@cache
def _library_dirs() -> tuple[str, ...]:
    """The directories installed code lives in: the standard library and site-packages."""
    paths = sysconfig.get_paths()
    found = {os.path.abspath(paths[key]) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")
             if key in paths}
    return tuple(sorted(found))


def _in_fitloop(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _in_library(filename: str) -> bool:
    # frozen modules (`<frozen runpy>`) are the standard library's; `<string>` and `<ipython-input-...>` are
    # the user's code
    return filename.startswith("<frozen ") or os.path.abspath(filename).startswith(_library_dirs())


def user_frame(start: FrameType | None) -> FrameType | None:
    """From `start` outwards, the first frame of the user's code: neither fitloop's nor a library's. Without
    one (fitloop run by `python -m` from a library's frames only), the first frame outside fitloop; None when
    every frame is fitloop's."""
    first_outside = None
    frame = start
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _in_fitloop(filename):
            if not _in_library(filename):
                return frame
            first_outside = first_outside or frame
        frame = frame.f_back
    return first_outside


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn(message, category)`, shown at the user's line that led to it (see `user_frame`), and
    filtered by that line's module, as a warning with the right `stacklevel` would be."""
    frame = user_frame(sys._getframe(1))
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    module_globals = frame.f_globals
    registry = module_globals.setdefault("__warningregistry__", {})
    # no module_globals, as warnings.warn itself passes none: with them, linecache asks the module's loader for
    # its source, and `python -c`'s __main__ (a BuiltinImporter module) raises ImportError
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=module_globals.get("__name__", "<string>"), registry=registry)
