"""Writing small table files for the CLI and table tests."""

from __future__ import annotations

import csv
from pathlib import Path


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write `rows` under `header` as a CSV file at `path`; returns `path`."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path
