"""Loggers people already use, each a callback: the epoch history as CSV, TensorBoard, MLflow.

    trainer = fl.Trainer(model, epochs=20, run_dir="runs/exp1",
                         callbacks=[fl.TensorBoardLogger(), fl.MLflowLogger()])

- `CSVLogger(path)`: one row per epoch (the scalar values of the epoch's logs). A run directory writes
  `history.csv` next to `history.jsonl` itself (the `Checkpointer` uses `HistoryCSV`).
- `TensorBoardLogger` (`pip install 'fitloop[tensorboard]'`): train/val loss and metrics, lr, gradient
  norm and epoch time per epoch, and the hyperparameters (the HPARAMS tab). Event files go to
  `RUN_DIR/tensorboard/` (or `tensorboard/<timestamp>/` without a run directory).
- `MLflowLogger` (`fitloop.callbacks.mlflow_logger`; `pip install 'fitloop[mlflow]'`, the light
  mlflow-skinny): the settings as params, the per-epoch metrics, the model bundle as the artifact
  `model/`, in a local `file:` store (`./mlruns`) unless `tracking_uri` or `MLFLOW_TRACKING_URI`
  names another.

The optional packages are imported in the constructors, so `import fitloop` stays light and a missing
one fails before training starts. Values are read from the epoch's `logs` dict (plain floats: no device
sync); only the main process writes. A resumed run keeps logging where it left off: TensorBoard purges
the epochs logged after the checkpoint, MLflow continues the same run (its id is in the checkpoint).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributed import is_main_process
from ..extras import require
from ..files import atomic_write_bytes
from ..step.functions import total_norm
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["CSVLogger", "HistoryCSV", "TensorBoardLogger", "scalar_logs", "run_params", "GradNorm"]


def scalar_logs(logs: dict[str, Any], *, keep_epoch: bool = False) -> dict[str, float]:
    """The numeric values of an epoch's logs (lists such as `confusion_matrix` and bools left out).

    Args:
        logs: an epoch's logs (or any dict of metrics).
        keep_epoch: keep the `epoch` key (the CSV has it as a column; the other loggers use it as the step).

    Returns:
        The int and float values, in the order of `logs`.
    """
    return {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (keep_epoch or k != "epoch")}


# --------------------------------------------------------------------------------------------- CSV


def _cell(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr: the shortest text that reads back exactly


class HistoryCSV:
    """Writes the history as CSV: a row appended per epoch, the file rewritten when a column appears.

    The columns are the scalar keys of the history in the order they first appear (`epoch`, `loss`,
    the metrics, `val_*`, `lr`, `time`, ...); a missing value is an empty cell. Rewriting from the
    history is what a resume does, so a resumed run's file equals an uninterrupted run's.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.columns: list[str] = []

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """Write the whole file from `history` (atomically)."""
        cols: dict[str, None] = {}
        for logs in history:
            cols.update(dict.fromkeys(scalar_logs(logs, keep_epoch=True)))
        self.columns = list(cols)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if history:
            w.writerow(self.columns)
            for logs in history:
                w.writerow([self._value(logs, c) for c in self.columns])
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def append(self, logs: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Add the row of `logs` (the last entry of `history`); rewrite if it brings a new column."""
        keys = scalar_logs(logs, keep_epoch=True)
        if not self.columns or any(k not in self.columns for k in keys) or not self.path.is_file():
            self.rewrite(history)
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([self._value(logs, c) for c in self.columns])
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _value(logs: dict[str, Any], col: str) -> str:
        v = logs.get(col)
        return "" if v is None or isinstance(v, (list, dict, bool)) else _cell(v)


class CSVLogger(Callback):
    """The epoch history as a CSV file (for runs without a run directory, which writes `history.csv`).

    Args:
        path: the CSV file; its directory is created. A new fit of the same Trainer keeps adding rows.

    Example:
        >>> fl.Trainer(model, epochs=20, callbacks=[fl.CSVLogger("history.csv")]).fit(train, val)
    """

    def __init__(self, path: str | os.PathLike = "history.csv"):
        self.writer = HistoryCSV(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        if is_main_process():
            self.writer.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer.rewrite(trainer.history)  # a resume: the epochs before it

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if is_main_process():
            self.writer.append(logs, trainer.history)


# ------------------------------------------------------------------------------------- shared parts


def run_params(trainer: Trainer, extra: dict[str, Any] | None = None) -> dict[str, str | int | float | bool]:
    """The run's hyperparameters as flat scalars, for TensorBoard's hparams and MLflow's params.

    Args:
        trainer: the Trainer whose settings are recorded.
        extra: more hyperparameters from the user (they win over the Trainer's).

    Returns:
        Every `TrainConfig` setting (nested ones dotted: `optimizer_kwargs.momentum`), the model,
        optimizer and loss classes, the task, the parameter count, then `extra`; `None` becomes
        `"none"`, lists and other objects their `str`.
    """
    out: dict[str, str | int | float | bool] = {}

    def put(key: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                put(f"{key}.{k}", x)
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = "none" if v is None else str(v)

    for k, v in trainer.config.to_dict().items():
        put(k, v)
    loss = trainer.loss_fn
    out.update(model=type(trainer.model).__name__, optimizer=type(trainer.optimizer).__name__,
               loss=getattr(loss, "__name__", type(loss).__name__), task=str(trainer.task),
               parameters=sum(p.numel() for p in trainer.model.parameters()))
    for k, v in (extra or {}).items():
        put(k, v)
    return out


class GradNorm:
    """The gradient norm of an epoch for the loggers, at no per-step cost by default.

    With clipping on, the Trainer logs `grad_norm` (the mean of the per-step norms) itself and that is
    used. Otherwise `"last"` measures the norm of the epoch's last optimizer step (once per epoch),
    `"mean"` measures every step (one small reduction per step, no host sync), `"off"` neither.
    """

    MODES = ("last", "mean", "off")

    def __init__(self, mode: str):
        if mode not in self.MODES:
            raise ValueError(f"grad_norm: got {mode!r}; choose one of {', '.join(self.MODES)}.")
        self.mode = mode
        self._sum: Any = None
        self._count = 0

    def step(self, trainer: Trainer) -> None:
        """After an optimizer step (the gradients are still there)."""
        cfg = trainer.config
        if self.mode == "off" or cfg.clip_grad_norm or cfg.clip_grad_value:
            return
        if self.mode == "last" and trainer.state.batch < trainer.steps_per_epoch:
            return
        grads = [p.grad for p in trainer.params if p.grad is not None]
        if grads:  # compile="step" keeps its gradients inside the graph
            norm = total_norm(grads).detach()
            self._sum = norm if self._sum is None else self._sum + norm
            self._count += 1

    def value(self, logs: dict[str, Any]) -> float | None:
        """The epoch's gradient norm (one host sync per epoch), and start the next epoch."""
        total, count, self._sum, self._count = self._sum, self._count, None, 0
        if "grad_norm" in logs:
            return float(logs["grad_norm"])
        return float(total) / count if count else None

    def epoch_values(self, logs: dict[str, Any]) -> dict[str, float]:
        """What a logger records for an epoch: the scalar logs, with the gradient norm."""
        values = scalar_logs(logs)
        norm = self.value(logs)
        if norm is not None:
            values["grad_norm"] = norm
        return values


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# -------------------------------------------------------------------------------------- TensorBoard


def _tb_tag(key: str) -> str:
    """`loss` -> `loss/train`, `val_loss` -> `loss/val` (TensorBoard groups a metric's two curves)."""
    if key in ("lr", "grad_norm", "skipped_steps"):
        return key
    if key == "time":
        return "time/epoch_s"
    return f"{key[4:]}/val" if key.startswith("val_") else f"{key}/train"


def _after_existing_event_files(log_dir: str) -> None:
    """Wait, at most a second, until a new event file's name sorts after every one already in `log_dir`.

    TensorBoard reads a directory's event files in name order, and a name starts with the creation second
    (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`). A resume within the same second as the run it resumes
    (the Python API, a test) could otherwise sort first, and its purge of the interrupted epochs would be read
    before them instead of after.
    """
    stamps = []
    for path in Path(log_dir).glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            stamps.append(int(field))
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(min(1.0, max(0.0, max(stamps) + 1 - time.time())))  # a clock set back: no long wait


class TensorBoardLogger(Callback):
    """Per-epoch scalars and the hyperparameters as TensorBoard event files.

    Tags: `loss/train`, `loss/val`, `<metric>/train`, `<metric>/val`, `lr`, `grad_norm`,
    `time/epoch_s`, with the epoch as the step; the hyperparameters (`run_params`) appear in the
    HPARAMS tab against the final losses and metrics. Needs `pip install 'fitloop[tensorboard]'`.

    Args:
        log_dir: where the event files go; default `RUN_DIR/tensorboard` when the Trainer has a run
            directory, else `tensorboard/<timestamp>`. View with `tensorboard --logdir runs`.
        grad_norm: `"last"`, `"mean"` or `"off"` (see `GradNorm`) when clipping does not measure it.
        hparams: extra hyperparameters to record (plain scalars).
        flush_secs: how often the writer flushes to disk.

    Raises:
        MissingExtraError: tensorboard is not installed.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, grad_norm: str = "last",
                 hparams: dict[str, Any] | None = None, flush_secs: int = 10):
        require("tensorboard", "tensorboard", "TensorBoardLogger")
        self.log_dir = None if log_dir is None else str(log_dir)
        self.hparams = dict(hparams or {})
        self.flush_secs = flush_secs
        self.grad_norm = GradNorm(grad_norm)
        self.writer: Any = None
        self._hparams_written = False

    def state_dict(self) -> dict[str, Any]:
        return {"log_dir": self.log_dir, "hparams_written": self._hparams_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_dir = state.get("log_dir", self.log_dir)
        self._hparams_written = bool(state.get("hparams_written"))

    def on_fit_start(self, trainer: Trainer) -> None:
        if not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter  # the `tensorboard` extra

        if self.log_dir is None:
            run_dir = trainer.config.run_dir
            self.log_dir = str(Path(run_dir) / "tensorboard") if run_dir else str(Path("tensorboard") / _stamp())
        # A resume: hide what the interrupted session logged after its checkpoint (epochs > state.epoch).
        purge = trainer.state.epoch + 1 if trainer.state.epoch or trainer.history else None
        _after_existing_event_files(self.log_dir)
        self.writer = SummaryWriter(self.log_dir, purge_step=purge, flush_secs=self.flush_secs)

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        if self.writer is not None:
            self.grad_norm.step(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        values = self.grad_norm.epoch_values(logs)
        for key, v in values.items():
            self.writer.add_scalar(_tb_tag(key), v, epoch)
        if not self._hparams_written:
            self._write_hparams(trainer, [_tb_tag(k) for k in values if k not in ("lr", "time", "grad_norm")])

    def _write_hparams(self, trainer: Trainer, metric_tags: list[str]) -> None:
        """The HPARAMS tab: the settings, linked to the scalar tags it shows for them."""
        from torch.utils.tensorboard.summary import hparams  # the `tensorboard` extra

        exp, ssi, sei = hparams(run_params(trainer, self.hparams), dict.fromkeys(metric_tags, 0.0))
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self._hparams_written = True

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
