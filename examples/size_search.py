"""Capacity search: how big a network does this data support?

Data from a known small network (5 inputs, 8 tanh units) plus noise. With 2000 rows the search grows an
MLP until the training loss stops improving, then shrinks it until validation stops running away from
training; with 60 rows of the same data it settles on a smaller model. Exits non-zero when a result misses.

The command line does the same on a table and trains the chosen size into a run directory:

    fitloop size-search data.csv --target y --jobs 2 --out runs/sized
    fitloop predict runs/sized new.csv -o preds.csv
"""

import sys

import torch

import fitloop as fl


def teacher(n, seed):
    g = torch.Generator().manual_seed(123)  # the same generator network every time
    W1, W2 = torch.randn(5, 8, generator=g), torch.randn(8, 1, generator=g) / 8 ** 0.5
    gx = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gx)
    return X, (torch.tanh(X @ W1) @ W2).squeeze(1) + 0.1 * torch.randn(n, generator=gx)


val = teacher(1000, seed=1)
settings = {"widths": (4, 8, 16, 32, 64), "depths": (1, 2), "epochs": 200, "batch_size": None, "lr": 1e-2}

large = fl.size_search(teacher(2000, seed=0), val, **settings)
print(large.table(), end="\n\n")
tiny = fl.size_search(teacher(60, seed=0), val, **settings)
print(tiny.table())

model = large.model()  # the chosen size, trained (an nn.Sequential with its MLPSpec)
print(f"\nchosen with 2000 rows: {large.chosen_trial.label} ({large.chosen_trial.params} parameters); "
      f"with 60 rows: {tiny.chosen_trial.label} ({tiny.chosen_trial.params} parameters)")
if large.chosen is None or not 8 <= large.chosen[0] <= 64:
    sys.exit(f"FAIL: expected a width of 8 to 64 for the 8-unit generator, got {large.chosen}")
if tiny.chosen_trial.params >= large.chosen_trial.params:
    sys.exit("FAIL: the tiny dataset should get a smaller model")

noise = fl.size_search((torch.randn(400, 5), torch.randn(400)), (torch.randn(400, 5), torch.randn(400)),
                       **{**settings, "widths": (4, 16), "depths": (1,)})
print(f"\npure noise: {noise.reason}")
if not noise.nothing_to_learn:
    sys.exit("FAIL: pure noise should have nothing to learn")
