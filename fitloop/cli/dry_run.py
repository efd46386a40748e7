"""`fitloop train DATA --target COL --dry-run`: every decision of the run, printed and saved as an editable,
commented config.toml, without training.

    fitloop train data.csv --target price --dry-run             # prints the plan, writes ./config.toml
    fitloop train --config config.toml                          # trains exactly that run

The decisions and the file are `fitloop.tabular.dry_run` and `fitloop.tabular.decisions.commented_toml`;
this module writes the file where `--config-out` says and prints the plan.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import tabular
from ..config import CONFIG_HEADER
from ..files import atomic_write_bytes
from ..outputs import check_out_file
from ..tabular.config import RunConfig

__all__ = ["cmd_dry_run", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "config.toml"
_LAUNCH_FLAGS = ("nproc", "nnodes", "node_rank", "rdzv_endpoint", "max_restarts")  # how to launch is not a setting


def cmd_dry_run(args: argparse.Namespace, cfg: RunConfig, argv: list[str] | None = None) -> int:
    """Print the plan and write the commented config (`--config-out`, default ./config.toml)."""
    from rich.console import Console  # the CLI start-up path stays light: rich only when printing

    from ..tabular.decisions import check_round_trip, commented_toml  # pyarrow, torch: only for a dry run

    config_out = getattr(args, "config_out", None)
    target = check_out_file(DEFAULT_CONFIG if config_out is None else config_out, overwrite=args.overwrite,
                            option="--config-out", header=CONFIG_HEADER, inputs=[cfg.data.path])
    if not target.parent.is_dir():
        raise FileNotFoundError(f"--config-out {target}: the directory {target.parent} does not exist.")
    plan = tabular.dry_run(config=cfg, world=(getattr(args, "nproc", None) or 1) * (getattr(args, "nnodes", None) or 1))
    command = "fitloop " + " ".join(argv) if argv else None
    text = commented_toml(plan, command)
    check_round_trip(text, plan.cfg)
    atomic_write_bytes(target, text.encode("utf-8"))
    next_cmd = f"fitloop train --config {target}" + (f" --out {args.out}" if args.out else "")
    for flag in _LAUNCH_FLAGS:
        if getattr(args, flag, None) is not None:
            next_cmd += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    if getattr(args, "quiet", False):
        print(target)
        return 0
    _print_plan(Console(highlight=False, markup=False), plan, target, next_cmd, args.out)  # names are data
    return 0


def _print_plan(console: Any, plan: tabular.DryRun, target: Path, next_cmd: str, out: str | None) -> None:
    from rich.table import Table as RichTable  # rich only when printing (start-up path)

    cfg = plan.cfg
    t = RichTable(title=f"fitloop train --dry-run: {cfg.data.path}", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("table", f"{plan.rows:,} rows x {plan.n_columns} columns (read in {plan.seconds['load']:.2f}s, "
                       f"decided in {plan.seconds['decide']:.2f}s)")
    t.add_row("task", f"{plan.task}: {plan.task_reason}"
              + (f"; classes {plan.classes[:10]}{' ...' if len(plan.classes) > 10 else ''}" if plan.classes else ""))
    t.add_row("split", ", ".join(f"{k} {v:,}" for k, v in plan.splits.items())
              + f" (fractions {cfg.data.split}, seed {cfg.data.seed if cfg.data.seed is not None else cfg.train.seed}"
              + (", stratified by class)" if plan.stratified else ")"))
    t.add_row("model", f"{plan.model}, {plan.parameters:,} parameters")
    steps = f"{plan.steps_per_epoch:,} step{'s' if plan.steps_per_epoch != 1 else ''}/epoch"
    t.add_row("training", f"{cfg.train.epochs} epochs max, batch {cfg.train.batch_size} "
                          f"({steps}), {cfg.train.optimizer} lr {cfg.train.lr}, "
                          f"loss {plan.loss}, early stopping "
                          + (f"patience {plan.early_stopping}" if plan.early_stopping else "off")
                          + f", seed {cfg.train.seed}, device {plan.device}"
                          + (f", compile {cfg.train.compile}" if cfg.train.compile else ""))
    console.print(t)
    c = RichTable(title="columns", title_justify="left")
    for h in ("column", "type", "missing", "what train does", "why"):
        c.add_column(h)
    for col in plan.columns:
        c.add_row(col["name"], col["type"], f"{col['missing']:,}", col["decision"], col["reason"])
    console.print(c)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False)
    if out and Path(out).is_dir() and any(Path(out).iterdir()):
        console.print(f"note: --out {out} exists and is not empty: the run will need --overwrite", markup=False)
    console.print(f"wrote {target} (nothing was trained). Edit it, then run:\n  {next_cmd}", markup=False)
