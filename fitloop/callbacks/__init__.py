"""Callbacks: a few named events, dispatched by the Trainer in a visible loop.

`base` defines the events and their order; each other module is one callback: `early_stopping`,
`progress` (the live bar or per-epoch lines), `verdict` (the verdict at the end of fit), `checkpoint` (the
run directory: checkpoints, exact resume, signals, the final bundle), `loggers` (CSV, TensorBoard),
`mlflow_logger` (MLflow) and `time_limit` (an upper bound on the training time). A new callback or logger
is a new module here that subclasses `Callback`; the Trainer needs no change.
"""

from .base import EVENTS, Callback
from .checkpoint import Checkpointer, RunInterrupted
from .early_stopping import EarlyStopping
from .loggers import CSVLogger, TensorBoardLogger
from .mlflow_logger import MLflowLogger
from .progress import ProgressPrinter, format_logs
from .time_limit import TimeLimit
from .verdict import VerdictReporter

__all__ = ["Callback", "EVENTS", "EarlyStopping", "ProgressPrinter", "format_logs", "Checkpointer",
           "RunInterrupted", "TimeLimit", "VerdictReporter", "CSVLogger", "TensorBoardLogger", "MLflowLogger"]
