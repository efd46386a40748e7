"""Distributed scenarios for tests/test_distributed.py, run as one torchrun job (or in one process for the
references): each writes its results to OUT/<scenario>-<rank>.pt so the test compares them.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_child.py OUT equal count ...
    python tests/dist_child.py OUT equal                       # the one-process references
    RANK=.. WORLD_SIZE=2 ... python tests/dist_child.py OUT kill  # workers without an agent (failure test)

A scenario builds its data and model from fixed seeds, so the one-process run and the 2-process run start
from the same weights and see the same global batches (batch_size per process x processes).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import fitloop as fl
from fitloop.callbacks.base import Callback
from fitloop.callbacks.distributed_sync import DistributedSync
from fitloop.distributed import rank, world_size

GLOBAL_BATCH = 16


def data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g)
    return X, X @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))


def trainer(optimizer: str, m: nn.Module | None = None, **kw) -> fl.Trainer:
    settings = {"epochs": 3, "lr": 0.05, "batch_size": GLOBAL_BATCH // world_size(), "threads": 1, "quiet": True}
    settings.update(kw)
    return fl.Trainer(m if m is not None else model(), loss="mse", optimizer=optimizer, **settings)


def params(t: fl.Trainer) -> list[torch.Tensor]:
    from fitloop.distributed.fsdp import full_state_dict

    return [v.detach().clone() for v in full_state_dict(_inner(t)).values()]


def _inner(t: fl.Trainer) -> nn.Module:
    m = t.model
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def save(out: Path, name: str, obj) -> None:
    torch.save(obj, out / f"{name}-{rank()}.pt")


# ------------------------------------------------------------------------------------------ scenarios


def equal(out: Path) -> None:
    """97 rows, global batch 16: the last global batch has 1 row (rank 1's share is empty)."""
    X, y = data(97)
    res = {}
    for opt, acc in (("sgd", 1), ("adam", 1), ("adam", 2)):
        t = trainer(opt, accumulate=acc)
        no_sync = []
        if t.strategy is not None:  # count the micro-batches that skip the all-reduce
            inner = t.strategy.no_sync
            t.strategy.no_sync = lambda model, inner=inner, seen=no_sync: seen.append(1) or inner(model)
        h = t.fit((X, y), (X[:37], y[:37]))
        res[f"{opt}-{acc}"] = {"params": params(t), "history": [{k: v for k, v in e.items() if k != "time"}
                                                                for e in h], "no_sync": len(no_sync)}
    save(out, "equal", res)


class _Recorder(nn.Module):
    """Records the row ids (column 0) each training forward sees, per epoch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.seen: dict[int, list[int]] = {}
        self.epoch = 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.seen.setdefault(self.epoch, []).extend(x[:, 0].long().tolist())
        return self.lin(x)


class _Epoch(Callback):
    def __init__(self, m: _Recorder):
        self.m = m

    def on_epoch_start(self, trainer, epoch):
        self.m.epoch = epoch


class _Rows(Dataset):
    """A plain (non-tensor) Dataset: the DataLoader path with a DistributedSampler."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i), 1.0]), torch.tensor([0.0])


def count(out: Path) -> None:
    """101 rows (odd), 8 per process: every row once per epoch; and the DataLoader path's orders."""
    n = 101
    X = torch.stack([torch.arange(n, dtype=torch.float32), torch.ones(n)], 1)
    y = torch.zeros(n, 1)
    res = {}
    for kind, train in (("tensors", (X, y)), ("dataset", _Rows(n))):
        m = _Recorder()
        fl.Trainer(m, loss="mse", optimizer="sgd", lr=1e-3, epochs=3, batch_size=8, quiet=True, threads=1,
                   callbacks=[_Epoch(m)]).fit(train)
        res[kind] = m.seen
    save(out, "count", res)


class _SignalAt(Callback):
    """Sends SIGINT to this process at one global step, on one rank only."""

    def __init__(self, step: int, on_rank: int):
        self.step, self.on_rank = step, on_rank

    def on_optimizer_step(self, trainer, step):
        if step == self.step and rank() == self.on_rank:
            os.kill(os.getpid(), signal.SIGINT)


class _StopOn(Callback):
    """Asks to stop after one epoch, on one rank only (the others must stop with it)."""

    def __init__(self, epoch: int, on_rank: int):
        self.epoch, self.on_rank = epoch, on_rank

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.epoch and rank() == self.on_rank:
            trainer.should_stop, trainer.stop_reason = True, f"rank {rank()} asked"


def _sync_every(t: fl.Trainer, n: int) -> None:
    for cb in t.callbacks:
        if isinstance(cb, DistributedSync):
            cb.sync_every = n


def resume(out: Path, strategy: str = "ddp") -> None:
    """Uninterrupted vs interrupted (SIGINT on rank 1 mid-epoch) and resumed, with checkpoints; and a
    stop one rank asks for."""
    X, y = data(101)
    kw = {"epochs": 4, "strategy": strategy, "checkpoint_every_steps": 3}
    full = trainer("adam", run_dir=str(out / f"{strategy}-full"), **kw)
    full.fit((X, y), (X[:30], y[:30]))
    t = trainer("adam", run_dir=str(out / f"{strategy}-cut"), callbacks=[_SignalAt(10, on_rank=1)], **kw)
    _sync_every(t, 2)
    code = None
    try:
        t.fit((X, y), (X[:30], y[:30]))
    except fl.RunInterrupted as e:
        code = e.code
    stopped_at = t.global_step
    t2 = trainer("adam", run_dir=str(out / f"{strategy}-cut"), **kw)
    t2.resume((X, y), (X[:30], y[:30]))
    stop = trainer("sgd", callbacks=[_StopOn(2, on_rank=1)], epochs=5)
    stop.fit((X, y))
    save(out, f"resume-{strategy}", {"full": params(full), "resumed": params(t2), "code": code,
                                     "stopped_at": stopped_at, "history_full": [h["loss"] for h in full.history],
                                     "history_resumed": [h["loss"] for h in t2.history],
                                     "stop_epochs": stop.epoch, "stop_reason": stop.stop_reason})


def fsdp(out: Path) -> None:
    resume(out, "fsdp")


def kill(out: Path) -> None:
    """Rank 1 dies (SIGKILL; or hangs with HOW=hang) at step 3; rank 0 must give up within dist_timeout,
    naming rank 1."""
    class Die(Callback):
        def on_optimizer_step(self, trainer, step):
            if step == 3 and rank() == 1:
                if os.environ.get("HOW") == "hang":
                    import time

                    time.sleep(3600)
                os.kill(os.getpid(), signal.SIGKILL)

    X, y = data(400)
    trainer("sgd", callbacks=[Die()], epochs=50, dist_timeout=float(os.environ.get("TIMEOUT", "5"))).fit((X, y))


def timed(out: Path) -> None:
    """Time-based checkpoints (each rank's own clock, rank 1 a little slower) land on the same step on
    every rank: the run finishes (it deadlocked in the checkpoint's collectives when each rank decided)."""
    import time

    class Slower(Callback):
        def on_optimizer_step(self, trainer, step):
            if rank() == 1 and step % 7 == 0:
                time.sleep(0.003)

    X, y = data(2000)
    # 0.01 s: fewer than the sleeps alone between two agreement points (64 steps), however fast the machine
    t = trainer("sgd", callbacks=[Slower()], epochs=2, run_dir=str(out / "timed"), checkpoint_every_seconds=0.01,
                checkpoint_every_steps=None, dist_timeout=20)
    t.fit((X, y))
    save(out, "timed", {"steps": t.global_step,
                        "ckpts": sorted(p.name for p in (out / "timed" / "checkpoints").glob("ckpt-*"))})


def nonfinite(out: Path) -> None:
    """A loss that is inf on one rank only (its gradients finite): every rank skips the same step, or every
    rank stops (it hung, one rank stepping and the other not)."""
    X, y = data(32)
    y = y.clone()
    y[5] = 1e30  # (out - y)^2 overflows float32 to inf; the gradient 2 (out - y) stays finite
    results = {}
    for mode in ("skip", "stop"):
        t = trainer("sgd", epochs=1, shuffle=False, on_nonfinite=mode, lr=1e-40)
        try:
            t.fit((X, y))
            results[mode] = {"skipped": t.state.skipped_steps, "steps": t.global_step}
        except fl.NonFiniteError as e:
            results[mode] = {"error": str(e)[:200], "steps": t.global_step}
    save(out, "nonfinite", results)


SCENARIOS = {"equal": equal, "count": count, "resume": resume, "fsdp": fsdp, "kill": kill, "timed": timed,
             "nonfinite": nonfinite}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name in sys.argv[2:]:
        SCENARIOS[name](out)
