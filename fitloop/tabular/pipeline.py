"""Table to run directory: what `fitloop train` and `resume` do, usable from Python too.

    cfg = resolve_run_config({"data.path": "wine.csv", "data.target": "cultivar"})  # or fitloop.tabular.train
    result = train_table(cfg, out="runs/wine")          # writes the run directory atomically
    result = resume_run("runs/wine")                    # a run that was stopped: on from its last checkpoint
    run = result.load()                                 # the run opened to predict and evaluate

Run directory layout (everything JSON/TOML/safetensors, no pickle)::

    RUN_DIR/
      run.json        status, versions, timings, rows per split, epochs, notes
      config.toml     the resolved configuration (`fitloop train --config RUN_DIR/config.toml` reruns it)
      metrics.json    held-out metrics next to a trivial baseline (majority class / train mean)
      test_predictions.csv  the held-out split's row, target and prediction (for `fitloop report`)
      history.jsonl   one line per epoch (history.csv: the same as CSV)
      tensorboard/    event files, with `--log tensorboard` (`--log mlflow` writes to ./mlruns)
      splits.json     row indices of each split
      model/          the bundle: model.safetensors + fitloop.json (spec, preprocessor, target info)

Bad settings or data raise before the directory is created. While a process works in a run directory
it holds its lock (`fitloop.runlock`: RUN_DIR/.lock with the pid), so a second `train`/`resume` on it
stops naming that pid, and `--overwrite` never deletes a live run's directory. Opening a run to
predict and evaluate is `fitloop.tabular.runs` (`load_run`, `predict_file`, `evaluate_file`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from ..callbacks import Callback, MLflowLogger, TensorBoardLogger
from ..checkpoint_format import find_checkpoints
from ..data.checks import check_leakage, guard_settings
from ..devices import pick_device
from ..distributed import is_main_process
from ..distributed.group import barrier, init_from_env
from ..files import atomic_write_bytes, write_json_atomic
from ..models import build_model
from ..optim import MembersLoss
from ..outputs import OutputPathError, check_out_dir, clear_run_dir, is_run_dir
from ..report.data import PREDICTIONS_FILE, target_distribution
from ..report.summary import summary
from ..runlock import RunLockedError, hold_run_dir, lock_holder
from ..tabm import TabM, fit_bins
from ..trainer import Trainer, seed_everything
from . import training
from .config import CONFIG_HEADER, LEGACY_DEFAULTS, Budget, ConfigError, RunConfig, load_toml, resolve_run_config
from .plan import plan_run
from .runs import (
    LoadedRun,
    baseline_outputs,
    check_run,
    load_run,
    score,
    unscale,
)

__all__ = ["RunResult", "train_table", "resume_run", "start_out", "check_out", "default_out", "merge_run_json",
           "prepare_run", "PreparedRun"]


@dataclass
class RunResult:
    """What `train_table` did: where the run went and the numbers the summary shows."""

    run_dir: Path
    task: str
    rows: dict[str, int]
    inputs: int
    features: int
    parameters: int
    epochs_run: int
    max_epochs: int
    best_epoch: int | None
    timings: dict[str, float]
    eval_split: str | None
    metrics: dict[str, Any]
    baseline: dict[str, Any]
    baseline_kind: str
    notes: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    model_summary: Any = None
    still_improving: str | None = None  # the advice when the best epoch was the last one

    def load(self) -> LoadedRun:
        """The run opened to predict and evaluate (`load_run(run_dir)`)."""
        return load_run(self.run_dir)


# ------------------------------------------------------------------------------------------- train


def default_out(target: str) -> Path:
    """`runs/<target>-<timestamp>`: a run's directory when none is given."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", target).strip("._") or "run"
    return Path("runs") / f"{safe}-{stamp}"


