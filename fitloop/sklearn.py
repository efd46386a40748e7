"""scikit-learn estimators: `FitloopRegressor` and `FitloopClassifier` (`pip install 'fitloop[sklearn]'`).

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from fitloop.sklearn import FitloopClassifier

    clf = make_pipeline(StandardScaler(), FitloopClassifier(hidden=(64,), epochs=50))
    clf.fit(X_train, y_train); clf.predict_proba(X_test); clf.score(X_test, y_test)

Each estimator wraps a model description (an `MLPSpec`, `hidden=`/`activation=`/`dropout=`, or a factory
`module(n_features, n_outputs) -> nn.Module`) and the Trainer's settings (`epochs`, `batch_size`, `lr`,
`optimizer`, `loss`, `weight_decay`, `random_state`, `device`, plus any other `TrainConfig` setting in
`trainer_kwargs`). `fit` trains from scratch (seeded by `random_state`: two fits give the same model);
`partial_fit` trains one more epoch, keeping the optimizer's state between calls.

Saving: `est.save(path)` writes a fitloop bundle (`model.safetensors` + `fitloop.json`, no pickle) holding
the weights, the estimator's parameters and what `fit` learned (`classes_`, `n_features_in_`,
`feature_names_in_`); `FitloopClassifier.load(path)` gives back an estimator that predicts the same. A
factory-built model needs its factory again: `load(path, module=factory)`.

`pickle.dumps(est)` works too (scikit-learn's own tools, joblib and `cross_val_score(n_jobs=...)` rely
on it) as long as the model pickles (a module-level factory, no lambdas); the Trainer is left out of
the pickle, so a `partial_fit` after unpickling starts a fresh optimizer. Pickle runs code when loading:
prefer the bundle for anything you keep or share.

scikit-learn (1.6 or newer) is imported when this module is; `import fitloop` stays free of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from torch import nn

from .bundle import load as load_bundle
from .bundle import read_meta, save_bundle
from .models import MLPSpec, build_mlp
from .trainer import Trainer

SKLEARN_MIN = (1, 6)  # validate_data and __sklearn_tags__


def _sklearn_import_error(error: ImportError) -> str:
    """The ImportError's message: scikit-learn not installed, too old (found X.Y, need 1.6), or failing."""
    need = ".".join(map(str, SKLEARN_MIN))
    try:
        found = version("scikit-learn")
    except PackageNotFoundError:
        return (f"fitloop.sklearn needs scikit-learn {need} or newer, which is not installed: "
                "pip install 'fitloop[sklearn]'")
    parts = [int(p) if p.isdigit() else 0 for p in found.split(".")[:2]]
    if tuple(parts) < SKLEARN_MIN:
        return (f"fitloop.sklearn needs scikit-learn {need} or newer (for validate_data and __sklearn_tags__), but "
                f"found {'.'.join(map(str, parts))} ({found}): pip install -U 'scikit-learn>={need}'")
    return f"fitloop.sklearn: scikit-learn {found} is installed but failed to import ({error}); reinstall it."


try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as _e:
    raise ImportError(_sklearn_import_error(_e)) from None

__all__ = ["FitloopRegressor", "FitloopClassifier"]

_BUNDLE_KEY = "sklearn"


