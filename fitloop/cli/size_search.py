"""`fitloop size-search DATA --target COL`: find the network size the table supports, then train it.

    fitloop size-search data.csv --target price --jobs 2 --out runs/price-sized

The work is `fitloop.tabular.api.search_and_train` (the search on the run's own split, then `fitloop train`
of the chosen size into a normal run directory, with the search's files next to the run's), as
`fitloop.tabular.size_search` does it; this module is its options, their check and what it prints. With
nothing to learn (no size beats the trivial baseline), no model is trained and the command says so
(exit code 0: it is a finding about the data, not an error).
"""

from __future__ import annotations

import argparse

from .commands import EXIT_OK, config_from_args, make_console, print_summary

__all__ = ["size_search_options", "cmd_size_search", "EXAMPLES"]

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

# the search's own options, as `fitloop.tabular.search.SearchOptions` names them
_SEARCH_OPTIONS = ("widths", "depths", "trial_epochs", "max_trials", "max_seconds", "jobs", "target_loss",
                   "gap_tolerance", "val_margin")


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


def cmd_size_search(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Search, print the trials, train the chosen size (`fitloop.tabular.api.search_and_train`), print the run."""
    # the resolver and the search import torch: not on `fitloop --help`'s path
    from ..tabular.api import search_and_train
    from ..tabular.config import ConfigError
    from ..tabular.search import SearchOptions

    if args.hidden is not None:
        raise ConfigError("size-search chooses the hidden layers itself; drop --hidden (or use fitloop train).")
    options = SearchOptions(**{name: getattr(args, name) for name in _SEARCH_OPTIONS})
    options.validate(as_flags=True)
    quiet = getattr(args, "quiet", False)
    cfg = config_from_args(args)
    console = make_console()
    log = (lambda msg: None) if quiet else (lambda msg: console.print(msg, markup=False))
    sized = search_and_train(cfg, options, out=args.out, overwrite=args.overwrite, log=log, argv=argv,
                             t_command=getattr(args, "t_start", None))
    if sized.run is None:
        print(f"size-search: {sized.search.reason} No model was trained; the search is in {sized.run_dir}.")
    elif quiet:
        print(sized.run.run_dir)
    else:
        print_summary(console, sized.run)
    return EXIT_OK
