"""torch.distributed helpers: who this process is, and whether it does the I/O.

Only rank 0 prints, shows progress, logs and writes run directories. Every callback that writes or prints
asks :func:`is_main_process` first. The functions below import no torch (they read the process group
when torch is already loaded, else the torchrun environment).

The rest of the package (imported on use):

* `fitloop.distributed.group`: the process group from ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (gloo on the
  CPU, nccl on CUDA), device binding, `session()` (destroys the group at the end and on error), the
  collective timeout, barriers, the collectives (`Collective`) and the dead-rank diagnosis (`RankFailure`).
* `fitloop.distributed.strategy`: `Strategy` (the DDP or FSDP wrap the Trainer asks for, the epoch's
  global reductions, `no_sync`). The callback that makes every rank decide alike, `DistributedSync`, is
  `fitloop.callbacks.distributed_sync` (the callbacks use this package, never the other way round).
* `fitloop.distributed.fsdp`: sharded checkpoints through `torch.distributed.checkpoint`, full state dicts.
"""

from __future__ import annotations

import os
import sys

__all__ = ["rank", "world_size", "local_rank", "is_main_process", "restart_count"]


def _initialized() -> bool:
    if "torch" not in sys.modules:  # don't import torch just to learn that nothing is distributed
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group when there is one, else ``RANK`` (default 0)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes in the job: from the process group, else ``WORLD_SIZE`` (default 1)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, default 0): the GPU it binds to."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on global rank 0 (and in any single-process run): the process that prints and writes files."""
    return rank() == 0


def restart_count() -> int:
    """How often torchrun has restarted the workers (``TORCHELASTIC_RESTART_COUNT``; 0 on the first try):
    a script resumes from its run directory when it is > 0."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
