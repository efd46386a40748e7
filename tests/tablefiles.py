"""Writing small table files for the CLI, table and preprocessing tests."""

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


# A small mixed table: an id, a numeric column with a missing value, text, bool and a text target.
SMALL = ("id,x,city,flag,y\n1,1.5,a,true,yes\n2,,b,false,no\n3,3.5,a,true,yes\n4,2,c,false,no\n"
         "5,7,a,true,yes\n")


def write(path: Path, text: str | bytes) -> Path:
    """Write `text` (str or bytes) to `path`; returns `path`."""
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path
