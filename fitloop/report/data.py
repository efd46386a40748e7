"""What a report shows, gathered from a run directory or from a Trainer: `ReportData`.

A run directory gives what it holds (`run.json`, `history.jsonl`, `config.toml`/`config.json`,
`metrics.json`, `test_predictions.csv`, `model/`); whatever is missing (an interrupted run has no
model, a run without validation data no val_loss, a run written before fitloop saved test predictions
no predicted-vs-actual) is listed in `absent`, never an error. Only a directory that is not a run
at all is refused (`NotARunDirectory`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RUN_FORMAT
from .summary import summary

# `fitloop runs` and `fitloop report` read run directories through this module without torch, so what
# needs torch (the bundle, the verdict, the metrics) or numpy is imported in the functions that use it.

if TYPE_CHECKING:
    from ..trainer import Trainer
    from .summary import ModelSummary

__all__ = ["ReportData", "NotARunDirectory", "from_run_dir", "from_trainer", "target_distribution",
           "run_status", "read_history", "read_json", "PREDICTIONS_FILE"]

PREDICTIONS_FILE = "test_predictions.csv"  # written by `fitloop train` (fitloop.tabular.pipeline)
TIME_KEYS = ("load", "preprocess", "train", "compile", "to_first_step", "total")


class NotARunDirectory(FileNotFoundError):
    """The path given to `fitloop report` (or `from_run_dir`) is not a fitloop run directory."""


@dataclass
class ReportData:
    """Everything a report shows; each part may be missing, and `absent` says which and why."""

    title: str
    source: str
    status: str | None = None
    message: str | None = None
    task: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    monitor: str = "val_loss"
    config: dict[str, Any] | str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    model: ModelSummary | None = None
    split: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    baseline_kind: str | None = None
    classes: list[Any] | None = None
    y_true: list[Any] | None = None
    y_pred: list[Any] | None = None
    verdict: dict[str, Any] | None = None
    loss_units: str | None = None  # what the losses are in when not the target's units ("standardised target")
    timings: dict[str, float] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_classification(self) -> bool:
        return self.task in ("classification", "binary", "multiclass")

    @property
    def confusion(self) -> list[list[int]] | None:
        """The confusion matrix on the test split: from the predictions, else from `metrics`."""
        if self.y_true is not None and self.y_pred is not None and self.classes and self.is_classification:
            n = len(self.classes)
            cm = [[0] * n for _ in range(n)]
            for t, p in zip(self.y_true, self.y_pred):
                cm[int(t)][int(p)] += 1
            return cm
        saved = self.metrics.get("confusion_matrix")
        return saved if isinstance(saved, list) else None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_history(path: Path) -> list[dict[str, Any]]:
    """The lines of `history.jsonl`; a truncated last line (a killed run) is left out."""
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def run_status(info: dict[str, Any]) -> str:
    """`finished`, `interrupted`, `failed` or `running`; a `running` run whose process is gone was killed
    (SIGKILL, a crash, a reboot): `interrupted`."""
    status = str(info.get("status") or "unknown")
    if status == "running" and not _pid_alive(info.get("pid")):
        return "interrupted"
    return status


def check_run_dir(path: str | os.PathLike) -> dict[str, Any]:
    """`run.json` of a run directory, or `NotARunDirectory` naming what is missing."""
    p = Path(path)
    if not p.exists():
        what = "does not exist"
    elif not p.is_dir():
        what = "is not a directory"
    elif not (p / "run.json").is_file():
        what = "has no run.json (every fitloop run directory has one)"
    else:
        info = read_json(p / "run.json")
        if isinstance(info, dict) and info.get("format") == RUN_FORMAT:
            return info
        what = "has a run.json that is not a fitloop run's (unreadable, or no \"format\": \"fitloop-run\")"
    raise NotARunDirectory(f"{path} is not a fitloop run directory: it {what}. Pass a directory written by "
                           "`fitloop train` or by Trainer(run_dir=...) (`fitloop runs` lists them).")


def target_distribution(y: Any, task: str | None, classes: list[Any] | None = None) -> dict[str, Any]:
    """Class counts (classification) or mean, std and quantiles (regression) of one split's targets."""
    import numpy as np

    a = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y).reshape(-1)
    if task in ("classification", "binary", "multiclass"):
        idx, counts = np.unique(a.astype(np.int64), return_counts=True)
        names = [str(classes[i]) if classes and 0 <= i < len(classes) else str(i) for i in idx]
        return {"counts": dict(zip(names, (int(c) for c in counts)))}
    a = a.astype(np.float64)
    if not len(a):
        return {}
    q = np.quantile(a, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "max": float(q[4])}


