"""`fitloop train` on a table larger than memory: the run streamed from Parquet (a CSV cached as Parquet).

    result = train_streamed(cfg, out="runs/big")       # what `fitloop train big.parquet --stream` does
    result = train_or_stream(cfg, out="runs/t")         # `fitloop train`: streams when it would not fit

The recipe is the in-memory one (`fitloop.tabular.pipeline`: the same model, loss, budget, callbacks and
Trainer, built by `pipeline.build_trainer`); only the data differs. The splits are `ParquetSource`s
(`fitloop.data.stream`: a seeded global order, exactly once per epoch, resumable, each rank its share of
each global batch) over the rows the one-pass split assigns (`fitloop.tabular.stream_fit`), encoded batch
by batch by the preprocessor fitted in that pass. What needs rows in memory gets a sample: the linear
start is fitted on the first `SAMPLE_ROWS` training rows, and early stopping's standard error of the
initial model on the first validation rows. The held-out metrics are accumulated batch by batch
(`streaming.StreamedScore`); the run writes no `test_predictions.csv` (it would be as long as the test
split) and `splits.json` holds the rule of the split, not row indices.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..checkpoint_format import find_checkpoints
from ..devices import pick_device
from ..distributed import is_main_process, world_size
from ..distributed.group import barrier, init_from_env
from ..files import write_json_atomic
from ..outputs import clear_run_dir
from ..report.summary import summary
from ..runlock import hold_run_dir
from . import training
from .config import ConfigError, RunConfig, load_toml, resolve_run_config, training_budget
from .csv_cache import CACHE_DIR
from .pipeline import PreparedRun, RunResult, build_trainer, check_out, default_out, merge_run_json, train_table
from .plan import model_spec
from .runs import baseline_outputs, check_run
from .stream_fit import SPLIT_NAMES
from .streaming import SAMPLE_ROWS, StreamedScore, StreamedTable, decide_streaming, open_streamed, row_groups

__all__ = ["train_or_stream", "train_streamed", "resume_streamed", "is_streamed_run", "STREAM_BATCH_ROWS"]

STREAM_BATCH_ROWS = 8192  # rows per evaluation batch of the held-out split


def train_or_stream(cfg: RunConfig, out: str | os.PathLike | None = None, *, stream: bool | None = None,
                    memory_budget: str | int | None = None, split_column: str | None = None,
                    log: Callable[[str], None] | None = None, **options: Any) -> RunResult:
    """`fitloop train` on the file `cfg.data.path`: in memory (`pipeline.train_table`) or streamed
    (`train_streamed`), as `streaming.decide_streaming` decides; `log` gets the one line that says which.

    Args:
        cfg: the resolved configuration.
        out: the run directory.
        stream: True: stream; False: read into memory; None: stream when the table exceeds `memory_budget`.
        memory_budget: bytes or a size like ``"4G"`` (default: a fraction of the available memory).
        split_column: a column of train/val/test values that splits the rows (streamed runs only).
        log: where progress lines go.
        options: `overwrite`, `argv`, `t_command`, as `train_table` takes them.
    """
    log = log or (lambda msg: None)
    streams, line = decide_streaming(str(cfg.data.path), stream=stream, memory_budget=memory_budget)
    if split_column and not streams:
        streams, line = True, "streaming the table (--split-column splits a streamed table)"
    if line:
        log(line[0].upper() + line[1:] + ".")
    if streams:
        return train_streamed(cfg, out, log=log, why=line, split_column=split_column, **options)
    return train_table(cfg, out, log=log, **options)


def train_streamed(cfg: RunConfig, out: str | os.PathLike | None = None, *, overwrite: bool = False,
                   log: Callable[[str], None] | None = None, argv: list[str] | None = None,
                   t_command: float | None = None, why: str = "streaming the table",
                   split_column: str | None = None) -> RunResult:
    """Train a table run from a stream (see the module docstring); the run directory as `train_table` writes it.

    Args:
        cfg: the resolved configuration (`data.path`: a Parquet file, a directory or glob of them, or a CSV).
        out: the run directory; default `runs/<target>-<timestamp>`.
        overwrite: replace an existing non-empty `out`.
        log: where progress lines go.
        argv: the command line, recorded in `run.json`.
        t_command: `time.perf_counter()` when the command started.
        why: the line saying that (and why) the table is streamed, recorded in `run.json`.
        split_column: a column of train/val/test values that splits the rows (default: `data.split`'s
            fractions over the hash of each row's position).

    Raises:
        ConfigError, TableError, ValueError: bad settings or data.
    """
    log = log or (lambda msg: None)
    pick_device(cfg.train.device)
    init_from_env(cfg.train.dist_timeout, cfg.train.device)
    out_dir = check_out(out if out is not None else default_out(cfg.data.target or "run"), overwrite, cfg.data.path)
    t_start = time.perf_counter()
    cfg.data.path = str(Path(str(cfg.data.path)).resolve()) if "*" not in str(cfg.data.path) else cfg.data.path
    main = is_main_process()
    created = not out_dir.exists()
    barrier()  # every rank has checked `out` before rank 0 takes it (its lock would look like another run)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(out_dir) if main else contextlib.nullcontext() as lock:
        if main:
            clear_run_dir(out_dir, keep=(CACHE_DIR,))
        barrier()  # rank 0 writes the CSV cache; the others read it after
        try:
            table = _open(cfg, out_dir, log, main, split_column)
            p = _prepare(cfg, table, log)
            p.t_command = t_start if t_command is None else t_command
            _start(cfg, p, table, out_dir, argv, why)
        except BaseException:
            if lock is not None:
                clear_run_dir(out_dir)
                lock.release()
                if created and not any(out_dir.iterdir()):
                    out_dir.rmdir()
            raise
        t0 = time.perf_counter()
        p.trainer.fit(p.splits["train_source"], p.splits.get("val"))
        p.timings["train"] = time.perf_counter() - t0
        return _finish(cfg, p, table, out_dir, t_start)


def _open(cfg: RunConfig, out_dir: Path, log: Callable[[str], None], main: bool,
          split_column: str | None) -> StreamedTable:
    """The streamed table; rank 0 converts a CSV first, then every rank opens the same cache."""
    if main:
        table = open_streamed(cfg, out_dir, log, split_column)
        barrier()
        return table
    barrier()
    return open_streamed(cfg, out_dir, split_column=split_column)


def _prepare(cfg: RunConfig, table: StreamedTable, log: Callable[[str], None]) -> PreparedRun:
    """The run's plan from the stream: the budget, the model spec and loss, the sources, the samples."""
    t0 = time.perf_counter()
    fit, pre = table.fit, table.preprocessor
    parts = ", ".join(f"{name} {count}" for name, count in fit.rows.items())
    log(f"{table.sample.source}: {sum(fit.rows.values())} rows ({parts}).")
    log(f"task: {table.task}: {table.sample.task_reason} (inferred from the first {len(table.sample)} rows).")
    budget = training_budget(cfg, fit.rows["train"], world_size())
    budget.apply(cfg)
    log(budget.describe() + ".")
    classes = fit.classes
    spec = model_spec(cfg, pre, classes)  # a TabM's bins: quantiles of the training sample
    loss = cfg.train.loss or ("cross_entropy" if table.task == "classification" else "mse")
    patience = cfg.train.early_stopping or None
    notes = table.sample.notes + pre.notes
    if patience and not fit.rows.get("val"):
        patience = None
        notes.append("early stopping is off: there is no validation split")
    notes.append(f"streamed: the kinds and the task from the first {len(table.sample)} rows; the linear start and "
                 f"the initial model's standard error from the first training and validation rows; no train "
                 f"metrics (only the loss) on the training rows")
    splits: dict[str, Any] = {"train": _sample_rows(table, "train"),
                              "train_source": table.source("train", cfg.train.batch_size)}
    if fit.rows.get("val"):
        splits["val"] = table.source("val", cfg.train.batch_size)
    p = PreparedRun(splits, {}, pre, _info(cfg, table), table.task, len(table.sample.feature_columns),
                    len(pre.feature_names), notes, {"load": 0.0, "preprocess": time.perf_counter() - t0}, spec,
                    loss, patience)
    p.budget = budget
    p.se_rows = _sample_rows(table, "val") if fit.rows.get("val") else None
    return p


def _info(cfg: RunConfig, table: StreamedTable) -> dict[str, Any]:
    """The bundle's `table` entry, as the in-memory run writes it (predict, serve and export read it)."""
    fit, pre = table.fit, table.preprocessor
    decimal = cfg.data.decimal or (table.read_info.decimal if table.read_info is not None else None)
    info: dict[str, Any] = {"target": cfg.data.target, "id": cfg.data.id, "task": table.task, "classes": fit.classes,
                            "feature_names": pre.feature_names, "decimal": decimal, "delimiter": cfg.data.delimiter}
    if table.task == "classification":
        counts = np.asarray(fit.class_counts, dtype=np.float64)
        info["class_prior"] = (counts / counts.sum()).tolist()
        info["target_scaling"] = None
    else:
        info["target_scaling"] = {"mean": fit.target_mean, "std": fit.target_std}
    info["baseline_kind"] = "majority class" if table.task == "classification" else "train mean"
    return info


def _sample_rows(table: StreamedTable, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `SAMPLE_ROWS` rows of a split, encoded (what needs rows in memory works on these)."""
    source = table.source(split, None)
    plan = source.plan()
    mask = table.fit.masks.rows(split)
    parts, held = [], 0
    wanted = [*table.columns, table.sample.target]
    for file, group, rows in row_groups(plan, wanted):
        keep = mask(file, group, np.arange(rows.num_rows, dtype=np.int64))
        parts.append(rows.filter(pa.array(keep)))
        held += int(keep.sum())
        if held >= SAMPLE_ROWS:
            break
    return table.transform(pa.concat_tables(parts).slice(0, SAMPLE_ROWS))


def _start(cfg: RunConfig, p: PreparedRun, table: StreamedTable, out_dir: Path, argv: list[str] | None,
           why: str) -> None:
    """config.toml and splits.json (the split's rule), then the Trainer."""
    if is_main_process():
        (out_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        split = table.fit.masks.split
        write_json_atomic(out_dir / "splits.json", {
            "note": "a streamed run: each row's split is a seeded hash of its position (file, row group, offset), "
                    "or the split column's value; rows whose target is missing are in no split",
            "seed": split.seed, "fractions": list(split.fractions), "column": split.column,
            "rows": table.fit.rows, "files": table.path})
    barrier()
    _build(cfg, p, out_dir)
    p.run_fields = {"command": argv, "data": cfg.data.path, "target": cfg.data.target, "task": p.task,
                    "streamed": {"why": why, "parquet": table.path, "rows": table.fit.rows,
                                 "split_column": table.fit.masks.split.column}}
    if p.trainer.checkpointer is not None:
        p.trainer.checkpointer.run_info.update({**p.run_fields, "rows": table.fit.rows, "inputs": p.n_inputs,
                                                "features": p.n_features})


def _build(cfg: RunConfig, p: PreparedRun, run_dir: Path) -> None:
    """`pipeline.build_trainer`, without train metrics: the Trainer computes them on the epoch's outputs kept
    whole, memory that grows with the table (the validation metrics, on the held-out rows, stay)."""
    build_trainer(cfg, p, run_dir)
    p.trainer.config.train_metrics = False


def _held_out(p: PreparedRun, table: StreamedTable, split: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The model's and the baseline's metrics on a held-out split, accumulated batch by batch."""
    info, model = p.info, p.trainer.model
    scaling = info["target_scaling"]
    n_classes = len(info["classes"]) if info["classes"] else None
    scores = StreamedScore(p.task, scaling, n_classes), StreamedScore(p.task, scaling, n_classes)
    batches = table.source(split, STREAM_BATCH_ROWS).batches(train=False, batch_size=STREAM_BATCH_ROWS,
                                                            shuffle=False, device=p.trainer.device)
    model.eval()
    with torch.inference_mode():
        for x, y in batches.epoch(None):
            y = y.cpu() if p.task == "classification" else y.cpu().double() * scaling["std"] + scaling["mean"]
            scores[0].add(model(x).float().cpu(), y)
            scores[1].add(baseline_outputs(p.task, info, len(y)), y)
    return scores[0].result(), scores[1].result(), scores[0].rows


def _finish(cfg: RunConfig, p: PreparedRun, table: StreamedTable, out_dir: Path, t_start: float) -> RunResult:
    """Evaluate on the held-out rows (streamed), write the bundle, metrics.json and run.json."""
    trainer, history = p.trainer, p.trainer.history
    rows = table.fit.rows
    eval_split = "test" if rows.get("test") else ("val" if rows.get("val") else None)
    metrics: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    n_eval = 0
    if eval_split is not None:
        metrics, baseline, n_eval = _held_out(p, table, eval_split)
    best_epoch = training.best_epoch(p.callbacks, history)
    improving = training.still_improving(history, trainer.stop_reason, best_epoch)
    if improving:
        p.notes.append(improving)
    trainer.save(str(out_dir / "model"), extra={"preprocessor": p.pre.to_dict(), "table": p.info})
    if is_main_process():
        write_json_atomic(out_dir / "metrics.json", {"split": eval_split, "rows": n_eval, "metrics": metrics,
                                                     "baseline": baseline, "baseline_kind": p.info["baseline_kind"]})
    p.timings["total"] = time.perf_counter() - t_start
    if p.first_step is not None and p.first_step.seconds is not None:
        p.timings["to_first_step"] = p.first_step.seconds
    counts = {k: v for k, v in rows.items() if k in SPLIT_NAMES and v}
    n_params = sum(q.numel() for q in trainer.model.parameters())
    result = RunResult(out_dir, p.task, counts, p.n_inputs, p.n_features, n_params, trainer.epoch, cfg.train.epochs,
                       best_epoch, p.timings, eval_split, metrics, baseline, p.info["baseline_kind"], p.notes,
                       trainer.stop_reason, summary(trainer.model, (p.n_features,), verbose=False), improving)
    if is_main_process():
        merge_run_json(out_dir, {
            **p.run_fields, "rows": counts, "inputs": p.n_inputs, "features": p.n_features, "parameters": n_params,
            "epochs": trainer.epoch, "best_epoch": best_epoch, "stop_reason": trainer.stop_reason,
            "still_improving": improving is not None, "budget": training.budget_fields(p.budget),
            "linear_init_ridge": p.ridge, "device": str(trainer.device), "timings": p.timings, "notes": p.notes})
    return result



def resume_streamed(run_dir: str | os.PathLike, *, force: bool = False, log: Callable[[str], None] | None = None,
                    quiet: bool | None = None) -> RunResult:
    """Resume a streamed run from its latest checkpoint (`fitloop resume`), then evaluate it.

    The table is opened again as `train_streamed` opened it: a CSV's Parquet cache in the run directory is
    reused when the CSV did not change (`fitloop.tabular.csv_cache`), the one-pass fit is repeated (the same
    rows, so the same preprocessor), and the Trainer resumes at its position in the stream.

    Raises:
        ConfigError: the run already finished.
    """
    log = log or (lambda msg: None)
    path = Path(run_dir)
    info = check_run(path, finished=False)
    if info.get("status") == "finished" and (path / "metrics.json").is_file():
        raise ConfigError(f"{path}: this run already finished; nothing to resume. Use `fitloop report {path}` to "
                          f"see it.")
    main = is_main_process()
    with hold_run_dir(path) if main else contextlib.nullcontext():
        cfg = resolve_run_config(load_toml(str(path / "config.toml")))
        if quiet is not None:
            cfg.train.quiet = quiet
        t_start = time.perf_counter()
        table = _open(cfg, path, log, main, (info.get("streamed") or {}).get("split_column"))
        log("Streaming the table (a streamed run, resumed).")
        p = _prepare(cfg, table, log)
        p.t_command = t_start
        t0 = time.perf_counter()
        if find_checkpoints(path):
            _build(cfg, p, path)
            p.run_fields = {k: info[k] for k in ("command", "data", "target", "task", "streamed") if k in info}
            p.trainer.resume(p.splits["train_source"], p.splits.get("val"), force=force)
        else:  # killed before the first checkpoint: the same run from the start
            _start(cfg, p, table, path, info.get("command"), "a streamed run, resumed")
            p.trainer.fit(p.splits["train_source"], p.splits.get("val"))
        p.timings["train"] = time.perf_counter() - t0
        return _finish(cfg, p, table, path, t_start)


def is_streamed_run(run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` holds a streamed run (its run.json says so): `fitloop resume` resumes it here."""
    try:
        return "streamed" in json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False
