"""Run directories, atomic checkpoints, exact resume and safe loading.

A run directory holds everything a run produced::

    runs/exp1/
      config.json       the resolved TrainConfig and its fingerprint
      run.json          status (running / finished / failed / interrupted), versions, timings
      history.jsonl     one JSON line per epoch, appended and flushed as it goes
      splits.json       the row indices of the train/val splits (when the data carries them)
      checkpoints/      ckpt-000001-e1-s12.safetensors ..., `latest` and `best` pointer files
      model/            the final model bundle (model.safetensors + fitloop.json)

A checkpoint is ONE safetensors file: every tensor (model, optimizer state, RNG states as uint8,
the epoch's losses and outputs so far, callback tensors) is a safetensors tensor, and everything
else is a JSON document in the safetensors header, with SHA-256 checksums of both. Nothing is
pickled, so loading a checkpoint cannot run code; `torch.load` is never called.

Writes are atomic (temporary file in the same directory, fsync, rename, fsync of the directory),
so a crash leaves either the old or the new file. Resuming picks the newest checkpoint that loads
and verifies, warning about (and renaming to `*.corrupt`) any that do not.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import RUN_FORMAT
from .io import _unwrap, _versions, atomic_write_bytes, check_state_shapes, write_json_atomic

if TYPE_CHECKING:
    from .config import TrainConfig
    from .trainer import Trainer

__all__ = ["Checkpointer", "CheckpointError", "ResumeMismatchError", "RunInterrupted", "CheckpointWarning",
           "load_checkpoint", "find_checkpoints", "data_fingerprint", "resume", "EXIT_SIGINT", "EXIT_SIGTERM",
           "CHECKPOINT_FORMAT_VERSION"]

CHECKPOINT_FORMAT = "fitloop-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
EXIT_SIGINT = 130   # 128 + SIGINT, the shell convention
EXIT_SIGTERM = 143  # 128 + SIGTERM
# Settings that may differ on resume: they do not change the numbers a run produces.
RESUME_IGNORED = ("quiet", "print_every", "run_dir", "device", "num_workers", "epochs")
_CKPT_RE = re.compile(r"^ckpt-(\d{6,})-e(\d+)-s(\d+)\.safetensors$")



class CheckpointError(RuntimeError):
    """A checkpoint is missing, is not a fitloop checkpoint, or is truncated/corrupted."""


class ResumeMismatchError(ValueError):
    """The config or data given to `resume` differ from the checkpoint's (force=True overrides)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped on resume (corrupted) and an older one used instead."""


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


