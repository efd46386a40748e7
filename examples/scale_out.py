"""The same training script on one process or several: run it plainly, or under torchrun.

    python examples/scale_out.py                                   # one process
    torchrun --nproc-per-node 2 examples/scale_out.py              # 2 processes (DDP, gloo on CPU)
    torchrun --nproc-per-node 2 --max-restarts 1 examples/scale_out.py   # a restart resumes the run
    torchrun --nproc-per-node 2 examples/scale_out.py 3            # a quick look: 3 epochs instead of 15

Nothing in the code is distributed: the Trainer joins the process group torchrun describes, wraps the
model in DDP, gives each rank its share of every global batch (batch_size is per process), and only
rank 0 prints and writes `runs/scale_out`. With the same global batch, 2 processes of 32 train the
weights that one process of 64 trains.
"""

import shutil
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fitloop as fl
from fitloop.distributed import is_main_process, restart_count, world_size

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
torch.manual_seed(0)
X = torch.randn(4000, 10)
y = X @ torch.randn(10, 1) + 0.1 * torch.randn(4000, 1)
train, val = TensorDataset(X[:3200], y[:3200]), (X[3200:], y[3200:])
loader = DataLoader(train, batch_size=64 // world_size(), shuffle=True)  # in-memory data: batched on the device

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
run_dir = "runs/scale_out"
if is_main_process() and restart_count() == 0:
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run (a restart continues it)
trainer = fl.Trainer(model, loss="mse", optimizer="adam", lr=3e-3, epochs=epochs, run_dir=run_dir, print_every=5)
history = trainer.resume(loader, val) if restart_count() else trainer.fit(loader, val)

r2 = history[-1]["val_r2"]  # computed on every rank's outputs, identical everywhere
if is_main_process():
    print(f"val r2 {r2:.3f} on {world_size()} process(es); bundle in {run_dir}/model")
assert r2 > 0.95, r2
