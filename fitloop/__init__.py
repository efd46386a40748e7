"""fitloop: the whole PyTorch workflow, correct by default and fast.

    >>> import fitloop as fl
    >>> train, val, test = fl.split(X, y, fractions=(0.7, 0.15, 0.15), seed=0)
    >>> trainer = fl.Trainer(model, loss="mse", optimizer="adam", lr=1e-3, epochs=100)
    >>> history = trainer.fit(train, val)
    >>> trainer.evaluate(test)
    >>> trainer.save("model_dir"); model = fl.load("model_dir")

The public names are imported on first use (PEP 562), so `import fitloop` and `fitloop --help`
stay fast; torch is imported when the first name that needs it is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Callback": "callbacks", "EarlyStopping": "callbacks", "ProgressPrinter": "callbacks",
    "TrainConfig": "config", "RunConfig": "config",
    "Split": "data", "split": "data",
    "load": "io",
    "FunctionModel": "models", "MLPSpec": "models", "build_mlp": "models",
    "Table": "table", "TableError": "table", "Preprocessor": "table", "transform_table": "table",
    "NonFiniteError": "trainer", "Trainer": "trainer", "TrainState": "trainer", "pick_device": "trainer",
    "seed_everything": "trainer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fitloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .callbacks import Callback, EarlyStopping, ProgressPrinter  # noqa: F401
    from .config import RunConfig, TrainConfig  # noqa: F401
    from .data import Split, split  # noqa: F401
    from .io import load  # noqa: F401
    from .models import FunctionModel, MLPSpec, build_mlp  # noqa: F401
    from .table import Preprocessor, Table, TableError, transform_table  # noqa: F401
    from .trainer import NonFiniteError, Trainer, TrainState, pick_device, seed_everything  # noqa: F401
