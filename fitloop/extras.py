"""Optional dependencies (pyproject extras), imported on first use with an error naming the `pip install`.

Plain Python (no torch), so the CLI can recognise `MissingExtraError` as a user error without importing
anything heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the `pip install` that adds it."""


def require(module: str | Sequence[str], extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import `module` (or each of several), or raise `MissingExtraError` naming `pip install 'fitloop[extra]'`.

    Args:
        module: the module to import, e.g. `"tensorboard"`, or several (`("fastapi", "uvicorn")`): the
            message names every one that is missing.
        extra: the fitloop extra that installs it, e.g. `"tensorboard"`.
        what: the feature that needs it, for the message (e.g. `"TensorBoardLogger"`).
        package: the PyPI package's name when it differs from `module` (e.g. `"mlflow-skinny"`).

    Returns:
        The (first) module.

    Raises:
        MissingExtraError: a module cannot be imported.
    """
    names = [module] if isinstance(module, str) else list(module)
    found, missing = [], []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError as e:
            missing.append((name, e))
    if missing:
        pkgs = ", ".join(repr(package or name) for name, _ in missing)
        raise MissingExtraError(f"{what} needs the {pkgs} package{'s' if len(missing) > 1 else ''}, which "
                                f"{'are' if len(missing) > 1 else 'is'} not installed: run "
                                f"`pip install 'fitloop[{extra}]'`. ({missing[0][1]})") from missing[0][1]
    return found[0]
