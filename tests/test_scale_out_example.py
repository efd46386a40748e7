"""examples/scale_out.py under torchrun: 2 processes (DDP, gloo on the CPU), a short run of 3 epochs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_out_runs_under_torchrun_on_two_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "examples" / "scale_out.py"), "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # only rank 0 prints: each line once
    assert out.count("Distributed: 2 processes (DDP, gloo on cpu); batch_size 32 per process, global batch 64.") == 1
    assert len(re.findall(r"^Epoch 3/3 ", out, re.M)) == 1, out
    assert out.count("Verdict: healthy.") == 1, out
    final = re.findall(r"^val r2 (\d\.\d{3}) on 2 process\(es\); bundle in runs/scale_out/model$", out, re.M)
    assert len(final) == 1 and float(final[0]) > 0.95, out
    assert (tmp_path / "runs" / "scale_out" / "model" / "model.safetensors").is_file()
