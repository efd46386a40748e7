"""Table to run directory: what `fitloop train` and `resume` do, usable from Python too.

    cfg = resolve_run_config({"data.path": "wine.csv", "data.target": "cultivar"})
    result = train_table(cfg, out="runs/wine")          # writes the run directory atomically
    run = load_run("runs/wine")
    preds, notes = predict_file(run, "new.csv")         # a pyarrow.Table: [id], prediction[, proba_*]
    report = evaluate_file(run, "labelled.csv")         # {"metrics": ..., "baseline": ...}

Run directory layout (everything JSON/TOML/safetensors, no pickle)::

    RUN_DIR/
      run.json        status, versions, timings, rows per split, epochs, notes
      config.toml     the resolved configuration (`fitloop train --config RUN_DIR/config.toml` reruns it)
      metrics.json    held-out metrics next to a trivial baseline (majority class / train mean)
      history.jsonl   one line per epoch
      splits.json     row indices of each split
      model/          the bundle: model.safetensors + fitloop.json (spec, preprocessor, target info)

The directory is built under a hidden temporary sibling and renamed into place at the end, so a
failed run never leaves a half-written RUN_DIR. Opening a run to predict and evaluate is
`fitloop.cli.runs` (`load_run`, `predict_file` and `evaluate_file` are importable from here too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..config import RUN_FORMAT
from ..files import atomic_write_bytes, write_json_atomic
from .run_config import Budget, ConfigError, RunConfig, training_budget
from .runs import (
    LoadedRun,
    NotARunError,
    baseline_outputs,
    check_run,
    evaluate_file,
    load_run,
    predict_file,
    score,
    unscale,
)

__all__ = ["RunResult", "LoadedRun", "train_table", "resume_run", "load_run", "predict_file", "evaluate_file",
           "RUN_FORMAT", "NotARunError"]


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
    still_improving: str | None = None  # the advice when the best epoch was the last one


# ------------------------------------------------------------------------------------------- train

LOGIT_SCALE = 4.0  # linear_init for classification: the one-hot targets the linear start fits, as logits


def _default_out(target: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", target).strip("._") or "run"
    return Path("runs") / f"{safe}-{stamp}"


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out}: the directory exists and is not empty; pass --overwrite to replace "
                          f"it, or choose another --out.")


def _split_rows(table, cfg: RunConfig) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices, stratified by class for classification."""
    import torch

    from ..data import Preprocessor
    from ..data.splitting import split_indices

    fr = tuple(cfg.data.split)
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.train.seed
    labels = None
    if table.task == "classification":
        enc = Preprocessor(table.target, "classification", [], table.classes)
        labels = torch.from_numpy(enc.encode_target(table.data))
    names = ("train", "val", "test") if len(fr) == 3 else ("train", "test")
    parts = split_indices(len(table), fr, seed, labels)
    return {name: np.sort(p.numpy()) for name, f, p in zip(names, fr, parts) if f > 0 and len(p)}


@dataclass
class _PreparedRun:
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
    trainer: Any = None
    callbacks: list = field(default_factory=list)
    run_fields: dict[str, Any] = field(default_factory=dict)
    t_command: float = 0.0
    first_step: Any = None
    budget: Budget | None = None


def _prepare(cfg: RunConfig, log: Callable[[str], None]) -> _PreparedRun:
    """Read the table, split it, fit the preprocessing on the training rows: deterministic for a config,
    so `resume` rebuilds exactly what `train` had. Raises on bad data before anything is written."""
    import torch

    from ..data import Table, TableError

    d = cfg.data
    if not d.path:
        raise ConfigError("no data file: pass DATA (fitloop train DATA --target COL) or set data.path.")
    if not d.target:
        raise ConfigError("no target column: pass --target COL or set data.target.")
    table = Table.read(d.path, target=d.target, task=d.task, drop=d.drop, id=d.id, encoding=d.encoding,
                       max_categories=d.max_categories, delimiter=d.delimiter)
    load_s = table.load_seconds
    log(f"Loaded {d.path}: {len(table)} rows, {len(table.columns)} columns ({load_s:.2f}s); task: {table.task}.")
    t0 = time.perf_counter()
    rows = _split_rows(table, cfg)
    prep = table.prepare(rows)
    task, classes, n_inputs = table.task, cast(list[Any], table.classes), len(table.feature_columns)
    notes = list(prep.notes)
    del table  # the Arrow table is no longer needed: free it before training, and hand the pages back
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    pre = prep.preprocessor
    n_features = len(pre.feature_names)
    if n_features == 0:
        raise TableError(f"no usable feature columns are left ({'; '.join(notes) or 'none found'}); "
                         f"the model needs at least one input.")
    splits: dict[str, Any] = {name: (s.X, s.y) for name, s in prep.splits.items()}  # every split has a y
    del prep
    info: dict[str, Any] = {"target": d.target, "id": d.id, "task": task, "classes": classes,
                            "feature_names": pre.feature_names}
    if task == "classification":
        counts = torch.bincount(splits["train"][1], minlength=len(classes)).double()
        info["class_prior"] = (counts / counts.sum()).tolist()
        info["target_scaling"] = None
    else:
        ytr = splits["train"][1].double()
        std = float(ytr.std(unbiased=False))
        info["target_scaling"] = scaling = {"mean": float(ytr.mean()), "std": std if std > 0 else 1.0}
        splits = {k: (X, ((y - scaling["mean"]) / scaling["std"]).float()) for k, (X, y) in splits.items()}
    info["baseline_kind"] = "majority class" if task == "classification" else "train mean"
    timings = {"load": load_s, "preprocess": time.perf_counter() - t0}
    budget = training_budget(cfg, len(splits["train"][0]))
    budget.apply(cfg)
    log(budget.describe() + ".")
    return _PreparedRun(splits, rows, pre, info, task, n_inputs, n_features, notes, timings, budget=budget)


