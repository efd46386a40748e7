"""fitloop: the whole PyTorch workflow, correct by default and fast.

    >>> import fitloop as fl
    >>> train, val, test = fl.split(X, y, fractions=(0.7, 0.15, 0.15), seed=0)
    >>> trainer = fl.Trainer(model, loss="mse", optimizer="adam", lr=1e-3, epochs=100)
    >>> history = trainer.fit(train, val)
    >>> trainer.evaluate(test)
    >>> trainer.save("model_dir"); model = fl.load("model_dir")
"""

__version__ = "0.1.0"

from .callbacks import Callback, EarlyStopping, ProgressPrinter
from .config import TrainConfig
from .data import Split, split
from .io import load
from .models import FunctionModel, MLPSpec, build_mlp
from .table import Preprocessor, Table, TableError, transform_table
from .trainer import NonFiniteError, Trainer, TrainState, pick_device, seed_everything

__all__ = [
    "__version__", "Callback", "EarlyStopping", "ProgressPrinter", "TrainConfig", "Split", "split", "load",
    "FunctionModel", "MLPSpec", "build_mlp", "NonFiniteError", "Trainer", "TrainState", "pick_device",
    "seed_everything", "Table", "TableError", "Preprocessor", "transform_table",
]
