"""The tables shipped with fitloop (plain paths: importing this module imports nothing heavy)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_data_path"]


def demo_data_path() -> str:
    """The wine table shipped in the package (`fitloop demo` trains on it)."""
    return str(Path(__file__).resolve().parent.parent / "datasets" / "wine.csv")