def _build_trainer(cfg: RunConfig, p: _PreparedRun, run_dir: Path) -> None:
    """The model and Trainer of a run, checkpointing into `run_dir`."""
    import torch

    from ..callbacks import EarlyStopping, TimeLimit
    from ..models import MLPSpec, SkipMLP, build_mlp, fit_linear_path
    from ..trainer import Trainer, seed_everything

    classes = p.info["classes"]
    seed_everything(cfg.train.seed)  # the initial weights follow the seed too
    spec = MLPSpec(p.n_features, hidden=cfg.model.hidden, out_features=len(classes) if classes else 1,
                   activation=cfg.model.activation, dropout=cfg.model.dropout, skip=cfg.model.skip)
    model = build_mlp(spec)
    if cfg.model.linear_init and isinstance(model, SkipMLP):
        X, y = p.splits["train"]
        # classes as one-hot logits of +-LOGIT_SCALE/2 around their mean: a linear start for cross-entropy
        t = y if p.task != "classification" else LOGIT_SCALE * torch.nn.functional.one_hot(y, len(classes)).float()
        fit_linear_path(model, X, t)
    loss = cfg.train.loss or ("cross_entropy" if p.task == "classification" else "mse")
    has_val = "val" in p.splits
    if cfg.train.early_stopping and has_val:
        p.callbacks.append(EarlyStopping(patience=cfg.train.early_stopping,
                                         rel_delta=cfg.train.early_stopping_rel_delta))
    elif cfg.train.early_stopping and not has_val:
        p.notes.append("early stopping is off: there is no validation split")
    if cfg.train.max_time:
        p.callbacks.append(TimeLimit(cfg.train.max_time))
    tcfg = cfg.train.trainer_config()
    tcfg.run_dir = str(run_dir)
    p.first_step = _FirstStep(p.t_command)
    p.trainer = Trainer(model, loss=loss, optimizer=cfg.train.optimizer, scheduler=cfg.train.scheduler,
                        callbacks=[*p.callbacks, p.first_step], config=tcfg)


class _FirstStep:
    """Records how long the command took to reach its first training step (imports, reading,
    preprocessing and set-up included): the start-up cost a user waits through. `seconds` counts from
    `t0` (the command's `main`), `since_launch` from the process's start (Linux; None elsewhere)."""

    def __new__(cls, t0: float):
        from ..callbacks import Callback

        class FirstStep(Callback):
            def __init__(self):
                self.seconds: float | None = None
                self.since_launch: float | None = None
                self.cpu: float | None = None

            def on_train_batch_end(self, trainer, step, loss):
                if self.seconds is None:
                    self.seconds = time.perf_counter() - t0
                    self.since_launch = process_age()
                    self.cpu = time.process_time()  # CPU seconds since launch: steadier on a busy machine

        return FirstStep()


