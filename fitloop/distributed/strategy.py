"""How a Trainer runs on several processes: the DDP or FSDP wrap, the epoch's global reductions, the
agreed decisions. The Trainer asks for it once (`Strategy.setup`) and otherwise only through
public seams: the model it wraps, `finish_epoch` for the epoch's loss and metrics, `no_sync` for the
training step. Every decision a rank could otherwise take alone is agreed on by the `DistributedSync`
callback (`fitloop.callbacks.distributed_sync`), which the Trainer adds with a strategy and which uses
`collective`; this package imports nothing from the callbacks.

    torchrun --nproc-per-node 2 train.py       # or: fitloop train data.csv --target y --nproc 2

* **DDP** (`strategy="ddp"`, what `"auto"` picks with several processes): `DistributedDataParallel`
  averages the gradients; the data is sharded so that the average is the global batch's gradient
  (`fitloop.data.sharding`), and N processes train the same weights as one process with the same global
  batch and seed (to float rounding).
* **FSDP** (`strategy="fsdp"`): `torch.distributed.fsdp.fully_shard` on a one-dimensional device mesh;
  checkpoints are sharded (`fitloop.distributed.fsdp`), the final bundle is one ordinary file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from ..data.batches import LoaderBatches, TensorBatches
from ..data.sharding import ShardedBatches
from ..devices import pick_device
from . import is_main_process
from .group import Collective, init_from_env

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..state import TrainState
    from ..trainer import Trainer

__all__ = ["Strategy", "STRATEGIES"]

STRATEGIES = ("auto", "ddp", "fsdp")


class Strategy:
    """The distributed side of one Trainer: its device, the wrap, the collectives.

    Args:
        kind: `"ddp"` or `"fsdp"`.
        device: this rank's device (bound by `fitloop.distributed.group.init_from_env`).
    """

    def __init__(self, kind: str, device: torch.device):
        self.kind, self.device = kind, device
        self.collective = Collective(device)
        self.world, self.rank = self.collective.world, self.collective.rank
        self.backend = dist.get_backend()

    @classmethod
    def setup(cls, cfg: TrainConfig) -> tuple[Strategy | None, torch.device]:
        """`(strategy, device)` for a Trainer: `from_config`'s strategy and its device, or `(None, the device
        `cfg.device` picks)` in one process."""
        strategy = cls.from_config(cfg)
        return strategy, (pick_device(cfg.device) if strategy is None else strategy.device)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Strategy | None:
        """Join the process group torchrun describes (when there are several processes); None in one process.

        Non-main ranks become quiet (only rank 0 prints). Raises ValueError for settings that cannot run
        on several processes.
        """
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"strategy: got {cfg.strategy!r}; choose 'auto', 'ddp' or 'fsdp'.")
        device = init_from_env(cfg.dist_timeout, cfg.device)
        if device is None:
            return None
        if cfg.compile == "step":
            raise ValueError("compile: 'step' compiles a one-process step; with several processes use "
                             "compile=True (the model) or compile=False.")
        cfg.quiet = cfg.quiet or not is_main_process()
        return cls("fsdp" if cfg.strategy == "fsdp" else "ddp", device)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model for training, already on `self.device`: DDP-wrapped, or sharded in place by FSDP
        (before the optimizer is built: FSDP replaces the parameters)."""
        if self.kind == "fsdp":  # (imported here: only FSDP needs them, and they load much of torch.distributed)
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # DTensor warns on every step about the (1,)-shaped found-inf flag of the NaN/inf check
            warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1", category=UserWarning)
            mesh = init_device_mesh(self.device.type, (self.world,))
            return fully_shard(model, mesh=mesh)  # type: ignore[return-value]
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Skip the gradient all-reduce in the block (accumulation micro-batches that don't step)."""
        if self.kind == "ddp":
            with model.no_sync():  # type: ignore[operator]
                yield
            return
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]

    def finish_epoch(self, state: TrainState) -> tuple[dict[str, Any], list[tuple[torch.Tensor, Any]]]:
        """`state.finish_epoch()` over every rank: the loss is the global mean weighted by rows (not a mean
        of the ranks' means), and the outputs for the train metrics are every rank's together."""
        losses, sizes = list(state.epoch_losses), list(state.epoch_sizes)
        logs, outputs = state.finish_epoch()
        stacked = torch.stack(losses).double()
        w = torch.tensor(sizes, dtype=torch.float64, device=stacked.device)
        total = self.collective.sum(torch.stack([(stacked * w).sum(), w.sum()]))
        logs["loss"] = (total[0] / total[1]).to(losses[0].dtype)
        if outputs and outputs[0][1] is not None:
            out = self.collective.gather_rows(torch.cat([o for o, _ in outputs]))
            y = self.collective.gather_rows(torch.cat([t for _, t in outputs if t is not None]))
            outputs = [(out, y)]
        return logs, outputs

    def describe(self, trainer: Trainer) -> str:
        """One line for the start of a fit: processes, backend, device, per-process and global batch."""
        b = self._batch_size(trainer)
        batch = "full batch" if b is None else f"batch_size {b} per process, global batch {b * self.world}"
        return (f"Distributed: {self.world} processes ({self.kind.upper()}, {self.backend} on "
                f"{self.device.type}); {batch}.")

    @staticmethod
    def _batch_size(trainer: Trainer) -> int | None:
        """The rows per batch of one process (None: full batch): the fit's DataLoader's, or the in-memory
        batches', else the config's."""
        source = trainer.training_step.batches if trainer.training_step is not None else None
        if isinstance(source, LoaderBatches):
            return source.loader.batch_size
        if isinstance(source, (ShardedBatches, TensorBatches)):
            return source.batch_size
        return trainer.config.batch_size
