"""A finished run directory: check it, open it, predict and evaluate with it.

    run = load_run("runs/wine")
    preds = run.predict("new.csv")                      # a pyarrow.Table: [id], prediction[, proba_*]
    report = run.evaluate("labelled.csv")               # {"metrics": ..., "baseline": ...}

Both take a path, a ``pyarrow.Table`` or a ``pandas.DataFrame``; `predict_file` also returns the notes
about the data (unseen categories, ignored columns), which `LoadedRun.predict` issues as warnings or
collects.

Also the metrics `fitloop train` reports (`score`, next to the trivial baseline's); writing a run is
`fitloop.tabular.pipeline`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..bundle import load
from ..config import RUN_FORMAT
from ..metrics import MetricSet, to_python
from ..warn import warn_user
from .errors import TableError
from .preprocess import Preprocessor, transform_table
from .reading import in_memory, read_table, signless_zero

__all__ = ["LoadedRun", "NotARunError", "check_run", "load_run", "predict_file", "predict_columns", "evaluate_file",
           "score"]

# rows per forward pass when predicting: a TabM holds k members' activations per row (8 x 128 floats a layer),
# so 8,192 rows keep a pass near 30 MiB (65,536 peaked near 1 GiB); the streamed path uses the same size
PREDICT_BATCH = 8192


class NotARunError(FileNotFoundError):
    """A path given as RUN_DIR is not a fitloop run directory."""


# ------------------------------------------------------------------------------------------ metrics


def score(task: str, out, y, scaling: dict[str, float] | None = None) -> dict[str, Any]:
    """Metrics of raw model outputs `out` against `y` (class indices, or values in original units).

    Regression outputs are in standardized units; `scaling` (`mean`, `std`) maps them back first.
    """
    out = out.detach().float()
    if task == "classification":
        res: dict[str, Any] = {"loss": torch.nn.functional.cross_entropy(out, y.long())}
        res.update(MetricSet("multiclass").compute(out, y))
    else:
        pred = unscale(out.reshape(-1), scaling)
        res = dict(MetricSet("regression").compute(pred, y.float().reshape(-1)))
    return {k: float32_value(to_python(v)) for k, v in res.items()}


def float32_value(v: Any) -> Any:
    """A float computed in float32 as the shortest decimal that reads back as the same float32
    (0.9722222, not 0.9722222089767456); lists element-wise; anything else unchanged."""
    if isinstance(v, list):
        return [float32_value(x) for x in v]
    if isinstance(v, float):
        return float(str(np.float32(v)))
    return v


def float32_decimals(values: Any) -> np.ndarray:
    """float32 values as float64 arrays of their shortest decimals (74.15505, not 74.1550521850586): each
    reads back as the same float32, and a float64 writer (CSV, JSON, Parquet) then shows those digits.
    Arrow formats each float32 as its shortest round-trip decimal, and parses that back."""
    text = pc.cast(pa.array(np.asarray(values, dtype=np.float32).reshape(-1)), pa.string())
    return pc.cast(text, pa.float64()).to_numpy()


def unscale(pred, scaling: dict[str, float] | None):
    return pred if not scaling else pred * scaling["std"] + scaling["mean"]


def baseline_outputs(task: str, info: dict[str, Any], n: int):
    """The trivial model's raw outputs for `n` rows: log class priors (majority class) or the train mean."""
    if task == "classification":
        prior = torch.tensor(info["class_prior"], dtype=torch.float32)
        return torch.log(prior.clamp_min(1e-12)).expand(n, -1)
    return torch.zeros(n)  # the standardized train mean; unscale() maps it to the mean


# ------------------------------------------------------------------------------- predict / evaluate