def process_age() -> float | None:
    """Seconds since this process started (from /proc, 10 ms resolution): the interpreter's own start-up
    and the imports before `main` count too. None where /proc is not there."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def train_table(cfg: RunConfig, out: str | os.PathLike | None = None, *, overwrite: bool = False,
                log: Callable[[str], None] | None = None, argv: list[str] | None = None,
                t_command: float | None = None) -> RunResult:
    """Read `cfg.data.path`, split, fit the preprocessing on train, train an MLP, evaluate, write the run.

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

    Raises:
        ConfigError, TableError, ValueError: bad settings or data (nothing is written).
    """
    log = log or (lambda msg: None)
    out_dir = Path(out) if out is not None else _default_out(cfg.data.target or "run")
    _check_out(out_dir, overwrite)
    t_start = time.perf_counter()
    p = _prepare(cfg, log)
    p.t_command = t_start if t_command is None else t_command
    cfg.data.path = str(Path(cast(str, cfg.data.path)).resolve())  # `resume` finds the data from any directory
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    try:
        (out_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        write_json_atomic(out_dir / "splits.json", {
            "note": "row indices into the data rows of the file (0-based, header excluded), after removing "
                    "rows whose target is missing",
            "seed": cfg.data.seed if cfg.data.seed is not None else cfg.train.seed,
            **{k: v.tolist() for k, v in p.rows.items()}}, indent=None)
        _build_trainer(cfg, p, out_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # nothing trained yet: leave nothing behind
        raise
    p.run_fields = {"command": argv, "data": cfg.data.path, "target": cfg.data.target, "task": p.task}
    t0 = time.perf_counter()
    p.trainer.fit(p.splits["train"], p.splits.get("val"))
    p.timings["train"] = time.perf_counter() - t0
    return _finish(cfg, p, out_dir, t_start)


def resume_run(path: str | os.PathLike, *, force: bool = False, log: Callable[[str], None] | None = None,
               quiet: bool | None = None) -> RunResult:
    """Resume an interrupted `fitloop train` run from its latest good checkpoint, then evaluate it.

    The data is read again from the path in `config.toml` and prepared exactly as before; the
    checkpoint refuses it when the data or the settings changed, unless `force`.
    """
    from .run_config import LEGACY_DEFAULTS, load_toml, resolve_run_config

    log = log or (lambda msg: None)
    run_dir = Path(path)
    info = check_run(run_dir, finished=False)
    if info.get("status") == "finished" and (run_dir / "metrics.json").is_file():
        raise ConfigError(f"{run_dir}: this run already finished; nothing to resume. "
                          f"Use `fitloop report {run_dir}` to see it.")
    saved = load_toml(str(run_dir / "config.toml"))
    legacy = {k: v for k, v in LEGACY_DEFAULTS.items() if k not in saved}  # a run written before these keys
    cfg = resolve_run_config(legacy, saved)
    if quiet is not None:
        cfg.train.quiet = quiet
    t_start = time.perf_counter()
    p = _prepare(cfg, log)
    p.t_command = t_start
    _build_trainer(cfg, p, run_dir)
    t0 = time.perf_counter()
    p.trainer.resume(p.splits["train"], p.splits.get("val"), force=force)
    p.timings["train"] = time.perf_counter() - t0
    return _finish(cfg, p, run_dir, t_start)


def _finish(cfg: RunConfig, p: _PreparedRun, out_dir: Path, t_start: float) -> RunResult:
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
    best_epoch = _best_epoch(p.callbacks, history)
    improving = still_improving(history, best_epoch, trainer.stop_reason)
    if improving:
        p.notes.append(improving)
    trainer.save(str(out_dir / "model"), extra={"preprocessor": p.pre.to_dict(), "table": info})
    write_json_atomic(out_dir / "metrics.json", {"split": eval_split, "rows": len(p.splits[eval_split][0])
                                           if eval_split else 0, "metrics": metrics, "baseline": baseline,
                                           "baseline_kind": info["baseline_kind"]})
    p.timings["total"] = time.perf_counter() - t_start
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
                       trainer.stop_reason, improving)
    _merge_run_json(out_dir, {
        **p.run_fields, "rows": rows, "inputs": p.n_inputs, "features": p.n_features, "parameters": n_params,
        "epochs": trainer.epoch, "best_epoch": best_epoch, "stop_reason": trainer.stop_reason,
        "still_improving": improving is not None, "budget": _budget_fields(p.budget),
        "device": str(trainer.device), "timings": p.timings, "notes": p.notes})
    return result


def _best_epoch(callbacks: list, history: list[dict[str, Any]]) -> int | None:
    """The epoch whose weights the run keeps: early stopping's best, else the lowest val_loss, else the last."""
    from ..callbacks import EarlyStopping

    stopper = next((cb for cb in callbacks if isinstance(cb, EarlyStopping)), None)
    if stopper is not None and stopper.best_epoch:
        return stopper.best_epoch
    if history and "val_loss" in history[0]:
        return min(history, key=lambda h: h["val_loss"])["epoch"]
    return history[-1]["epoch"] if history else None


def still_improving(history: list[dict[str, Any]], best_epoch: int | None, stop_reason: str | None) -> str | None:
    """The note for a run whose best validation epoch is its last one, with how to train longer; else None.

    Without validation rows there is no held-out loss to judge by, so it says nothing.
    """
    if not history or best_epoch is None or "val_loss" not in history[-1] or best_epoch != history[-1]["epoch"]:
        return None
    epochs = history[-1]["epoch"]
    if stop_reason and stop_reason.startswith("time limit"):
        how = f"the time limit ended it: pass a larger --max-time (now {stop_reason.split('max_time ')[-1]})"
    else:
        how = f"train longer with --epochs {2 * epochs}"
    return (f"the model was still improving: the best val_loss was at the last epoch ({epochs}), so more "
            f"training would likely help; {how}")


def _budget_fields(budget: Budget | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    return {"epochs": budget.epochs, "steps_per_epoch": budget.steps_per_epoch, "steps": budget.steps,
            "batch_size": budget.batch_size, "patience": budget.patience, "max_time": budget.max_time,
            "decided": budget.decided}


def _merge_run_json(run_dir: Path, fields: dict[str, Any]) -> None:
    """Add the table run's fields to `run.json` (the checkpointer owns its status fields)."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    info.update(fields)
    atomic_write_bytes(path, (json.dumps(info, indent=2) + "\n").encode())
