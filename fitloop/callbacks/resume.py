"""The checks before a run continues from a checkpoint: the right checkpoint, the same world, model, config and data.

`Trainer.resume` asks the run-directory callback (`Checkpointer.prepare_resume`), which loads the
checkpoint here and refuses, naming what changed, a resume that would not continue the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._fastpath import unwrap_model
from ..bundle import check_state_shapes
from ..checkpoint_format import CheckpointWarning, ResumeMismatchError, load_checkpoint, load_latest
from ..config import RESUME_IGNORED
from ..distributed import world_size
from ..distributed.fsdp import load_sharded
from ..warn import warn_user
from .fingerprints import data_fingerprint, differences

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["load_for_resume"]


def load_for_resume(run_dir: Path, trainer: Trainer, train: Any, val: Any, *, checkpoint: str | None,
                    force: bool) -> dict[str, Any]:
    """The checkpoint to continue from (the newest good one of `run_dir`, or `checkpoint`), checked
    against `trainer`, its config and the data.

    Raises:
        CheckpointError: no loadable checkpoint (never a silent fresh start).
        ResumeMismatchError: another number of processes; the config or data changed (unless `force`).
        ValueError: the model's parameter shapes differ from the checkpoint's.
    """
    ck = load_checkpoint(checkpoint) if checkpoint is not None else load_latest(run_dir)
    where = str(ck.get("_path"))
    if int(ck.get("world_size", 1)) != world_size():
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
    return ck


def changes_since(ck: dict[str, Any], trainer: Trainer, train: Any, val: Any) -> list[str]:
    """What differs between checkpoint `ck` and now: the config's settings, the data's fingerprints."""
    fingerprints = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
    problems = differences("config ", ck.get("config"), trainer.config.to_dict(), RESUME_IGNORED)
    for part in ("train", "val"):
        old, new = (ck.get("data") or {}).get(part), fingerprints.get(part)
        if old != new:
            diffs = differences(f"{part} data ", old, new) or [f"{part} data: {old!r} -> {new!r}"]
            problems += [d.replace(" data ", " data: ", 1) for d in diffs]
    return problems
