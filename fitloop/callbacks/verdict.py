"""VerdictReporter: at the end of fit, the verdict on the run (fitloop.diagnose.verdict), in plain words."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..diagnose.verdict import verdict_of
from ..distributed import is_main_process, world_size
from ..state import rng_state, set_rng_state
from .base import Callback

if TYPE_CHECKING:
    from ..diagnose.verdict import Verdict
    from ..trainer import Trainer

__all__ = ["VerdictReporter", "verdict_in"]


class VerdictReporter(Callback):
    """Judges the run when fit ends (or stops on a NaN/inf) and prints the verdict with its suggestion.

    The Trainer adds one by default, before its run-directory `Checkpointer`, which saves the verdict
    in `run.json`. It prints nothing with `quiet=True` or off the main process; `verdict` holds the
    last fit's `Verdict` either way. `units`: what the losses are in when they are not in the target's own
    units (`fitloop.diagnose.verdict.STANDARDISED` for a table run's regression), named in the verdict.
    `probe`: called with the trainer when the training loss stayed high (a plateau or underfitting; on one
    process only), it returns a capacity probe's result (`fitloop.diagnose.verdict.capacity_probe`): the
    evidence that tells underfitting (a larger model did better) from data at their limit. The table
    workflow sets one; by default there is none.
    """

    def __init__(self, stream: IO[str] | None = None, units: str | None = None,
                 probe: Callable[[Trainer], dict[str, Any] | None] | None = None):
        self.stream = stream
        self.units = units  # what the losses are in, when not the target's units (a table run's regression)
        self.probe = probe
        self.verdict: Verdict | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.verdict = None

    def on_fit_end(self, trainer: Trainer) -> None:
        self._judge(trainer, None)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if self.verdict is None:  # not after on_fit_end (a signal's RunInterrupted comes from the Checkpointer)
            self._judge(trainer, error, show=type(error).__name__ == "NonFiniteError")

    def _judge(self, trainer: Trainer, error: BaseException | None, show: bool = True) -> None:
        self.verdict = verdict_of(trainer, error, units=self.units)
        # a training loss that stayed high (a plateau, or underfitting on a still-falling loss): the probe tells
        # a model too simple from data at their limit
        high = self.verdict.kind in ("plateau", "underfitting")
        if high and self.probe is not None and error is None and world_size() == 1:
            # the probe trains another model: the run's generators are put back, so a checkpoint written after
            # the verdict (and a resume from it) is what it would have been without the probe
            saved = rng_state(trainer.generator)
            try:
                result = self.probe(trainer)
            finally:
                set_rng_state(trainer.generator, saved)
            if result:
                self.verdict = verdict_of(trainer, error, probe=result, units=self.units)
        if show and not trainer.config.quiet and is_main_process():
            print(str(self.verdict), file=self.stream or sys.stdout, flush=True)


def verdict_in(trainer: Trainer) -> dict[str, Any] | None:
    """The last fit's verdict as a dict (for `run.json`), from the trainer's `VerdictReporter`."""
    found = next((cb.verdict for cb in trainer.callbacks if isinstance(cb, VerdictReporter)), None)
    return found.to_dict() if found is not None else None
