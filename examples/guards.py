"""Guards against silent bugs: each mistake below is caught at the first step, with a message that
says how to fix it; then the sanity check asks whether a model can learn at all. Exits non-zero when
a guard misses.

    shape      an output of (N, 3) against a target of (N, 2) would broadcast inside the loss
    labels     a label >= the number of outputs (on CUDA: a device-side assert, here: the rows)
    leakage    the same rows in train and validation
    scale      one feature in thousands, the others around 1 (the temperature lesson)
    diverging  SGD at lr 1e-2 on unnormalised temperatures
"""

import sys
import warnings

import torch
from torch import nn

import fitloop as fl

torch.manual_seed(0)
X, y = torch.randn(200, 4), torch.randn(200, 2)
caught = []


def expect_error(what, fn):
    try:
        fn()
    except ValueError as e:
        print(f"{what}: {e}\n")
        caught.append(what)


expect_error("shape", lambda: fl.Trainer(nn.Linear(4, 3), quiet=True).fit((X, y)))
labels = torch.randint(0, 3, (200,))
labels[[7, 42]] = 5
expect_error("labels", lambda: fl.Trainer(nn.Linear(4, 3), loss="cross_entropy", quiet=True).fit((X, labels)))

train, val = (X[:150], y[:150]), (torch.cat([X[:10], X[150:]]), torch.cat([y[:10], y[150:]]))
expect_error("leakage", lambda: fl.Trainer(nn.Linear(4, 2), quiet=True, guards={"leakage": "error"}).fit(train, val))

t_c = torch.tensor([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
t_u = torch.tensor([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    Xs = X.clone()
    Xs[:, 0] *= 5000  # one column in thousands
    fl.Trainer(nn.Linear(4, 2), quiet=True, epochs=1).fit((Xs, y))
    try:
        fl.Trainer(nn.Linear(1, 1), optimizer="sgd", lr=1e-2, batch_size=None, epochs=30, quiet=True).fit(
            (t_u[:, None], t_c))
    except fl.NonFiniteError as e:  # the run blows up a few epochs later: the warning came first
        print(f"(then, as predicted: {str(e)[:60]}...)\n")
for w in seen:
    if issubclass(w.category, fl.GuardWarning):
        print(f"warning: {w.message}\n")
        caught.append(str(w.message).split(":")[0])

# Every guard switches off on its own: guards={"unscaled": False}, or guards=False for all of them.
fl.Trainer(nn.Linear(4, 2), quiet=True, epochs=1, guards={"unscaled": False}).fit((Xs, y))

# Can this model learn at all? Overfit 16 rows, then put everything back exactly.
model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
trainer = fl.Trainer(model, lr=1e-2, quiet=True)
report = trainer.sanity_check((X, y))
print(report.message)
if not report.can_learn:
    caught.append("sanity check failed")

want = ["shape", "labels", "leakage", "inputs", "divergence"]
if caught != want:
    sys.exit(f"FAIL: expected {want}, got {caught}")