def _best_epoch(history: list[dict[str, Any]], monitor: str, mode: str = "min") -> int | None:
    rows = [h for h in history if isinstance(h.get(monitor), (int, float))]
    if not rows:
        return None
    pick = min if mode == "min" else max
    return pick(rows, key=lambda h: h[monitor]).get("epoch")


# ------------------------------------------------------------------------------------ run directory


def from_run_dir(path: str | os.PathLike) -> ReportData:
    """Gather a report from a run directory (finished, interrupted or failed; old runs too).

    Raises:
        NotARunDirectory: `path` is not a run directory (naming what is missing).
    """
    p = Path(path)
    info = check_run_dir(p)
    d = ReportData(title=p.resolve().name, source=str(p), status=run_status(info), message=info.get("message"),
                   task=info.get("task"))
    d.history = read_history(p / "history.jsonl")
    if not (p / "history.jsonl").is_file():
        d.absent.append("history.jsonl: no epoch history, so no curves")
    elif not d.history:
        d.absent.append("the history is empty: no epoch finished, so no curves")
    cfg_json = read_json(p / "config.json")
    train_cfg = cfg_json.get("config", {}) if isinstance(cfg_json, dict) else {}
    d.monitor = train_cfg.get("monitor", "val_loss") if isinstance(train_cfg, dict) else "val_loss"
    toml = p / "config.toml"
    d.config = toml.read_text(encoding="utf-8") if toml.is_file() else (train_cfg or None)
    if d.config is None:
        d.absent.append("config: neither config.toml nor config.json")
    meta = read_json(p / "model" / "fitloop.json")
    table = meta.get("table", {}) if isinstance(meta, dict) else {}
    d.task = d.task or table.get("task") or (meta or {}).get("task")
    d.classes = table.get("classes") or None
    d.model = _bundle_summary(p / "model", meta, d.absent)
    if not d.history:
        d.absent.append("the history is empty: no epoch finished, so no curves")
    elif "val_loss" not in d.history[0]:
        d.absent.append("validation: the run had no validation data, so no val_loss curve and no overfitting "
                        "check")
    d.best_epoch = info["best_epoch"] if isinstance(info.get("best_epoch"), int) else _best_epoch(  # 0: the start
        d.history, d.monitor if d.history and d.monitor in d.history[0] else "loss", train_cfg.get("mode", "min"))
    d.data = {k: info[k] for k in ("data", "target", "rows", "inputs", "features") if info.get(k) is not None}
    if table.get("feature_names"):
        d.data["feature_names"] = table["feature_names"]
    d.data["target_distribution"] = info.get("target_distribution") or _train_distribution(table)
    if not d.data["target_distribution"]:
        d.absent.append("target distribution: not recorded in this run")
    _read_metrics(p, d)
    if table.get("target_scaling"):  # a table run's regression trains on the standardised target
        d.loss_units = "standardised target"
    d.verdict = info.get("verdict") or _judge_history(d, train_cfg, table)
    d.timings = {k: float(v) for k, v in (info.get("timings") or {}).items() if isinstance(v, (int, float))}
    if isinstance(info.get("elapsed_s"), (int, float)):
        d.timings.setdefault("elapsed", float(info["elapsed_s"]))
    d.notes = list(info.get("notes") or []) + d.notes
    return d


