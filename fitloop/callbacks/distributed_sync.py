"""`DistributedSync`: the callback that makes every rank of a distributed run take the same decisions.

The Trainer adds it when it runs on several processes (`fitloop.distributed.strategy.Strategy`), after
the user's callbacks (so it sees their stop requests) and before its own printer and run-directory
callback (so they see the agreed decision). It lives here, not in `fitloop.distributed`, so that the
distributed package does not depend on the callbacks: it uses the strategy's collectives and the
run-directory callback's agreement interface (`fitloop.callbacks.agreement`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..distributed.group import diagnose, is_collective_error
from .agreement import CheckpointAgreement, LocalRequests
from .base import Callback

if TYPE_CHECKING:
    from ..distributed.strategy import Strategy
    from ..trainer import Trainer

__all__ = ["DistributedSync", "SYNC_EVERY"]

SYNC_EVERY = 64  # steps between two agreements on a stop (a signal, a callback's request) mid-epoch


class DistributedSync(Callback):
    """Makes every rank take the same decisions at the same step, so no rank leaves the loop while another
    waits in a collective.

    A stop that one rank asks for during an epoch (a callback's `should_stop`, a SIGINT/SIGTERM the
    run-directory callback caught) is held back and agreed on by all-reduce every `sync_every` optimizer
    steps and at every epoch's end: then every rank stops at the same step (and writes the same
    checkpoint). A time-based checkpoint (`checkpoint_every_seconds`: each rank's own clock) is agreed on
    in the same all-reduce, so it lands on the same step everywhere (`fitloop.callbacks.agreement`).
    Early stopping, the best checkpoint and the NaN/inf check decide on values that are already identical
    on every rank (the epoch's logs are global; gradients are all-reduced, and a rank whose loss alone is
    NaN/inf poisons its gradients so that every rank sees it). A failed collective (a rank died or hangs)
    becomes `RankFailure`, naming the rank, within the timeout.

    Args:
        strategy: the Trainer's `Strategy` (its collectives).
        sync_every: optimizer steps between two agreements inside an epoch.
    """

    def __init__(self, strategy: Strategy, sync_every: int = SYNC_EVERY):
        self.strategy, self.sync_every = strategy, sync_every
        self._pending: str | None = None  # this rank's stop request, not yet agreed

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
        checkpointer: CheckpointAgreement | None = trainer.checkpointer
        local = checkpointer.local_requests() if checkpointer is not None else LocalRequests()
        collective = self.strategy.collective
        stop, save = collective.flags(self._pending is not None or local.signal is not None, local.save_due)
        reason = signum = None
        if stop:  # rare: only now learn which rank wants what
            wishes = collective.gather_objects((self._pending, local.signal))
            reason = next((wish for wish, _ in wishes if wish is not None), None)
            signum = next((sig for _, sig in wishes if sig is not None), None)
            self._pending = None
        if checkpointer is not None:  # it checkpoints (and after a signal stops) on every rank alike
            checkpointer.apply_agreed(save=save, signal=signum)
        if reason is not None:
            trainer.should_stop, trainer.stop_reason = True, reason

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if is_collective_error(error):
            failure = diagnose(error, f"training (epoch {trainer.state.epoch + 1}, global step {trainer.state.step})")
            if failure is not None:
                raise failure from error
