"""`fitloop size-search DATA --target COL`: find the network size the table supports, then train it.

    fitloop size-search data.csv --target price --jobs 2 --out runs/price-sized

The data is read, split and preprocessed exactly as `fitloop train` does (`fitloop.cli.pipeline`), the
capacity search (`fitloop.diagnose.size_search`) runs on the train and val splits, and the chosen hidden
layers are trained by `train_table` into a normal run directory, which `fitloop predict`, `evaluate`,
`report` and `resume` use as any other. The search's own files go next to the run's::

    RUN_DIR/size_search.json   every trial (size, parameters, train/val loss, gap, time), the choice, the reason
    RUN_DIR/size_search.txt    the same as the table printed
    RUN_DIR/size_search.png    loss against parameter count (when matplotlib is installed)

With nothing to learn (no size beats the trivial baseline), no model is trained: RUN_DIR holds the search
files only, and the command says so (exit code 0: it is a finding about the data, not an error).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

__all__ = ["size_search_options", "cmd_size_search", "search_table", "EXAMPLES"]

EXAMPLES = """\
examples:
  fitloop size-search data.csv --target price
  fitloop size-search data.csv --target species --jobs 2 --max-trials 12 --trial-epochs 30 --out runs/sized
  fitloop size-search data.csv --target y --widths 8,32,128 --depths 1,2 --max-seconds 120
then, as with any run:
  fitloop predict runs/sized new.csv -o preds.csv

The search trains each size for --trial-epochs epochs (default: train.epochs) with the training settings
(--lr, --batch-size, ...); the chosen size is then trained as `fitloop train --hidden ...` would.
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def size_search_options(p: argparse.ArgumentParser) -> None:
    """The search's own options (`fitloop.cli.app` adds `train`'s data, model and training options too)."""
    g = p.add_argument_group("size search")
    g.add_argument("--widths", type=_ints, metavar="N,N", help="widths to grow through (default 4,8,...,256)")
    g.add_argument("--depths", type=_ints, metavar="N,N", help="depths to grow through (default 1,2,3)")
    g.add_argument("--trial-epochs", type=int, metavar="N", help="epochs per trial (default: train.epochs)")
    g.add_argument("--max-trials", type=int, default=16, metavar="N", help="trials in all (default 16)")
    g.add_argument("--max-seconds", type=float, metavar="S", help="no new trial starts after S seconds")
    g.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="trials run at once, in processes")
    g.add_argument("--target-loss", type=float, metavar="L", help="stop growing once the train loss <= L")
    g.add_argument("--gap-tolerance", type=float, default=0.25, metavar="F",
                   help="a size does not overfit when val - train <= F x val (default 0.25)")
    g.add_argument("--val-margin", type=float, default=0.1, metavar="F",
                   help="shrinking may give up at most F of the best val loss (default 0.1)")


def search_table(cfg: Any, args: argparse.Namespace, log: Any) -> Any:
    """Read and split the table as `train` does and run the search on its train and val splits."""
    from ..tune.size_search import size_search
    from .pipeline import _prepare
    from .run_config import ConfigError

    p = _prepare(cfg, log)
    if "val" not in p.splits:
        raise ConfigError("size-search compares sizes on a validation split, and this --split has none; "
                          "pass three fractions, e.g. --split 0.7,0.15,0.15.")
    tcfg = cfg.train.trainer_config()
    tcfg.quiet, tcfg.run_dir = True, None
    if isinstance(tcfg.guards, dict):  # the pipeline checked leakage over all three splits, and standardised
        tcfg.guards = {**tcfg.guards, "leakage": False, "unscaled": False}
    loss = cfg.train.loss or ("cross_entropy" if p.task == "classification" else "mse")
    # the trials build the model `train` builds: the same MLP, its linear path and where that path starts
    options: dict[str, Any] = {"activation": cfg.model.activation, "dropout": cfg.model.dropout,
                               "skip": cfg.model.skip,
                               "init": functools.partial(_start, cfg, p.task, p.info["classes"])}
    if args.widths:
        options["widths"] = args.widths
    if args.depths:
        options["depths"] = args.depths
    log(f"Searching sizes on {len(p.splits['train'][0])} train and {len(p.splits['val'][0])} val rows "
        f"({args.max_trials} trials at most, {args.jobs} at a time).")
    return size_search(p.splits["train"], p.splits["val"], loss=loss, optimizer=cfg.train.optimizer,
                       target_loss=args.target_loss, gap_tolerance=args.gap_tolerance, val_margin=args.val_margin,
                       max_trials=args.max_trials, epochs=args.trial_epochs or cfg.train.epochs,
                       max_seconds=args.max_seconds, seed=cfg.train.seed, jobs=args.jobs, config=tcfg, **options)


def _start(cfg: Any, task: str, classes: list[Any] | None, model: Any, X: Any, y: Any) -> None:
    """A trial's model starts as `train`'s does (`start_linear_path`); module-level, so --jobs can pickle it."""
    from .training import start_linear_path

    start_linear_path(cfg, model, task, classes, X, y)


def _write_search(out: Path, result: Any) -> list[str]:
    """The search's files in the run directory; returns notes (a missing matplotlib)."""
    from ..files import atomic_write_bytes, write_json_atomic

    write_json_atomic(out / "size_search.json", result.to_dict())
    atomic_write_bytes(out / "size_search.txt", (result.table() + "\n").encode())
    if not any(t.used for t in result.trials):
        return ["no size_search.png: no trial ran"]
    try:
        result.plot(out / "size_search.png")
    except ImportError as e:
        return [f"no size_search.png: {e}"]
    return []


def cmd_size_search(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from .commands import EXIT_OK, _console, _print_summary, config_from_args
    from .pipeline import _check_out, _default_out, _merge_run_json, train_table
    from .run_config import ConfigError

    if args.hidden is not None:
        raise ConfigError("size-search chooses the hidden layers itself; drop --hidden (or use fitloop train).")
    for name in ("max_trials", "jobs", "trial_epochs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: got {v}; pass a whole number >= 1.")
    quiet = getattr(args, "quiet", False)
    cfg = config_from_args(args)
    out = _check_out(args.out if args.out is not None else _default_out(cfg.data.target or "run"), args.overwrite,
                     cfg.data.path)  # before the search: a bad --out fails in a second, not after it
    console = _console()
    log = (lambda msg: None) if quiet else (lambda msg: console.print(msg, markup=False))
    result = search_table(cfg, args, log)
    if not quiet:
        console.print(result.table(), markup=False)
    if result.chosen is None:
        out.mkdir(parents=True, exist_ok=True)
        for note in _write_search(out, result):
            log(f"note: {note}")
        print(f"size-search: {result.reason} No model was trained; the search is in {out}.")
        return EXIT_OK
    cfg.model.hidden = list(result.chosen)
    log(f"Training the chosen size (hidden {cfg.model.hidden}) for up to {cfg.train.epochs} epochs.")
    run = train_table(cfg, out=out, overwrite=args.overwrite, log=log, argv=argv,
                      t_command=getattr(args, "t_start", None))
    run.notes += _write_search(out, result)
    _merge_run_json(out, {"size_search": {"chosen": list(result.chosen), "reason": result.reason,
                                          "trials": len(result.trials), "file": "size_search.json"}})
    if quiet:
        print(run.run_dir)
    else:
        _print_summary(console, run)
    return EXIT_OK