def start_out(cfg: RunConfig, out: str | os.PathLike | None, overwrite: bool) -> Path:
    """The run directory a launcher hands to every worker: checked (as `train_table` would) and fixed once,
    so that every rank and a restart use the same one."""
    many = cfg.data.path and (Path(cfg.data.path).is_dir() or any(c in cfg.data.path for c in "*?["))  # streamed
    if not cfg.data.path or not (Path(cfg.data.path).is_file() or many):
        raise ConfigError(f"no data file {cfg.data.path!r}: pass DATA (fitloop train DATA --target COL).")
    if not cfg.data.target:
        raise ConfigError("no target column: pass --target COL or set data.target.")
    return check_out(out if out is not None else default_out(cfg.data.target), overwrite, cfg.data.path)


def check_out(out: str | os.PathLike, overwrite: bool, data: str | None = None) -> Path:
    """`out` may become this run's directory (`fitloop.outputs.check_out_dir`), and no live run holds it."""
    out_dir = Path(out)
    holder = lock_holder(out_dir) if os.fspath(out).strip() and out_dir.is_dir() else None
    if holder is not None:  # a live run: never replaced, --overwrite or not
        raise RunLockedError(out_dir, holder)
    try:
        check_out_dir(out, overwrite=overwrite, inputs=[data])  # the raw text: an empty --out is named so
    except OutputPathError as e:
        unfinished = (out_dir / "config.toml").is_file() and not (out_dir / "metrics.json").is_file()
        if unfinished and not overwrite and is_run_dir(out_dir):
            raise OutputPathError(f"{e} It holds a run that did not finish: continue it with "
                                  f"`fitloop resume {out_dir}`.") from None
        raise
    return out_dir


@dataclass
class PreparedRun:
    """Everything a run needs before training: splits as tensors, the fitted preprocessor, the model."""

    splits: dict[str, Any]
    rows: dict[str, np.ndarray]
    pre: Any
    info: dict[str, Any]
    task: str
    n_inputs: int
    n_features: int
    notes: list[str]
    timings: dict[str, float]
    spec: Any = None
    loss: str = "mse"
    early_stopping: int | None = None
    trainer: Any = None
    callbacks: list = field(default_factory=list)
    loggers: list = field(default_factory=list)
    user_callbacks: list = field(default_factory=list)  # `train_table(callbacks=...)`: after fitloop's own
    run_fields: dict[str, Any] = field(default_factory=dict)
    t_command: float = 0.0
    first_step: Any = None
    targets: dict[str, Any] = field(default_factory=dict)  # regression: each split's target in its own units
    budget: Budget | None = None
    ridge: float | None = None  # the linear start's penalty (model.ridge, or GCV's choice); None: no linear start
    se_rows: Any = None  # a streamed run: the validation rows in memory the early-stopping start's SE uses


def prepare_run(cfg: RunConfig, log: Callable[[str], None], data: pa.Table | None = None) -> PreparedRun:
    """`plan_run`, then the splits encoded as tensors (the preprocessor applied to every split)."""
    plan = plan_run(cfg, log, data=data)
    table = plan.table
    # the decimal mark reading took (given, or detected from numbers like 1,000): predict/evaluate reuse it
    decimal = cfg.data.decimal or (table.read_info.decimal if table.read_info is not None else None)
    prep = table.prepare(plan.rows, preprocessor=plan.preprocessor)
    task, classes, n_inputs = table.task, cast(list[Any], table.classes), len(table.feature_columns)
    del table, plan.table  # the Arrow table is no longer needed: free it before training, and hand the pages back
    pa.default_memory_pool().release_unused()
    pre = prep.preprocessor
    n_features = len(pre.feature_names)
    splits: dict[str, Any] = {name: (s.X, s.y) for name, s in prep.splits.items()}  # every split has a y
    del prep
    d = cfg.data
    plan.notes.extend(_leakage_notes(splits, cfg.train.guards))
    info: dict[str, Any] = {"target": d.target, "id": d.id, "task": task, "classes": classes,
                            "feature_names": pre.feature_names, "decimal": decimal,  # predict's defaults: the
                            "delimiter": d.delimiter}  # decimal mark training read, its explicit --delimiter
    targets: dict[str, Any] = {}
    if task == "classification":
        counts = torch.bincount(splits["train"][1], minlength=len(classes)).double()
        info["class_prior"] = (counts / counts.sum()).tolist()
        info["target_scaling"] = None
    else:
        ytr = splits["train"][1].double()
        std = float(ytr.std(unbiased=False))
        info["target_scaling"] = scaling = {"mean": float(ytr.mean()), "std": std if std > 0 else 1.0}
        targets = {k: y for k, (_, y) in splits.items()}
        splits = {k: (X, ((y - scaling["mean"]) / scaling["std"]).float()) for k, (X, y) in splits.items()}
    info["baseline_kind"] = "majority class" if task == "classification" else "train mean"
    timings = {"load": plan.load_seconds, "preprocess": time.perf_counter() - plan.t_decide}
    prepared = PreparedRun(splits, plan.rows, pre, info, task, n_inputs, n_features, plan.notes, timings,
                            plan.spec, plan.loss, plan.early_stopping)
    prepared.targets, prepared.budget = targets, plan.budget
    return prepared


