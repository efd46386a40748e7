"""fitloop.sklearn: scikit-learn's own estimator checks, Pipeline/GridSearchCV/cross_val_score, partial_fit,
the bundle round trip, and pickle."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine, make_regression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

import fitloop as fl
from fitloop.sklearn import FitloopClassifier, FitloopRegressor


def small_net(n_features, n_outputs):
    """A module-level factory (picklable), as scikit-learn's clone and joblib need."""
    return nn.Sequential(nn.Linear(n_features, 16), nn.Tanh(), nn.Linear(16, n_outputs))


# Checks that fail and why: none. The defaults (40 epochs, 32 hidden units, lr 1e-2) reach the scores the
# checks ask for, fits are seeded (check_fit_idempotent), and pickle round-trips (check_estimators_pickle).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks([FitloopRegressor(), FitloopClassifier(), FitloopRegressor(module=small_net)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def wine():
    X, y = load_wine(return_X_y=True)
    return X, np.asarray(["barolo", "grignolino", "barbera"])[y]  # string labels


def test_classifier_in_a_pipeline_with_cross_val_score_and_grid_search(wine):
    X, y = wine
    pipe = make_pipeline(StandardScaler(), FitloopClassifier(hidden=(16,), epochs=30))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.9
    grid = GridSearchCV(pipe, {"fitloopclassifier__hidden": [(4,), (16,)], "fitloopclassifier__lr": [1e-2]}, cv=3)
    grid.fit(X, y)
    assert grid.best_score_ > 0.9 and grid.best_params_["fitloopclassifier__hidden"] in [(4,), (16,)]
    clf = grid.best_estimator_[-1]
    assert list(clf.classes_) == ["barbera", "barolo", "grignolino"] and clf.n_features_in_ == 13
    proba = grid.predict_proba(X[:5])
    assert proba.shape == (5, 3) and np.allclose(proba.sum(1), 1)
    assert (clf.classes_[proba.argmax(1)] == grid.predict(X[:5])).all()


def test_regressor_multi_output_score_and_get_set_params():
    X, y = make_regression(n_samples=200, n_features=5, n_targets=2, noise=1.0, random_state=0)
    reg = make_pipeline(StandardScaler(), FitloopRegressor(hidden=(32,), epochs=60))
    reg.fit(X, y / y.std(0))
    assert reg.predict(X).shape == (200, 2) and reg.score(X, y / y.std(0)) > 0.9
    est = FitloopRegressor()
    assert est.set_params(hidden=(8, 8), epochs=2) is est and est.get_params()["hidden"] == (8, 8)
    est.fit(X, y[:, 0])
    assert [m.out_features for m in est.model_ if isinstance(m, nn.Linear)] == [8, 8, 1]
    assert est.predict(X).shape == (200,)


def test_fit_is_seeded_and_an_mlpspec_describes_the_model():
    X, y = make_regression(n_samples=100, n_features=4, random_state=1)
    a = FitloopRegressor(module=fl.MLPSpec(99, hidden=[12], activation="tanh"), epochs=5).fit(X, y)
    b = FitloopRegressor(module=fl.MLPSpec(99, hidden=[12], activation="tanh"), epochs=5).fit(X, y)
    assert np.array_equal(a.predict(X), b.predict(X))
    assert a.model_.spec.in_features == 4 and a.model_.spec.hidden == [12] and a.model_.spec.activation == "tanh"


def test_partial_fit_continues_with_the_same_optimizer(wine):
    X, y = wine
    X = StandardScaler().fit_transform(X)
    clf = FitloopClassifier(batch_size=32)
    with pytest.raises(ValueError, match="not among the classes"):
        FitloopClassifier().partial_fit(X[y != "barolo"], y[y != "barolo"]).partial_fit(X, y)
    clf.partial_fit(X[:60], y[:60], classes=np.unique(y))
    steps = clf.trainer_.global_step
    losses = []
    for _ in range(5):
        clf.partial_fit(X, y)
        losses.append(clf.trainer_.history[-1]["loss"])
    assert clf.trainer_.global_step == steps + 5 * 6 and clf.trainer_.epoch == 6  # one epoch per call
    assert losses[-1] < losses[0] and clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="X has 3 features, but FitloopClassifier is expecting 13"):
        clf.partial_fit(X[:, :3], y)


def test_save_and_load_through_the_bundle(tmp_path, wine):
    X, y = wine
    X = StandardScaler().fit_transform(X)
    clf = FitloopClassifier(hidden=(8,), epochs=10).fit(X, y)
    path = clf.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["fitloop.json", "model.safetensors"]
    back = FitloopClassifier.load(path)
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X)) and list(back.classes_) == list(clf.classes_)
    assert back.get_params() == clf.get_params() and back.n_features_in_ == 13
    back.partial_fit(X, y)  # a loaded estimator trains on
    with pytest.raises(ValueError, match="not a FitloopRegressor"):
        FitloopRegressor.load(path)
    assert isinstance(fl.load(path), nn.Sequential)  # the bare model, as any bundle

    reg = FitloopRegressor(module=small_net, epochs=3).fit(X, X[:, 0])
    reg.save(tmp_path / "reg")
    with pytest.raises(ValueError, match="pass it again"):
        FitloopRegressor.load(tmp_path / "reg")
    assert np.array_equal(FitloopRegressor.load(tmp_path / "reg", module=small_net).predict(X), reg.predict(X))


def test_pickle_works_without_the_trainer(wine):
    X, y = wine
    X = StandardScaler().fit_transform(X)
    clf = FitloopClassifier(epochs=3).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
    assert "trainer_" not in pickle.loads(pickle.dumps(clf)).__dict__
    back.partial_fit(X, y)  # a fresh optimizer around the unpickled weights
    assert back.trainer_.global_step == 2
    with pytest.raises(Exception):  # noqa: B017 - a lambda factory cannot be pickled, as anywhere in Python
        pickle.dumps(FitloopRegressor(module=lambda n, k: nn.Linear(n, k), epochs=1).fit(X, X[:, 0]))


def test_bad_module_argument_and_one_class():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(TypeError, match="expected None, an MLPSpec or a factory"):
        FitloopRegressor(module=3).fit(X, X[:, 0])
    with pytest.raises(TypeError, match="returned int, not an nn.Module"):
        FitloopRegressor(module=lambda n, k: 3).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        FitloopClassifier().fit(X, np.zeros(20))
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("installed, expected", [
    (None, r"needs scikit-learn 1\.6 or newer, which is not installed: pip install 'fitloop\[sklearn\]'"),
    ("1.5.2", r"needs scikit-learn 1\.6 or newer \(for validate_data and __sklearn_tags__\), but found 1\.5 "
              r"\(1\.5\.2\): pip install -U 'scikit-learn>=1\.6'"),
])
def test_import_error_tells_missing_from_too_old(monkeypatch, installed, expected):
    import importlib
    import importlib.metadata
    import sys
    import types

    def version(name):
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(importlib.metadata, "version", version)
    old = types.ModuleType("sklearn.utils.validation")  # scikit-learn < 1.6: no validate_data
    old.check_is_fitted = old.column_or_1d = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "sklearn.utils.validation", None if installed is None else old)
    monkeypatch.delitem(sys.modules, "fitloop.sklearn")
    with pytest.raises(ImportError, match=expected):
        importlib.import_module("fitloop.sklearn")
