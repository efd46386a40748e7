"""The size search on a table: the network size the data supports, found on the run's own split.

    result = search_table(cfg, SearchOptions(jobs=2), log)        # fitloop.tabular.size_search(...) from Python
    notes = write_search(run_dir, result)

The data is read, split and preprocessed exactly as `fitloop train` does (`fitloop.tabular.pipeline`), the
capacity search (`fitloop.tune.size_search`) runs on the train and val splits, and the chosen hidden
layers are trained by `train_table` into a normal run directory, which `fitloop predict`, `evaluate`,
`report` and `resume` use as any other. The search's own files go next to the run's::

    RUN_DIR/size_search.json   every trial (size, parameters, train/val loss, gap, time), the choice, the reason
    RUN_DIR/size_search.txt    the same as the table printed
    RUN_DIR/size_search.png    loss against parameter count (when matplotlib is installed)

With nothing to learn (no size beats the trivial baseline), no model is trained: RUN_DIR holds the search
files only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..files import atomic_write_bytes, write_json_atomic
from ..tune.size_search import SizeSearchResult, size_search
from .config import ConfigError, RunConfig
from .pipeline import prepare_run
from .training import start_linear_path

__all__ = ["SearchOptions", "search_table", "write_search"]


@dataclass
class SearchOptions:
    """The search's own settings (the data, model and training settings are the run config's).

    Attributes:
        widths: widths to grow through (None: `size_search`'s default, 4, 8, ..., 256).
        depths: depths to grow through (None: 1, 2, 3).
        trial_epochs: epochs per trial (None: `train.epochs`).
        max_trials: trials in all.
        max_seconds: no new trial starts after this many seconds (None: no limit).
        jobs: trials run at once, in processes.
        target_loss: stop growing once the train loss is at most this (None: grow until it stops helping).
        gap_tolerance: a size does not overfit when val - train <= gap_tolerance x val.
        val_margin: shrinking may give up at most this fraction of the best val loss.
    """

    widths: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    trial_epochs: int | None = None
    max_trials: int = 16
    max_seconds: float | None = None
    jobs: int = 1
    target_loss: float | None = None
    gap_tolerance: float = 0.25
    val_margin: float = 0.1

    def validate(self, as_flags: bool = False) -> None:
        """Check the counts (`max_trials`, `jobs`, `trial_epochs`): each a whole number >= 1 when given.

        Args:
            as_flags: name an option as the command line spells it (``--max-trials``), not as the Python
                argument (``max_trials``).

        Raises:
            ConfigError: A count below 1, named.
        """
        for name in ("max_trials", "jobs", "trial_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                shown = f"--{name.replace('_', '-')}" if as_flags else name
                raise ConfigError(f"{shown}: got {value}; pass a whole number >= 1.")


def search_table(cfg: RunConfig, options: SearchOptions, log: Callable[[str], None],
                 data: pa.Table | None = None) -> SizeSearchResult:
    """Read and split the table as `train` does and run the search on its train and val splits.

    Raises:
        ConfigError: the split has no validation part, which the search compares sizes on.
    """
    p = prepare_run(cfg, log, data)
    if "val" not in p.splits:
        raise ConfigError("size-search compares sizes on a validation split, and this --split has none; "
                          "pass three fractions, e.g. --split 0.7,0.15,0.15.")
    tcfg = cfg.train.trainer_config()
    tcfg.quiet, tcfg.run_dir = True, None
    if isinstance(tcfg.guards, dict):  # the pipeline checked leakage over all three splits, and standardised
        tcfg.guards = {**tcfg.guards, "leakage": False, "unscaled": False}
    loss = cfg.train.loss or ("cross_entropy" if p.task == "classification" else "mse")
    # the trials build the model `train` builds: the same MLP, its linear path and where that path starts
    sizes: dict[str, Any] = {"activation": cfg.model.activation, "dropout": cfg.model.dropout,
                             "skip": cfg.model.skip,
                             "init": functools.partial(_start, cfg, p.task, p.info["classes"])}
    if options.widths:
        sizes["widths"] = options.widths
    if options.depths:
        sizes["depths"] = options.depths
    log(f"Searching sizes on {len(p.splits['train'][0])} train and {len(p.splits['val'][0])} val rows "
        f"({options.max_trials} trials at most, {options.jobs} at a time).")
    return size_search(p.splits["train"], p.splits["val"], loss=loss, optimizer=cfg.train.optimizer,
                       target_loss=options.target_loss, gap_tolerance=options.gap_tolerance,
                       val_margin=options.val_margin, max_trials=options.max_trials,
                       epochs=options.trial_epochs or cfg.train.epochs, max_seconds=options.max_seconds,
                       seed=cfg.train.seed, jobs=options.jobs, config=tcfg, **sizes)


def _start(cfg: RunConfig, task: str, classes: list[Any] | None, model: Any, X: Any, y: Any) -> None:
    """A trial's model starts as `train`'s does (`start_linear_path`); module-level, so --jobs can pickle it."""
    start_linear_path(cfg, model, task, classes, X, y)


def write_search(out: Path, result: SizeSearchResult) -> list[str]:
    """The search's files in the run directory; returns notes (a missing matplotlib)."""
    write_json_atomic(out / "size_search.json", result.to_dict())
    atomic_write_bytes(out / "size_search.txt", (result.table() + "\n").encode())
    if not any(t.used for t in result.trials):
        return ["no size_search.png: no trial ran"]
    try:
        result.plot(out / "size_search.png")
    except ImportError as e:
        return [f"no size_search.png: {e}"]
    return []
