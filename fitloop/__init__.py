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

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Callback": "callbacks", "EarlyStopping": "callbacks", "ProgressPrinter": "callbacks",
    "TrainConfig": "config", "RunConfig": "tabular",
    "Split": "data", "split": "data",
    "Table": "tabular", "TableError": "tabular", "Preprocessor": "tabular", "transform_table": "tabular",
    "load": "bundle",
    "CheckpointError": "checkpoint_format", "ResumeMismatchError": "checkpoint_format",
    "RunInterrupted": "callbacks", "Checkpointer": "callbacks",
    "CSVLogger": "callbacks", "TensorBoardLogger": "callbacks", "MLflowLogger": "callbacks",
    "FunctionModel": "models", "MLPSpec": "models", "build_mlp": "models",
    "NonFiniteError": "step", "TrainingStep": "step",
    "Trainer": "trainer", "pick_device": "trainer",
    "TrainState": "state", "seed_everything": "state",
    "export": "integrations.export",
    "summary": "report.summary", "VerdictReporter": "callbacks.verdict",
    "size_search": "tune.size_search", "SizeSearchResult": "tune.size_search",
    "GuardWarning": "diagnose.checks", "SanityResult": "diagnose.sanity",
    "FitloopRegressor": "sklearn", "FitloopClassifier": "sklearn",  # needs scikit-learn (fitloop[sklearn])
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .bundle import load  # noqa: F401
    from .callbacks import (  # noqa: F401
        Callback,
        Checkpointer,
        CSVLogger,
        EarlyStopping,
        MLflowLogger,
        ProgressPrinter,
        RunInterrupted,
        TensorBoardLogger,
    )
    from .callbacks.verdict import VerdictReporter  # noqa: F401
    from .checkpoint_format import CheckpointError, ResumeMismatchError  # noqa: F401
    from .config import TrainConfig  # noqa: F401
    from .data import Split, split  # noqa: F401
    from .diagnose.checks import GuardWarning  # noqa: F401
    from .diagnose.sanity import SanityResult  # noqa: F401
    from .integrations.export import export  # noqa: F401
    from .models import FunctionModel, MLPSpec, build_mlp  # noqa: F401
    from .report.summary import summary  # noqa: F401
    from .sklearn import FitloopClassifier, FitloopRegressor  # noqa: F401
    from .state import TrainState, seed_everything  # noqa: F401
    from .step import NonFiniteError, TrainingStep  # noqa: F401
    from .tabular import Preprocessor, RunConfig, Table, TableError, transform_table  # noqa: F401
    from .trainer import Trainer, pick_device  # noqa: F401
    from .tune.size_search import SizeSearchResult, size_search  # noqa: F401
