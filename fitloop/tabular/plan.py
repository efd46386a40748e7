"""Every decision of a `fitloop train` run, taken before any tensor is built: `plan_run`.

`fitloop train` acts on the `RunPlan` (through `fitloop.tabular.pipeline`) and `fitloop train --dry-run` shows
it (`fitloop.tabular.dry_run`): a decision taken from the data anywhere else would be missing from the dry run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from ..data.splitting import split_counts, split_indices
from ..distributed import world_size
from ..models import MLPSpec
from ..tabm import TabMSpec
from .columns import Table
from .config import Budget, ConfigError, RunConfig, training_budget
from .errors import TableError
from .preprocess import Preprocessor
from .reading import signless_zero

__all__ = ["RunPlan", "plan_run", "load_table", "model_spec", "IN_MEMORY"]

IN_MEMORY = "the in-memory table"  # how messages name rows given as a table, not a file


def _split_rows(table, cfg: RunConfig) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices, stratified by class for classification.

    Raises:
        TableError: the table is too small for the split: a requested part gets no rows, no part is
            held out, or a class has too few rows to appear in every part (each names the fix).
    """
    fr = tuple(cfg.data.split)
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.train.seed
    names = ("train", "val", "test") if len(fr) == 3 else ("train", "test")
    flag = f"--split {','.join(f'{f:g}' for f in fr)}"
    wanted = [name for name, f in zip(names, fr) if f > 0]
    if len(wanted) < 2:
        raise TableError(f"{flag} holds out no rows, so the model could not be evaluated; keep a test (or "
                         f"val) part, e.g. --split 0.8,0.2 or the default 0.7,0.15,0.15.")

    def fits(n: int) -> bool:  # every requested part gets a row out of n
        return all(c > 0 for c, f in zip(split_counts(n, fr), fr) if f > 0)

    need = next(n for n in range(1, len(fr) + 2) if fits(n))  # more rows than parts always fit
    if not fits(len(table)):
        empty = [name for name, c, f in zip(names, split_counts(len(table), fr), fr) if f > 0 and c == 0]
        what = " and ".join(empty) + (" parts" if len(empty) > 1 else " part")
        raise TableError(f"{table.source}: {len(table)} row(s) are too few for {flag}: the {what} would get "
                         f"no rows (the split needs at least {need} rows). Add rows, or give the held-out "
                         f"parts a larger share, e.g. --split 0.5,0.5.")
    labels = None
    if table.task == "classification":
        enc = Preprocessor(table.target, "classification", [], table.classes)
        labels = torch.from_numpy(enc.encode_target(table.data))
        counts = torch.bincount(labels, minlength=len(table.classes)).tolist()
        rare = [(table.classes[i], c) for i, c in enumerate(counts) if not fits(c)]
        if rare:
            numeric = table.kinds[table.target] == "numeric"
            alt = f", or pass --task regression if {table.target!r} is a quantity ({table.task_reason})"
            shown = ", ".join(f"{v!r} ({c} row{'s' if c != 1 else ''})" for v, c in rare[:5])
            raise TableError(
                f"{table.source}: target {table.target!r} has {len(rare)} class(es) with too few rows to "
                f"stratify over {'/'.join(wanted)} ({flag}): {shown}; each class needs at least {need} "
                f"rows here. Add rows of those classes, or remove or merge them into another class"
                f"{alt if numeric else ''}.")
    parts = split_indices(len(table), fr, seed, labels)
    return {name: np.sort(p.numpy()) for name, f, p in zip(names, fr, parts) if f > 0}


@dataclass
class RunPlan:
    """Every decision of a run, taken before any tensor is built: what `fitloop train` then acts on and
    `fitloop train --dry-run` shows. Built by `plan_run`, the one place that decides.

    Attributes:
        table: the loaded `fitloop.tabular.columns.Table` (column kinds, task, classes, notes).
        rows: row indices of each non-empty split.
        preprocessor: the `Preprocessor` fitted on the training rows (kept and dropped columns).
        spec: the model's spec (`model_spec`: a `TabMSpec`, or an `MLPSpec`).
        loss: the loss name.
        early_stopping: the patience, or `None` when early stopping is off.
        notes: everything dropped, imputed or switched off, in words.
        load_seconds: time spent reading the file.
        t_decide: `time.perf_counter()` after reading (preprocessing time counts from here).
        budget: the training budget (`training_budget`: epochs, patience, checkpoints), applied to the config.
    """

    table: Any
    rows: dict[str, np.ndarray]
    preprocessor: Any
    spec: Any
    loss: str
    early_stopping: int | None
    notes: list[str]
    load_seconds: float
    t_decide: float
    budget: Budget | None = None


