"""The checks before a run continues from a checkpoint: the right checkpoint, the same world, model, config and data.

`Trainer.resume` asks the run-directory callback (`Checkpointer.prepare_resume`), which loads the
checkpoint here and refuses, naming what changed, a resume that would not continue the same run.

**Another number of processes.** A run whose training data is a streamed `ParquetSource` may resume at
another world size under plain DDP (or in one process): its epoch's order does not depend on the world and
its position is a row of that order (the batch index times the global batch, which its checkpointed
fingerprint records with `order: "global"`). The resumed run delivers the rest of the epoch's rows in the
same global order: the first batch is the rest of the new run's batch holding that row
(`ParquetSource.continue_at`), then the new grid of global batches. Each new rank gets an old rank's RNG
states (rank 0's where there is no such rank) and rank 0 the epoch's losses and outputs so far, merged, so
that the epoch's loss stays the mean over all its rows. The weights are those of a run of the new size
from there on, not bit-identical to a run that kept its size (the reductions add in another order).
Refused, as before, for in-memory data (its shards and order depend on the world), for FSDP (its sharded
states do) and for checkpoints written before the fingerprint recorded the order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._fastpath import unwrap_model
from ..bundle import check_state_shapes
from ..checkpoint_format import CheckpointWarning, ResumeMismatchError, load_checkpoint, load_latest
from ..config import RESUME_IGNORED
from ..data.stream import ParquetSource
from ..distributed import world_size
from ..distributed.fsdp import load_sharded
from ..warn import warn_user
from .fingerprints import data_fingerprint, differences

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["load_for_resume"]

_ADDED_STREAM_KEYS = ("batch_size", "order")  # what a streamed source's fingerprint gained with world-free resume


def load_for_resume(run_dir: Path, trainer: Trainer, train: Any, val: Any, *, checkpoint: str | None,
                    force: bool) -> dict[str, Any]:
    """The checkpoint to continue from (the newest good one of `run_dir`, or `checkpoint`), checked
    against `trainer`, its config and the data.

    Raises:
        CheckpointError: no loadable checkpoint (never a silent fresh start).
        ResumeMismatchError: another number of processes (but for streamed data under DDP); the config or
            data changed (unless `force`).
        ValueError: the model's parameter shapes differ from the checkpoint's.
    """
    ck = load_checkpoint(checkpoint) if checkpoint is not None else load_latest(run_dir)
    where = str(ck.get("_path"))
    other_world = int(ck.get("world_size", 1)) != world_size()
    if other_world and not _world_free(ck, trainer, train):
        raise ResumeMismatchError(f"Cannot resume from {where}: it was written by {ck.get('world_size', 1)} "
                                  f"process(es), this run has {world_size()}; resume with as many (the shards "
                                  "and the global batch depend on it).")
    if "dcp" in ck:  # FSDP: every rank reads its shards of the model and optimizer states
        load_sharded(trainer, ck)
    check_state_shapes(unwrap_model(trainer.model), ck["model"], where=where)
    problems = changes_since(ck, trainer, train, val)
    if problems:
        msg = (f"Cannot resume from {where}: what changed since the checkpoint (saved -> now): "
               + "; ".join(problems) + ". Resume with the same settings and data, or pass force=True "
               "(--force) to resume anyway.")
        if not force:
            raise ResumeMismatchError(msg)
        warn_user(msg.replace("Cannot resume", "Resuming despite changes,"), CheckpointWarning)
    if other_world:  # last: nothing is changed for a resume refused above
        _rebase(ck, trainer, train)
    return ck


def _world_free(ck: dict[str, Any], trainer: Trainer, train: Any) -> bool:
    """Whether checkpoint `ck` may continue at this world size: streamed training data whose checkpointed
    fingerprint records a global order, without FSDP then or now."""
    saved = (ck.get("data") or {}).get("train") or {}
    fsdp = "dcp" in ck or (trainer.config.strategy == "fsdp" and world_size() > 1)
    return isinstance(train, ParquetSource) and saved.get("order") == "global" and not fsdp


def _rebase(ck: dict[str, Any], trainer: Trainer, train: ParquetSource) -> None:
    """Rewrite checkpoint `ck` (of another world size) for this one: the position on this run's grid of
    global batches, the source told where the epoch continues, one rank state per process now."""
    state = ck["train_state"]
    if state["batch"]:
        saved = ck["data"]["train"]
        old_batch = saved.get("batch_size") or (ck.get("config") or {}).get("batch_size")
        row = state["batch"] * train.global_batch(old_batch, int(ck.get("world_size", 1)))
        state["batch"] = train.continue_at(row, trainer.config.batch_size, world_size())
    ck["ranks"] = _rank_states(ck, world_size())


def _rank_states(ck: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """`world` rank states from the checkpoint's (`distributed.ranks`; one process's are its own state):
    rank r keeps old rank r's RNGs (rank 0's past the old world); rank 0 gets the epoch's losses and
    outputs of every old rank, the others none."""
    state = ck["train_state"]
    old = ck.get("ranks") or [{"rng": ck["rng"], "losses": state["epoch_losses"], "sizes": state["epoch_sizes"],
                               "outputs": state["outputs"]}]
    losses, sizes = _merged_losses(old)
    outputs = [output for rank_state in old for output in rank_state["outputs"]]
    return [{"rng": old[r if r < len(old) else 0]["rng"], "losses": losses if r == 0 else [],
             "sizes": sizes if r == 0 else [], "outputs": outputs if r == 0 else []} for r in range(world)]


def _merged_losses(ranks: list[dict[str, Any]]) -> tuple[list[torch.Tensor], list[int]]:
    """The old ranks' step losses and rows as one list: each step's row-weighted mean loss over the ranks
    and its rows (or, if the ranks recorded different steps, every rank's entries one after the other)."""
    if len({len(r["losses"]) for r in ranks}) != 1:
        return [loss for r in ranks for loss in r["losses"]], [size for r in ranks for size in r["sizes"]]
    losses, sizes = [], []
    for step in zip(*(zip(r["losses"], r["sizes"], strict=True) for r in ranks), strict=True):
        rows = sum(size for _, size in step)
        total = sum(loss.double() * size for loss, size in step) / rows if rows else step[0][0].double()
        losses.append(torch.as_tensor(total).to(step[0][0].dtype))
        sizes.append(rows)
    return losses, sizes


def changes_since(ck: dict[str, Any], trainer: Trainer, train: Any, val: Any) -> list[str]:
    """What differs between checkpoint `ck` and now: the config's settings, the data's fingerprints."""
    fingerprints = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
    problems = differences("config ", ck.get("config"), trainer.config.to_dict(), RESUME_IGNORED)
    for part in ("train", "val"):
        old, new = (ck.get("data") or {}).get(part), fingerprints.get(part)
        if isinstance(old, dict) and isinstance(new, dict) and new.get("kind") == "parquet-stream":
            # fingerprints written before a streamed source recorded these compare without them
            new = {key: value for key, value in new.items() if key in old or key not in _ADDED_STREAM_KEYS}
        if old != new:
            diffs = differences(f"{part} data ", old, new) or [f"{part} data: {old!r} -> {new!r}"]
            problems += [d.replace(" data ", " data: ", 1) for d in diffs]
    return problems
