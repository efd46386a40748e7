"""A small training run for the crash/resume tests, run as a subprocess by tests/test_checkpoint.py.

    python tests/ckpt_child.py RUN_DIR {tensor|loader} {fit|resume} [KILL]

KILL makes the process kill itself at a deterministic point:
  batch:N   SIGKILL right after optimizer step N (before any checkpoint of that step)
  ckpt:N    SIGKILL right after the checkpoint of step N is written
  write:N   SIGKILL halfway through writing the checkpoint of step N
  epoch:N   SIGKILL at the end of epoch N, before its checkpoint
  term:N    SIGTERM to itself at step N (graceful: checkpoint, exit 143)

    python tests/ckpt_child.py --serve

is a fork server for speed: it imports torch and torchmetrics once (without running any torch op),
then for each JSON line {"argv": [...], "log": PATH} on stdin forks a fresh process that runs one
training as above (stdout/stderr to PATH), waits for it and answers {"rc": exit code}. Each run is
still a separate OS process, killed for real.
"""

import json
import os
import signal
import sys
import traceback

import torch

import fitloop as fl
import fitloop.files


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
            def die_halfway(tmp):
                if trainer.state.step == self.n:
                    os.kill(os.getpid(), signal.SIGKILL)

            fitloop.files._on_partial_write = die_halfway

    def on_checkpoint(self, trainer, path):
        if self.kind == "ckpt" and trainer.state.step == self.n:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.kind == "epoch" and epoch == self.n:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
    run_dir, mode, action = argv[:3]
    kill = argv[3] if len(argv) > 3 else None
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


def serve():
    import torch._dynamo  # noqa: F401  (what Adam's first use imports)
    import torchmetrics  # noqa: F401
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 0
            try:
                main(req["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
                print(e, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(sys.argv[1:])
