"""Benchmark workloads: data, models, and the reference (tutorial / hand-written) training loops.

Every arm of a workload gets the same data tensors, the same model initialisation (``torch.manual_seed``
before building the model), the same shuffling seed and the same hyperparameters.  The harness scores
every arm the same way afterwards (``score``) on the trained model object, so a faster-but-wrong arm shows
up in the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0


# --------------------------------------------------------------------------------------------- data


def _split_idx(n: int, fractions=(0.7, 0.15, 0.15), seed: int = SEED):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_tr = int(n * fractions[0])
    n_va = int(n * fractions[1])
    return perm[:n_tr], perm[n_tr : n_tr + n_va], perm[n_tr + n_va :]


def w1_data():
    t_c = torch.tensor([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]).unsqueeze(1)
    t_u = torch.tensor([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]).unsqueeze(1)
    return (0.1 * t_u, t_c), None


def w2_data(n_train: int = 180_000, n_val: int = 20_000, seed: int = SEED):
    """Synthetic tabular regression: 8 features, smooth nonlinear target + noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    X = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = torch.tanh(X @ w) + 0.5 * torch.sin(X[:, :1] * X[:, 1:2]) + 0.1 * torch.randn(n, 1, generator=g)
    tr = (X[:n_train].contiguous(), y[:n_train].contiguous())
    return tr, (X[n_train:].contiguous(), y[n_train:].contiguous())


def w3_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va, _te = _split_idx(len(X))  # 1257 / 269 / 271
    return (X[tr].contiguous(), y[tr].contiguous()), (X[va].contiguous(), y[va].contiguous())


