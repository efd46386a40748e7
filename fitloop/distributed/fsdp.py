"""FSDP's state: sharded checkpoints through `torch.distributed.checkpoint` (DCP), full state dicts for bundles.

A checkpoint of an FSDP run is two things next to each other in `checkpoints/`:

    ckpt-000003-e3-s36.safetensors   rank 0's file: train state, RNGs, callbacks, history (no model)
    ckpt-000003-e3-s36.dcp/          every rank's shards of the model and optimizer states (DCP)

The `.safetensors` file is written after the shards are complete, and `latest` points to it only then,
so a crash leaves the previous checkpoint in charge. The final model bundle is one ordinary
`model.safetensors` with full tensors: `fl.load` reads it in one process. Every function here is a
collective: every rank calls it. torch.distributed's checkpoint and tensor modules are imported in the
functions: only FSDP runs need them, they load much of torch.distributed, and some torch builds lack them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint_format import CheckpointError

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["save_sharded", "load_sharded", "full_state_dict", "plain_class"]


def _dtensor() -> Any:
    """DTensor, or None when no tensor can be one: sharding imports `torch.distributed.tensor`, so a process that
    has not imported it holds no DTensor (and a plain run saves without that 1-2 s import)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def _map_tensors(obj: Any, fn: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every sharded tensor gathered into a full one (on every rank)."""
    dt = _dtensor()
    return {k: (v.full_tensor() if dt is not None and isinstance(v, dt) else v) for k, v in model.state_dict().items()}


def plain_class(model: nn.Module) -> type:
    """The class the user wrote for `model`, for names shown or saved: `fully_shard` swaps a module's class
    for a subclass ``FSDP<Name>(FSDPModule, <Name>)``, which is unwrapped here (DDP and `torch.compile`
    wrap the module instead: `unwrap_model` reaches it)."""
    cls = type(model)
    fsdp_module = _fsdp_module_class()
    if fsdp_module is None or not isinstance(model, fsdp_module):
        return cls
    return next(base for base in cls.__mro__[1:] if not issubclass(base, fsdp_module))


def _fsdp_module_class() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed support: nothing is sharded
        return None
    return FSDPModule


def save_sharded(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Write the model's and optimizer's shards to the DCP directory `path`; `state` (rank 0's file) keeps
    everything else, with the callbacks' sharded tensors (EarlyStopping's best weights) made full."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(trainer.model, trainer.optimizer)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(path))
    dt = _dtensor()
    state["dcp"] = path.name
    state["model"], state["optimizer"] = {}, {}
    state["callbacks"] = _map_tensors(state["callbacks"], lambda t: t.full_tensor() if dt and isinstance(t, dt) else t)


def load_sharded(trainer: Trainer, ck: dict[str, Any]) -> None:
    """Read this rank's shards of the checkpoint `ck` into the Trainer's model and optimizer, and put
    their state dicts into `ck` for `Trainer.load_state_dict`; callback tensors named like the model's
    parameters are sharded again like them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import distribute_tensor

    path = Path(str(ck["_path"])).parent / ck["dcp"]
    if not path.is_dir():
        raise CheckpointError(f"{ck['_path']}: its sharded model and optimizer states ({path}) are missing.")
    msd, osd = get_state_dict(trainer.model, trainer.optimizer)
    box: dict[str, Any] = {"model": msd, "optimizer": osd}
    dcp.load(box, checkpoint_id=str(path))
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=box["model"], optim_state_dict=box["optimizer"])
    ck["model"], ck["optimizer"] = trainer.model.state_dict(), trainer.optimizer.state_dict()
    own = ck["model"]
    dt = _dtensor()

    def reshard(obj: Any) -> Any:
        if isinstance(obj, dict) and obj and set(obj) <= set(own):
            return {k: (distribute_tensor(v.to(own[k].device), own[k].device_mesh, own[k].placements)
                        if dt is not None and isinstance(own[k], dt) and not isinstance(v, dt) else v)
                    for k, v in obj.items()}
        if isinstance(obj, dict):
            return {k: reshard(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [reshard(v) for v in obj]
        return obj

    ck["callbacks"] = reshard(ck["callbacks"])