# Atomic files: one implementation, in fitloop.io (its `_on_partial_write` hook is what tests use).
atomic_write = atomic_write_bytes
_write_json = write_json_atomic


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- state <-> (json, tensors)


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested state -> JSON-able structure; tensors go to `tensors` under their path."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        # clone: safetensors refuses shared storage, and the saved value must not change later
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{path}/k{i}", tensors), _encode(v, f"{path}/{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {path!r} without pickling; "
                    "state_dict() values must be tensors, numbers, strings, lists, tuples or dicts.")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _serialize(state: dict[str, Any]) -> bytes:
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    doc = json.dumps(_encode(state, "", tensors))
    raw = st_save(tensors)  # the data section does not depend on the header's metadata
    body = raw[8 + int.from_bytes(raw[:8], "little"):]
    meta = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_FORMAT_VERSION),
            "state": doc, "state_sha256": hashlib.sha256(doc.encode()).hexdigest(),
            "body_sha256": hashlib.sha256(body).hexdigest()}
    out = st_save(tensors, metadata=meta)
    assert out.endswith(body)
    return out


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify one checkpoint file. Never unpickles anything.

    Raises:
        CheckpointError: naming the file, when it is missing, not a fitloop checkpoint (for example
            a pickle), from a newer format, or truncated/corrupted (checksum mismatch).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e}).") from None
    not_ours = f"{path}: not a fitloop checkpoint"
    if len(data) < 10 or data[8:9] != b"{":
        raise CheckpointError(f"{not_ours} (no safetensors header; fitloop never loads pickles).")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint (the header says {n} bytes, "
                              f"the file has {len(data)}).")
    try:
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint (unreadable header).") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{not_ours} (format={meta.get('format')!r}).")
    if int(meta.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format_version']} is newer than this "
                              f"fitloop reads ({CHECKPOINT_FORMAT_VERSION}); upgrade fitloop.")
    doc = meta.get("state", "")
    if hashlib.sha256(data[8 + n:]).hexdigest() != meta.get("body_sha256") or \
            hashlib.sha256(doc.encode()).hexdigest() != meta.get("state_sha256"):
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint (checksum mismatch).")
    try:
        tensors = st_load(data)
        state = _decode(json.loads(doc), tensors)
    except (SafetensorError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({e}).") from None
    state["_path"] = str(path)
    return state


def find_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a run, newest first (by sequence number)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The newest checkpoint of `run_dir` that loads and verifies.

    A bad one is reported with a `CheckpointWarning` and renamed to `*.corrupt`, and the previous
    one is tried. Raises `CheckpointError` when there is none (never a silent fresh start).
    """
    cands = find_checkpoints(run_dir)
    if not cands:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (the run stopped before its first "
                              "checkpoint, or this is not a run directory). Start it again with fit().")
    errors = []
    for p in cands:
        try:
            return load_checkpoint(p)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e} Renamed it to {p.name}.corrupt; trying the previous checkpoint.",
                          CheckpointWarning, stacklevel=3)
            with contextlib.suppress(OSError):
                os.replace(p, p.with_name(p.name + ".corrupt"))
    raise CheckpointError(f"{run_dir}: no loadable checkpoint; " + " | ".join(errors))


# --------------------------------------------------------------------------- fingerprints


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _hash_item(h, item: Any) -> None:
    if isinstance(item, torch.Tensor):
        _hash_tensor(h, item)
    elif isinstance(item, np.ndarray):
        _hash_tensor(h, torch.from_numpy(np.ascontiguousarray(item)))
    elif isinstance(item, (tuple, list)):
        for v in item:
            _hash_item(h, v)
    elif isinstance(item, dict):
        for k in sorted(item, key=str):
            h.update(str(k).encode())
            _hash_item(h, item[k])
    else:
        h.update(repr(item).encode())


def data_fingerprint(data, sample: int = 64) -> dict[str, Any] | None:
    """A cheap fingerprint of training data: shape, dtype and a SHA-256 of the bytes of in-memory
    tensors; for a Dataset its class, length and a hash of `sample` evenly spaced items."""
    from torch.utils.data import DataLoader

    from .data import Split

    if data is None:
        return None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = Split(data[0], data[1])
    if isinstance(data, Split):
        out: dict[str, Any] = {"kind": "tensors", "rows": len(data)}
        for name, t in (("X", data.X), ("y", data.y)):
            if t is not None:
                h = hashlib.sha256()
                _hash_tensor(h, t)
                out[name] = {"shape": list(t.shape), "dtype": str(t.dtype), "sha256": h.hexdigest()[:16]}
        return out
    if isinstance(data, DataLoader):
        data = data.dataset
    n = len(data)
    idx = sorted({round(i * (n - 1) / max(1, sample - 1)) for i in range(min(n, sample))})
    h = hashlib.sha256()
    for i in idx:
        _hash_item(h, data[i])
    return {"kind": "dataset", "class": type(data).__name__, "rows": n, "sample_sha256": h.hexdigest()[:16]}


def _split_indices(data) -> list[int] | None:
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        data = data.dataset
    idx = getattr(data, "indices", None)
    if idx is None:
        return None
    return torch.as_tensor(idx).tolist()


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _differences(what: str, saved: dict | None, now: dict | None, ignore=()) -> list[str]:
    saved, now = _plain(saved or {}), _plain(now or {})
    out = []
    for k in sorted(set(saved) | set(now)):
        if k not in ignore and saved.get(k) != now.get(k):
            out.append(f"{what}{k}: {saved.get(k)!r} -> {now.get(k)!r}")
    return out


# --------------------------------------------------------------------------- capture / restore


def capture(trainer: Trainer, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue `trainer` exactly, as a plain dict of tensors and data."""
    st = trainer.state
    rng: dict[str, Any] = {"data_generator": trainer.generator.get_state(), "python": random.getstate(),
                           "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    mid_epoch = st.batch != 0
    return {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "versions": _versions(),
        "created": _now(), "config": trainer.config.to_dict(), "config_hash": trainer.config.fingerprint(),
        "model": _unwrap(trainer.model).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
        "scaler": None if trainer.scaler is None else trainer.scaler.state_dict(),
        "train_state": {"epoch": st.epoch, "batch": st.batch, "step": st.step,
                        "target_epochs": st.target_epochs, "skipped_steps": st.skipped_steps,
                        "epoch_generator_state": st.epoch_generator_state if mid_epoch else None,
                        "epoch_losses": list(st.epoch_losses) if mid_epoch else [],
                        "epoch_sizes": list(st.epoch_sizes) if mid_epoch else [],
                        "epoch_time": st.epoch_time,
                        "epoch_lr": float(trainer._epoch_lr)},
        "outputs": [list(o) for o in getattr(trainer, "_outputs", [])] if mid_epoch else [],
        "grad_norms": list(trainer._grad_norms) if mid_epoch else [],
        "rng": rng,
        "callbacks": [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in trainer.callbacks],
        "history": trainer.history,
        "should_stop": trainer.should_stop, "stop_reason": trainer.stop_reason,
        **(extra or {}),
    }


def restore(trainer: Trainer, ck: dict[str, Any], *, force: bool = False) -> None:
    """Load a captured state into `trainer` (which must already have its scheduler, see `fit`)."""
    model = _unwrap(trainer.model)
    check_state_shapes(model, ck["model"], where=ck.get("_path", "checkpoint"))
    model.load_state_dict(ck["model"])
    try:
        trainer.optimizer.load_state_dict(ck["optimizer"])
    except (ValueError, KeyError) as e:
        raise ResumeMismatchError(f"{ck.get('_path')}: the optimizer state does not fit this "
                                  f"optimizer ({e}).") from None
    if (ck["scheduler"] is None) != (trainer.scheduler is None):
        raise ResumeMismatchError(f"{ck.get('_path')}: the checkpoint was written "
                                  f"{'without' if ck['scheduler'] is None else 'with'} a scheduler, "
                                  f"this trainer has {'one' if trainer.scheduler is not None else 'none'}.")
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(ck["scheduler"])
        # The optimizer did step before this checkpoint: tell torch's order check (which would
        # otherwise warn "lr_scheduler.step() before optimizer.step()" on an epoch-end resume).
        trainer.optimizer._opt_called = ck["train_state"]["step"] > 0  # type: ignore[attr-defined]
    if trainer.scaler is not None and ck["scaler"] is not None:
        trainer.scaler.load_state_dict(ck["scaler"])
    s, st = ck["train_state"], trainer.state
    for k in ("epoch", "batch", "step", "target_epochs", "skipped_steps", "epoch_time"):
        setattr(st, k, s[k])
    st.epoch_generator_state = s["epoch_generator_state"]
    trainer._epoch_lr = s["epoch_lr"]  # the lr of the last step taken (history records it)
    st.epoch_losses, st.epoch_sizes = list(s["epoch_losses"]), list(s["epoch_sizes"])
    dev = trainer.device
    st.epoch_losses = [t.to(dev) for t in st.epoch_losses]
    trainer._outputs = [tuple(None if t is None else t.to(dev) for t in o) for o in ck["outputs"]]
    trainer._grad_norms = [t.to(dev) for t in ck["grad_norms"]]
    trainer.history = list(ck["history"])
    trainer.should_stop, trainer.stop_reason = ck["should_stop"], ck["stop_reason"]
    _restore_callbacks(trainer, ck["callbacks"], force)
    rng = ck["rng"]
    trainer.generator.set_state(rng["data_generator"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    trainer._seeded = True  # fit must not re-seed over the restored RNGs


def _restore_callbacks(trainer: Trainer, saved: list[dict[str, Any]], force: bool) -> None:
    """Match saved callback states to the trainer's callbacks by class and occurrence."""
    def keyed(items):
        seen: dict[str, int] = {}
        out = {}
        for name, obj in items:
            seen[name] = seen.get(name, -1) + 1
            out[(name, seen[name])] = obj
        return out

    mine = keyed((type(cb).__name__, cb) for cb in trainer.callbacks)
    theirs = keyed((s["class"], s["state"]) for s in saved)
    for key, state in theirs.items():
        if key in mine:
            mine[key].load_state_dict(state)
        elif state and not force:
            raise ResumeMismatchError(f"the checkpoint has state for callback {key[0]} (#{key[1] + 1}) but "
                                      "this trainer has no such callback; pass the same callbacks, or "
                                      "force=True to drop its state.")


# --------------------------------------------------------------------------- the run directory


def _resolve_run_dir(run_dir) -> Path:
    if run_dir is True or run_dir == "auto":
        base = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return path
    return Path(run_dir)


class Checkpointer:
    """Writes a run directory and its checkpoints; the Trainer calls it at fixed points of `fit`.

    Created by `Trainer(..., run_dir=...)`; `run_dir=True` or `"auto"` picks `runs/<timestamp>`.
    Hooks: `guard(trainer)` around the whole fit (signals, status, final bundle), `on_fit_start`
    (write or restore), `on_step_end` (every-N-steps checkpoints, signal stop), `on_epoch_end`
    (history line, epoch checkpoint, keep-last-K + best), `on_fit_end`.
    """

    def __init__(self, run_dir, config: TrainConfig):
        self.dir = _resolve_run_dir(run_dir)
        config.run_dir = str(self.dir)
        self.config = config
        self.ckpt_dir = self.dir / "checkpoints"
        self.resume_from: dict[str, Any] | None = None
        self.force = False
        self.best: dict[str, Any] | None = None   # {"name", "value"} of the best checkpoint
        self.last_path: Path | None = None
        self._last_saved_step = -1
        self._signal: int | None = None
        self._started = False
        self._info: dict[str, Any] = {}
        self._data_fp: dict[str, Any] | None = None
        self._epoch_t0 = time.perf_counter()

    # ---- files

    def _cleanup_temps(self) -> None:
        for d in (self.dir, self.ckpt_dir, self.dir / "model"):
            if d.is_dir():
                for p in d.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        p.unlink()

    def _write_info(self, **changes) -> None:
        self._info.update(changes, updated=_now())
        _write_json(self.dir / "run.json", self._info)

    def _append_history(self, logs: dict[str, Any]) -> None:
        with open(self.dir / "history.jsonl", "a") as f:
            f.write(json.dumps(logs, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _rewrite_history(self, history: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(h, default=str) + "\n" for h in history)
        atomic_write(self.dir / "history.jsonl", text.encode())

    # ---- hooks

    def on_fit_start(self, trainer: Trainer, train, val) -> None:
        self._cleanup_temps()
        fp = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
        if self.resume_from is not None:
            ck = self.resume_from
            self._check_compatible(trainer, ck, fp)
            restore(trainer, ck, force=self.force)
            self.best = ck.get("checkpointer", {}).get("best")
            self.last_path = Path(ck["_path"])
            self._last_saved_step = trainer.state.step
            self._rewrite_history(trainer.history)
            self._info = _read_json(self.dir / "run.json") or {"created": _now()}
            self._info["sessions"] = self._info.get("sessions", 0) + 1
            self._info["resumed_from"] = Path(ck["_path"]).name
            self.resume_from = None
        else:
            if (self.dir / "run.json").exists() or find_checkpoints(self.dir):
                raise FileExistsError(f"{self.dir}: this run directory already holds a run. Continue it "
                                      "with trainer.resume(train, val), or pick another run_dir "
                                      "(or run_dir='auto').")
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.dir / "config.json", {"config": trainer.config.to_dict(),
                                                   "fingerprint": trainer.config.fingerprint()})
            splits = {k: v for k, v in (("train", _split_indices(train)), ("val", _split_indices(val)))
                      if v is not None}
            if splits:
                _write_json(self.dir / "splits.json", splits)
            (self.dir / "history.jsonl").write_text("")
            self._info = {"format": RUN_FORMAT, "format_version": 1, "created": _now(), "sessions": 1,
                          "elapsed_s": 0.0}
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self._data_fp = fp
        self._session_t0 = time.perf_counter()
        self._elapsed0 = float(self._info.get("elapsed_s", 0.0))
        self._epoch_t0 = time.perf_counter()
        self._write_info(status="running", run_dir=str(self.dir), versions=_versions(), pid=os.getpid(),
                         started=_now(), ended=None, exit_code=None, message=None,
                         epoch=trainer.state.epoch, step=trainer.state.step,
                         target_epochs=trainer.state.target_epochs)
        self._started = True

    def on_step_end(self, trainer: Trainer) -> bool:
        """After each training batch: checkpoint every N optimizer steps; stop after a signal.
        Returns True to stop the epoch now. Only acts on optimizer-step boundaries (never in the
        middle of gradient accumulation, where the gradients would be lost)."""
        if not trainer._last_micro:
            return False
        st = trainer.state
        if self._signal is not None:
            self.save(trainer)
            trainer.should_stop = True
            trainer.stop_reason = f"interrupted by {signal.Signals(self._signal).name}"
            return True
        n = self.config.checkpoint_every_steps
        if n and st.step % n == 0 and st.step != self._last_saved_step:
            self.save(trainer)
        return False

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        st = trainer.state
        self._append_history(logs)
        every = self.config.checkpoint_every_epochs
        last = st.epoch >= st.target_epochs or trainer.should_stop
        if self._signal is not None or last or (every and st.epoch % every == 0):
            self.save(trainer, logs)
        if self._signal is not None:
            trainer.should_stop = True
            trainer.stop_reason = f"interrupted by {signal.Signals(self._signal).name}"
        self._epoch_t0 = time.perf_counter()

    def on_fit_end(self, trainer: Trainer) -> None:
        """Nothing here: the final bundle is written by `guard` after the callbacks' `on_fit_end`
        (so EarlyStopping's best weights are the ones saved)."""

    # ---- checkpoints

    def _next_seq(self) -> int:
        seqs = [int(m.group(1)) for p in (self.ckpt_dir.iterdir() if self.ckpt_dir.is_dir() else [])
                if (m := re.match(r"^ckpt-(\d{6,})-", p.name)) and not p.name.startswith(".")]
        return max(seqs, default=0) + 1

    def save(self, trainer: Trainer, logs: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint now (atomically), update `latest`/`best`, prune old ones."""
        from .trainer import NonFiniteError

        st = trainer.state
        bad = next((n for n, p in _unwrap(trainer.model).named_parameters()
                    if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise NonFiniteError(f"Not writing a checkpoint at epoch {st.epoch + 1}, global step {st.step}: "
                                 f"parameter {bad!r} is not finite. The last good checkpoint "
                                 f"({self.last_path}) was kept. Try a lower learning rate.")
        name = f"ckpt-{self._next_seq():06d}-e{st.epoch}-s{st.step}.safetensors"
        value = None
        if logs is not None:
            key = self.config.monitor if self.config.monitor in logs else "loss"
            v = logs.get(key)
            value = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        better = (lambda a, b: a < b) if self.config.mode == "min" else (lambda a, b: a > b)
        if value is not None and (self.best is None or better(value, self.best["value"])):
            self.best = {"name": name, "value": value, "monitor": key, "epoch": st.epoch}
        if st.batch != 0:  # time spent in this epoch so far, for the resumed epoch's "time"
            saved_time, st.epoch_time = st.epoch_time, st.epoch_time + time.perf_counter() - self._epoch_t0
        else:
            saved_time = st.epoch_time
        try:
            state = capture(trainer, {"data": self._data_fp, "checkpointer": {"best": self.best},
                                      "logs": logs})
        finally:
            st.epoch_time = saved_time
        path = self.ckpt_dir / name
        atomic_write(path, _serialize(state))
        atomic_write(self.ckpt_dir / "latest", (name + "\n").encode())
        if self.best is not None and self.best["name"] == name:
            atomic_write(self.ckpt_dir / "best", (name + "\n").encode())
        self.last_path = path
        self._last_saved_step = st.step
        self._prune()
        self._write_info(epoch=st.epoch, step=st.step, last_checkpoint=name,
                         elapsed_s=self._elapsed0 + time.perf_counter() - self._session_t0)
        notify = getattr(trainer, "notify_checkpoint", None)  # the Trainer's name for it, when present
        notify(str(path)) if notify is not None else trainer._emit("on_checkpoint", str(path))
        return path

    def _prune(self) -> None:
        ckpts = find_checkpoints(self.dir)
        keep = {p.name for p in ckpts[: self.config.keep_last]}
        if self.best is not None:
            keep.add(self.best["name"])
        for p in ckpts:
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()

    def _check_compatible(self, trainer: Trainer, ck: dict[str, Any], fp: dict[str, Any]) -> None:
        where = ck.get("_path")
        check_state_shapes(_unwrap(trainer.model), ck["model"], where=str(where))
        problems = _differences("config ", ck.get("config"), trainer.config.to_dict(), RESUME_IGNORED)
        for part in ("train", "val"):
            old, new = (ck.get("data") or {}).get(part), fp.get(part)
            if old != new:
                diffs = _differences(f"{part} data ", old, new) or [f"{part} data: {old!r} -> {new!r}"]
                problems += [d.replace(" data ", " data: ", 1) for d in diffs]
        if not problems:
            return
        msg = (f"Cannot resume from {where}: what changed since the checkpoint (saved -> now): "
               + "; ".join(problems) + ". Resume with the same settings and data, or pass force=True "
               "(--force) to resume anyway.")
        if not self.force:
            raise ResumeMismatchError(msg)
        warnings.warn(msg.replace("Cannot resume", "Resuming despite changes,"), CheckpointWarning,
                      stacklevel=4)

    # ---- signals, status, final bundle

    def _handler(self, signum, frame) -> None:
        if self._signal is not None:  # a second signal: stop now (the last checkpoint is intact)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(EXIT_SIGTERM)
        self._signal = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current step, then writing a "
              "checkpoint (send it again to stop at once).", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def guard(self, trainer: Trainer):
        """Around `fit`: signal handlers (restored after), run status, the final model bundle."""
        old = {}
        self._signal, self._started = None, False
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._handler)
        try:
            yield
        except BaseException as e:
            if self._started:
                status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
                self._finish(trainer, status, message=f"{type(e).__name__}: {e}")
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if self._signal is not None:
            code = EXIT_SIGINT if self._signal == signal.SIGINT else EXIT_SIGTERM
            st = trainer.state
            msg = (f"Run interrupted by {signal.Signals(self._signal).name} at epoch {st.epoch + 1}, batch "
                   f"{st.batch} (global step {st.step}); checkpoint written to {self.last_path}. Resume with "
                   "the same Trainer arguments and data: trainer.resume(train, val) "
                   f"(run_dir={str(self.dir)!r}), "
                   f"or (with the CLI) `fitloop resume {self.dir}`. Exit code {code}.")
            self._finish(trainer, "interrupted", message=msg, exit_code=code)
            print(msg, file=sys.stderr, flush=True)
            raise RunInterrupted(code, msg)
        trainer.save(str(self.dir / "model"), extra={"run_dir": str(self.dir)})
        self._finish(trainer, "finished", message=trainer.stop_reason, exit_code=0)

    def _finish(self, trainer: Trainer, status: str, **changes) -> None:
        self._write_info(status=status, ended=_now(), epoch=trainer.state.epoch, step=trainer.state.step,
                         elapsed_s=self._elapsed0 + time.perf_counter() - self._session_t0, **changes)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def resume(trainer: Trainer, train, val=None, *, run_dir=None, checkpoint=None, force: bool = False):
    """Continue the run in `run_dir` (default: the trainer's `run_dir`) from its latest good checkpoint.

    The trainer must be built with the same model, loss, optimizer, scheduler, callbacks and
    settings as the interrupted run, and given the same data: the model and data are code and
    objects, which a checkpoint never pickles. Changed settings or data are refused with a
    message naming what changed (`force=True` overrides); a different model shape is always
    refused, naming the parameters.

    Args:
        trainer: a freshly built `Trainer`.
        train, val: the same data as the interrupted run.
        run_dir: the run directory; defaults to `trainer.config.run_dir`.
        checkpoint: a specific checkpoint file to resume from instead of the latest good one.
        force: resume despite a changed config or data.

    Returns:
        The full history (the epochs before the interruption included).

    Raises:
        CheckpointError: no loadable checkpoint (never silently restarts from scratch).
        ResumeMismatchError: config/data changed (without force) or incompatible optimizer state.
        ValueError: the model's parameter shapes differ from the checkpoint's.
    """
    run_dir = run_dir or trainer.config.run_dir
    if run_dir is None and checkpoint is not None:
        run_dir = Path(checkpoint).resolve().parent.parent
    if run_dir is None:
        raise ValueError("resume: pass run_dir= (or build the Trainer with run_dir=...).")
    if trainer.checkpointer is None or Path(trainer.checkpointer.dir) != Path(run_dir):
        trainer.config.run_dir = str(run_dir)
        trainer.checkpointer = Checkpointer(run_dir, trainer.config)
    ckpt = trainer.checkpointer
    ckpt._cleanup_temps()
    ckpt.resume_from = load_checkpoint(checkpoint) if checkpoint is not None else load_latest(ckpt.dir)
    ckpt.force = force
    return trainer.fit(train, val)
