"""What each `fitloop` command does with its parsed arguments; `fitloop.cli.app` builds the parser.

The work is `fitloop.tabular`'s Python API (`train`, `resume`, `load_run` ... `predict`, `evaluate`); this
module turns the arguments into its calls and prints the results. `fitloop.tabular` imports its names on
first use; what the commands need besides (the run config's resolver, torch, pyarrow, rich) is imported
inside them, so that `fitloop --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import tabular
from .launch import launch, restarted_run, wants_launch

EXIT_OK = 0


# flag dest -> dotted config key: every flag is an override on the same resolver as --set and TOML
FLAG_KEYS = {
    "data": "data.path", "target": "data.target", "task": "data.task", "drop": "data.drop", "id": "data.id",
    "split": "data.split", "encoding": "data.encoding", "delimiter": "data.delimiter",
    "decimal": "data.decimal",
    "max_categories": "data.max_categories",
    "model": "model.kind", "hidden": "model.hidden", "activation": "model.activation", "dropout": "model.dropout",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "optimizer": "train.optimizer",
    "loss": "train.loss", "seed": "train.seed", "early_stopping": "train.early_stopping",
    "device": "train.device", "max_time": "train.max_time", "checkpoint_every": "train.checkpoint_every_seconds",
    "compile": "train.compile", "log": "train.log",
    "strategy": "train.strategy", "dist_timeout": "train.dist_timeout",
}


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        v = getattr(args, dest, None)
        if v is None:
            continue
        if dest == "drop":
            v = [c for item in v for c in item.split(",") if c]
        elif dest == "hidden" and v.strip() == "":
            v = []
        elif dest in ("batch_size", "max_time"):
            from ..tabular.config import parse_value  # the resolver: not on `fitloop --help`'s path

            v = parse_value(v)
        elif dest == "checkpoint_every":
            v = _seconds(v)
        out[key] = v
    return out


def _seconds(text: str) -> float | None:
    """`--checkpoint-every` as seconds: `300`, `30s`, `5m`, `1.5h`; `off`/`0` turn it off."""
    from ..tabular.config import ConfigError  # the resolver: not on `fitloop --help`'s path

    t = text.strip().lower()
    if t in ("off", "none", "0", "never"):
        return None
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:], 1.0)
    try:
        v = float(t[:-1] if t[-1:] in "smh" else t) * scale
    except ValueError:
        v = -1.0
    if not v > 0:
        raise ConfigError(f"--checkpoint-every: got {text!r}; pass seconds (300), or 30s, 5m, 1h, or 'off'.")
    return v


def make_console() -> Any:
    """The rich console every command prints its tables and messages on (no syntax highlighting)."""
    from rich.console import Console  # the CLI start-up path stays light: rich only when printing

    return Console(highlight=False)


def config_from_args(args: argparse.Namespace) -> Any:
    """The `RunConfig` of `train`'s options (also `size-search`'s): defaults < --config < flags < --set."""
    from ..tabular.config import load_toml, parse_set, resolve_run_config  # not on `fitloop --help`'s path

    layers = [load_toml(args.config)] if args.config else []
    flags = _flag_overrides(args)
    if getattr(args, "quiet", False) and not getattr(args, "dry_run", False):
        flags["train.quiet"] = True  # --quiet is about this command's output, not a setting of a planned run
    layers += [flags, parse_set(args.set)]
    return resolve_run_config(*layers)


def cmd_train(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """`fitloop train`: `fitloop.tabular.train` (or a dry run, or the launch of its workers), then the summary."""
    from ..distributed import is_main_process  # torch: not on the start-up path
    from .dry_run import cmd_dry_run  # its output checks: not on the start-up path

    cfg = config_from_args(args)
    if args.dry_run:
        return cmd_dry_run(args, cfg, argv)
    if wants_launch(args):  # --nproc N / --nnodes N: start the workers (each runs this command again)
        return launch(args, list(argv or []), str(tabular.start_out(cfg, args.out, args.overwrite)))
    if not is_main_process():  # only rank 0 prints
        return _train_worker(cfg, args, argv, restarted_run(args.out))
    quiet = cfg.train.quiet  # --quiet, or train.quiet in the config file / --set: nothing but errors
    console = make_console()
    log = (lambda msg: None) if quiet else (lambda msg: console.print(msg, markup=False))
    resumed = restarted_run(args.out)  # a worker that torchrun restarted continues the run directory
    result = tabular.resume(resumed, log=log) if resumed else tabular.train(
        config=cfg, out=args.out, overwrite=args.overwrite, log=log, argv=argv,
        t_command=getattr(args, "t_start", None), **_stream_flags(args))
    if not quiet:
        print_summary(console, result)
    return EXIT_OK


def _train_worker(cfg: Any, args: argparse.Namespace, argv: list[str] | None, resumed: Path | None) -> int:
    """`fitloop train` on a rank other than 0: the same work, quietly."""
    cfg.train.quiet = True
    if resumed:
        tabular.resume(resumed, quiet=True)
    else:
        tabular.train(config=cfg, out=args.out, overwrite=args.overwrite, argv=argv, **_stream_flags(args))
    return EXIT_OK


def _stream_flags(args: argparse.Namespace) -> dict[str, Any]:
    """`train --stream`, `--memory-budget` and `--split-column` (not config keys: how to read, not what to train)."""
    return {"stream": getattr(args, "stream", None), "memory_budget": getattr(args, "memory_budget", None),
            "split_column": getattr(args, "split_column", None)}


def _streams(args: argparse.Namespace) -> bool:
    """Whether `predict`/`evaluate` read DATA batch by batch: `--stream`, a directory or glob of Parquet files,
    or a file too large for memory (`fitloop.tabular.streaming.decide_streaming`)."""
    from ..tabular.streaming import decide_streaming  # pyarrow and torch: not on the start-up path

    return decide_streaming(args.data, stream=getattr(args, "stream", None))[0]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_summary(console: Any, r: Any) -> None:
    """Print a finished run (`fitloop.tabular.RunResult`): rows, size, epochs, time, metrics, notes, directory."""
    from rich.table import Table as RichTable  # rich only when printing (start-up path)

    table = RichTable(title=f"fitloop train: {r.task}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("rows", ", ".join(f"{k} {v}" for k, v in r.rows.items()))
    table.add_row("features", f"{r.inputs} columns -> {r.features} encoded")
    table.add_row("parameters", f"{r.parameters:,}")
    table.add_row("epochs", f"{r.epochs_run} of {r.max_epochs}" + (f" ({r.stop_reason})" if r.stop_reason else ""))
    table.add_row("best epoch", _fmt(r.best_epoch))
    table.add_row("time", _time_line(r.timings))
    console.print(table)
    if r.model_summary is not None:
        console.print(str(r.model_summary), markup=False)
    _print_metrics(console, r.metrics, r.baseline, r.baseline_kind, f"{r.eval_split} metrics")
    for note in r.notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"run directory: {r.run_dir}", markup=False)


def _time_line(timings: dict[str, float]) -> str:
    """Where a run's time went: reading, preprocessing, training, in all; the first step and compiling when timed."""
    line = (f"load {timings['load']:.2f}s, preprocess {timings['preprocess']:.2f}s, train {timings['train']:.2f}s, "
            f"total {timings['total']:.2f}s")
    if "to_first_step" in timings:
        first_step = timings.get("launch_to_first_step", timings["to_first_step"])
        line += f"; first step {first_step:.2f}s after launch, imports included"
    if "compile" in timings:
        line += f"; compiling the step {timings['compile']:.2f}s (in train)"
    return line


