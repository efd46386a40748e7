"""`fitloop tune DATA --target COL`: search the hyperparameters of a table's model, each trial a run.

    fitloop tune data.csv --target price --trials 30 --time 30m --jobs 2 --out runs/price-tuned
    fitloop tune --resume runs/price-tuned         # after a stop or a kill -9: no trial lost or counted twice

The work is `fitloop.tabular.tune` (the default table space, or `--space FILE`; each trial a `fitloop
train` run in OUT/trials/NNNN/, the best one copied to OUT/best); this module is its options, their check
and what it prints: one line per trial, then the best trial and the counts.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from .commands import EXIT_OK, config_from_args
from .launch import launch, wants_launch

__all__ = ["tune_options", "cmd_tune", "parse_duration", "EXAMPLES"]

EXAMPLES = """\
examples:
  fitloop tune data.csv --target price                          # 20 trials of the default space
  fitloop tune data.csv --target price --trials 50 --time 1h --jobs 2 --out runs/tuned
  fitloop tune data.csv --target y --space space.toml --pruner hyperband --epochs 30
  fitloop tune data.csv --target y --nproc 2                    # each trial on 2 processes (DDP)
  fitloop tune --resume runs/tuned                              # continue a stopped or killed search
then, as with any run:
  fitloop predict runs/tuned/best new.csv -o preds.csv

The default space: lr (1e-4..3e-2, log), weight_decay (0, 1e-5, 1e-4, 1e-3), width (16..256, log) and
depth (1..3) of the hidden layers, dropout (0..0.3), batch_size (32, 64, 128, 256). A space file has one
table per parameter: [lr] type = "float", low = 1e-4, high = 3e-2, log = true; [batch_size] type =
"categorical", choices = [32, 64]; the names are run settings (as --set takes them), plus width and depth.
Every other flag sets what each trial starts from (--epochs: each trial's epochs).
"""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`--time`: `90s`, `30m`, `2h`, `1.5h`, `1d` or plain seconds (`600`), as seconds > 0.

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it, exit 2).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text.lower())
    seconds = float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1.0) if match else 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; pass e.g. 90s, 30m, 2h or 600 (seconds)")
    return seconds


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def tune_options(p: argparse.ArgumentParser) -> None:
    """The search's own options (`fitloop.cli.app` adds `train`'s data, model and training options too)."""
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=_count, metavar="N",
                   help="finished trials in all, pruned ones included (default 20, or none with --time; "
                        "--resume: the search's)")
    g.add_argument("--time", type=parse_duration, metavar="DURATION",
                   help="no new trial starts after this long: 90s, 30m, 2h")
    g.add_argument("--jobs", "-j", type=_count, default=1, metavar="N",
                   help="trials at once, each in its own process (threads shared out)")
    g.add_argument("--space", metavar="TOML", help="the parameters to search (default: lr, weight_decay, width, "
                   "depth, dropout, batch_size)")
    g.add_argument("--pruner", choices=("asha", "hyperband", "none"),
                   help="stop unpromising trials early (default asha: successive halving; --resume: the search's)")
    g.add_argument("--no-ensemble", action="store_true",
                   help="skip the ensemble of the best trials (OUT/ensemble)")
    g.add_argument("--resume", metavar="OUT", help="continue the search in OUT (leave out DATA and the settings)")


def cmd_tune(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Search (`fitloop.tabular.tune`), print a line per trial, then the best trial and where its run is."""
    # the search imports torch and Optuna: not on `fitloop --help`'s path
    from ..distributed import is_main_process
    from ..outputs import check_out_dir
    from ..tabular.api import tune
    from ..tabular.config import ConfigError
    from ..tune.tuner import default_tune_out

    quiet = getattr(args, "quiet", False)
    common = {"trials": args.trials, "time": args.time, "jobs": args.jobs, "pruner": args.pruner, "quiet": quiet,
              "ensemble": not args.no_ensemble}
    if args.resume is not None:
        if args.data is not None or args.space is not None:
            raise ConfigError("--resume OUT continues a search with its own data and space; leave out DATA and "
                              "--space.")
        if wants_launch(args):
            return launch(args, list(argv or []), args.resume)
        result = tune(out=args.resume, resume=True, **common)
    else:
        cfg = config_from_args(args)
        if wants_launch(args):  # --nproc N: every rank runs this command; each trial uses all of them
            out = args.out or str(default_tune_out())
            check_out_dir(out, overwrite=args.overwrite, inputs=[cfg.data.path], what="the search")
            return launch(args, list(argv or []), out)
        result = tune(config=cfg, out=args.out, space=args.space, overwrite=args.overwrite, **common)
    if is_main_process() and not quiet:
        print_result(result)
    elif is_main_process():
        print(result.best_run_dir or result.out_dir)
    return EXIT_OK


def print_result(result: Any) -> None:
    """The search's end: the counts, the best trial (value, parameters, epochs) and where its run is."""
    counts = result.counts
    print(f"\ntrials: {counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, "
          f"{counts.get('FAIL', 0)} failed  ({result.out_dir / 'study.journal'})")
    best = result.best_trial
    if best is None:
        print("no trial completed: nothing to pick. See the trials' lines above.")
        return
    print(f"best: trial {best.number}, val_loss {best.value:.4g}, {best.user_attrs.get('epochs', '?')} epochs")
    width = max(len(name) for name in best.params)
    for name, value in best.params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {name:<{width}}  {shown}")
    if result.best_run_dir is not None:
        print(f"best run: {result.best_run_dir}  (fitloop predict {result.best_run_dir} new.csv -o preds.csv)")
    for key in ("ensemble", "report"):
        if key in result.extras:
            print(f"{key}: {result.extras[key]}")
    for key in ("ensemble_note", "report_note"):
        if key in result.extras:
            print(result.extras[key])