def load_table(cfg: RunConfig, data: pa.Table | None = None) -> Table:
    """The run's table with its column kinds and task inferred: the file `cfg.data.path`, or `data`, a
    table already in memory, which goes the way a file's rows go once read (no dialect to detect).

    Raises:
        ConfigError: no data (neither `data` nor `data.path`) or no target column set.
        TableError: the file or the table does not fit the settings (e.g. no such target column).
    """
    d = cfg.data
    if data is None and not d.path:
        raise ConfigError("no data file: pass DATA (fitloop train DATA --target COL) or set data.path.")
    if not d.target:
        raise ConfigError("no target column: pass --target COL or set data.target.")
    if data is None:
        table = Table.read(cast(str, d.path), target=d.target, task=d.task, drop=d.drop, id=d.id,
                           encoding=d.encoding, max_categories=d.max_categories, delimiter=d.delimiter,
                           decimal=d.decimal)
    else:
        table = Table.from_arrow(data, d.target, task=d.task, drop=d.drop, id=d.id,
                                 max_categories=d.max_categories, source=IN_MEMORY)
    return _signless_zero_target(table, cfg)


def _signless_zero_target(table: Table, cfg: RunConfig) -> Table:
    """`table`, rebuilt with -0.0 read as 0.0 in the target when its classes hold both zeros.

    Arrow tells the two apart by their bits, so a target of only 0.0 and -0.0 would train a 2-class
    classifier; they are one number, and such a target is constant. Only that rare table is rebuilt (from
    its rows as read, keeping the notes of reading them).
    """
    zeros = [c for c in table.classes or [] if isinstance(c, float) and c == 0.0]
    if len(zeros) < 2:
        return table
    d = cfg.data
    rebuilt = Table.from_arrow(signless_zero(table.data, table.target), table.target, task=d.task,
                               drop=d.drop, id=d.id, max_categories=d.max_categories, source=table.source,
                               load_seconds=table.load_seconds)
    rebuilt.read_info, rebuilt.notes = table.read_info, table.notes
    return rebuilt


def plan_run(cfg: RunConfig, log: Callable[[str], None] | None = None, world: int | None = None,
             data: pa.Table | None = None) -> RunPlan:
    """Read the table and take every decision of the run: the column kinds and the task, the split,
    the preprocessing (fitted on the training rows), the model and the loss. Deterministic for a config,
    so `resume` rebuilds exactly what `train` had. Raises on bad data before anything is written.

    `fitloop train --dry-run` shows what this returns: a decision taken from the data anywhere else
    would be missing from the dry run, so new ones belong here. `world`: the processes that will train
    (default: torchrun's ``WORLD_SIZE``; the dry run passes ``--nproc`` x ``--nnodes``). `data`: the
    rows as a ``pyarrow.Table`` already in memory, instead of the file `cfg.data.path`."""
    log = log or (lambda msg: None)
    table = load_table(cfg, data)
    log(f"Loaded {table.source}: {len(table)} rows, {len(table.columns)} columns ({table.load_seconds:.2f}s); "
        f"task: {table.task}: {table.task_reason}.")
    t0 = time.perf_counter()
    rows = _split_rows(table, cfg)
    pre = table.fit_preprocessor(rows["train"])
    notes = table.notes + pre.notes
    n_features = len(pre.feature_names)
    if n_features == 0:
        raise TableError(f"no usable feature columns are left ({'; '.join(notes) or 'none found'}); "
                         f"the model needs at least one input.")
    classes = table.classes
    if world is None:  # under torchrun: the job's size (every worker plans alike)
        world = world_size()
    budget = training_budget(cfg, len(rows["train"]), world)  # epochs, patience, checkpoints: from the data
    budget.apply(cfg)
    log(budget.describe() + ".")
    spec = model_spec(cfg, pre, classes)
    loss = cfg.train.loss or ("cross_entropy" if table.task == "classification" else "mse")
    patience = cfg.train.early_stopping or None
    if patience and "val" not in rows:
        patience = None
        notes.append("early stopping is off: there is no validation split")
    return RunPlan(table, rows, pre, spec, loss, patience, notes, table.load_seconds, t0, budget)


def model_spec(cfg: RunConfig, pre: Preprocessor, classes: list[Any] | None) -> MLPSpec | TabMSpec:
    """The model of a run: `[model] kind` with the sizes the data decides (the features, the classes, which
    features are numbers to embed). A linear model (`hidden = []`) is an `MLPSpec` of either kind."""
    m = cfg.model
    out = len(classes) if classes else 1
    hidden = list(m.hidden or [])
    if m.kind == "mlp" or not hidden:
        return MLPSpec(len(pre.feature_names), hidden=hidden, out_features=out, activation=m.activation,
                       dropout=float(m.dropout or 0.0), skip=m.skip)
    return TabMSpec(len(pre.feature_names), out_features=out, k=m.k, hidden=hidden, dropout=float(m.dropout or 0.0),
                    activation=m.activation, numeric=pre.numeric_positions, embedding=m.embedding,
                    d_embedding=m.d_embedding, n_bins=m.n_bins, skip=m.skip,
                    average="probabilities" if classes else "outputs")