def _print_metrics(console, metrics: dict, baseline: dict, baseline_kind: str | None, title: str) -> None:
    from rich.table import Table as RichTable  # rich only when printing (start-up path)

    if not metrics:
        console.print("no held-out rows to evaluate on (the split has no val/test part).")
        return
    m = RichTable(title=title, title_justify="left")
    m.add_column("metric")
    m.add_column("model", justify="right")
    m.add_column(f"baseline ({baseline_kind})", justify="right")
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            m.add_row(k, _fmt(v), _fmt(baseline.get(k, "")))
    console.print(m)


def _note(msg: str, args: argparse.Namespace) -> None:
    if not getattr(args, "quiet", False):  # --quiet: nothing but errors
        print(f"fitloop: note: {msg}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """`fitloop predict`: `fitloop.tabular.load_run(...).predict(...)`, written as CSV/TSV/Parquet."""
    run = tabular.load_run(args.run_dir)
    if _streams(args):
        return _predict_streamed(run, args)
    notes: list[str] = []
    table = run.predict(args.data, proba=args.proba, encoding=args.encoding or "utf-8", delimiter=args.delimiter,
                        decimal=args.decimal, notes=notes)
    for n in notes:
        _note(n, args)
    if args.output is None:
        import pyarrow.csv as pcsv  # pyarrow: not on the start-up path

        buf = _csv_bytes(table, pcsv)
        sys.stdout.write(buf.decode("utf-8"))
        sys.stdout.flush()
        return EXIT_OK
    _write_table(table, Path(args.output))
    if not getattr(args, "quiet", False):
        print(f"wrote {table.num_rows} predictions to {args.output}", file=sys.stderr)
    return EXIT_OK


def _predict_streamed(run: Any, args: argparse.Namespace) -> int:
    """`fitloop predict` batch by batch (memory constant in the file's size): to -o, or CSV on stdout."""
    from ..tabular.streaming import predict_stream  # pyarrow and torch: not on the start-up path

    rows, notes = predict_stream(run, args.data, args.output, proba=args.proba, encoding=args.encoding or "utf-8",
                                 delimiter=args.delimiter, decimal=args.decimal)
    for n in notes:
        _note(n, args)
    if args.output is not None and not getattr(args, "quiet", False):
        print(f"wrote {rows} predictions to {args.output} (streamed)", file=sys.stderr)
    return EXIT_OK


def _csv_bytes(table, pcsv, delimiter: str = ",") -> bytes:
    import pyarrow as pa  # pyarrow: not on the start-up path

    sink = pa.BufferOutputStream()
    pcsv.write_csv(table, sink, write_options=pcsv.WriteOptions(delimiter=delimiter))
    return sink.getvalue().to_pybytes()


def _write_table(table, path: Path) -> None:
    """Write atomically by extension (.csv, .tsv, .parquet): a temporary file renamed at the end."""
    import pyarrow.csv as pcsv  # pyarrow: not on the start-up path

    from ..files import atomic_write_bytes  # (tempfile, random: not on the start-up path either)

    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow as pa  # pyarrow: not on the start-up path
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    elif name.endswith((".csv", ".tsv")):
        data = _csv_bytes(table, pcsv, "\t" if name.endswith(".tsv") else ",")
    else:
        raise ValueError(f"-o {path}: unsupported output extension; use .csv, .tsv or .parquet.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"-o {path}: the directory {path.parent} does not exist.")
    atomic_write_bytes(path, data)


def cmd_evaluate(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """`fitloop evaluate`: `fitloop.tabular.load_run(...).evaluate(...)`, printed as a table or JSON."""
    run = tabular.load_run(args.run_dir)
    if _streams(args):
        from ..tabular.streaming import evaluate_stream  # pyarrow and torch: not on the start-up path

        rep = evaluate_stream(run, args.data, encoding=args.encoding or "utf-8", delimiter=args.delimiter,
                              decimal=args.decimal)
    else:
        rep = run.evaluate(args.data, encoding=args.encoding or "utf-8", delimiter=args.delimiter,
                           decimal=args.decimal)
    for n in rep["notes"]:
        _note(n, args)
    if args.json:
        print(json.dumps({k: v for k, v in rep.items() if k != "notes"}, indent=2))
    elif not getattr(args, "quiet", False):
        _print_metrics(make_console(), rep["metrics"], rep["baseline"], rep["baseline_kind"],
                       f"{args.data}: {rep['rows']} rows")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """`fitloop resume`: `fitloop.tabular.resume` (or the launch of its workers), then the summary."""
    from ..distributed import is_main_process  # torch: not on the start-up path

    if wants_launch(args):  # --nproc N: as many processes as the run had
        return launch(args, list(argv or []), args.run_dir)
    quiet = getattr(args, "quiet", False) or not is_main_process()
    console = make_console()
    log = (lambda msg: None) if quiet else (lambda msg: console.print(msg, markup=False))
    result = tabular.resume(args.run_dir, force=args.force, log=log, quiet=quiet)  # this command's flag decides
    if not quiet:
        print_summary(console, result)
    return EXIT_OK


def cmd_report(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """The run's summary, then its plots and report.html (in RUN_DIR, or --out)."""
    from ..outputs import check_report_dir  # the report's modules: not on the start-up path
    from ..report import write_report
    from ..report.data import from_run_dir

    data = from_run_dir(args.run_dir)  # NotARunDirectory (exit 2) names what is missing
    if args.out is not None:  # nothing there of the same name that fitloop did not write
        check_report_dir(args.out)
    console = make_console()
    quiet = getattr(args, "quiet", False)
    if not quiet:
        info = data.data
        console.print(f"run {args.run_dir}: {data.task} on {info.get('data', 'in-memory data')} (target "
                      f"{info.get('target')!r}), {len(data.history)} epochs, best {data.best_epoch}, status "
                      f"{data.status}", markup=False, soft_wrap=True)
        if data.metrics:
            _print_metrics(console, data.metrics, data.baseline, data.baseline_kind, f"{data.split} metrics")
        if data.verdict:
            reason = str(data.verdict.get("reason", ""))
            console.print(f"verdict: {data.verdict['kind']}. {reason[:1].upper()}{reason[1:]}", markup=False,
                          soft_wrap=True)
    try:
        files = write_report(data, args.run_dir if args.out is None else args.out)
    except ImportError as e:  # the `plot` extra is missing: the summary above still stands
        print(f"fitloop: error: {e}", file=sys.stderr)
        return 2
    if not quiet:
        for a in files.absent:
            console.print(f"absent: {a}", markup=False, soft_wrap=True)
        console.print(f"wrote {files.html} ({len(files.plots)} plots in {files.html.parent / 'plots'})",
                      markup=False, soft_wrap=True)
    return EXIT_OK

