"""`fitloop runs [DIR]`: every run under a directory as one table (or JSON), without opening each one.

    fitloop runs                       # runs/ : name, status, epochs, best val, test, verdict, time
    fitloop runs experiments --sort time --reverse
    fitloop runs --json > runs.json

A run is a directory with a fitloop `run.json` (written by `fitloop train` or `Trainer(run_dir=...)`);
they are found up to three levels below DIR. Only small JSON files are read (run.json, metrics.json,
history.jsonl): no model or checkpoint is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["list_runs", "cmd_runs", "add_parser", "COLUMNS"]

COLUMNS = ("name", "status", "epochs", "best_val", "test", "verdict", "time")
KEY_METRICS = ("accuracy", "r2", "f1", "rmse", "mae")  # the test column shows the first one a run has
HIGHER = {"accuracy", "f1", "precision", "recall", "r2"}
MAX_DEPTH = 3

EXAMPLES = """\
examples:
  fitloop runs                          # the runs under runs/
  fitloop runs experiments --sort best_val
  fitloop runs --sort time --reverse    # the longest first
  fitloop runs --json
"""


def _find(root: Path, depth: int = 0) -> list[Path]:
    if (root / "run.json").is_file():
        return [root]
    if depth >= MAX_DEPTH:
        return []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [run for c in children for run in _find(c, depth + 1)]


def _best_val(history: list[dict[str, Any]], verdict: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The validation score of the epoch the run kept (its verdict's `kept_epoch`: early stopping's choice,
    0 for the model the run started from), by the task's validation metric (accuracy or R2), else val_loss.
    A run without a saved kept epoch (older runs) shows its best epoch by that metric."""
    facts = (verdict or {}).get("facts") or {}
    kept = facts.get("kept_epoch")
    if kept == 0:  # the model the run started from: epoch 0 has no history line, its scores are in the verdict
        scores = {"val_loss": facts.get("kept_val_loss"), **(facts.get("kept_scores") or {})}
        key = next((k for k in ("val_accuracy", "val_r2", "val_loss") if isinstance(scores.get(k), (int, float))),
                   None)
        if key is not None:
            return {"metric": key, "value": float(scores[key]), "epoch": 0}
    for key in ("val_accuracy", "val_r2", "val_loss"):
        rows = [h for h in history if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
        if rows:
            kept_rows = [h for h in rows if h.get("epoch") == kept]
            if kept_rows:
                return {"metric": key, "value": float(kept_rows[0][key]), "epoch": kept}
            pick = max if key.removeprefix("val_") in HIGHER else min
            best = pick(rows, key=lambda h: h[key])
            return {"metric": key, "value": float(best[key]), "epoch": best.get("epoch")}
    return None


def _test(run: Path) -> dict[str, Any] | None:
    from ..report.data import read_json  # the report's reader: not on `fitloop --help`'s path

    m = read_json(run / "metrics.json")
    metrics = m.get("metrics") if isinstance(m, dict) else None
    if not isinstance(metrics, dict):
        return None
    key = next((k for k in KEY_METRICS if isinstance(metrics.get(k), (int, float))), None)
    if key is None:
        return None
    return {"metric": key, "value": float(metrics[key]), "split": m.get("split")}


def run_row(run: Path, root: Path) -> dict[str, Any]:
    """One run's row: plain data (the `--json` output)."""
    from ..report.data import read_history, read_json, run_status  # not on `fitloop --help`'s path

    info = read_json(run / "run.json")
    info = info if isinstance(info, dict) else {}
    history = read_history(run / "history.jsonl")
    verdict = info.get("verdict") or {}
    elapsed = info.get("elapsed_s")
    return {"name": str(run.relative_to(root)) if run != root else run.name, "path": str(run),
            "status": run_status(info) if info else "unreadable",
            # run.json's epoch is the last checkpoint's; a killed run's history.jsonl may hold more epochs
            "epochs": max(int(info.get("epoch") or 0), len(history)),
            "best_val": _best_val(history, verdict), "test": _test(run), "verdict": verdict.get("kind"),
            "time": float(elapsed) if isinstance(elapsed, (int, float)) else None,
            "created": info.get("created")}


def _sort_key(col: str):
    def key(row: dict[str, Any]) -> tuple:
        v = row.get(col)
        if isinstance(v, dict):
            v = v.get("value")
        return (v is None, v if v is not None else 0) if not isinstance(v, str) else (False, v)
    return key


def list_runs(root: str | Path = "runs", sort: str = "name", reverse: bool = False) -> list[dict[str, Any]]:
    """The rows of every run under `root`, sorted by `sort` (one of `COLUMNS`; missing values last).

    Raises:
        FileNotFoundError: `root` does not exist or is not a directory.
        ValueError: `sort` is not a column.
    """
    p = Path(root)
    if not p.is_dir():
        raise FileNotFoundError(f"runs: {root} {'is not a directory' if p.exists() else 'does not exist'}; pass "
                                "the directory that holds your run directories (default runs/).")
    if sort not in COLUMNS:
        raise ValueError(f"--sort {sort!r}: not a column; choose one of {', '.join(COLUMNS)}.")
    rows = [run_row(r, p) for r in _find(p)]
    rows.sort(key=_sort_key(sort), reverse=reverse)
    if reverse:  # missing values stay last
        rows.sort(key=lambda r: r.get(sort) is None)
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        epoch = f" (e{v['epoch']})" if v.get("epoch") is not None else ""
        return f"{v['metric'].removeprefix('val_')} {v['value']:.4g}{epoch}"
    if isinstance(v, float):
        return f"{v:.1f}s"
    return str(v)


def cmd_runs(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    rows = list_runs(args.dir, args.sort, args.reverse)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {args.dir} (a run is a directory with a run.json).")
        return 0
    from rich.console import Console  # rich only when printing (start-up path)
    from rich.table import Table

    t = Table(title=f"runs under {args.dir}", title_justify="left")
    cells = [[_cell(r[c]) for c in COLUMNS] for r in rows]
    for col in COLUMNS:  # a narrow terminal wraps a cell, never cuts it to "…"
        t.add_column(col.replace("_", " "), justify="right" if col in ("epochs", "time") else "left",
                     overflow="fold")
    for row in cells:
        t.add_row(*row)
    console = Console(highlight=False, markup=False)
    if not console.is_terminal:  # a pipe or a file: one full line per run, however long
        widths = [max(len(col), *(len(row[j]) for row in cells)) for j, col in enumerate(COLUMNS)]
        console.width = sum(widths) + 3 * len(COLUMNS) + 1
    console.print(t)
    return 0


def add_parser(sub: Any, fmt: Any) -> None:
    """Register `fitloop runs` on the CLI's subparsers."""
    r = sub.add_parser("runs", help="list the runs under a directory", formatter_class=fmt, epilog=EXAMPLES,
                       description="List the runs under DIR (default runs/): name, status, epochs, the "
                                   "validation metric of the epoch the run kept (best val), the test metric, the "
                                   "verdict and the time.")
    r.add_argument("dir", nargs="?", default="runs", metavar="DIR")
    r.add_argument("--sort", default="name", choices=COLUMNS, metavar="COL",
                   help=f"sort by a column: {', '.join(COLUMNS)} (default name; missing values last)")
    r.add_argument("--reverse", action="store_true", help="sort descending")
    r.add_argument("--json", action="store_true", help="print the rows as JSON")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors")
    r.set_defaults(func=cmd_runs)
