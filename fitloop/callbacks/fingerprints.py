"""What a checkpoint remembers of the data, so a resume can tell the same data from changed data:
cheap fingerprints (shape, dtype, a hash of the bytes, or of sampled Dataset items) and split row indices."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import Split
from ..data.stream import ParquetSource

__all__ = ["data_fingerprint", "split_row_indices", "differences"]


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _hash_item(h: Any, item: Any) -> None:
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


def data_fingerprint(data: Any, sample: int = 64) -> dict[str, Any] | None:
    """A cheap fingerprint of training data: shape, dtype and a SHA-256 of the bytes of in-memory
    tensors; for a Dataset its class, length and a hash of `sample` evenly spaced items; for a streamed
    `ParquetSource` its own fingerprint (the files, their sizes and row counts, the settings)."""
    if data is None:
        return None
    if isinstance(data, ParquetSource):  # streamed: its files and settings, from the footers (no data read)
        return data.fingerprint()
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


def split_row_indices(data: Any) -> list[int] | None:
    """The original row indices a split carries (`Split.indices`, `Subset.indices`), or None."""
    if isinstance(data, DataLoader):
        data = data.dataset
    idx = getattr(data, "indices", None)
    if idx is None:
        return None
    return torch.as_tensor(idx).tolist()


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def differences(what: str, saved: dict | None, now: dict | None, ignore: tuple[str, ...] = ()) -> list[str]:
    """`what<key>: saved -> now` for every key whose JSON value differs (the resume check's wording)."""
    saved, now = _plain(saved or {}), _plain(now or {})
    out = []
    for k in sorted(set(saved) | set(now)):
        if k not in ignore and saved.get(k) != now.get(k):
            out.append(f"{what}{k}: {saved.get(k)!r} -> {now.get(k)!r}")
    return out
