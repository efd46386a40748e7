"""Model bundles: weights as safetensors, everything else as JSON. Loading never unpickles."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from ._fastpath import unwrap_model
from .distributed import is_main_process
from .distributed.fsdp import full_state_dict, plain_class
from .files import atomic_write_bytes, versions
from .models import Ensemble, EnsembleSpec, build_model, spec_from_dict

__all__ = ["save_bundle", "load", "read_meta", "check_state_shapes", "FORMAT_VERSION"]

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "fitloop.json"


def save_bundle(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """Save `model` to the directory `path` as `model.safetensors` + `fitloop.json`.

    The JSON holds the model's spec (when it was built from one), its class, the parameter shapes,
    `meta` (task, metrics, config, preprocessing, ...) and the library versions.
    """
    model = unwrap_model(model)
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in full_state_dict(model).items()}  # FSDP: on every rank
    if not is_main_process():  # only rank 0 writes
        return str(path)
    path.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory: store each shared tensor once.
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            tensors[k] = v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v
    spec = getattr(model, "spec", None)
    info = {
        "format": "fitloop-bundle",
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "model_class": f"{plain_class(model).__module__}.{plain_class(model).__qualname__}",
        "spec": spec.to_dict() if spec is not None else None,
        "parameters": {k: list(v.shape) for k, v in state.items()},
        "aliases": aliases,
        **(meta or {}),
    }
    atomic_write_bytes(path / WEIGHTS, save_safetensors(tensors, metadata={"format": "fitloop"}))
    atomic_write_bytes(path / META, json.dumps(info, indent=2, default=_json_default).encode())
    return str(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a bundle, with a clear error when `path` is not one."""
    path = Path(path)
    meta_file = path / META
    if not path.is_dir() or not meta_file.is_file():
        raise FileNotFoundError(f"{path}: not a fitloop model bundle (expected a directory with {META} "
                                f"and {WEIGHTS}, as written by Trainer.save).")
    try:
        meta = json.loads(meta_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file}: not a valid fitloop metadata file ({e}).") from None
    if meta.get("format") != "fitloop-bundle":
        raise ValueError(f"{meta_file}: not a fitloop bundle (format={meta.get('format')!r}).")
    return meta


def load(path: str | os.PathLike, model: nn.Module | None = None, *, device: str = "cpu") -> nn.Module:
    """Load a saved model.

    Args:
        path: a bundle directory written by `Trainer.save` (or `save_bundle`).
        model: a module to load the weights into; needed when the bundle has no spec (a custom
            `nn.Module` or a plain-function model). Built from the stored spec when omitted.
        device: where to put the weights.

    Returns:
        The module, in eval mode, with the bundle's metadata as `model.fitloop_meta`.

    Raises:
        ValueError: the bundle has no spec and no model was given, or the shapes don't match
            (the message lists the mismatching parameter names).
    """
    meta = read_meta(path)
    weights = Path(path) / WEIGHTS
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: cannot read the weights ({e}). The file is missing or corrupted.") from None
    for alias, target in meta.get("aliases", {}).items():
        state[alias] = state[target]
    if model is None:
        if not meta.get("spec"):
            raise ValueError(f"{path}: this bundle holds a {meta.get('model_class')} without a stored spec; "
                             "pass the model to load the weights into: fl.load(path, model=MyModel()).")
        model = build_spec(meta["spec"])
    target = unwrap_model(model)
    check_state_shapes(target, state, where=str(path))
    target.load_state_dict(state)
    target.to(device).eval()
    target.fitloop_meta = meta  # type: ignore[assignment]
    return target


def build_spec(spec: dict[str, Any]) -> nn.Module:
    """The module a bundle's stored spec describes (`MLPSpec`, `TabMSpec` or `EnsembleSpec`), with fresh weights."""
    if spec.get("kind") in ("mlp", "tabm"):
        return build_model(spec_from_dict(spec))
    if spec.get("kind") == "ensemble":
        return Ensemble(EnsembleSpec.from_dict(spec))
    raise ValueError(f"unknown model spec kind {spec.get('kind')!r}.")


def check_state_shapes(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a state dict that does not fit `model`, naming the mismatching parameters."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong))
        if missing:
            parts.append("missing in the saved weights: " + ", ".join(missing))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected))
        raise ValueError(f"{where}: the saved weights do not fit this model ({' | '.join(parts)}).")