class _FitloopEstimator(BaseEstimator):
    """What the regressor and the classifier share: the model, the Trainer, fit/partial_fit, save/load.

    Args:
        module: `None` (an MLP of `hidden`, `activation`, `dropout`), an `MLPSpec` (its hidden layers,
            activation and dropout; the input and output sizes come from the data), or a factory
            `module(n_features, n_outputs) -> nn.Module`.
        hidden: the MLP's hidden layer sizes when `module` is None.
        activation: the MLP's activation when `module` is None.
        dropout: the MLP's dropout when `module` is None.
        loss: any Trainer loss; default `mse` (regressor) or `cross_entropy` (classifier).
        optimizer: any Trainer optimizer name (`"adam"`, `"sgd"`, `"adamw"`, ...).
        lr: the Trainer's learning rate.
        epochs: the Trainer's epochs.
        batch_size: the Trainer's batch size (`None`: full batch).
        weight_decay: the Trainer's weight decay.
        random_state: seeds the initial weights and the data order of every `fit`.
        device: `"cpu"` (default: small tabular models are fastest there), `"auto"`, `"cuda"`, ...
        verbose: print the Trainer's epoch lines.
        trainer_kwargs: any other `TrainConfig` setting, e.g. `{"clip_grad_norm": 1.0}`.
    """

    _default_loss = "mse"

    def __init__(self, module: Any = None, *, hidden: tuple[int, ...] = (32,), activation: str = "relu",
                 dropout: float = 0.0, loss: Any = None, optimizer: str = "adam", lr: float = 1e-2,
                 epochs: int = 40, batch_size: int | None = 128, weight_decay: float = 0.0,
                 random_state: int = 0, device: str = "cpu", verbose: bool = False,
                 trainer_kwargs: dict[str, Any] | None = None):
        self.module = module
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.trainer_kwargs = trainer_kwargs

    # ------------------------------------------------------------------ scikit-learn protocol

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device not in ("cpu",)  # CUDA kernels may reorder sums
        return tags

    def fit(self, X: Any, y: Any) -> _FitloopEstimator:
        """Train a fresh model for `epochs` epochs on `X`, `y`. Returns self."""
        X, y = validate_data(self, X, y, reset=True, dtype=np.float32, y_numeric=not self._is_classifier(),
                             multi_output=True)
        y = self._targets(X, y, classes=None, first=True)
        self._build(X.shape[1])
        self._train(X, y, self.epochs)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> _FitloopEstimator:
        """One more epoch on `X`, `y` (the first call builds the model; classifiers take `classes` there,
        every class that will ever appear). The optimizer's state carries over between calls."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, dtype=np.float32, y_numeric=not self._is_classifier(),
                             multi_output=True)
        y = self._targets(X, y, classes=classes, first=first)
        if first:
            self._build(X.shape[1])
        self._train(X, y, 1)
        return self

    # ------------------------------------------------------------------ the model and the Trainer

    def _is_classifier(self) -> bool:
        return False

    def _n_outputs(self) -> int:
        return int(self.n_outputs_)

    def _targets(self, X: np.ndarray, y: np.ndarray, classes: Any, first: bool) -> torch.Tensor:
        y = np.asarray(y, dtype=np.float32)
        if first:
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        elif (1 if y.ndim == 1 else y.shape[1]) != self.n_outputs_:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} targets per row, but this estimator "
                             f"was fitted with {self.n_outputs_}.")
        self._y_1d = y.ndim == 1
        return torch.tensor(y)

    def _make_module(self, n_features: int) -> nn.Module:
        n_out = self._n_outputs()
        if self.module is None or isinstance(self.module, MLPSpec):
            src = self.module
            spec = MLPSpec(n_features, hidden=list(src.hidden if src is not None else self.hidden), out_features=n_out,
                           activation=src.activation if src is not None else self.activation,
                           dropout=src.dropout if src is not None else self.dropout)
            return build_mlp(spec)
        if callable(self.module):
            model = self.module(n_features, n_out)
            if not isinstance(model, nn.Module):
                raise TypeError(f"module: the factory returned {type(model).__name__}, not an nn.Module; it is "
                                "called as module(n_features, n_outputs).")
            return model
        raise TypeError(f"module: expected None, an MLPSpec or a factory module(n_features, n_outputs), got "
                        f"{type(self.module).__name__}.")

    def _new_trainer(self, model: nn.Module) -> Any:
        settings = {"quiet": not self.verbose, "lr": self.lr, "batch_size": self.batch_size,
                    "weight_decay": self.weight_decay, "seed": self.random_state, "device": self.device,
                    **(self.trainer_kwargs or {})}
        return Trainer(model, loss=self.loss or self._default_loss, optimizer=self.optimizer, **settings)

    def _build(self, n_features: int) -> None:
        with torch.random.fork_rng(devices=[]):  # seeded weights, without moving the caller's RNG
            torch.manual_seed(self.random_state)
            self.model_ = self._make_module(n_features)
        self.trainer_ = self._new_trainer(self.model_)

    def _train(self, X: np.ndarray, y: torch.Tensor, epochs: int) -> None:
        if getattr(self, "trainer_", None) is None:  # unpickled or loaded: a fresh Trainer around the weights
            self.trainer_ = self._new_trainer(self.model_)
        self.trainer_.config.epochs = epochs  # what the next fit trains (TrainConfig is plain data)
        self.trainer_.fit((torch.tensor(X), y))

    def _raw(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if getattr(self, "trainer_", None) is None:
            self.trainer_ = self._new_trainer(self.model_)
        return self.trainer_.predict(torch.tensor(X), output="raw").float()

    # ------------------------------------------------------------------ pickle, bundle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("trainer_", None)  # optimizer, generator, callbacks: rebuilt when needed (see the module doc)
        return state

    def save(self, path: str | os.PathLike) -> str:
        """Write a fitloop bundle (`model.safetensors` + `fitloop.json`; no pickle). Returns the directory."""
        check_is_fitted(self, "model_")
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in ("module", "trainer_kwargs")}
        spec = getattr(self.model_, "spec", None)
        info = {"class": type(self).__name__, "params": params, "trainer_kwargs": self.trainer_kwargs or {},
                "n_features_in": int(self.n_features_in_), "n_outputs": int(self.n_outputs_),
                "y_1d": bool(getattr(self, "_y_1d", True)), "module": "mlp" if spec is not None else "factory",
                "feature_names_in": [str(c) for c in getattr(self, "feature_names_in_", [])] or None}
        if hasattr(self, "classes_"):
            info["classes"] = self.classes_.tolist()
            info["classes_dtype"] = str(self.classes_.dtype)
        return save_bundle(self.model_, path, {_BUNDLE_KEY: info, "task": "classification" if hasattr(
            self, "classes_") else "regression"})

    @classmethod
    def load(cls, path: str | os.PathLike, module: Callable[[int, int], nn.Module] | None = None) -> Any:
        """An estimator from a bundle `save` wrote, ready to predict (and to `partial_fit` on).

        Args:
            path: the bundle directory.
            module: the factory, for a model that was not an MLP (it is called as when fitting).

        Raises:
            ValueError: the bundle was not written by this estimator class.
        """
        meta = read_meta(path)
        info = meta.get(_BUNDLE_KEY)
        if not info or info.get("class") != cls.__name__:
            got = info.get("class") if info else "no estimator"
            raise ValueError(f"{path}: this bundle holds {got}, not a {cls.__name__}; load it with the class "
                             "that saved it, or fl.load(path) for the bare model.")
        params = dict(info["params"])
        params["hidden"] = tuple(params["hidden"])  # JSON has lists; get_params gives back what was set
        est = cls(module=module, trainer_kwargs=info["trainer_kwargs"] or None, **params)
        est.n_features_in_ = info["n_features_in"]
        est.n_outputs_ = info["n_outputs"]
        est._y_1d = info["y_1d"]
        if info.get("feature_names_in"):
            est.feature_names_in_ = np.asarray(info["feature_names_in"], dtype=object)
        if "classes" in info:
            est.classes_ = np.asarray(info["classes"], dtype=info["classes_dtype"])
        if info["module"] == "factory":
            if module is None:
                raise ValueError(f"{path}: the model was built by a factory; pass it again: "
                                 f"{cls.__name__}.load(path, module=factory).")
            model = est._make_module(est.n_features_in_)
            est.model_ = load_bundle(path, model=model)
        else:
            est.model_ = load_bundle(path)
        est.trainer_ = None
        return est


class FitloopRegressor(RegressorMixin, _FitloopEstimator):
    """A fitloop MLP (or any module) as a scikit-learn regressor; one or several targets per row.

    Example:
        >>> from fitloop.sklearn import FitloopRegressor
        >>> reg = FitloopRegressor(hidden=(64, 32), epochs=100, lr=3e-3).fit(X, y)
        >>> reg.score(X_test, y_test)   # R^2
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X: Any) -> np.ndarray:
        """Predictions, shaped like the `y` it was fitted on ((n,) or (n, targets))."""
        out = self._raw(X).numpy().astype(np.float64)
        return out.reshape(len(out)) if getattr(self, "_y_1d", True) and out.ndim == 2 and out.shape[1] == 1 else out


