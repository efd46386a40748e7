"""Small data sets and a quiet Trainer for the feature tests (schedulers, metrics, gradients,
precision, devices, regularisation)."""

import re

import pytest
import torch

import fitloop as fl

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none available here)")


def regression_data(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.linspace(-1, 1, d)
    y = X @ w + 0.1 * torch.randn(n, generator=g)
    return X, y


def classification_data(n=120, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, d, generator=g)
    X = centers[y] + 1.0 * torch.randn(n, d, generator=g)
    return X, y


def trainer_for(model, loss="mse", optimizer="sgd", **kw):
    settings = dict(epochs=1, batch_size=16, lr=0.05, quiet=True, seed=0)
    settings.update(kw)
    return fl.Trainer(model, loss=loss, optimizer=optimizer, **settings)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def exactly(message):
    """A `pytest.raises(match=...)` pattern that matches `message` and nothing else."""
    return "^" + re.escape(message) + "$"


# A child process's peak memory of predicting a run on a Parquet file (argv: RUN_DIR DATA OUT MODE [BATCH_ROWS]):
# VmHWM beyond what loading the run took, in KiB. MODE "stream": `predict_stream` (BATCH_ROWS when given), else
# the in-memory `LoadedRun.predict`.
PEAK_PREDICT_CHILD = """
import sys
from fitloop.tabular.runs import load_run
from fitloop.tabular.streaming import predict_stream

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

run = load_run(sys.argv[1])
before = status("VmRSS")  # torch and the model loaded
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from here (ru_maxrss would keep the imports' peak)
if sys.argv[4] == "stream":
    rows = {"batch_rows": int(sys.argv[5])} if len(sys.argv) > 5 else {}
    predict_stream(run, sys.argv[2], sys.argv[3], **rows)
else:
    import pyarrow.parquet as pq
    pq.write_table(run.predict(sys.argv[2]), sys.argv[3])
print(status("VmHWM") - before)
"""
