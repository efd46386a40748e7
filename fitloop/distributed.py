"""torch.distributed helpers: who this process is, and whether it does the I/O.

Only rank 0 prints, shows progress, logs and writes run directories. Every callback that writes or prints
asks :func:`is_main_process` first. The process-group set-up, the DDP/FSDP wrap and the collectives live
here too (issue "Scale out").
"""

from __future__ import annotations

import os
import sys


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


def is_main_process() -> bool:
    """True on global rank 0 (and in any single-process run): the process that prints and writes files."""
    return rank() == 0
