"""The `fitloop` command: train on a CSV/Parquet table, then predict and evaluate with the run directory.

    fitloop train data.csv --target price --epochs 50 --out runs/price
    fitloop predict runs/price new.csv -o preds.csv
    fitloop evaluate runs/price labelled.csv --json
    fitloop report runs/price && fitloop runs
    fitloop serve runs/price --port 8000

This module is the parser and `main`; what each command does is in `fitloop.cli.commands`, the
settings in `fitloop.tabular.config`, the table-to-run-directory work in `fitloop.tabular` (its Python API).
Heavy modules (torch, pyarrow, rich) are imported inside the commands. Bad input is
reported as one line on stderr (`fitloop: error: ...`) with exit code 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from typing import Any

from .. import __version__
from ..tabular.datasets import demo_data_path
from .commands import EXIT_OK, cmd_evaluate, cmd_predict, cmd_report, cmd_resume, cmd_train
from .export import add_export_parser
from .launch import add_launch_options, print_user_error
from .runs_table import add_parser as add_runs_parser
from .serve import add_serve_parser
from .size_search import EXAMPLES as SIZE_SEARCH_EXAMPLES
from .size_search import cmd_size_search, size_search_options
from .tune import EXAMPLES as TUNE_EXAMPLES
from .tune import cmd_tune, tune_options

__all__ = ["main", "build_parser"]

EXIT_INTERNAL, EXIT_USAGE = 1, 2

TRAIN_EXAMPLES = """\
examples:
  fitloop train data.csv --target price
  fitloop train data.parquet --target species --hidden 128,64 --epochs 100 --lr 3e-3 --out runs/species
  fitloop train data.csv --target y --drop notes --id row_id --split 0.8,0.1,0.1 --early-stopping 5
  fitloop train --config run.toml --set train.lr=0.01 --set model.dropout=0.1
  fitloop train data.csv --target price --dry-run    # print every decision, write ./config.toml, train nothing
  fitloop train data.csv --target y --log tensorboard,mlflow      # tensorboard --logdir runs; ./mlruns
  fitloop train data.csv --target price --nproc 2        # 2 processes (DDP), see README "Scaling out"

run.toml holds the same settings as the flags, in three sections:
  [data]   path, target, task, drop, id, split, seed, encoding, delimiter, decimal, max_categories
  [model]  kind, hidden, activation, dropout, k, embedding, d_embedding, n_bins, skip, linear_init, ...
  [train]  epochs, batch_size, lr, optimizer, loss, early_stopping, log, seed, device, ... (any TrainConfig field)
precedence: defaults < --config file < flags < --set. The resolved config is saved as RUN_DIR/config.toml.
"""

PREDICT_EXAMPLES = """\
examples:
  fitloop predict runs/price new.csv -o preds.csv
  fitloop predict runs/species new.parquet -o preds.csv --proba
  fitloop predict runs/price new.csv            # CSV to stdout
"""

EVALUATE_EXAMPLES = """\
examples:
  fitloop evaluate runs/price labelled.csv
  fitloop evaluate runs/price labelled.csv --json > metrics.json
"""

RESUME_EXAMPLES = """\
examples:
  fitloop resume runs/price
  fitloop resume runs/price --nproc 2     # a run trained on 2 processes resumes on 2
"""

DEMO_EXAMPLES = """\
examples:
  fitloop demo                 # = fitloop train <package>/datasets/wine.csv --target cultivar --out runs/demo
  fitloop demo --epochs 20
"""

REPORT_EXAMPLES = """\
examples:
  fitloop report runs/price                 # writes runs/price/report.html and runs/price/plots/*.png
  fitloop report runs/price --out /tmp/rep  # writes /tmp/rep/report.html and /tmp/rep/plots/
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                   help="print nothing but errors")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")


def _read_opts(p: argparse._ActionsContainer) -> None:  # a parser or an argument group
    p.add_argument("--encoding", default=None, help="text encoding of CSV/TSV files (default utf-8)")
    p.add_argument("--delimiter", default=None, help="field separator: , ; tab | (default: detected)")
    p.add_argument("--decimal", default=None, choices=(",", "."), metavar="{',','.'}",
                   help="decimal mark of numbers written like 3,75 or 3.75 (default: detected; a column "
                        "that reads both ways stops)")


