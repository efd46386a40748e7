"""Optional dependencies (pyproject extras), imported on first use with an error naming the `pip install`.

Plain Python (no torch), so the CLI can recognise `MissingExtraError` as a user error without importing
anything heavy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the `pip install` that adds it."""


def require(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` naming `pip install 'fitloop[extra]'`.

    Args:
        module: the module to import, e.g. `"tensorboard"`.
        extra: the fitloop extra that installs it, e.g. `"tensorboard"`.
        what: the feature that needs it, for the message (e.g. `"TensorBoardLogger"`).
        package: the PyPI package's name when it differs from `module` (e.g. `"mlflow-skinny"`).

    Raises:
        MissingExtraError: `module` cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{what} needs the {package or module!r} package, which is not installed: "
                                f"run `pip install 'fitloop[{extra}]'`. ({e})") from e
