"""Writing small table files for the CLI, pipeline, run-config, table and preprocessing tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


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


def sklearn_csv(tmp_path: Path, name: str) -> Path:
    """A bundled scikit-learn dataset as CSV with a `row_id` column; breast cancer gets text labels."""
    datasets = pytest.importorskip("sklearn.datasets")
    ds = getattr(datasets, f"load_{name}")()
    names = [str(n).replace(" ", "_") for n in ds.feature_names] if hasattr(ds, "feature_names") else None
    header = ["row_id", *(names or [f"f{i}" for i in range(ds.data.shape[1])]), "target"]
    rows = []
    for i, (x, t) in enumerate(zip(ds.data, ds.target)):
        label = float(t) if name == "diabetes" else (str(ds.target_names[t]) if name == "breast_cancer" else int(t))
        rows.append([f"r{i}", *map(float, x), label])
    return write_rows(tmp_path / f"{name}.csv", header, rows)
