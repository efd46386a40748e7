"""Metrics: the built-in task metrics against scikit-learn, user metrics (callables and torchmetrics
objects), and one metric computation per epoch."""

import numpy as np
import pytest
from helpers import classification_data, regression_data, trainer_for
from torch import nn

import fitloop as fl


def test_multiclass_metrics_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    X, y = classification_data(150, classes=4)
    trainer = trainer_for(nn.Linear(4, 4), loss="cross_entropy", optimizer="adam", lr=0.05, epochs=3)
    history = trainer.fit((X[:100], y[:100]), (X[100:], y[100:]))
    for key in ("accuracy", "f1", "precision", "recall", "confusion_matrix"):
        assert key in history[-1] and "val_" + key in history[-1]
    res = trainer.evaluate((X[100:], y[100:]))
    pred = trainer.predict(X[100:], output="class").numpy()
    true = y[100:].numpy()
    assert 0.3 < res["accuracy"] < 1.0  # imperfect, so the comparison means something
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(true, pred), abs=1e-6)
    assert res["f1"] == pytest.approx(skm.f1_score(true, pred, average="macro"), abs=1e-6)
    macro = dict(average="macro", zero_division=0)
    assert res["precision"] == pytest.approx(skm.precision_score(true, pred, **macro), abs=1e-6)
    assert res["recall"] == pytest.approx(skm.recall_score(true, pred, **macro), abs=1e-6)
    assert res["confusion_matrix"] == skm.confusion_matrix(true, pred, labels=range(4)).tolist()


def test_binary_metrics_match_sklearn_with_n_by_1_outputs():
    skm = pytest.importorskip("sklearn.metrics")
    X, y = classification_data(160, classes=2, seed=3)
    y = y.float()
    trainer = trainer_for(nn.Linear(4, 1), loss="bce_with_logits", optimizer="adam", lr=0.02, epochs=2)
    history = trainer.fit((X[:100], y[:100]), (X[100:], y[100:]))
    keys = {"val_accuracy", "val_f1", "val_precision", "val_recall", "val_confusion_matrix"}
    assert keys <= set(history[-1])
    res = trainer.evaluate((X[100:], y[100:]))
    pred = trainer.predict(X[100:], output="class").numpy()
    true = y[100:].long().numpy()
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(true, pred), abs=1e-6)
    assert res["f1"] == pytest.approx(skm.f1_score(true, pred, zero_division=0), abs=1e-6)
    assert res["precision"] == pytest.approx(skm.precision_score(true, pred, zero_division=0), abs=1e-6)
    assert res["recall"] == pytest.approx(skm.recall_score(true, pred, zero_division=0), abs=1e-6)
    assert res["confusion_matrix"] == skm.confusion_matrix(true, pred, labels=[0, 1]).tolist()


def test_regression_metrics_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    X, y = regression_data(120)
    trainer = trainer_for(nn.Linear(3, 1), epochs=2, lr=0.02)
    history = trainer.fit((X[:80], y[:80]), (X[80:], y[80:]))
    assert {"mse", "rmse", "mae", "r2", "val_mse", "val_rmse", "val_mae", "val_r2"} <= set(history[-1])
    res = trainer.evaluate((X[80:], y[80:]))
    pred = trainer.predict(X[80:]).reshape(-1).numpy()
    true = y[80:].numpy()
    assert res["mse"] == pytest.approx(skm.mean_squared_error(true, pred), rel=1e-5)
    assert res["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)), rel=1e-5)
    assert res["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-5)
    assert res["r2"] == pytest.approx(skm.r2_score(true, pred), rel=1e-4)


def test_user_metrics_callable_and_torchmetrics_object_on_train_and_val():
    torchmetrics = pytest.importorskip("torchmetrics")
    max_err = lambda out, y: (out.reshape(-1) - y.reshape(-1)).abs().max()
    metrics = {"max_err": max_err, "tm_mae": torchmetrics.MeanAbsoluteError()}
    trainer = trainer_for(nn.Linear(3, 1), metrics=metrics, epochs=2)
    history = trainer.fit(regression_data(64), regression_data(32, seed=1))
    for h in history:
        for key in ("max_err", "tm_mae", "val_max_err", "val_tm_mae"):
            assert isinstance(h[key], float)
        assert h["tm_mae"] == pytest.approx(h["mae"], rel=1e-5)
        assert h["val_tm_mae"] == pytest.approx(h["val_mae"], rel=1e-5)
    assert trainer_for(nn.Linear(3, 1), metrics=[max_err]).evaluate(regression_data())["<lambda>"] > 0


def test_metrics_computed_once_per_epoch_not_per_step(monkeypatch):
    trainer = trainer_for(nn.Linear(3, 1), epochs=3, batch_size=8)  # 8 steps per epoch
    calls = []
    original = fl.trainer.MetricSet.compute
    monkeypatch.setattr(fl.trainer.MetricSet, "compute", lambda self, out, y: calls.append(len(out))
                        or original(self, out, y))
    trainer.fit(regression_data(64), regression_data(32, seed=1))
    assert calls == [64, 32] * 3  # one train and one val computation per epoch, on all rows
