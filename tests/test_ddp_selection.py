"""Early stopping and the best checkpoint under DDP (gloo, 2 processes on the CPU) against one process.

The job runs tests/ddp_selection_child.py; the one-process reference runs the same scenario in this
process. Every rank must stop at the reference's epoch, restore its best epoch, and the best checkpoint
must be the reference's (the same epoch, the same weights, to float32 rounding: the ranks add their
gradients in another order than one process does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "ddp_selection_child.py"
sys.path.insert(0, str(ROOT / "tests"))
import ddp_selection_child  # noqa: E402


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    return env


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.mark.slow
def test_early_stopping_and_the_best_checkpoint_match_one_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(CHILD), str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = _load(tmp_path / "selection-0.pt"), _load(tmp_path / "selection-1.pt")
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    ddp_selection_child.selection(reference_dir)
    ref = _load(reference_dir / "selection-0.pt")

    assert (ref["epoch"], ref["best_epoch"], ref["stopped_epoch"]) == (11, 9, 11)  # the scenario stops early
    for r in (r0, r1):  # every rank stops at the reference's epoch, for its reason, and restores its best epoch
        assert (r["epoch"], r["best_epoch"], r["stopped_epoch"], r["reason"]) == (
            ref["epoch"], ref["best_epoch"], ref["stopped_epoch"], ref["reason"])
    for a, b, c in zip(r0["params"], r1["params"], ref["params"], strict=True):
        assert torch.equal(a, b)  # DDP keeps the ranks identical
        assert torch.allclose(a, c, atol=1e-5), (a - c).abs().max()

    assert r0["best_checkpoint"] == ref["best_checkpoint"]  # the same epoch (its name says which)
    ddp, one = r0["best_checkpoint_state"], ref["best_checkpoint_state"]
    assert ddp["train_state"]["epoch"] == one["train_state"]["epoch"]
    assert list(ddp["model"]) == list(one["model"])  # the user's module's names, not DDP's "module." ones
    for name, value in one["model"].items():
        assert torch.allclose(ddp["model"][name], value, atol=1e-5), name
