"""A fitloop MLP inside scikit-learn: a Pipeline with StandardScaler, cross-validation, a grid search
over the hidden layers, then save/load through the fitloop bundle (safetensors + JSON, no pickle).
Needs scikit-learn (pip install 'fitloop[sklearn]'). Exits non-zero when a result misses.
"""

import sys
import tempfile

import numpy as np
from sklearn.datasets import load_wine
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fitloop.sklearn import FitloopClassifier

X, y = load_wine(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

pipe = make_pipeline(StandardScaler(), FitloopClassifier(hidden=(32,), epochs=40))
scores = cross_val_score(pipe, X_train, y_train, cv=5)
print(f"5-fold accuracy: {scores.mean():.3f} +- {scores.std():.3f}")

grid = GridSearchCV(pipe, {"fitloopclassifier__hidden": [(8,), (32,), (32, 16)],
                           "fitloopclassifier__lr": [3e-3, 1e-2]}, cv=3)
grid.fit(X_train, y_train)
print(f"best: {grid.best_params_} (cv accuracy {grid.best_score_:.3f})")
test_acc = grid.score(X_test, y_test)
print(f"test accuracy: {test_acc:.3f}")

clf = grid.best_estimator_[-1]  # the fitted FitloopClassifier
with tempfile.TemporaryDirectory() as d:
    clf.save(f"{d}/wine")  # model.safetensors + fitloop.json
    back = FitloopClassifier.load(f"{d}/wine")
scaled = grid.best_estimator_[0].transform(X_test)
same = np.array_equal(back.predict_proba(scaled), clf.predict_proba(scaled))
print(f"reloaded from the bundle: identical probabilities: {same}")
if scores.mean() < 0.9 or test_acc < 0.9 or not same:
    sys.exit("FAIL: expected accuracy >= 0.9 and an exact reload")
