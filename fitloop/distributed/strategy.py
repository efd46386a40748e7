"""How a Trainer runs on several processes: the DDP or FSDP wrap, the epoch's global reductions, the
agreed decisions. The Trainer asks for it once (`Strategy.from_config`) and otherwise only through
public seams: the model it wraps, `finish_epoch` for the epoch's loss and metrics, `no_sync` for the
training step, and the `DistributedSync` callback for every decision a rank could otherwise take alone.

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

from ..callbacks.base import Callback
from . import is_main_process
from .group import Collective, diagnose, init_from_env, is_collective_error

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..state import TrainState
    from ..trainer import Trainer

__all__ = ["Strategy", "DistributedSync", "STRATEGIES"]

STRATEGIES = ("auto", "ddp", "fsdp")
SYNC_EVERY = 64  # steps between two agreements on a stop (a signal, a callback's request) mid-epoch


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
        from ..devices import pick_device

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
        if self.kind == "fsdp":
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

    def callbacks(self) -> list[Callback]:
        """The callbacks the Trainer adds after the user's (so it sees their stop requests) and before its
        own printer and run-directory callback (so they see the agreed decision)."""
        return [DistributedSync(self)]

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
        source = getattr(trainer.training_step, "batches", None)
        loader = getattr(source, "loader", None)  # the DataLoader path: its batch size
        b = loader.batch_size if loader is not None else getattr(source, "batch_size", trainer.config.batch_size)
        batch = "full batch" if b is None else f"batch_size {b} per process, global batch {b * self.world}"
        return (f"Distributed: {self.world} processes ({self.kind.upper()}, {self.backend} on "
                f"{self.device.type}); {batch}.")


class DistributedSync(Callback):
    """Makes every rank take the same decisions at the same step, so no rank leaves the loop while another
    waits in a collective.

    A stop that one rank asks for during an epoch (a callback's `should_stop`, a SIGINT/SIGTERM the
    run-directory callback caught) is held back and agreed on by all-reduce every `sync_every` optimizer
    steps and at every epoch's end: then every rank stops at the same step (and writes the same
    checkpoint). A time-based checkpoint (`checkpoint_every_seconds`: each rank's own clock) is agreed on
    in the same all-reduce, so it lands on the same step everywhere. Early stopping, the best checkpoint
    and the NaN/inf check decide on values that are already identical on every rank (the epoch's logs are
    global; gradients are all-reduced, and a rank whose loss alone is NaN/inf poisons its gradients so
    that every rank sees it). A failed
    collective (a rank died or hangs) becomes `RankFailure`, naming the rank, within the timeout.
    """

    def __init__(self, strategy: Strategy, sync_every: int = SYNC_EVERY):
        self.strategy, self.sync_every = strategy, sync_every
        self._pending: str | None = None  # this rank's stop request, not yet agreed
        self._asked = False

    def on_fit_start(self, trainer: Trainer) -> None:
        self._pending = None
        trainer.log(self.strategy.describe(trainer))

    def _hold(self, trainer: Trainer) -> None:
        if trainer.should_stop:  # asked for on this rank only: wait for the next agreement
            self._pending = trainer.stop_reason or "stop requested"
            trainer.should_stop = False

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        self._hold(trainer)

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        self._hold(trainer)
        if step % self.sync_every == 0 and trainer.state.batch < trainer.steps_per_epoch:
            self.agree(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self._hold(trainer)
        self.agree(trainer)

    def agree(self, trainer: Trainer) -> None:
        """One all-reduce: does any rank want to stop (or has a signal), and is a time-based checkpoint due
        by any rank's clock? Then every rank stops, or checkpoints, alike."""
        ckpt = trainer.checkpointer
        signum = ckpt.pending_signal if ckpt is not None else None
        stop, save = self.strategy.collective.flags(self._pending is not None or signum is not None,
                                                    ckpt is not None and ckpt.time_due())
        if save and ckpt is not None:
            ckpt.save_agreed = True  # it writes the checkpoint at this step (or this epoch's end) on every rank
        if not stop:
            return
        wishes = self.strategy.collective.gather_objects((self._pending, signum))
        reason = next((r for r, _ in wishes if r is not None), None)
        sig = next((s for _, s in wishes if s is not None), None)
        self._pending = None
        if sig is not None and ckpt is not None:
            ckpt.agree_signal(sig)  # it writes the checkpoint and stops the run on every rank
        if reason is not None:
            trainer.should_stop, trainer.stop_reason = True, reason

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if is_collective_error(error):
            failure = diagnose(error, f"training (epoch {trainer.state.epoch + 1}, global step {trainer.state.step})")
            if failure is not None:
                raise failure from error
