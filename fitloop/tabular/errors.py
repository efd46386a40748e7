"""`TableError`, in a module of its own so that the reader and its dialect rules both raise it."""

from __future__ import annotations

__all__ = ["TableError"]


class TableError(ValueError):
    """Bad tabular input; the message says what is wrong, where, and how to fix it."""