@dataclass
class LoadedRun:
    """A run directory opened for predict/evaluate: the model, its preprocessor and the target info."""

    path: Path
    model: Any
    preprocessor: Any
    info: dict[str, Any]

    @property
    def task(self) -> str:
        return self.info["task"]

    def predict(self, data: Any, *, proba: bool = False, encoding: str = "utf-8", delimiter: str | None = None,
                decimal: str | None = None, notes: list[str] | None = None) -> pa.Table:
        """Predictions for new rows (`fitloop predict`): a file path, a ``pyarrow.Table`` or a DataFrame.

        Args:
            data: the rows; the columns the model needs, by name (others are ignored).
            proba: also one ``proba_<class>`` column per class (classification).
            encoding: the text encoding of a CSV/TSV file.
            delimiter: the field separator of a CSV/TSV file (None: detected).
            decimal: the decimal mark of numbers written as text, ``","`` or ``"."`` (None: detected).
            notes: receives the notes about the data (unseen categories, ignored columns); None: each is
                issued as a `UserWarning`.

        Returns:
            A ``pyarrow.Table``: the id column (when the run has one and the data too), ``prediction``.
        """
        table, found = predict_file(self, data, proba=proba, encoding=encoding, delimiter=delimiter,
                                    decimal=decimal)
        if notes is not None:
            notes.extend(found)
        else:
            for note in found:
                warn_user(note)
        return table

    def evaluate(self, data: Any, *, encoding: str = "utf-8", delimiter: str | None = None,
                 decimal: str | None = None) -> dict[str, Any]:
        """Metrics on labelled rows (`fitloop evaluate`), next to the trivial baseline of the training data:
        ``{"rows", "metrics", "baseline", "baseline_kind", "notes"}``. `data` as in `predict`."""
        return evaluate_file(self, data, encoding=encoding, delimiter=delimiter, decimal=decimal)

    def outputs(self, X):
        """Raw model outputs for `X`, in batches, under inference mode."""
        with torch.inference_mode():
            outs = [self.model(X[i:i + PREDICT_BATCH]) for i in range(0, len(X), PREDICT_BATCH)]
        if len(outs) == 1:  # one batch (what a server sees): no copy through torch.cat
            return outs[0].float()
        return torch.cat(outs).float() if outs else torch.zeros(0, self.model.spec.out_features)