def _leakage_notes(splits: dict[str, Any], guards: dict[str, Any] | bool) -> list[str]:
    """The leakage guard over all three splits (the Trainer sees only train and val): a note with the counts,
    or an error with `train.guards = {leakage = "error"}`."""
    mode = guard_settings(guards)["leakage"]
    found = check_leakage(splits, mode="error" if mode == "error" else False) if mode else {}
    return [f"leakage: {n} {b} rows have the same encoded inputs as {a} rows" for (a, b), n in found.items()]


def _build_trainer(cfg: RunConfig, p: PreparedRun, run_dir: Path) -> None:
    """The model and Trainer of a run (as `plan_run` decided), checkpointing into `run_dir`."""
    seed_everything(cfg.train.seed)  # the initial weights follow the seed too
    model = build_model(p.spec)
    X, y = p.splits["train"]
    fit_bins(model, X)  # a TabM's piecewise-linear bins: quantiles of the training rows
    p.ridge = training.start_linear_path(cfg, model, p.task, p.info["classes"], X, y)  # model.linear_init
    p.callbacks.extend(training.length_callbacks(cfg, p.early_stopping))
    tcfg = cfg.train.trainer_config()
    tcfg.run_dir = str(run_dir)
    if isinstance(tcfg.guards, dict):  # leakage: checked over all three splits in prepare_run; inputs: standardised
        tcfg.guards = {**tcfg.guards, "leakage": False, "unscaled": False}
    p.loggers = _loggers(cfg.train.log)
    p.first_step = training.FirstStep(p.t_command)
    loss = MembersLoss(p.loss) if isinstance(model, TabM) else p.loss  # each member learns on its own loss
    p.trainer = Trainer(model, loss=loss, optimizer=cfg.train.optimizer, scheduler=cfg.train.scheduler,
                        callbacks=[*p.callbacks, *p.loggers, p.first_step, *p.user_callbacks], config=tcfg)
    training.start_early_stopping(cfg, p.trainer, p.callbacks, p.splits.get("val"), p.se_rows)  # a resume replaces it


def build_trainer(cfg: RunConfig, p: PreparedRun, run_dir: Path) -> None:
    """The model and Trainer of a run, as `train_table` builds them: for the streamed path
    (`fitloop.tabular.stream_train`), whose `p.splits` hold `ParquetSource`s and a training sample."""
    _build_trainer(cfg, p, run_dir)


def _loggers(names: list[str]) -> list[Any]:
    """`--log tensorboard,mlflow`: the loggers (after EarlyStopping, so MLflow sees the kept weights).
    The MLflow run gets the final bundle (with the preprocessing) from `_finish`, not at fit's end."""
    made: dict[str, Callable[[], Any]] = {"tensorboard": TensorBoardLogger,
                                          "mlflow": lambda: MLflowLogger(log_model=False)}
    return [made[name]() for name in dict.fromkeys(names)]


def _log_final(p: PreparedRun, out_dir: Path, eval_split: str | None, metrics: dict[str, Any]) -> None:
    """The MLflow run also gets the held-out metrics (`test_*`) and the run's final files."""
    for logger in p.loggers:
        if isinstance(logger, MLflowLogger):
            if eval_split == "test":
                logger.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=p.trainer.epoch)
            logger.log_artifacts(out_dir / "model", "model")
            for name in ("metrics.json", "config.toml"):
                logger.log_artifacts(out_dir / name)


