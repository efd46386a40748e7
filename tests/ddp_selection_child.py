"""Early stopping and the best checkpoint under DDP, for tests/test_ddp_selection.py: one scenario, run by a
2-process torchrun job and in one process for the reference; each rank writes OUT/selection-<rank>.pt.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_selection_child.py OUT
    python tests/ddp_selection_child.py OUT                   # the one-process reference

The data, the model and the global batches are dist_child's (batch_size 16 in one process, 8 per rank in two).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import fitloop as fl
from fitloop.checkpoint_format import load_checkpoint
from fitloop.distributed import rank, world_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist_child  # noqa: E402


def selection(out: Path) -> None:
    """An Adam fit that early stopping ends (min_delta 0.05, patience 2: best epoch 9, stopped at 11) with a
    run directory: what each rank stopped at, the weights it ended with, and the best checkpoint."""
    X, y = dist_child.data(128)
    stopper = fl.EarlyStopping("val_loss", patience=2, min_delta=0.05)
    run_dir = out / f"run-{world_size()}"
    t = dist_child.trainer("adam", epochs=40, callbacks=[stopper], run_dir=run_dir)
    t.fit((X[:96], y[:96]), (X[96:], y[96:]))
    result = {"epoch": t.epoch, "best_epoch": stopper.best_epoch, "stopped_epoch": stopper.stopped_epoch,
              "reason": t.stop_reason, "params": dist_child.params(t)}
    if rank() == 0:  # rank 0 writes the run directory
        best = (run_dir / "checkpoints" / "best").read_text().strip()
        result["best_checkpoint"] = best
        result["best_checkpoint_state"] = load_checkpoint(run_dir / "checkpoints" / best)
    torch.save(result, out / f"selection-{rank()}.pt")


if __name__ == "__main__":
    selection(Path(sys.argv[1]))  # the Trainer joins torchrun's process group itself