def check_run(path: str | os.PathLike, *, finished: bool = True) -> dict[str, Any]:
    """`run.json` of a run directory, or a clear error if `path` is not one (or, with `finished`,
    if the run has no final model yet)."""
    p = Path(path)
    what = "does not exist" if not p.exists() else ("is not a directory" if not p.is_dir() else None)
    run_json = p / "run.json"
    if what is None and not run_json.is_file():
        what = "has no run.json"
    meta: dict[str, Any] = {}
    if what is None:
        try:
            meta = json.loads(run_json.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            what = "has an unreadable run.json"
        else:
            if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
                what = "has a run.json that is not a fitloop run's"
    if what is None and finished and not (p / "model" / "fitloop.json").is_file():
        if meta.get("status") == "finished":  # it did finish: the model was removed since
            raise NotARunError(f"{path}: the run finished, but its model files are missing ({p / 'model'} has "
                               f"no fitloop.json; it was deleted or moved). Restore {p / 'model'}, or train "
                               f"again (`fitloop train ... --out {path} --overwrite`).")
        raise NotARunError(f"{path}: the run did not finish (status: {meta.get('status', 'unknown')}), so it has "
                           f"no model yet. Continue it with `fitloop resume {path}`.")
    if what is None and not finished and not (p / "config.toml").is_file():
        what = "has no config.toml (it was not written by `fitloop train`)"
    if what is not None:
        raise NotARunError(f"{path} is not a fitloop run directory: it {what}. Pass the directory that "
                           f"`fitloop train` printed (e.g. runs/<target>-<timestamp>, or your --out).")
    return meta


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Open a run directory written by `train_table` (weights as safetensors, the rest JSON)."""
    check_run(path)
    model = load(Path(path) / "model")
    meta = cast(dict[str, Any], model.fitloop_meta)  # set by `load`
    if "preprocessor" not in meta or "table" not in meta:
        raise NotARunError(f"{path}: the model bundle has no preprocessing; it was not written by fitloop train.")
    return LoadedRun(Path(path), model, Preprocessor.from_dict(meta["preprocessor"]), meta["table"])


def predict_file(run: LoadedRun, data, *, proba: bool = False, encoding: str = "utf-8",
                 delimiter: str | None = None, decimal: str | None = None):
    """Predictions for a new file (or `pyarrow.Table`, or DataFrame): returns `(pyarrow.Table, notes)`.

    Columns: the id column (when the run has one and the file has it), `prediction` (original class
    labels or values in the target's units) and, with `proba`, one `proba_<class>` column per class.
    """
    table = in_memory(data)  # a DataFrame as Arrow
    data = data if table is None else table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unseen categories: reported in notes instead
        if isinstance(data, (str, os.PathLike)):
            sep, mark = _dialect(run, delimiter, decimal)
            data = read_table(Path(data), encoding=encoding, delimiter=sep, decimal=mark)
        enc = transform_table(run.preprocessor, _without_target(run, data))
    cols: dict[str, Any] = {}
    if run.info.get("id") and enc.ids is not None:
        cols[run.info["id"]] = pa.array(enc.ids)
    for name, values in predict_columns(run, enc.X, proba=proba).items():
        cols[name] = pa.array(values)
    return pa.table(cols), enc.notes


def _dialect(run: LoadedRun, delimiter: str | None, decimal: str | None) -> tuple[str | None, str | None]:
    """The reader's `delimiter` and `decimal` for predict/evaluate: what was passed, else what training used
    (its --delimiter; the decimal mark it read, given or detected, so `1,000` reads as in training).
    An empty string is passed on, so the reader refuses it as `train` does."""
    return (delimiter if delimiter is not None else run.info.get("delimiter"),
            decimal if decimal is not None else run.info.get("decimal"))


def _without_target(run: LoadedRun, data: Any) -> Any:
    """The rows without the target column: predicting does not use it, so missing or unseen labels there
    are no error (only `evaluate` needs them)."""
    if not hasattr(data, "column_names"):  # a fitloop `Table`: its Arrow rows
        data = data.data
    names = data.schema.names
    target = run.info["target"]
    return data.select([n for n in names if n != target]) if target in names else data


def predict_columns(run: LoadedRun, X, *, proba: bool = False) -> dict[str, Any]:
    """The prediction columns for encoded rows `X`: what `predict_file` writes, and `fitloop serve` answers.

    Returns:
        ``{"prediction": ..., ["proba_<class>": ...]}``: class labels (a list of the original values) or
        float64 values in the target's units, each the shortest decimal of the model's float32 value
        (`float32_decimals`); with `proba`, one float32 array per class.

    Raises:
        ValueError: `proba` on a regression run.
    """
    out = run.outputs(X)
    cols: dict[str, Any] = {}
    if run.task == "classification":
        cols["prediction"] = run.preprocessor.decode(out.argmax(-1))
        if proba:
            p = torch.softmax(out, -1).numpy()
            for j, c in enumerate(run.info["classes"]):
                cols[f"proba_{c}"] = p[:, j]
    else:
        if proba:
            raise ValueError("--proba is for classification runs; this run does regression.")
        # the model computes in float32: its shortest decimals, not float64 digits it never had
        cols["prediction"] = float32_decimals(unscale(out.reshape(-1), run.info["target_scaling"]).numpy())
    return cols


def evaluate_file(run: LoadedRun, data, *, encoding: str = "utf-8", delimiter: str | None = None,
                  decimal: str | None = None) -> dict:
    """Metrics of the run's model on a labelled file (or `pyarrow.Table`, or DataFrame), next to the trivial
    baseline of the training data."""
    table = in_memory(data)
    data = data if table is None else table
    if not hasattr(data, "column_names"):
        sep, mark = _dialect(run, delimiter, decimal)
        data = read_table(data, encoding=encoding, delimiter=sep, decimal=mark)
    target = run.info["target"]
    if target not in data.column_names:
        raise TableError(f"the file has no target column {target!r}, so there is nothing to evaluate against; "
                         f"use `fitloop predict` for unlabelled data. Columns are: {data.column_names}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        enc = transform_table(run.preprocessor, data if not isinstance(data, pa.Table) else signless_zero(data, target))
    if enc.y is None:
        raise TableError(f"target column {target!r} is empty in this file; evaluate needs labels.")
    y = enc.y
    out = run.outputs(enc.X)
    scaling = run.info.get("target_scaling")
    return {"rows": len(y), "metrics": score(run.task, out, y, scaling),
            "baseline": score(run.task, baseline_outputs(run.task, run.info, len(y)), y, scaling),
            "baseline_kind": run.info.get("baseline_kind"), "notes": enc.notes}
