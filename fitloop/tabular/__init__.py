"""The table workflow as a library: read a CSV/TSV/Parquet file or a table in memory, infer the columns and
the task, preprocess without leakage, plan and train a run into a run directory, load it to predict.

    import fitloop.tabular as ft
    run = ft.train("wine.csv", target="cultivar", out="runs/wine", epochs=50)   # or a pyarrow.Table / DataFrame
    run.metrics, run.run_dir
    loaded = ft.load_run("runs/wine")
    loaded.predict("new.csv")                  # a pyarrow.Table; also a pyarrow.Table or DataFrame in
    loaded.evaluate(labelled)                  # {"metrics": ..., "baseline": ...}

`fitloop train`, `resume`, `predict`, `evaluate`, `size-search`, `tune` and `demo` call exactly these functions,
with the same defaults and decisions.

    fitloop.tabular.api         train, resume, dry_run, size_search, tune, run_config
    fitloop.tabular.tuning      the hyperparameter search on a table (`tune`): each trial a run directory
    fitloop.tabular.ensemble    build_ensemble: greedy ensemble selection over finished runs, as a run directory
    fitloop.tabular.datasets    demo_data_path: the wine table shipped with fitloop
    fitloop.tabular.errors      TableError
    fitloop.tabular.dialect     the CSV dialect: delimiter sniffing, decimal commas, header names
    fitloop.tabular.reading     read_table (files), read_csv_bytes (text in memory), in_memory (Arrow/pandas)
    fitloop.tabular.columns     Table: column kinds and the task inferred, splits encoded
    fitloop.tabular.preprocess  Preprocessor (fitted on the training rows), transform_table
    fitloop.tabular.config      RunConfig ([data], [model], [train]), resolve_run_config, training_budget
    fitloop.tabular.plan        plan_run: every decision of a run, before any tensor is built
    fitloop.tabular.training    the run's length: early stopping, the time limit, the linear start
    fitloop.tabular.pipeline    train_table, resume_run: table to run directory
    fitloop.tabular.runs        load_run, LoadedRun (predict, evaluate), score
    fitloop.tabular.decisions   describe_plan, commented_toml: a dry run's decisions and its config file
    fitloop.tabular.search      the size search on a table
    fitloop.tabular.streaming   tables larger than memory: decide_streaming, predict/evaluate batch by batch
    fitloop.tabular.stream_fit  the one-pass preprocessing fit and the position-hash split of a stream
    fitloop.tabular.stream_train  train, resume a streamed run (the in-memory recipe over ParquetSources)
    fitloop.tabular.csv_cache   a CSV converted once to Parquet in the run directory

The names below are imported on first use (PEP 562): `import fitloop.tabular` imports neither torch nor
pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "train": "api", "resume": "api", "dry_run": "api", "size_search": "api", "run_config": "api",
    "SizedRun": "api", "tune": "api", "TuneResult": "api", "demo_data_path": "datasets",
    "load_run": "runs", "LoadedRun": "runs", "NotARunError": "runs",
    "RunResult": "pipeline", "start_out": "pipeline",
    "RunConfig": "config", "ConfigError": "config", "resolve_run_config": "config",
    "Table": "columns", "TableError": "errors", "read_table": "reading",
    "Preprocessor": "preprocess", "transform_table": "preprocess",
    "DryRun": "decisions", "build_ensemble": "ensemble", "EnsembleError": "ensemble",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .api import SizedRun, TuneResult, dry_run, resume, run_config, size_search, train, tune  # noqa: F401
    from .columns import Table  # noqa: F401
    from .config import ConfigError, RunConfig, resolve_run_config  # noqa: F401
    from .datasets import demo_data_path  # noqa: F401
    from .decisions import DryRun  # noqa: F401
    from .ensemble import EnsembleError, build_ensemble  # noqa: F401
    from .errors import TableError  # noqa: F401
    from .pipeline import RunResult, start_out  # noqa: F401
    from .preprocess import Preprocessor, transform_table  # noqa: F401
    from .reading import read_table  # noqa: F401
    from .runs import LoadedRun, NotARunError, load_run  # noqa: F401