def build_parser() -> argparse.ArgumentParser:
    """The `fitloop` parser: one sub-parser per command, each with its options, examples and `func`."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="fitloop", formatter_class=fmt,
        description="Train a PyTorch MLP on a CSV/Parquet table; predict and evaluate with the saved run.",
        epilog="examples:\n  fitloop train data.csv --target price\n  fitloop predict runs/price-... new.csv "
               "-o preds.csv\n  fitloop evaluate runs/price-... labelled.csv --json\n  fitloop demo\n\n"
               "`fitloop COMMAND --help` shows each command's options and examples.")
    parser.add_argument("--version", action="version", version=f"fitloop {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_training_parsers(sub, fmt)
    _add_run_parsers(sub, fmt)
    add_runs_parser(sub, fmt)
    dm = sub.add_parser("demo", help="train on the bundled wine dataset", formatter_class=fmt,
                        epilog=DEMO_EXAMPLES, description="`fitloop train` on the wine table shipped with fitloop.")
    dm.add_argument("--epochs", type=int, default=None)
    dm.add_argument("--out", default="runs/demo")
    _common(dm)
    dm.set_defaults(func=_cmd_demo)
    add_export_parser(sub, _common)
    add_serve_parser(sub, _common)
    return parser


def _add_training_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """`train`, `size-search` and `tune`: a table in, a run directory out."""
    t = sub.add_parser("train", help="train on a table and write a run directory", formatter_class=fmt,
                       description="Train an MLP on a CSV/TSV(.gz)/Parquet table, evaluate it on held-out "
                                   "rows and write a run directory.", epilog=TRAIN_EXAMPLES)
    t.add_argument("data", nargs="?", metavar="DATA",
                   help=".csv, .tsv, .csv.gz, .tsv.gz or .parquet file, or a directory or glob of Parquet files")
    _train_options(t)
    _stream_options(t)
    t.set_defaults(func=cmd_train)

    ss = sub.add_parser("size-search", help="find the network size the data supports, then train it",
                        formatter_class=fmt, epilog=SIZE_SEARCH_EXAMPLES,
                        description="Grow an MLP until it fits the training rows, shrink it until it stops "
                                    "overfitting the validation rows, then train the chosen size into a run directory.")
    ss.add_argument("data", nargs="?", metavar="DATA", help=".csv, .tsv, .csv.gz, .tsv.gz or .parquet file")
    size_search_options(ss)
    _train_options(ss)
    ss.set_defaults(func=cmd_size_search)

    tu = sub.add_parser("tune", help="search the hyperparameters; each trial a run, the best in OUT/best",
                        formatter_class=fmt, epilog=TUNE_EXAMPLES,
                        description="Search the learning rate, weight decay, width, depth, dropout and batch size "
                                    "(or a --space file) with Optuna (TPE, pruned), each trial a run directory; "
                                    "safe to kill: --resume OUT continues.")
    tu.add_argument("data", nargs="?", metavar="DATA", help=".csv, .tsv, .csv.gz, .tsv.gz or .parquet file")
    tune_options(tu)
    _train_options(tu, dry_run=False)
    tu.set_defaults(func=cmd_tune)


def _stream_options(t: argparse.ArgumentParser) -> None:
    """`train`'s streaming flags (`fitloop.tabular.stream_train`): a table larger than memory."""
    s = t.add_argument_group("tables larger than memory")
    s.add_argument("--stream", action="store_true", default=None,
                   help="stream the table from Parquet (a CSV is cached as Parquet in the run directory) "
                        "instead of reading it into memory")
    s.add_argument("--memory-budget", metavar="SIZE",
                   help="stream when the table would need more memory than this, e.g. 4G (default: half the "
                        "memory available at the start)")
    s.add_argument("--split-column", metavar="COL",
                   help="split by this column's values (train, val, test) instead of --split (streams)")