def w4_data(n_train: int = 4096, n_val: int = 1024, seed: int = SEED):
    """Synthetic 28x28 'images' (flattened to 784) with 10 classes from a random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    X = torch.randn(n, 784, generator=g)
    teacher = torch.randn(784, 10, generator=g)
    y = (X @ teacher).argmax(1)
    tr = (X[:n_train].contiguous(), y[:n_train].contiguous())
    return tr, (X[n_train:].contiguous(), y[n_train:].contiguous())


# ------------------------------------------------------------------------------------------- models


def w1_model():
    return nn.Linear(1, 1)


def w2_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10), nn.Sigmoid(), nn.Linear(10, 1))


def w3_model():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def w4_model():
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


# -------------------------------------------------------------------------------------------- specs


@dataclass
class Workload:
    name: str
    title: str
    data_fn: Callable
    model_fn: Callable
    loss: str  # "mse" | "cross_entropy"
    optimizer: str  # "sgd" | "adam"
    lr: float
    epochs: int
    batch_size: int | None  # None = full batch
    _data: tuple | None = field(default=None, repr=False)

    def data(self):
        if self._data is None:
            self._data = self.data_fn()
        return self._data

    def model(self, seed: int = SEED) -> nn.Module:
        torch.manual_seed(seed)
        return self.model_fn()

    @property
    def n_train(self) -> int:
        return len(self.data()[0][0])

    @property
    def bs(self) -> int:
        return self.batch_size or self.n_train

    @property
    def steps(self) -> int:
        return self.epochs * -(-self.n_train // self.bs)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model().parameters())


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "temperature: Linear(1,1), 11 points, 5000 full-batch SGD steps", w1_data, w1_model,
                   "mse", "sgd", 1e-2, 5000, None),
    "W2": Workload("W2", "tabular MLP 8-16-10-1, 180k rows, batch 64, Adam, 2 epochs, val 20k/epoch",
                   w2_data, w2_model, "mse", "adam", 1e-3, 2, 64),
    "W3": Workload("W3", "digits MLP 64-128-10, 1257 rows, batch 32, Adam, 30 epochs, cross-entropy",
                   w3_data, w3_model, "cross_entropy", "adam", 1e-3, 30, 32),
    "W4": Workload("W4", "compute-bound MLP 784-1024-1024-10, 4096 rows, batch 128, Adam, 2 epochs",
                   w4_data, w4_model, "cross_entropy", "adam", 1e-3, 2, 128),
}


def loss_fn(name: str):
    return F.mse_loss if name == "mse" else F.cross_entropy


def make_optimizer(wl: Workload, params, fused: bool | None = None, **kw):
    cls = torch.optim.SGD if wl.optimizer == "sgd" else torch.optim.Adam
    if fused:
        kw["fused"] = True
    return cls(params, lr=wl.lr, **kw)


# ------------------------------------------------------------------------------------------ scoring


@torch.inference_mode()
def score(wl: Workload, model: nn.Module) -> dict:
    """Uniform post-hoc scoring of a trained model: full train loss, val loss, val accuracy (classif.)."""
    was_training = model.training
    model.eval()
    (Xtr, ytr), val = wl.data()
    lf = loss_fn(wl.loss)
    out = {"train_loss": float(lf(model(Xtr), ytr))}
    if val is not None:
        pv = model(val[0])
        out["val_loss"] = float(lf(pv, val[1]))
        if wl.loss == "cross_entropy":
            out["val_acc"] = float((pv.argmax(1) == val[1]).float().mean())
    model.train(was_training)
    return out


@torch.inference_mode()
def _validate(model, val, lf, bs=4096):
    model.eval()
    Xv, yv = val
    tot = torch.zeros(())
    for i in range(0, len(Xv), bs):
        xb, yb = Xv[i : i + bs], yv[i : i + bs]
        tot += lf(model(xb), yb, reduction="sum")
    model.train()
    return tot / len(Xv)


# --------------------------------------------------------------------------------------------- arms
# Each arm: (wl, model) -> dict(time=seconds, epoch_loss=float, ...).  The clock covers optimizer
# construction, the training loop and per-epoch validation; not data generation or model init.


def tutorial_loop(wl: Workload, model: nn.Module) -> dict:
    """The tutorial-style loop: DataLoader(TensorDataset, shuffle=True), per-step loss.item()."""
    from torch.utils.data import DataLoader, TensorDataset

    (Xtr, ytr), val = wl.data()
    lf = loss_fn(wl.loss)
    t0 = time.perf_counter()
    opt = make_optimizer(wl, model.parameters())
    g = torch.Generator().manual_seed(SEED)
    dl = DataLoader(TensorDataset(Xtr, ytr), batch_size=wl.bs, shuffle=True, generator=g)
    model.train()
    for _ in range(wl.epochs):
        running = 0.0
        n = 0
        for xb, yb in dl:
            opt.zero_grad()
            loss = lf(model(xb), yb)
            loss.backward()
            opt.step()
            running += loss.item() * len(xb)
            n += len(xb)
        epoch_loss = running / n
        if val is not None:
            model.eval()
            with torch.no_grad():
                vl = 0.0
                for xb, yb in DataLoader(TensorDataset(*val), batch_size=1024):
                    vl += lf(model(xb), yb, reduction="sum").item()
            model.train()
    return {"time": time.perf_counter() - t0, "epoch_loss": epoch_loss}


def hand_loop(wl: Workload, model: nn.Module, fused: bool = False, **opt_kw) -> dict:
    """Best hand-written eager loop: randperm + index slicing, no DataLoader, no per-step .item()."""
    (Xtr, ytr), val = wl.data()
    lf = loss_fn(wl.loss)
    n, bs = len(Xtr), wl.bs
    t0 = time.perf_counter()
    opt = make_optimizer(wl, model.parameters(), fused=fused, **opt_kw)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    full_batch = bs >= n
    for _ in range(wl.epochs):
        total = torch.zeros(())
        if full_batch:
            loss = lf(model(Xtr), ytr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total.add_(loss.detach(), alpha=n)
        else:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                xb, yb = Xtr[idx], ytr[idx]
                loss = lf(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total.add_(loss.detach(), alpha=len(idx))
        if val is not None:
            _validate(model, val, lf)
    epoch_loss = float(total) / n
    return {"time": time.perf_counter() - t0, "epoch_loss": epoch_loss}


def hand_fused_loop(wl: Workload, model: nn.Module) -> dict:
    return hand_loop(wl, model, fused=True)


# Proposed fitloop defaults, as a hand-written loop (what the Trainer's default path should cost):
SMALL_MODEL_PARAMS = 100_000  # below this: 1 intra-op thread (see the threads study in BENCHMARKS.md)


def hand_best_loop(wl: Workload, model: nn.Module) -> dict:
    """Recommended defaults: 1 thread for small models, fused Adam (SGD: torch default),
    one shuffled copy of the data per epoch + contiguous slice views, in-place loss accumulation."""
    n_params = sum(p.numel() for p in model.parameters())
    old_threads = torch.get_num_threads()
    if n_params < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    try:
        (Xtr, ytr), val = wl.data()
        lf = loss_fn(wl.loss)
        n, bs = len(Xtr), wl.bs
        t0 = time.perf_counter()
        fused = wl.optimizer != "sgd"  # fused Adam always; SGD: torch default (see fused study)
        opt = make_optimizer(wl, model.parameters(), fused=fused)
        g = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(wl.epochs):
            total = torch.zeros(())
            if bs >= n:
                Xs, ys = Xtr, ytr
            else:
                perm = torch.randperm(n, generator=g)
                Xs, ys = Xtr[perm], ytr[perm]
            for i in range(0, n, bs):
                xb, yb = Xs[i : i + bs], ys[i : i + bs]
                loss = lf(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total.add_(loss.detach(), alpha=len(xb))
            if val is not None:
                _validate(model, val, lf)
        epoch_loss = float(total) / n
        return {"time": time.perf_counter() - t0, "epoch_loss": epoch_loss}
    finally:
        torch.set_num_threads(old_threads)


def fitloop_available() -> tuple[bool, str]:
    try:
        import fitloop as fl
    except Exception as e:  # pragma: no cover
        return False, f"import fitloop failed: {e!r}"
    if not hasattr(fl, "Trainer"):
        return False, "fitloop.Trainer is not implemented yet (hasattr(fitloop, 'Trainer') is False)"
    return True, ""


def fitloop_loop(wl: Workload, model: nn.Module, **extra) -> dict:
    """fitloop's Trainer with default settings (only the workload's hyperparameters passed)."""
    import fitloop as fl

    (Xtr, ytr), val = wl.data()
    t0 = time.perf_counter()
    trainer = fl.Trainer(model, loss=wl.loss, optimizer=wl.optimizer, lr=wl.lr, epochs=wl.epochs,
                         batch_size=wl.bs, seed=SEED, device="cpu", quiet=True, **extra)
    history = trainer.fit((Xtr, ytr), val if val is not None else None)
    dt = time.perf_counter() - t0
    epoch_loss = float("nan")
    try:  # history shape is not part of the contract; best effort
        last = history[-1] if isinstance(history, list) else history
        for k in ("train_loss", "loss"):
            v = last.get(k) if isinstance(last, dict) else getattr(last, k, None)
            if isinstance(v, (list, tuple)):
                v = v[-1]
            if v is not None:
                epoch_loss = float(v)
                break
    except Exception:
        pass
    return {"time": dt, "epoch_loss": epoch_loss, "threads": torch.get_num_threads()}


def fitloop_compile_loop(wl: Workload, model: nn.Module) -> dict:
    return fitloop_loop(wl, model, compile=True)


ARMS: dict[str, Callable] = {
    "tutorial": tutorial_loop,
    "hand": hand_loop,
    "hand_fused": hand_fused_loop,
    "hand_best": hand_best_loop,
    "fitloop": fitloop_loop,
}
