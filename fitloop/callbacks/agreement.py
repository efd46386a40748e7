"""The interface between the run-directory callback and `DistributedSync`: what the ranks agree on.

With several processes, two of the run-directory callback's decisions depend on one rank alone: a
SIGINT/SIGTERM reaches some ranks (or one rank sooner), and the time-based checkpoint follows each
rank's own clock. Acted on alone, the ranks would checkpoint or stop at different steps, and one
would wait forever in a collective. So at each agreement point (every `sync_every` optimizer steps
and at every epoch's end, on every rank at the same step) `DistributedSync`:

1. asks the callback for this rank's wishes: `local_requests()`;
2. combines every rank's wishes in one all-reduce (any rank's signal, any rank's due checkpoint);
3. hands the agreed decision back: `apply_agreed(save=..., signal=...)`, identical on every rank.

The callback acts on the agreed decision only: it writes the checkpoint at this step (or this epoch's
end) and, after an agreed signal, stops the run, on every rank alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["LocalRequests", "CheckpointAgreement"]


@dataclass(frozen=True)
class LocalRequests:
    """What this rank would do alone, before the ranks agree.

    Attributes:
        signal: a signal (SIGINT/SIGTERM) this rank caught that is not agreed on yet, or None.
        save_due: whether a time-based checkpoint is due by this rank's clock.
    """

    signal: int | None = None
    save_due: bool = False


class CheckpointAgreement(Protocol):
    """The run-directory callback's side of the agreement (`fitloop.callbacks.checkpoint.Checkpointer`).

    Both methods are called by `DistributedSync` on every rank at the same step.
    """

    def local_requests(self) -> LocalRequests:
        """This rank's wishes: its caught signal, whether its clock says a checkpoint is due."""
        ...

    def apply_agreed(self, *, save: bool, signal: int | None) -> None:
        """The decision every rank agreed on: `save` a checkpoint at this sync point; `signal`: the
        signal (caught by some rank) that every rank now checkpoints and stops for, or None."""
        ...
