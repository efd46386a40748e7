"""The `fitloop` command line: argument parsing, printing and exit codes; the work is `fitloop.tabular`.

    fitloop.cli.app          the argument parser and `main` (the `fitloop` script)
    fitloop.cli.commands     what each command does: calls `fitloop.tabular`'s API, prints the results
    fitloop.cli.dry_run      `fitloop train --dry-run`: the plan printed, the commented config.toml written
    fitloop.cli.size_search  `fitloop size-search`'s options and output
    fitloop.cli.launch       `--nproc` / `--nnodes`: the workers, through torchrun's agent
    fitloop.cli.runs_table   `fitloop runs`
    fitloop.cli.export       `fitloop export` (the work is fitloop.integrations.export)
    fitloop.cli.serve        `fitloop serve`'s flags (the server is fitloop.integrations.serve)

Nothing outside this package imports it. Importing it imports neither torch nor pyarrow, so
`fitloop --help` stays fast.
"""

from __future__ import annotations

from ..tabular.datasets import demo_data_path
from .app import build_parser, main

__all__ = ["main", "build_parser", "demo_data_path"]
