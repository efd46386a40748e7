"""The checkpoint file format: one safetensors file per checkpoint, no pickle. It knows no Trainer.

A checkpoint holds a plain nested dict of state (`Trainer.state_dict()` plus what the run
directory adds): every tensor (model, optimizer state, RNG states as uint8, the epoch's losses and
outputs so far, callback tensors) is a safetensors tensor, and everything else is a JSON document
in the safetensors header, with SHA-256 checksums of both. Loading a checkpoint cannot run code;
`torch.load` is never called. Files are written atomically by `fitloop.files.atomic_write_bytes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .warn import warn_user

__all__ = ["CheckpointError", "ResumeMismatchError", "CheckpointWarning", "serialize", "load_checkpoint",
           "find_checkpoints", "load_latest", "checkpoint_name", "CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION"]

CHECKPOINT_FORMAT = "fitloop-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_CKPT_RE = re.compile(r"^ckpt-(\d{6,})-e(\d+)-s(\d+)\.safetensors$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, is not a fitloop checkpoint, or is truncated/corrupted."""


class ResumeMismatchError(ValueError):
    """The config or data given to `resume` differ from the checkpoint's (force=True overrides)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped on resume (corrupted) and an older one used instead."""


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


def serialize(state: dict[str, Any]) -> bytes:
    """The bytes of one checkpoint file holding `state`."""
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
            warn_user(f"{e} Renamed it to {p.name}.corrupt; trying the previous checkpoint.", CheckpointWarning)
            with contextlib.suppress(OSError):
                os.replace(p, p.with_name(p.name + ".corrupt"))
    raise CheckpointError(f"{run_dir}: no loadable checkpoint; " + " | ".join(errors))




def checkpoint_name(seq: int, epoch: int, step: int) -> str:
    """`ckpt-000012-e3-s120.safetensors`: sequence number, completed epochs, optimizer steps."""
    return f"ckpt-{seq:06d}-e{epoch}-s{step}.safetensors"
