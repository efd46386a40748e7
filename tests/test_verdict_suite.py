"""The verdict suite (issue 24): generated tables whose best possible score is known, trained through the table
workflow (`fitloop.tabular.train`, CPU, fixed seeds), each of which must get the verdict a practitioner would give.

- at the noise floor (regression y = f(x) + noise, a 3-class table at its best accuracy, a binary table at its
  best log-loss): no problem, and no advice to grow the model;
- true overfitting (60 features, 120 training rows, a 256x256 MLP, no regularisation, no early stopping,
  150 epochs): overfitting, naming the epoch the validation loss rose after;
- true underfitting (a linear model for a strongly nonlinear target, 1,400 training rows): underfitting, on the
  evidence of the capacity probe;
- a diverging learning rate: diverged;
- the demo (the packaged wine table, defaults): a healthy headline with a high test accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import fitloop.tabular as ft
from fitloop.diagnose.verdict import PROBLEMS, STANDARDISED

BIGGER = ("hidden=[256", "train a bigger model", "Use a larger model")


def _table(X: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({**{f"x{i}": X[:, i] for i in range(X.shape[1])}, "y": y})


def _train(tmp_path: Path, table: pa.Table, **settings) -> tuple[dict, dict, dict]:
    """Train a table run; return its verdict, run.json and test metrics."""
    result = ft.train(table, "y", out=tmp_path / "run", **settings)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    return info["verdict"], info, result.metrics


def _no_problem(verdict: dict) -> None:
    assert verdict["kind"] not in PROBLEMS, verdict
    assert not any(words in verdict["suggestion"] for words in BIGGER), verdict


# ------------------------------------------------------------------------------------------ at the noise floor


def test_regression_at_its_noise_floor(tmp_path):
    """y = sin(x0) + x1 / 2 + N(0, 1): the best possible test MSE is 1 (the noise's variance)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 4))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + rng.normal(size=1500)
    verdict, _, metrics = _train(tmp_path, _table(X, y))
    _no_problem(verdict)
    assert metrics["mse"] < 1.1  # near the floor: nothing left to gain
    assert verdict["facts"]["units"] == STANDARDISED and "standardised target units" in verdict["reason"]


def test_three_classes_at_their_best_accuracy(tmp_path):
    """Classes drawn from a softmax of linear logits: the Bayes rule's accuracy is known from the probabilities."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 3))
    logits = 1.5 * X
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random(1500)[:, None] > P.cumsum(1)).sum(1)
    best = float((P.argmax(1) == y).mean())
    verdict, _, metrics = _train(tmp_path, _table(X, np.array(["a", "b", "c"])[y]))
    _no_problem(verdict)
    assert metrics["accuracy"] > best - 0.06  # the test split's 225 rows: a standard error of about 0.03
    assert verdict["kind"] in ("plateau", "healthy")


def test_binary_at_its_noise_floor_log_loss(tmp_path):
    """Labels drawn from a logistic model: the best possible log-loss is the mean entropy of p."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    p = 1 / (1 + np.exp(-(X @ np.array([1.0, -1.0, 0.5, 0.0, 0.0]))))
    y = (rng.random(2000) < p).astype(int)
    floor = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    verdict, _, metrics = _train(tmp_path, _table(X, np.array(["no", "yes"])[y]))
    _no_problem(verdict)
    assert metrics["loss"] < floor + 0.1  # the floor over all rows; the 300 test rows' own is within ~0.03 of it
    if verdict["kind"] == "plateau":  # 75% of the baseline, flat: the probe says the data are the limit
        assert "did no better" in verdict["reason"] and "hold no more information" in verdict["reason"]
        assert verdict["suggestion"].startswith("A bigger model will not help.")
    else:  # the default TabM reaches the floor in its first epoch, and no later epoch beats it
        assert verdict["kind"] == "healthy" and "learnt what these rows allow in its first epoch" in verdict["reason"]
        assert verdict["suggestion"].startswith("Nothing to fix")
        assert not any(b in verdict["suggestion"] for b in BIGGER)


# ---------------------------------------------------------------------------------------------- real problems


def test_true_overfitting(tmp_path):
    """60 features, 120 training rows, a 256x256 MLP without regularisation or early stopping, 150 epochs."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 60))
    y = np.array(["no", "yes"])[(X[:, 0] + rng.normal(size=600) > 0).astype(int)]
    verdict, info, _ = _train(tmp_path, _table(X, y), hidden=[256, 256], epochs=150, early_stopping=0, skip=False,
                              linear_init=False, split=[0.2, 0.4, 0.4])
    assert verdict["kind"] == "overfitting", verdict
    best = verdict["facts"]["best_epoch"]
    assert best < 30 and f"at epoch {best} and rose after it" in verdict["reason"]
    assert "the model keeps epoch 150" in verdict["reason"] and "Use early stopping" in verdict["suggestion"]


def test_true_underfitting_found_by_the_capacity_probe(tmp_path):
    """A linear model for y = 3 sin(2 x0) cos(2 x1): the plateau at the baseline is the model's, and the probe
    (a wider MLP trained briefly on the same rows) shows it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2))
    y = 3 * np.sin(2 * X[:, 0]) * np.cos(2 * X[:, 1]) + 0.1 * rng.normal(size=2000)
    verdict, _, _ = _train(tmp_path, _table(X, y), hidden=[])
    assert verdict["kind"] == "underfitting", verdict
    assert "the model is too simple for the data" in verdict["reason"]
    assert verdict["facts"]["probe"]["val_loss"] < 0.5 * verdict["facts"]["kept_val_loss"]


def test_a_diverging_learning_rate(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    y = X @ np.array([1.0, 2.0, 3.0, 4.0]) + rng.normal(size=500)
    with pytest.raises(Exception, match="not finite|NaN|inf"):
        ft.train(_table(X, y), "y", out=tmp_path / "run", lr=5.0, optimizer="sgd")
    verdict = json.loads((tmp_path / "run" / "run.json").read_text())["verdict"]
    assert verdict["kind"] == "diverged" and "Lower the learning rate tenfold: lr=0.5" in verdict["suggestion"]


# --------------------------------------------------------------------------------------------------- the demo


def test_the_demo_gets_a_verdict_a_practitioner_agrees_with(tmp_path):
    """`make demo`'s run (the packaged wine table, every default): it used to train 375 epochs, keep the linear
    start and end with "overfitting ... add regularisation" at a test accuracy of 0.96."""
    from fitloop.cli import demo_data_path

    result = ft.train(demo_data_path(), "cultivar", out=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    verdict = info["verdict"]
    assert result.metrics["accuracy"] > 0.9
    assert verdict["kind"] not in PROBLEMS, verdict  # the headline is not a problem
    # the patience (about 100 optimizer steps) ends it once the validation loss stopped improving
    assert info["stop_reason"].startswith("early stopping") and info["epoch"] - info["best_epoch"] <= 100
    if verdict["facts"]["kept_epoch"] == 0:  # the starting (linear) fit, said in one line
        assert verdict["reason"].startswith("kept the model the run started from")
        assert verdict["suggestion"] == "Nothing to fix."
