"""Argument types shared by the CLI's parsers (argparse `type=`): a bad value is argparse's exit-2 usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["whole_number"]


def whole_number(least: int, most: int | None = None, bounds: str | None = None) -> Callable[[str], int]:
    """An int in `least`..`most`; `bounds` words the range in the error (default "must be at least LEAST")."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < least or (most is not None and n > most):
            raise argparse.ArgumentTypeError(f"{text!r}: {bounds or f'must be at least {least}'}")
        return n
    return parse