def _add_run_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """`predict`, `evaluate`, `resume` and `report`: what takes a run directory."""
    p = sub.add_parser("predict", help="predictions for a new file", formatter_class=fmt, epilog=PREDICT_EXAMPLES,
                       description="Apply a run's saved preprocessing and model to a new file.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", default=None, help="output file (.csv, .tsv or .parquet); default stdout")
    p.add_argument("--proba", action="store_true", help="also write one probability column per class")
    p.add_argument("--stream", action="store_true", default=None,
                   help="read and write batch by batch, in constant memory (default: when the file is large)")
    _read_opts(p)
    _common(p)
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="metrics on a new labelled file", formatter_class=fmt,
                       epilog=EVALUATE_EXAMPLES, description="Metrics of a run's model on a labelled file.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("data", metavar="DATA")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--stream", action="store_true", default=None,
                   help="read batch by batch, in constant memory (default: when the file is large)")
    _read_opts(e)
    _common(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("resume", help="resume an interrupted run", formatter_class=fmt, epilog=RESUME_EXAMPLES,
                       description="Resume an interrupted run from its last checkpoint.")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--force", action="store_true",
                   help="resume even if the data file or the settings changed since the checkpoint")
    add_launch_options(r, config=False)
    _common(r)
    r.set_defaults(func=cmd_resume)

    rp = sub.add_parser("report", help="a run's summary, plots and report.html", formatter_class=fmt,
                        epilog=REPORT_EXAMPLES, description="Print the summary of a run directory (finished, "
                        "interrupted or failed) and write RUN_DIR/report.html with its plots in RUN_DIR/plots/.")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--out", "-o", metavar="DIR", help="write report.html and plots/ here instead of RUN_DIR")
    _common(rp)
    rp.set_defaults(func=cmd_report)


def _train_options(t: argparse.ArgumentParser, dry_run: bool = True) -> None:
    """`train`'s options (also `size-search`'s and, without the dry run, `tune`'s), in groups: data, model,
    training, config and output."""
    d = t.add_argument_group("data")
    d.add_argument("--target", "-t", metavar="COL", help="column to predict")
    d.add_argument("--task", choices=("classification", "regression"),
                   help="override the inferred task (text/bool, or integers with <= 20 values and >= 5 "
                        "rows per value on average -> classification; otherwise regression)")
    d.add_argument("--drop", nargs="+", action="extend", metavar="COL", help="columns to leave out (repeatable)")
    d.add_argument("--id", metavar="COL", help="row-id column: not a feature, copied into predictions")
    d.add_argument("--split", metavar="F,F,F", help="train,val,test fractions (default 0.7,0.15,0.15)")
    d.add_argument("--max-categories", type=int, metavar="N",
                   help="text columns with more distinct values keep the N most frequent (default 50); "
                        "ID-like ones are dropped")
    _read_opts(d)
    m = t.add_argument_group("model")
    m.add_argument("--model", choices=("tabm", "mlp"),
                   help="tabm: an 8-member ensemble MLP with numeric embeddings (the default); mlp: the plain "
                        "MLP of fitloop 0.1")
    m.add_argument("--hidden", metavar="N,N",
                   help="hidden layer sizes (default 128,128 for tabm, 64,32 for mlp; '' for linear)")
    m.add_argument("--activation", help="relu, gelu, silu, tanh, ... (default relu)")
    m.add_argument("--dropout", type=float, help="dropout after each hidden layer (default 0.1 for tabm, 0 for mlp)")
    _training_options(t.add_argument_group("training"))
    _output_options(t.add_argument_group("config and output"), dry_run)
    add_launch_options(t)
    _common(t)


def _training_options(tr: argparse._ArgumentGroup) -> None:
    """How the run trains: each flag is the `[train]` setting of the same name (`commands.FLAG_KEYS`)."""
    tr.add_argument("--epochs", type=int,
                    help="maximum epochs (default: from the data, about train.budget_steps=3000 optimizer steps)")
    tr.add_argument("--batch-size", metavar="N",
                    help="rows per step and process (default 256 for tabm, cut to a quarter of the training rows on "
                         "small tables; 64 for mlp; 'none' = full batch)")
    tr.add_argument("--lr", type=float, help="learning rate (default 2e-3 for tabm, 1e-3 for mlp)")
    tr.add_argument("--optimizer", help="any torch.optim name (default adam)")
    tr.add_argument("--max-time", metavar="SECONDS",
                    help="stop after the epoch in which training reached SECONDS (default 600; 'none' = no limit)")
    tr.add_argument("--loss", help="default cross_entropy (classification) or mse (regression)")
    tr.add_argument("--seed", type=int, help="seeds the split, the initialisation and the data order (default 0)")
    tr.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                    help="stop after PATIENCE epochs without a better val_loss (default: a quarter of the "
                         "epochs, at least 10; 0 = off)")
    tr.add_argument("--checkpoint-every", metavar="SECONDS",
                    help="also checkpoint mid-epoch once this long has passed since the last checkpoint "
                         "(e.g. 300, 30s, 5m, 1h; 'off'; default 5m)")
    tr.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    tr.add_argument("--compile", choices=("model", "step"),
                    help="torch.compile the model, or the whole training step (the fast path for small "
                         "models; costs seconds of compilation up front)")