def train_table(cfg: RunConfig, out: str | os.PathLike | None = None, *, overwrite: bool = False,
                log: Callable[[str], None] | None = None, argv: list[str] | None = None,
                t_command: float | None = None, data: pa.Table | None = None,
                callbacks: Sequence[Callback] = ()) -> RunResult:
    """Read `cfg.data.path` (or take `data`), split, fit the preprocessing on train, train an MLP, evaluate,
    write the run.

    Bad settings or data raise before the run directory is created. Once training starts the run
    directory holds checkpoints, so an interrupted or failed run can be resumed (`resume_run`);
    its `run.json` says which state it is in.

    Args:
        cfg: the resolved configuration (`resolve_run_config`).
        out: run directory; default `runs/<target>-<timestamp>`.
        overwrite: replace an existing non-empty `out`.
        log: where progress lines go (default: nowhere).
        argv: the command line, recorded in `run.json`.
        t_command: `time.perf_counter()` when the command started (for the time to the first step).
        data: the rows as a ``pyarrow.Table`` already in memory, instead of the file `cfg.data.path`;
            `run.json` records that (`data_in_memory`), and `resume_run` needs the table again.
        callbacks: more callbacks for the run's Trainer, after fitloop's own (early stopping, loggers):
            for example the pruning callback of `fitloop.tune`. They are not saved with the run, so a
            `resume_run` of it needs them again.

    Raises:
        ConfigError, TableError, ValueError: bad settings or data (nothing is written).
    """
    log = log or (lambda msg: None)
    pick_device(cfg.train.device)  # a device this machine lacks: the error lists those it has, before any work
    init_from_env(cfg.train.dist_timeout, cfg.train.device)  # several processes: the group comes first
    out_dir = check_out(out if out is not None else default_out(cfg.data.target or "run"), overwrite,
                         cfg.data.path)
    t_start = time.perf_counter()
    p = prepare_run(cfg, log, data)
    p.t_command = t_start if t_command is None else t_command
    p.user_callbacks = list(callbacks)
    if data is None:  # `resume` finds the data from any directory
        cfg.data.path = str(Path(cast(str, cfg.data.path)).resolve())
    barrier()  # every rank has checked `out` before rank 0 takes it; only rank 0 writes
    main = is_main_process()
    created = not out_dir.exists()
    # rank 0 holds the lock: raises, naming the pid, if another live run took the directory meanwhile
    with hold_run_dir(out_dir) if main else contextlib.nullcontext() as lock:
        if main:
            clear_run_dir(out_dir)
        try:
            _start(cfg, p, out_dir, argv)
        except BaseException:
            if lock is not None:
                clear_run_dir(out_dir)  # nothing trained yet: leave nothing behind
                lock.release()
                if created:
                    out_dir.rmdir()
            raise
        t0 = time.perf_counter()
        p.trainer.fit(p.splits["train"], p.splits.get("val"))
        p.timings["train"] = time.perf_counter() - t0
        return _finish(cfg, p, out_dir)


