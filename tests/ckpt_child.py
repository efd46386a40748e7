"""A small training run for the crash/resume tests, run as a subprocess by tests/test_checkpoint.py.

    python tests/ckpt_child.py RUN_DIR {tensor|loader} {fit|resume} [KILL]

KILL makes the process kill itself at a deterministic point:
  batch:N   SIGKILL right after optimizer step N (before any checkpoint of that step)
  ckpt:N    SIGKILL right after the checkpoint of step N is written
  write:N   SIGKILL halfway through writing the checkpoint of step N
  epoch:N   SIGKILL at the end of epoch N, before its checkpoint
  term:N    SIGTERM to itself at step N (graceful: checkpoint, exit 143)
"""

import os
import signal
import sys

import torch

import fitloop as fl
from fitloop import checkpoint as ck


def data():
    g = torch.Generator().manual_seed(123)
    X = torch.randn(90, 4, generator=g)
    y = (X @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(90, generator=g)).unsqueeze(1)
    return fl.split(X, y, fractions=(0.8, 0.2), seed=0)


class Killer(fl.Callback):
    def __init__(self, spec: str):
        self.kind, n = spec.split(":")
        self.n = int(n)

    def on_train_batch_end(self, trainer, step, loss):
        if self.kind == "batch" and step == self.n:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "term" and step == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.kind == "write" and step == self.n - 1:  # arm: the next checkpoint write dies halfway
            ck._on_partial_write = lambda tmp: trainer.state.step == self.n and os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint(self, trainer, path):
        if self.kind == "ckpt" and trainer.state.step == self.n:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.kind == "epoch" and epoch == self.n:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    run_dir, mode, action = sys.argv[1:4]
    kill = sys.argv[4] if len(sys.argv) > 4 else None
    train, val = data()
    if mode == "loader":  # the Dataset path: a Subset-like Dataset through fitloop's DataLoader
        train = torch.utils.data.TensorDataset(train.X, train.y)
        val = torch.utils.data.TensorDataset(val.X, val.y)
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(16, 1))
    callbacks = [fl.EarlyStopping(patience=50)] + ([Killer(kill)] if kill else [])
    trainer = fl.Trainer(model, "mse", "adam", lr=1e-2, epochs=4, batch_size=16, seed=3, quiet=True,
                         scheduler=("step", {"step_size": 1, "gamma": 0.7}), callbacks=callbacks,
                         run_dir=run_dir, checkpoint_every_steps=4, keep_last=2, input_noise=0.01)
    if action == "fit":
        trainer.fit(train, val)
    else:
        trainer.resume(train, val)


if __name__ == "__main__":
    main()
