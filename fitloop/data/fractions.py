"""Checking split fractions: plain Python (no torch), so the command line's config can use it too."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["check_fractions"]


def check_fractions(fractions: Sequence[float], *, name: str = "fractions",
                    example: str = "fractions=(0.7, 0.15, 0.15)") -> tuple[float, ...]:
    """`fractions` as a tuple of floats: 2 or 3 of them (train, val[, test]), each >= 0, train > 0, sum 1.

    Args:
        fractions: the train/val(/test) fractions to check.
        name: what the messages call them (the command line passes `data.split (--split)`).
        example: a valid value, written the way the caller takes it.

    Raises:
        ValueError: the message names `name` and shows `example`.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) not in (2, 3):
        raise ValueError(f"{name}: got {fractions!r}; pass 2 or 3 fractions (train, val[, test]), "
                         f"e.g. {example}.")
    if not all(math.isfinite(f) for f in fr):
        raise ValueError(f"{name}: got {fractions!r}; each fraction must be a finite number from 0 to 1, "
                         f"e.g. {example}.")
    if any(f < 0 for f in fr) or fr[0] <= 0:
        raise ValueError(f"{name}: got {fractions!r}; each fraction must be >= 0 and the train fraction > 0, "
                         f"e.g. {example}.")
    total = sum(fr)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got {fractions!r}, which add up to {total:.6g}, not 1; "
                         f"rescale them so their sum is 1, e.g. {example}.")
    return fr