def _bundle_summary(bundle: Path, meta: Any, absent: list[str]) -> ModelSummary | None:
    if not isinstance(meta, dict):
        absent.append("model summary: no model bundle (model/ is written when the run finishes)")
        return None
    spec = meta.get("spec")
    if not spec:
        absent.append(f"model summary: the bundle holds a {meta.get('model_class')} without a stored spec, so "
                      "fitloop cannot rebuild it (trainer.report() summarises it)")
        return None
    from ..bundle import build_spec

    model = build_spec(spec)  # the architecture is all a summary needs: no weights are read
    return summary(model, (int(spec["in_features"]),), verbose=False)


def _train_distribution(table: dict[str, Any]) -> dict[str, Any]:
    """For runs that predate `target_distribution` in run.json: the training split's, from the bundle."""
    if table.get("class_prior") and table.get("classes"):
        return {"train": {"share": {str(c): round(float(p), 4) for c, p in zip(table["classes"],
                                                                               table["class_prior"])}}}
    if table.get("target_scaling"):
        return {"train": {k: float(v) for k, v in table["target_scaling"].items()}}
    return {}


def _read_metrics(p: Path, d: ReportData) -> None:
    m = read_json(p / "metrics.json")
    if not isinstance(m, dict):
        d.absent.append("test metrics: no metrics.json (fitloop train writes it when the run finishes; runs "
                        "of Trainer(run_dir=...) have no test split: use trainer.report(path, test=...))")
        return
    d.split, d.metrics, d.baseline = m.get("split"), m.get("metrics") or {}, m.get("baseline") or {}
    d.baseline_kind = m.get("baseline_kind")
    rows = _read_predictions(p / PREDICTIONS_FILE, d)
    if rows is None:
        what = "confusion matrix from metrics.json only" if d.is_classification else \
            "no predicted-vs-actual or residual plot"
        d.absent.append(f"test-split predictions: no {PREDICTIONS_FILE} (runs written before fitloop saved test "
                        f"predictions lack it): {what}")


def _read_predictions(path: Path, d: ReportData) -> list[Any] | None:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if d.is_classification:
        index = {str(c): i for i, c in enumerate(d.classes or [])}
        try:
            d.y_true = [index[r["target"]] for r in rows]
            d.y_pred = [index[r["prediction"]] for r in rows]
        except KeyError:
            return None
    else:
        d.y_true = [float(r["target"]) for r in rows]
        d.y_pred = [float(r["prediction"]) for r in rows]
    return rows


def _judge_history(d: ReportData, train_cfg: dict[str, Any], table: dict[str, Any]) -> dict[str, Any] | None:
    """Runs that predate saved verdicts: judged now, from the history (the CLI's baseline loss is known:
    the class entropy for cross-entropy, 1 for MSE on the standardized target)."""
    if not d.history:
        return None
    from ..diagnose.verdict import STANDARDISED, judge  # imports torch

    base = None
    if table.get("class_prior"):
        base = -sum(q * math.log(q) for q in table["class_prior"] if q > 0)
    elif table.get("target_scaling"):
        base = 1.0
    v = judge(d.history, baseline_loss=base, lr=train_cfg.get("lr"), units=STANDARDISED if d.loss_units else None)
    d.notes.append("the verdict was judged by fitloop report from the history: this run predates saved verdicts")
    return v.to_dict()


# ------------------------------------------------------------------------------------------ trainer