def _start(cfg: RunConfig, p: PreparedRun, out_dir: Path, argv: list[str] | None) -> None:
    """A fresh run in `out_dir`: config.toml and splits.json (rank 0 writes them), then the Trainer."""
    if is_main_process():
        (out_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        write_json_atomic(out_dir / "splits.json", {
            "note": "row indices into the data rows of the file (0-based, header excluded), after removing "
                    "rows whose target is missing",
            "seed": cfg.data.seed if cfg.data.seed is not None else cfg.train.seed,
            **{k: v.tolist() for k, v in p.rows.items()}}, indent=None)
    barrier()  # the other ranks' Checkpointers find the directory written
    _build_trainer(cfg, p, out_dir)
    source = {"data": cfg.data.path} if cfg.data.path else {"data_in_memory": True}  # `resume` needs it again
    p.run_fields = {"command": argv, **source, "target": cfg.data.target, "task": p.task}
    if p.trainer.checkpointer is not None:  # in run.json from the start: a killed run still reports its data
        p.trainer.checkpointer.run_info.update({
            **p.run_fields, "rows": {k: len(v[0]) for k, v in p.splits.items()}, "inputs": p.n_inputs,
            "features": p.n_features, "target_distribution": _target_distribution(p)})




def resume_run(path: str | os.PathLike, *, force: bool = False, log: Callable[[str], None] | None = None,
               quiet: bool | None = None, data: pa.Table | None = None,
               callbacks: Sequence[Callback] = ()) -> RunResult:
    """Resume an interrupted `fitloop train` run from its latest good checkpoint, then evaluate it.

    The data is read again from the path in `config.toml` (a run trained on a table in memory: `data`,
    that table again) and prepared exactly as before; the checkpoint refuses it when the data or the
    settings changed, unless `force`. `callbacks`: as in `train_table` (those the run was trained with).

    Raises:
        ConfigError: the run already finished, or it trained on a table in memory and `data` is None.
    """
    log = log or (lambda msg: None)
    run_dir = Path(path)
    started = _killed_at_start(run_dir)
    info = {} if started else check_run(run_dir, finished=False)
    if info.get("status") == "finished" and (run_dir / "metrics.json").is_file():
        raise ConfigError(f"{run_dir}: this run already finished; nothing to resume. "
                          f"Use `fitloop report {run_dir}` to see it.")
    main = is_main_process()  # rank 0 holds the lock (RunLockedError, naming the pid, while the run is alive)
    with hold_run_dir(run_dir) if main else contextlib.nullcontext():
        saved = load_toml(str(run_dir / "config.toml"))
        legacy = {k: v for k, v in LEGACY_DEFAULTS.items() if k not in saved}  # a run written before these keys
        cfg = resolve_run_config(legacy, saved)
        if quiet is not None:
            cfg.train.quiet = quiet
        if data is None and not cfg.data.path:
            raise ConfigError(f"{run_dir}: this run trained on a table in memory, so resuming it needs that table "
                              f"again: fitloop.tabular.resume({str(run_dir)!r}, data=TABLE).")
        t_start = time.perf_counter()
        p = prepare_run(cfg, log, data)
        p.t_command = t_start
        p.user_callbacks = list(callbacks)
        t0 = time.perf_counter()
        if find_checkpoints(run_dir):
            _build_trainer(cfg, p, run_dir)
            p.trainer.resume(p.splits["train"], p.splits.get("val"), force=force)
        else:  # every seed is in the config: the same run as one never interrupted
            log("no checkpoint yet: starting the run again from the beginning")
            if main:
                clear_run_dir(run_dir, keep=("config.toml",))
            _start(cfg, p, run_dir, info.get("command"))
            p.trainer.fit(p.splits["train"], p.splits.get("val"))
        p.timings["train"] = time.perf_counter() - t0
        return _finish(cfg, p, run_dir)


def _killed_at_start(run_dir: Path) -> bool:
    """A `fitloop train` directory killed before its run.json: the config is written, nothing else ran."""
    cfg = run_dir / "config.toml"
    if (run_dir / "run.json").exists() or not cfg.is_file():
        return False
    with open(cfg, encoding="utf-8", errors="replace") as f:
        return f.readline().startswith(CONFIG_HEADER)


def _finish(cfg: RunConfig, p: PreparedRun, out_dir: Path) -> RunResult:
    """Evaluate on the held-out rows, write the bundle (with the preprocessor), metrics and summary."""
    trainer, task, info = p.trainer, p.task, p.info
    history = trainer.history
    has_val = "val" in p.splits
    eval_split = "test" if "test" in p.splits else ("val" if has_val else None)
    metrics: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    if eval_split is not None:
        X, y = p.splits[eval_split]
        raw = trainer.predict(X, output="raw")
        y_true = y if task == "classification" else unscale(y, info["target_scaling"])
        metrics = score(task, raw, y_true, info["target_scaling"])
        baseline = score(task, baseline_outputs(task, info, len(X)), y_true, info["target_scaling"])
        if is_main_process():
            _write_predictions(out_dir, p.rows[eval_split], p.targets.get(eval_split, y_true), raw, info)
    best_epoch = training.best_epoch(p.callbacks, history)
    improving = training.still_improving(history, trainer.stop_reason, best_epoch)
    if improving:
        p.notes.append(improving)
    trainer.save(str(out_dir / "model"), extra={"preprocessor": p.pre.to_dict(), "table": info})  # rank 0 writes
    if is_main_process():
        write_json_atomic(out_dir / "metrics.json", {"split": eval_split, "rows": len(p.splits[eval_split][0])
                                               if eval_split else 0, "metrics": metrics, "baseline": baseline,
                                               "baseline_kind": info["baseline_kind"]})
        _log_final(p, out_dir, eval_split, metrics)
    p.timings["total"] = time.perf_counter() - p.t_command  # from the command's start, as to_first_step
    if p.first_step is not None and p.first_step.seconds is not None:
        p.timings["to_first_step"] = p.first_step.seconds
        if p.first_step.since_launch is not None:
            p.timings["launch_to_first_step"] = p.first_step.since_launch
        p.timings["launch_to_first_step_cpu"] = p.first_step.cpu
    compiled = trainer.training_step.compiled if trainer.training_step is not None else None
    if compiled is not None:  # compile="step": reported apart from training
        p.timings["compile"] = compiled.compile_seconds
    rows = {k: len(v[0]) for k, v in p.splits.items()}
    n_params = sum(q.numel() for q in trainer.model.parameters())
    result = RunResult(out_dir, task, rows, p.n_inputs, p.n_features, n_params, trainer.epoch, cfg.train.epochs,
                       best_epoch, p.timings, eval_split, metrics, baseline, info["baseline_kind"], p.notes,
                       trainer.stop_reason, summary(trainer.model, (p.n_features,), verbose=False), improving)
    if is_main_process():
        merge_run_json(out_dir, {
            **p.run_fields, "rows": rows, "inputs": p.n_inputs, "features": p.n_features, "parameters": n_params,
            "epochs": trainer.epoch, "best_epoch": best_epoch, "stop_reason": trainer.stop_reason,
            "still_improving": improving is not None, "budget": training.budget_fields(p.budget),
            "linear_init_ridge": p.ridge,
            "device": str(trainer.device), "timings": p.timings, "notes": p.notes,
            "target_distribution": _target_distribution(p)})
    return result


def _write_predictions(out_dir: Path, rows: np.ndarray, y_true: Any, raw: Any, info: dict[str, Any]) -> None:
    """The held-out split's targets and predictions (original labels or units) as CSV, for `fitloop report`'s
    confusion matrix or predicted-vs-actual plots; `row` indexes the data file's rows (as splits.json)."""
    if info["task"] == "classification":
        classes = info["classes"]
        target = [classes[i] for i in y_true.long().tolist()]
        pred = [classes[i] for i in raw.argmax(-1).tolist()]
    else:
        pred_units = unscale(raw.reshape(-1).double(), info["target_scaling"]).float()
        target, pred = [str(v) for v in y_true.numpy()], [str(v) for v in pred_units.numpy()]  # float32, shortest
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "target", "prediction"])
    w.writerows(zip(rows.tolist(), target, pred))
    atomic_write_bytes(out_dir / PREDICTIONS_FILE, buf.getvalue().encode("utf-8"))


def _target_distribution(p: PreparedRun) -> dict[str, Any]:
    """Per split: class counts, or the target's mean, std and quantiles in its own units."""
    out = {}
    for name, (_, y) in p.splits.items():
        out[name] = target_distribution(p.targets.get(name, y), p.task, p.info["classes"])
    return out


def merge_run_json(run_dir: Path, fields: dict[str, Any]) -> None:
    """Add the table run's fields to `run.json` (the checkpointer owns its status fields; the size search
    adds its own)."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    info.update(fields)
    atomic_write_bytes(path, (json.dumps(info, indent=2) + "\n").encode())
