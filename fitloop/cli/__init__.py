"""The `fitloop` command line: train on a CSV/Parquet table, then predict and evaluate with the run directory.

    fitloop.cli.app          the argument parser and `main` (the `fitloop` script)
    fitloop.cli.commands     what each command does
    fitloop.cli.run_config   the run's settings: [data], [model], [train] from TOML, flags and --set
    fitloop.cli.pipeline     table to run directory (plan_run, train_table, load_run, predict_file, evaluate_file)
    fitloop.cli.dry_run      `fitloop train --dry-run`: plan_run's decisions, printed and written as config.toml
    fitloop.cli.export       `fitloop export` (the work is fitloop.integrations.export)

Importing this package imports neither torch nor pyarrow, so `fitloop --help` stays fast.
"""

from __future__ import annotations

from .app import build_parser, main
from .commands import demo_data_path

__all__ = ["main", "build_parser", "demo_data_path"]