def from_trainer(trainer: Trainer, test: Any = None) -> ReportData:
    """Gather a report from a Trainer after `fit` (its history, model, data; the test split if given)."""
    from ..callbacks.verdict import verdict_in
    from ..data import Split
    from ..diagnose.verdict import targets_of, verdict_of
    from ..evaluation import resolved_task

    name = Path(trainer.config.run_dir).name if trainer.config.run_dir else type(trainer.model).__name__
    d = ReportData(title=name, source="Trainer", status="finished" if trainer.history else "not trained",
                   task=resolved_task(trainer.task), history=list(trainer.history), monitor=trainer.config.monitor,
                   config=trainer.config.to_dict())
    if not d.history:
        d.absent.append("the history is empty: call fit first, so no curves")
    elif "val_loss" not in d.history[0]:
        d.absent.append("validation: fit had no validation data, so no val_loss curve and no overfitting check")
    d.best_epoch = _best_epoch(d.history, d.monitor if d.history and d.monitor in d.history[0] else "loss",
                               trainer.config.mode)
    splits = {"train": trainer.train_data, "val": trainer.val_data, "test": test}
    d.data = {"rows": {}, "target_distribution": {}}
    for k, data in splits.items():
        if data is None:
            continue
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = Split(*data)
        d.data["rows"][k] = len(getattr(data, "dataset", data))  # a DataLoader's rows, not its batches
        y = targets_of(data)
        if y is not None:
            d.data["target_distribution"][k] = target_distribution(y, d.task)
    x: Any = None
    for part in (splits["train"], test):  # the input shape: from the training data, else the test split's
        x = getattr(part, "X", None)
        if x is None and isinstance(part, (tuple, list)) and len(part) == 2:
            x = part[0]
        if x is not None:
            break
    if x is not None and hasattr(x, "shape") and len(x.shape) >= 1:
        d.data["features"] = int(x.shape[1]) if len(x.shape) == 2 else list(x.shape[1:])
        d.model = summary(trainer.model, tuple(x.shape[1:]), verbose=False)
    else:
        d.absent.append("model summary: the input shape is unknown (neither the training data nor test= is in "
                        "memory)")
    if test is None:
        d.absent.append("test split: pass test= to trainer.report for test metrics, the baseline and the "
                        + ("confusion matrix" if d.is_classification else "predicted-vs-actual plots"))
    else:
        _score_test(trainer, d, test, splits["train"])
    d.verdict = verdict_in(trainer) or (verdict_of(trainer).to_dict() if d.history else None)
    if ((d.verdict or {}).get("facts") or {}).get("units"):  # the verdict knows the losses' units
        d.loss_units = "standardised target"
    times = [float(h.get("time", 0.0)) for h in d.history]
    if times:
        d.timings = {"train": sum(times), "per_epoch": sum(times) / len(times)}
    return d


def _score_test(trainer: Trainer, d: ReportData, test: Any, train: Any) -> None:
    import torch

    from ..data import Split
    from ..diagnose.verdict import targets_of
    from ..metrics import MetricSet, to_python

    if isinstance(test, (tuple, list)) and len(test) == 2:
        test = Split(*test)
    d.split = "test"
    d.metrics = {k: v for k, v in trainer.evaluate(test).items()}
    y, y_train = targets_of(test), targets_of(train)
    if y is None:
        return
    y = y.cpu()
    raw = trainer.predict(test)
    if d.is_classification:
        d.y_pred = trainer.predict(test, output="class").reshape(-1).tolist()
        d.y_true = y.long().reshape(-1).tolist()
        d.classes = list(range(max(int(raw.shape[-1]) if raw.ndim > 1 and raw.shape[-1] > 1 else 2,
                                   max(d.y_true + d.y_pred) + 1)))
    else:
        d.y_pred, d.y_true = raw.reshape(-1).tolist(), y.float().reshape(-1).tolist()
    if y_train is None:
        d.absent.append("baseline: the training targets are not in memory (a DataLoader), so there is no trivial "
                        "baseline to compare the test metrics with")
        return
    y_train = y_train.cpu()
    n = len(y)
    if d.is_classification:  # the majority class of the training targets, as logits
        counts = torch.bincount(y_train.long().reshape(-1), minlength=len(d.classes or [])).double()
        prior = torch.log((counts / counts.sum()).clamp_min(1e-12)).float()
        out = prior.expand(n, -1) if d.task != "binary" else prior[1:2].expand(n, 1) - prior[0]
        d.baseline_kind = "majority class"
    else:
        out = y_train.float().mean(0, keepdim=True).expand(n, *y.shape[1:]).reshape(raw.shape)
        d.baseline_kind = "train mean"
    base = MetricSet(d.task or "regression").compute(out, y)
    try:
        base["loss"] = trainer.compute_loss(out.to(trainer.device), y.to(trainer.device))
    except (RuntimeError, ValueError, TypeError):  # a loss that rejects the constant output: metrics only
        pass
    d.baseline = {k: to_python(v) for k, v in base.items()}
