"""The model summary under FSDP names the user's class, not the subclass `fully_shard` swaps in.

`fully_shard` needs a process group: the check runs in a child process with a one-process gloo group on
the CPU (real FSDP, nothing mocked), so this test process never joins a group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fitloop.distributed.fsdp import plain_class

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, socket, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import fitloop as fl
from fitloop.distributed.fsdp import plain_class
from fitloop.models import MLPSpec, build_mlp

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
try:
    torch.manual_seed(0)
    model = build_mlp(MLPSpec(in_features=4, hidden=[8], out_features=1, skip=True))
    sharded = fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    result = fl.summary(sharded, (4,), verbose=False)
    print(json.dumps({"wrapper": type(sharded).__name__, "plain": plain_class(sharded).__name__,
                      "summary": result.model, "layers": [row.kind for row in result.rows],
                      "total": result.total, "text": str(result)}))
finally:
    dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_the_summary_of_an_fsdp_model_names_the_users_class():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["wrapper"] == "FSDPSkipMLP"  # what fully_shard made of it
    assert out["plain"] == out["summary"] == "SkipMLP"
    assert "FSDP" not in out["text"] and "SkipMLP" in out["text"]
    assert "FSDP" not in "".join(out["layers"]) and "Linear" in out["layers"]
    assert out["total"] == 4 * 8 + 8 + 8 * 1 + 1 + 4 * 1  # the full (gathered) count, not one shard's


def test_plain_class_leaves_an_unsharded_module_as_it_is():
    from fitloop.models import MLPSpec, SkipMLP, build_mlp

    assert plain_class(torch.nn.Linear(2, 1)) is torch.nn.Linear
    assert plain_class(torch.nn.Sequential(torch.nn.Linear(2, 1))) is torch.nn.Sequential
    assert plain_class(build_mlp(MLPSpec(in_features=2, hidden=[3], out_features=1, skip=True))) is SkipMLP
