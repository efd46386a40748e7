"""What a checkpoint of several processes holds besides rank 0's `Trainer.state_dict()`: every rank's own part.

The model, optimizer and data order are identical on every rank (DDP), so rank 0's copy serves all; what
differs per rank is kept per rank, gathered to rank 0 when the checkpoint is written and handed back to
each rank on resume, so a resumed run continues exactly like an uninterrupted one:

* the RNG states (dropout and input noise draw different numbers on each rank);
* the current epoch's losses, row counts and outputs so far (the epoch's global loss and train metrics);
* with FSDP, the model's and optimizer's shards (`fitloop.distributed.fsdp`).

Both functions are collectives: every rank calls them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..state import rng_state, set_rng_state
from . import rank, world_size
from .fsdp import save_sharded
from .group import Collective

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["add_rank_states", "restore_rank_state"]


def add_rank_states(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Add `world_size` and every rank's own state to `state` (the checkpoint rank 0 writes to `path`)."""
    st = trainer.state
    state["world_size"] = world_size()
    state["ranks"] = Collective(trainer.device).gather_objects({
        "rng": rng_state(trainer.generator), "losses": [t.cpu() for t in st.epoch_losses], "sizes": st.epoch_sizes,
        "outputs": [[o.cpu(), None if y is None else y.cpu()] for o, y in st.outputs]})
    if getattr(trainer.strategy, "kind", None) == "fsdp":
        save_sharded(trainer, state, path.with_suffix(".dcp"))


def restore_rank_state(trainer: Trainer, ck: dict[str, Any]) -> None:
    """On resume, after `Trainer.load_state_dict(ck)`: this rank's RNGs and its part of the current epoch."""
    if not ck.get("ranks"):
        return
    mine, st, dev = ck["ranks"][rank()], trainer.state, trainer.device
    set_rng_state(trainer.generator, mine["rng"])
    st.epoch_losses, st.epoch_sizes = [t.to(dev) for t in mine["losses"]], list(mine["sizes"])
    st.outputs = [(o.to(dev), None if y is None else y.to(dev)) for o, y in mine["outputs"]]