def _output_options(c: argparse._ArgumentGroup, dry_run: bool = True) -> None:
    """The config file, `--set`, the run directory, the loggers and the dry run (when `dry_run`)."""
    c.add_argument("--config", "-c", metavar="TOML", help="a config file with [data], [model], [train] sections")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. --set train.weight_decay=1e-4 (repeatable)")
    c.add_argument("--out", "-o", metavar="RUN_DIR", help="run directory (default runs/<target>-<timestamp>)")
    c.add_argument("--log", metavar="NAMES", help="also log to tensorboard and/or mlflow, comma-separated "
                   "(RUN_DIR/tensorboard, ./mlruns); needs pip install 'fitloop[tensorboard]' / 'fitloop[mlflow]'")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    if not dry_run:
        return
    c.add_argument("--dry-run", action="store_true",
                   help="decide everything (columns, task, split, model, settings), print it and write it as a "
                        "commented config.toml; train nothing")
    c.add_argument("--config-out", metavar="TOML", help="where --dry-run writes the config (default ./config.toml)")


def _cmd_demo(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """`fitloop demo`: `fitloop train` on the bundled wine table (here, next to `main`, which it calls)."""
    train_argv = ["train", demo_data_path(), "--target", "cultivar", "--out", args.out, "--overwrite"]
    if args.epochs is not None:
        train_argv += ["--epochs", str(args.epochs)]
    if getattr(args, "quiet", False):
        train_argv.append("--quiet")
    if getattr(args, "debug", False):
        train_argv.append("--debug")
    return main(train_argv)


# ------------------------------------------------------------------------------------------ errors


def _user_errors() -> tuple[type[BaseException], ...]:
    # Exceptions whose message is written for the user: bad files, settings and data (TableError and
    # ConfigError are ValueErrors), the files and disk of the user's machine (OSError: a missing or
    # unwritable path, a full disk), checkpoints (corrupt, or changed since), a run directory another
    # process holds, and an optional package to install (MissingExtraError names it). Everything else is
    # a fitloop bug (exit 1). Loaded lazily.
    from ..extras import MissingExtraError
    from ..runlock import RunLockedError

    errs: list[type[BaseException]] = [OSError, ValueError, TypeError, FloatingPointError, RunLockedError,
                                       MissingExtraError]
    if "fitloop.checkpoint_format" in sys.modules:  # not loaded: no CheckpointError (and no torch import)
        from ..checkpoint_format import CheckpointError

        errs.append(CheckpointError)
    if "pyarrow" in sys.modules:  # any reader error the reader did not already word itself
        import pyarrow as pa

        errs.append(pa.ArrowException)
    return tuple(errs)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or usage, 1 internal error)."""
    t_start = time.perf_counter()  # the time to the first step is measured from here
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors (argparse prints them)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    args.t_start = t_start
    debug = getattr(args, "debug", False) or os.environ.get("FITLOOP_DEBUG") == "1"
    try:
        with warnings.catch_warnings():  # the filters are put back when main returns (it is called in-process too)
            if getattr(args, "quiet", False):  # --quiet: nothing but errors, so no Python warnings either
                warnings.simplefilter("ignore")
            return args.func(args, argv)
    except KeyboardInterrupt:
        print("fitloop: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fitloop predict ... | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except _user_errors() as e:
        if debug:
            traceback.print_exc()
        print_user_error(f"fitloop: error: {e}")  # once per job under --nproc, not once per worker
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a bug: say so, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        print(f"fitloop: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
