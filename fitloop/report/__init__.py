"""Reports: plots (`plots`), the model summary (`summary`), a self-contained `report.html` (`html`).

    fl.summary(model, (8,))                      # the layer table, printed and returned
    trainer.report("reports/exp1", test=test)    # after fit: reports/exp1/report.html + plots/*.png
    write_report("runs/exp1")                    # a run directory: runs/exp1/report.html + plots/

`fitloop report RUN_DIR` calls `write_report` on the run directory. What a report shows is gathered
into a `ReportData` (`fitloop.report.data`), from a run directory or from a Trainer; parts a run does
not have are listed in the page, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..files import atomic_write_bytes
from .data import NotARunDirectory, ReportData, from_run_dir, from_trainer
from .html import render_html
from .plots import make_plots, require_matplotlib
from .summary import ModelSummary, summary

__all__ = ["write_report", "ReportFiles", "ReportData", "NotARunDirectory", "summary", "ModelSummary",
           "from_run_dir", "from_trainer"]


@dataclass
class ReportFiles:
    """What `write_report` wrote: the page, each plot's PNG, and what the run did not have."""

    html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    data: ReportData | None = field(default=None, repr=False)


def write_report(source: Any, out: str | os.PathLike | None = None, *, test: Any = None) -> ReportFiles:
    """Write `report.html` and `plots/<name>.png` for a run directory or a Trainer.

    Args:
        source: a run directory (a path), a `Trainer` after `fit`, or a `ReportData`.
        out: the directory to write into; default the run directory itself (required for a Trainer).
        test: for a Trainer, the test split `(X, y)` (test metrics, baseline, confusion matrix or
            predicted-vs-actual plots).

    Returns:
        A `ReportFiles` with the paths written.

    Raises:
        NotARunDirectory: `source` is a path that is not a run directory.
        ImportError: matplotlib is missing (`pip install 'fitloop[plot]'`).
    """
    require_matplotlib()  # before any work: a missing extra is the first thing the user hears
    if isinstance(source, ReportData):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        data = from_run_dir(source)
        out = source if out is None else out
    else:
        if out is None:
            raise ValueError("trainer.report(path): pass the directory to write report.html and plots/ into.")
        data = from_trainer(source, test)
    if out is None:
        raise ValueError("write_report: pass out=, the directory to write into.")
    out_dir = Path(out)
    files = ReportFiles(out_dir / "report.html", data=data)
    images = make_plots(data)
    files.absent = data.absent
    if not is_main_process():  # only rank 0 writes files
        return files
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        files.plots[name] = out_dir / "plots" / f"{name}.png"
        atomic_write_bytes(files.plots[name], png)
    atomic_write_bytes(files.html, render_html(data, images).encode("utf-8"))
    return files