class FitloopClassifier(ClassifierMixin, _FitloopEstimator):
    """A fitloop MLP (or any module) as a scikit-learn classifier: one output per class, cross-entropy.

    `classes_` holds the labels in sorted order (any labels: strings, ints); `predict_proba` the
    softmax of the outputs in that order.

    Example:
        >>> from fitloop.sklearn import FitloopClassifier
        >>> clf = FitloopClassifier(hidden=(64,), epochs=50).fit(X, y)
        >>> clf.predict_proba(X_test)[:3]
    """

    _default_loss = "cross_entropy"

    def _is_classifier(self) -> bool:
        return True

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _targets(self, X: np.ndarray, y: np.ndarray, classes: Any, first: bool) -> torch.Tensor:
        y = column_or_1d(y, warn=True)  # (n, 1) -> (n,) with scikit-learn's DataConversionWarning
        check_classification_targets(y)
        if first:
            labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if len(labels) < 2:
                raise ValueError(f"y: a classifier needs at least 2 classes, got 1 class ({labels[0]!r}).")
            self.classes_ = labels
            self.n_outputs_ = 1
        idx = np.searchsorted(self.classes_, y)
        unknown = (idx >= len(self.classes_)) | (self.classes_[np.minimum(idx, len(self.classes_) - 1)] != y)
        if unknown.any():
            rows = np.flatnonzero(unknown)[:5].tolist()
            raise ValueError(f"y: rows {rows} hold labels not among the classes {self.classes_.tolist()} "
                             "(partial_fit: pass every class in the first call's classes=).")
        self._y_1d = True
        return torch.from_numpy(idx.astype(np.int64))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per entry of `classes_` (rows sum to 1)."""
        return torch.softmax(self._raw(X).double(), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as labels from `classes_`."""
        best = self._raw(X).argmax(dim=1).numpy()
        return self.classes_[best]
