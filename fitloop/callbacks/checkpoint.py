"""The run directory as a callback: checkpoints, exact resume, signals, status, the final bundle.

A run directory holds everything a run produced::

    runs/exp1/
      config.json       the resolved TrainConfig and its fingerprint
      run.json          status (running / finished / failed / interrupted), versions, timings, the verdict
      history.jsonl     one JSON line per epoch, appended and flushed as it goes
      history.csv       the same epochs' scalar values as CSV (rewritten with the jsonl on resume)
      splits.json       the row indices of the train/val splits (when the data carries them)
      checkpoints/      ckpt-000001-e1-s12.safetensors ..., `latest` and `best` pointer files
      model/            the final model bundle (model.safetensors + fitloop.json)

`Trainer(..., run_dir=...)` adds a `Checkpointer` as its last callback. It uses the public events
only: `on_fit_start` writes the directory (or continues it on resume) and installs SIGINT/SIGTERM
handlers; `on_optimizer_step` writes the every-N-steps checkpoints and, after a signal, a last
checkpoint before the run stops; `on_epoch_end` appends the history line and writes the epoch's
checkpoint (keep-last-K plus the best); `on_fit_end` writes the bundle (after EarlyStopping has
restored its best weights) or, after a signal, raises `RunInterrupted`; `on_exception` records a
failure. A checkpoint is `Trainer.state_dict()` plus the data fingerprint, in the format of
`fitloop.checkpoint_format`. Every file is written atomically, so a crash leaves the old file or
the new one; resuming picks the newest checkpoint that loads and verifies.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._fastpath import unwrap_model
from ..bundle import check_state_shapes
from ..checkpoint_format import (
    CheckpointWarning,
    ResumeMismatchError,
    checkpoint_name,
    find_checkpoints,
    load_checkpoint,
    load_latest,
    serialize,
)
from ..config import RESUME_IGNORED, RUN_FORMAT
from ..distributed import is_main_process, world_size
from ..distributed.fsdp import load_sharded
from ..distributed.group import barrier
from ..distributed.ranks import add_rank_states, restore_rank_state
from ..files import atomic_write_bytes, versions, write_json_atomic
from ..runlock import RunLock, hold_run_dir
from ..step import NonFiniteError
from .base import Callback
from .fingerprints import data_fingerprint, differences, split_row_indices
from .loggers import HistoryCSV
from .verdict import verdict_in

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..trainer import Trainer

__all__ = ["Checkpointer", "RunInterrupted", "data_fingerprint", "EXIT_SIGINT", "EXIT_SIGTERM"]

EXIT_SIGINT = 130   # 128 + SIGINT, the shell convention
EXIT_SIGTERM = 143  # 128 + SIGTERM
REPEAT_SECONDS = 1.0  # a second signal this soon after the first is the same request (see `_handler`)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class RunInterrupted(SystemExit):
    """Raised by `fit` after SIGINT/SIGTERM once the checkpoint is written.

    A `SystemExit`, so an uncaught one ends the process with `code` (130 for SIGINT, 143 for
    SIGTERM) and no traceback; catch it to continue in-process.
    """

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _resolve_run_dir(run_dir: Any) -> Path:
    if run_dir is True or run_dir == "auto":
        base = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return path
    return Path(run_dir)



class Checkpointer(Callback):
    """Writes a run directory and its checkpoints, through the callback events.

    Created by `Trainer(..., run_dir=...)`; `run_dir=True` or `"auto"` picks `runs/<timestamp>`.
    `config` supplies `checkpoint_every_steps`, `checkpoint_every_seconds`, `checkpoint_every_epochs`,
    `keep_last`, `monitor` and `mode`; `config.run_dir` is set to the resolved directory. While `fit`
    runs, the directory is locked for this process (`fitloop.runlock`).
    """

    def __init__(self, run_dir: str | os.PathLike | bool, config: TrainConfig):
        self.dir = _resolve_run_dir(run_dir)
        config.run_dir = str(self.dir)
        self.config = config
        self.ckpt_dir = self.dir / "checkpoints"
        self.best: dict[str, Any] | None = None   # {"name", "value", "monitor", "epoch"} of the best checkpoint
        self.last_path: Path | None = None
        self._resuming: dict[str, Any] | None = None  # the checkpoint a resume continues from
        self._last_saved_step = -1
        self._signal: int | None = None  # the signal the run stops for (with several processes: agreed on)
        self.pending_signal: int | None = None  # caught on this rank, not yet agreed on (DistributedSync)
        self._old_handlers: dict[int, Any] = {}
        self._signal_at = 0.0  # when the first signal came (time.monotonic)
        # fields run.json holds from the start (`fitloop train` adds the data, target, task and rows), so an
        # interrupted or failed run still says what it trained on
        self.run_info: dict[str, Any] = {}
        self.save_agreed = False  # several processes: every rank agreed a time-based checkpoint is due
        self._started = self._finished = False
        self._info: dict[str, Any] = {}
        self._data_fp: dict[str, Any] | None = None
        self._session_t0 = self._last_save_t = time.perf_counter()
        self._elapsed0 = 0.0
        self._lock: RunLock | None = None
        self._csv = HistoryCSV(self.dir / "history.csv")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")

    # ---- resume

    @classmethod
    def attach(cls, trainer: Trainer, run_dir: str | os.PathLike | None, checkpoint: str | None = None
               ) -> Checkpointer:
        """The trainer's Checkpointer for `run_dir` (by default the directory `checkpoint` is in),
        replacing one for another directory; appended last to `trainer.callbacks`."""
        if run_dir is None and checkpoint is not None:
            run_dir = Path(checkpoint).resolve().parent.parent
        if run_dir is None:
            raise ValueError("resume: pass run_dir= (or build the Trainer with run_dir=...).")
        mine = [cb for cb in trainer.callbacks if isinstance(cb, cls)]
        if mine and Path(mine[0].dir).resolve() == Path(run_dir).resolve():
            return mine[0]
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, cls)]
        ckpt = cls(run_dir, trainer.config)
        trainer.callbacks.append(ckpt)
        return ckpt

    def prepare_resume(self, trainer: Trainer, train: Any, val: Any = None, *, checkpoint: str | None = None,
                       force: bool = False) -> dict[str, Any]:
        """Load the checkpoint to continue from (the newest good one, or `checkpoint`) and check that
        `trainer`, its config and the data fit it. Returns the checkpoint's state for
        `Trainer.load_state_dict`, after which `continue_from` marks the resume.

        Raises:
            CheckpointError: no loadable checkpoint (never a silent fresh start).
            ResumeMismatchError: config or data changed (unless `force`).
            ValueError: the model's parameter shapes differ from the checkpoint's.
        """
        self._cleanup_temps()
        ck = load_checkpoint(checkpoint) if checkpoint is not None else load_latest(self.dir)
        where = str(ck.get("_path"))
        if int(ck.get("world_size", 1)) != world_size():
            raise ResumeMismatchError(f"Cannot resume from {where}: it was written by {ck.get('world_size', 1)} "
                                      f"process(es), this run has {world_size()}; resume with as many (the shards "
                                      "and the global batch depend on it).")
        if "dcp" in ck:  # FSDP: every rank reads its shards of the model and optimizer states
            load_sharded(trainer, ck)
        check_state_shapes(unwrap_model(trainer.model), ck["model"], where=where)
        fp = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
        problems = differences("config ", ck.get("config"), trainer.config.to_dict(), RESUME_IGNORED)
        for part in ("train", "val"):
            old, new = (ck.get("data") or {}).get(part), fp.get(part)
            if old != new:
                diffs = differences(f"{part} data ", old, new) or [f"{part} data: {old!r} -> {new!r}"]
                problems += [d.replace(" data ", " data: ", 1) for d in diffs]
        if problems:
            msg = (f"Cannot resume from {where}: what changed since the checkpoint (saved -> now): "
                   + "; ".join(problems) + ". Resume with the same settings and data, or pass force=True "
                   "(--force) to resume anyway.")
            if not force:
                raise ResumeMismatchError(msg)
            warnings.warn(msg.replace("Cannot resume", "Resuming despite changes,"), CheckpointWarning,
                          stacklevel=3)
        if "checkpointer" in ck and not any(c["class"] == type(self).__name__ for c in ck["callbacks"]):
            ck["callbacks"].append({"class": type(self).__name__, "state": ck["checkpointer"]})  # fitloop <= 0.1
        return ck

    def continue_from(self, ck: dict[str, Any]) -> None:
        """The Trainer has loaded `ck` (from `prepare_resume`): the next `on_fit_start` continues this
        directory instead of refusing it as already used."""
        self._resuming = ck

    # ---- events

    def on_fit_start(self, trainer: Trainer) -> None:
        if is_main_process() and self._lock is None:  # one live process per run directory (fitloop.runlock)
            self._lock = hold_run_dir(self.dir)
        self._cleanup_temps()
        self._install_handlers()
        if self._resuming is not None:
            ck, self._resuming = self._resuming, None
            self.last_path = Path(ck["_path"])
            self._last_saved_step = trainer.state.step
            self._rewrite_history(trainer.history)
            self._info = _read_json(self.dir / "run.json") or {"created": _now()}
            self._info["sessions"] = self._info.get("sessions", 0) + 1
            self._info["resumed_from"] = self.last_path.name
            restore_rank_state(trainer, ck)  # several processes: each rank's RNGs and part of the epoch
        else:
            if (self.dir / "run.json").exists() or find_checkpoints(self.dir):
                self._restore_handlers()
                raise FileExistsError(f"{self.dir}: this run directory already holds a run. Continue it "
                                      "with trainer.resume(train, val), or pick another run_dir "
                                      "(or run_dir='auto').")
            barrier()  # every rank has looked before rank 0 writes
            if is_main_process():  # only rank 0 writes the run directory
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.dir / "config.json", {"config": trainer.config.to_dict(),
                                                             "fingerprint": trainer.config.fingerprint()})
                splits = {k: v for k, v in (("train", split_row_indices(trainer.train_data)),
                                            ("val", split_row_indices(trainer.val_data))) if v is not None}
                if splits:
                    write_json_atomic(self.dir / "splits.json", splits)
                (self.dir / "history.jsonl").write_text("")
                self._csv.rewrite([])
            self._info = {"format": RUN_FORMAT, "format_version": 1, "created": _now(), "sessions": 1,
                          "elapsed_s": 0.0, **self.run_info}
        if is_main_process():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self._data_fp = {"train": data_fingerprint(trainer.train_data), "val": data_fingerprint(trainer.val_data)}
        self._session_t0 = self._last_save_t = time.perf_counter()
        self._elapsed0 = float(self._info.get("elapsed_s", 0.0))
        self._write_info(status="running", run_dir=str(self.dir), versions=versions(), pid=os.getpid(),
                         started=_now(), ended=None, exit_code=None, message=None,
                         epoch=trainer.state.epoch, step=trainer.state.step,
                         target_epochs=trainer.state.target_epochs)
        self._started, self._finished = True, False

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        """Checkpoint every N optimizer steps; after a signal, checkpoint and stop the run."""
        if self._signal is not None:
            if trainer.state.batch < trainer.steps_per_epoch:  # at the epoch's end on_epoch_end saves and stops
                self.save(trainer)
                self._stop(trainer)
            return
        n = self.config.checkpoint_every_steps
        if n and step % n == 0 and step != self._last_saved_step:
            self.save(trainer)
        # the time-based checkpoint bounds the work a kill loses in a long epoch; with several processes
        # each rank's clock differs, so DistributedSync agrees on it (`save_agreed`) at its sync points
        due, self.save_agreed = (self.save_agreed if trainer.strategy is not None else self.time_due()), False
        if due and step != self._last_saved_step:
            self.save(trainer)

    def time_due(self) -> bool:
        """Whether `checkpoint_every_seconds` have passed since the last checkpoint, by this process's clock."""
        secs = self.config.checkpoint_every_seconds
        return secs is not None and secs > 0 and time.perf_counter() - self._last_save_t >= secs

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        st = trainer.state
        self._append_history(logs)
        self._csv.append(logs, trainer.history)
        every = self.config.checkpoint_every_epochs
        last = st.epoch >= st.target_epochs or trainer.should_stop
        due, self.save_agreed = self.save_agreed, False  # agreed at this epoch's end (several processes)
        if self._signal is not None or last or due or (every and st.epoch % every == 0):
            self.save(trainer, logs)
        if self._signal is not None:
            self._stop(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        """The final bundle (this callback runs last, so EarlyStopping's best weights are the ones
        saved), or after a signal the interrupted status and `RunInterrupted`."""
        self._restore_handlers()
        self._release()
        if self._signal is not None:
            code = EXIT_SIGINT if self._signal == signal.SIGINT else EXIT_SIGTERM
            st = trainer.state
            msg = (f"Run interrupted by {signal.Signals(self._signal).name} at epoch {st.epoch + 1}, batch "
                   f"{st.batch} (global step {st.step}); checkpoint written to {self.last_path}. Resume with "
                   "the same Trainer arguments and data: trainer.resume(train, val) "
                   f"(run_dir={str(self.dir)!r}), "
                   f"or (with the CLI) `fitloop resume {self.dir}`. Exit code {code}.")
            self._finish(trainer, "interrupted", message=msg, exit_code=code)
            if is_main_process():
                print(msg, file=sys.stderr, flush=True)
            raise RunInterrupted(code, msg)
        trainer.save(str(self.dir / "model"), extra={"run_dir": str(self.dir)})
        self._finish(trainer, "finished", message=trainer.stop_reason, exit_code=0)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._restore_handlers()
        if self._started and not self._finished:
            status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
            self._finish(trainer, status, message=f"{type(error).__name__}: {error}")
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---- checkpoints

    def save(self, trainer: Trainer, logs: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint now (atomically), update `latest`/`best`, prune old ones."""
        st = trainer.state
        bad = next((n for n, p in unwrap_model(trainer.model).named_parameters()
                    if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise NonFiniteError(f"Not writing a checkpoint at epoch {st.epoch + 1}, global step {st.step}: "
                                 f"parameter {bad!r} is not finite. The last good checkpoint "
                                 f"({self.last_path}) was kept. Try a lower learning rate.")
        name = checkpoint_name(self._next_seq(), st.epoch, st.step)
        value = key = None
        if logs is not None:
            key = self.config.monitor if self.config.monitor in logs else "loss"
            v = logs.get(key)
            value = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        better = (lambda a, b: a < b) if self.config.mode == "min" else (lambda a, b: a > b)
        if value is not None and (self.best is None or better(value, self.best["value"])):
            self.best = {"name": name, "value": value, "monitor": key, "epoch": st.epoch}
        state = {**trainer.state_dict(), "versions": versions(), "created": _now(), "data": self._data_fp,
                 "logs": logs}
        path = self.ckpt_dir / name
        if world_size() > 1:  # a checkpoint of all ranks: each one's own state, FSDP's shards; rank 0 writes
            add_rank_states(trainer, state, path)
        if is_main_process():
            atomic_write_bytes(path, serialize(state))
            atomic_write_bytes(self.ckpt_dir / "latest", (name + "\n").encode())
            if self.best is not None and self.best["name"] == name:
                atomic_write_bytes(self.ckpt_dir / "best", (name + "\n").encode())
        barrier()  # no rank goes on (or reads it) before the checkpoint is complete
        self.last_path = path
        self._last_saved_step, self._last_save_t = st.step, time.perf_counter()
        self._prune()
        self._write_info(epoch=st.epoch, step=st.step, last_checkpoint=name,
                         elapsed_s=self._elapsed0 + time.perf_counter() - self._session_t0)
        trainer.notify_checkpoint(str(path))
        return path

    def _next_seq(self) -> int:
        seqs = [int(m.group(1)) for p in (self.ckpt_dir.iterdir() if self.ckpt_dir.is_dir() else [])
                if (m := re.match(r"^ckpt-(\d{6,})-", p.name)) and not p.name.startswith(".")]
        return max(seqs, default=0) + 1

    def _prune(self) -> None:
        ckpts = find_checkpoints(self.dir) if is_main_process() else []
        keep = {p.name for p in ckpts[: self.config.keep_last]}
        if self.best is not None:
            keep.add(self.best["name"])
        for p in ckpts:
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()
                    shutil.rmtree(p.with_suffix(".dcp"), ignore_errors=True)  # FSDP: its shards

    # ---- signals

    def _install_handlers(self) -> None:
        self._signal = self.pending_signal = None
        self._signal_at = 0.0
        if threading.current_thread() is threading.main_thread() and not self._old_handlers:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[s] = signal.signal(s, self._handler)

    def _restore_handlers(self) -> None:
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self._signal is not None or self.pending_signal is not None:  # a second signal: stop now
            if time.monotonic() - self._signal_at < REPEAT_SECONDS:
                return  # the same request delivered twice: a terminal's Ctrl-C reaches every process of the
                # job, and torchrun's agent forwards its own copy to each worker a moment later
            if signum == signal.SIGINT:  # (the last checkpoint is intact)
                raise KeyboardInterrupt
            raise SystemExit(EXIT_SIGTERM)
        self._signal_at = time.monotonic()
        if world_size() > 1:
            self.pending_signal = signum  # every rank stops at the same step: DistributedSync agrees on it
        else:
            self._signal = signum
        if is_main_process():
            print(f"\n{signal.Signals(signum).name} received: finishing the current step, then writing a "
                  "checkpoint (send it again to stop at once).", file=sys.stderr, flush=True)

    def agree_signal(self, signum: int) -> None:
        """Every rank acts on `signum` (a rank caught it): checkpoint at this step and stop."""
        self._signal, self.pending_signal = signum, None

    def _stop(self, trainer: Trainer) -> None:
        """After a signal, once its checkpoint is written (so the checkpoint does not record this stop)."""
        trainer.should_stop = True
        trainer.stop_reason = f"interrupted by {signal.Signals(self._signal or signal.SIGINT).name}"

    # ---- files

    def _cleanup_temps(self) -> None:
        for d in (self.dir, self.ckpt_dir, self.dir / "model"):
            if d.is_dir() and is_main_process():
                for p in d.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        p.unlink()

    def _write_info(self, **changes: Any) -> None:
        self._info.update(changes, updated=_now())
        if is_main_process():
            write_json_atomic(self.dir / "run.json", self._info)

    def _finish(self, trainer: Trainer, status: str, **changes: Any) -> None:
        self._finished = True
        self._write_info(status=status, ended=_now(), epoch=trainer.state.epoch, step=trainer.state.step,
                         elapsed_s=self._elapsed0 + time.perf_counter() - self._session_t0,
                         verdict=verdict_in(trainer), **changes)

    def _append_history(self, logs: dict[str, Any]) -> None:
        # No fsync per epoch (it cost ~4 ms an epoch, more than the epoch itself on a small table): a
        # killed process loses nothing the OS already has, and a resume rewrites this file from the
        # checkpoint's history (`_rewrite_history`), which is written with fsync.
        if not is_main_process():
            return
        with open(self.dir / "history.jsonl", "a") as f:
            f.write(json.dumps(logs, default=str) + "\n")

    def _rewrite_history(self, history: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(h, default=str) + "\n" for h in history)
        if is_main_process():
            atomic_write_bytes(self.dir / "history.jsonl", text.encode())
            self._csv.rewrite(history)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
