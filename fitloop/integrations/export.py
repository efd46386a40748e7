"""Export a `fitloop train` run as ONNX or a torch.export `.pt2`, verified against fitloop's own predictions.

    result = fl.export("runs/wine", format="onnx")           # runs/wine/export/model.onnx (+ .json)
    result = fl.export("runs/wine", format="torch-export", out="wine.pt2")
    print(result.max_abs_diff)                                # measured on the run's test rows

The exported graph holds the numeric preprocessing, so raw values go in and predictions come out:

* input ``features``: float64, shape ``(batch, len(columns))``, one column per input column of the run,
  in the order listed in the JSON file written next to the model (``model.onnx.json``). Numeric (and
  boolean, as 0/1) columns take their raw values; NaN or inf means missing and is imputed with the
  train median, then standardized with the train mean and std, exactly as `fitloop predict` does.
  Categorical columns take the integer code of the category from the JSON mapping; any other code
  (e.g. -1) is an unseen category, NaN a missing one, as in `fitloop predict`.
* outputs: classification: ``label`` (int64 index into the JSON's ``classes``) and ``probabilities``
  (float32, ``(batch, n_classes)``); regression: ``prediction`` (float32, ``(batch,)``, target units).

Every export is checked before it is reported done: the file is written under a temporary name,
loaded back with its runtime (onnxruntime or `torch.export.load`), run on the run's test rows plus
generated edge-case rows (missing values, unseen categories), and compared with `fitloop predict`'s
outputs; only a file within `tolerance` is renamed into place. ONNX needs the `export` extra.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..extras import MissingExtraError, require
from ..files import fsync_dir, versions, write_json_atomic
from ..tabular.columns import Table
from ..tabular.config import load_toml, resolve_run_config
from ..tabular.errors import TableError
from ..tabular.runs import load_run, predict_file
from .graph import build_graph, input_matrix, layout

__all__ = ["export", "ExportResult", "ExportMismatchError", "MissingExtraError", "FORMATS", "input_matrix",
           "quiet_torch"]

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
TOLERANCE = 1e-5
EDGE_ROWS = 64
UNSEEN = "<fitloop: unseen category>"
_COMPARED = {"classification": "probabilities",
             "regression": "predictions, in units of the target's training standard deviation"}


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from fitloop's: a bug, so nothing was written."""


@dataclass
class ExportResult:
    """What `export` wrote and how it was verified."""

    path: Path
    schema_path: Path
    format: str
    rows_checked: int
    max_abs_diff: float
    max_abs_diff_target_units: float
    tolerance: float
    source: str
    runtime: str
    seconds: float
    notes: list[str]


# ------------------------------------------------------------------------------------ verification rows


def _test_rows(run: Any) -> tuple[Any, str, list[str]]:
    """The run's held-out rows, re-read from the data file its config names, or None (with a note)."""
    notes: list[str] = []
    try:
        d = resolve_run_config(load_toml(str(run.path / "config.toml"))).data
        splits = json.loads((run.path / "splits.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, "", [f"could not read the run's split ({e}); verified on generated rows only"]
    if not d.path:  # run.json's data_in_memory: the table was never a file, so there is nothing to re-read
        return None, "", ["the run was trained on a table in memory, so its held-out rows cannot be read again; "
                          f"verified on {EDGE_ROWS} rows generated from the training statistics instead"]
    name = next((s for s in ("test", "val", "train") if splits.get(s)), None)
    if name is None:
        return None, "", ["the run records no held-out rows; verified on generated rows only"]
    if not Path(d.path).is_file():
        return None, "", [f"the run's data file {d.path} is gone, so its {name} rows cannot be rebuilt; "
                          f"verified on {EDGE_ROWS} rows generated from the training statistics instead"]
    try:
        table = Table.read(d.path, target=d.target or "", task=d.task, drop=d.drop, id=d.id, encoding=d.encoding,
                           max_categories=d.max_categories, delimiter=d.delimiter)
        idx = np.asarray(splits[name], dtype=np.int64)
        if idx.size and idx.max() >= len(table):
            raise ValueError(f"it now has {len(table)} rows, fewer than the split needs")
    except (OSError, ValueError) as e:
        return None, "", [f"the run's data file {d.path} no longer matches the run ({e}); verified on "
                          f"generated rows only"]
    if name != "test":
        notes.append(f"the run has no test split; verified on its {name} rows")
    return table.data.take(idx), f"{len(idx)} {name} rows of {Path(d.path).name}", notes


def _edge_rows(pre: Any, n: int = EDGE_ROWS, seed: int = 0) -> Any:
    """`n` rows from the training statistics that also hit every missing-value and unseen-category path."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for j, f in enumerate(pre.features):
        if "source" in f:  # a date column: dates around the training ones (its days part), some missing
            if f["part"] == "days":
                days = f["mean"] + f["std"] * rng.standard_normal(n)
                mask = np.zeros(n, dtype=bool)
                mask[[j % n, (j + 1) % n]] = True
                cols[f["source"]] = pa.array(np.round(days * 86_400e6).astype(np.int64), pa.timestamp("us"),
                                             mask=mask)
            continue
        if f["kind"] == "numeric":
            v = f["mean"] + f["std"] * rng.standard_normal(n)
            v[[j % n, (j + 1) % n]] = [np.nan, np.inf]  # imputed, as a missing value
            cols[f["name"]] = pa.array(v, mask=np.isnan(v))
        else:
            cats = np.array([*f["categories"], UNSEEN], dtype=object)
            v = cats[rng.integers(0, len(cats), n)]
            v[j % n] = UNSEEN
            mask = np.zeros(n, dtype=bool)
            mask[(j + 2) % n] = True
            cols[f["name"]] = pa.array(v.tolist(), pa.string(), mask=mask)
    return pa.table(cols)


def _reference(run: Any, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """fitloop's own predictions for `data` (the `fitloop predict` code path): values or probabilities,
    and the class indices."""
    table, _ = predict_file(run, data, proba=run.task == "classification")
    if run.task != "classification":
        return table.column("prediction").to_numpy(), None
    classes = run.info["classes"]
    proba = np.stack([table.column(f"proba_{c}").to_numpy() for c in classes], 1)
    index = {c: i for i, c in enumerate(classes)}
    return proba, np.array([index[v] for v in table.column("prediction").to_pylist()], dtype=np.int64)


def _verification_inputs(run: Any) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray | None], str, list[str]]:
    """(features, fitloop's outputs, where the rows come from, notes): the test rows (when they can be
    rebuilt and still fit the run) followed by the generated edge-case rows."""
    pre = run.preprocessor
    test, source, notes = _test_rows(run)
    edge = _edge_rows(pre)
    parts = []
    if test is not None:
        try:
            parts.append((input_matrix(pre, test), _reference(run, test)))
        except TableError as e:
            notes.append(f"the run's data file no longer fits the run ({e}); verified on generated rows only")
            source = ""
    parts.append((input_matrix(pre, edge), _reference(run, edge)))
    source = f"{source} + {edge.num_rows} generated edge-case rows" if source else f"{edge.num_rows} generated rows"
    x = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1][0] for p in parts])
    labels = [p[1][1] for p in parts if p[1][1] is not None]
    return x, (values, np.concatenate(labels) if labels else None), source, notes


# ------------------------------------------------------------------------------------------- runtimes


def _require_onnx() -> None:
    require(("onnx", "onnxscript", "onnxruntime"), "export", "ONNX export")


@contextlib.contextmanager
def quiet_torch(enabled: bool = True) -> Iterator[io.StringIO]:
    """Keep torch's export chatter (torchvision notices, `[torch.onnx]` progress lines, warnings, log
    records) out of the terminal: stdout/stderr are redirected at the file-descriptor level, so output
    from C++ and from handlers bound to the original streams is caught too. Yields what was caught."""
    caught = io.StringIO()
    if not enabled:
        yield caught
        return
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved: list[tuple[int, int]] = []
    sink = tempfile.TemporaryFile()
    previous_disable = logging.root.manager.disable
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        logging.disable(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(caught), contextlib.redirect_stderr(caught):
            warnings.simplefilter("ignore")
            yield caught
    finally:
        logging.disable(previous_disable)
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        sink.seek(0)
        caught.write(sink.read().decode("utf-8", "replace"))
        sink.close()


def _export_file(graph: Any, fmt: str, example: Any, path: str) -> None:
    batch = torch.export.Dim("batch", min=1)
    if fmt == "onnx":
        names = ["label", "probabilities"] if graph.task == "classification" else ["prediction"]
        prog = torch.onnx.export(graph, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                 input_names=["features"], output_names=names)
        assert prog is not None  # dynamo=True always returns the program
        prog.save(path, external_data=False)  # one self-contained file (an MLP is far below ONNX's 2 GB)
    else:
        torch.export.save(torch.export.export(graph, (example,), dynamic_shapes=({0: batch},)), path)


def _run_file(fmt: str, path: str, x: np.ndarray) -> tuple[str, Callable[[np.ndarray], list[np.ndarray]]]:
    """Load the exported file with its own runtime; returns (runtime name, rows -> outputs)."""
    if fmt == "onnx":
        import onnxruntime as ort  # the `export` extra

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return f"onnxruntime {ort.__version__}", lambda a: list(sess.run(None, {"features": a}))
    prog = torch.export.load(path).module()

    def call(a: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = prog(torch.from_numpy(a))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return f"torch.export.load (torch {torch.__version__})", call


def _compare(outputs: list[np.ndarray], ref: tuple[np.ndarray, np.ndarray | None],
             scale: float) -> tuple[float, float, int]:
    """(max abs difference checked, the same in the target's units, rows whose predicted class differs).

    Classification compares probabilities. Regression compares values in units of the target's training
    std, the scale the network predicts in: float32 predictions of a target near 60,000 are 0.0078
    apart at best (one float32 step), so an absolute 1e-5 in the target's units would measure float32
    itself, not the export."""
    values, labels = ref
    if labels is None:
        raw = float(np.max(np.abs(outputs[0].astype(np.float64).reshape(-1) - values), initial=0.0))
        return raw / scale, raw, 0
    label, proba = outputs
    diff = float(np.max(np.abs(proba.astype(np.float64) - values), initial=0.0))
    return diff, diff, int((label.reshape(-1) != labels).sum())


# ----------------------------------------------------------------------------------------------- export


def _out_path(run_dir: Path, fmt: str, out: str | os.PathLike | None, overwrite: bool) -> Path:
    ext = FORMATS[fmt]
    if out is None:
        path = run_dir / "export" / f"model{ext}"
    else:
        path = Path(out)
        if path.is_dir():
            path = path / f"model{ext}"
        if path.suffix != ext:
            raise ValueError(f"--out {out}: a {fmt} export is a {ext} file; use a path ending in {ext} "
                             f"(or a directory).")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: the directory {path.parent} does not exist.")
    if not overwrite and (path.exists() or Path(f"{path}.json").exists()):
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, or "
                              f"choose another --out.")
    return path


def export(run_dir: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None, *,
           overwrite: bool = False, tolerance: float = TOLERANCE, debug: bool = False) -> ExportResult:
    """Export a finished `fitloop train` run as ONNX or torch.export, verified before it is kept.

    Args:
        run_dir: the run directory (`fitloop train --out`).
        format: ``"onnx"`` (needs ``pip install 'fitloop[export]'``) or ``"torch-export"`` (a ``.pt2``).
        out: the file to write (``.onnx`` / ``.pt2``) or a directory; default ``RUN_DIR/export/model.<ext>``.
            The input layout goes next to it as ``<out>.json``.
        overwrite: replace an existing file.
        tolerance: the largest allowed absolute difference from fitloop's own predictions: probabilities
            for classification; for regression, in standard deviations of the training target (the raw
            difference in the target's units is reported too).
        debug: let torch's export output through to the terminal.

    Returns:
        `ExportResult`: the paths, the rows checked, the measured max abs difference and the runtime used.

    Raises:
        MissingExtraError: ONNX was asked for without onnx/onnxscript/onnxruntime installed.
        ExportMismatchError: the exported model disagrees with fitloop; nothing is left at `out`.
        NotARunError, ValueError, FileExistsError: a bad run directory, format or output path.

    Example:
        >>> res = fl.export("runs/wine", format="onnx")       # doctest: +SKIP
        >>> res.path, res.max_abs_diff                        # doctest: +SKIP
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise ValueError(f"--format {format!r}: choose one of {', '.join(FORMATS)}.")
    if format == "onnx":
        _require_onnx()
    run = load_run(run_dir)
    path = _out_path(run.path, format, out, overwrite)
    graph = build_graph(run.model, run.preprocessor, run.info)
    x, ref, source, notes = _verification_inputs(run)
    made_dir = not path.parent.exists()
    path.parent.mkdir(exist_ok=True)  # only the default RUN_DIR/export can be missing here
    tmp = _temp_file(path)
    try:
        with quiet_torch(not debug):
            _export_file(graph, format, torch.from_numpy(x[:2].copy()), tmp)
            runtime, call = _run_file(format, tmp, x)
            outputs = call(x)
            single = call(x[:1].copy())  # batch size 1: the batch dimension really is dynamic
        diff, diff_units = _verify(run, format, path, outputs, single, ref, tolerance, source)
        schema = layout(run.path, format, path, run.preprocessor, run.info)
        schema["verification"] = {"rows": len(x), "source": source, "runtime": runtime, "max_abs_diff": diff,
                                  "max_abs_diff_target_units": diff_units, "tolerance": tolerance,
                                  "compared": _COMPARED[run.task], "notes": notes}
        schema["versions"] = versions()
        write_json_atomic(Path(f"{path}.json"), schema)
        os.replace(tmp, path)  # only a verified file gets the real name
        fsync_dir(path.parent)
    except BaseException:
        if made_dir:
            shutil.rmtree(path.parent, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return ExportResult(path, Path(f"{path}.json"), format, len(x), diff, diff_units, tolerance, source, runtime,
                        time.perf_counter() - t0, notes)


def _temp_file(path: Path) -> str:
    """An empty temporary file next to `path`, with the permissions a new file gets (the umask's)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the export gets normal permissions
    return tmp


def _verify(run: Any, fmt: str, path: Path, outputs: list[np.ndarray], single: list[np.ndarray],
            ref: tuple[np.ndarray, np.ndarray | None], tolerance: float, source: str) -> tuple[float, float]:
    """The exported file's outputs (all rows, and the first row alone) against fitloop's: `(max abs
    difference, the same in the target's units)`; raises `ExportMismatchError` beyond `tolerance` or
    when a predicted class differs."""
    scale = float((run.info.get("target_scaling") or {"std": 1.0})["std"])
    diff, diff_units, wrong = _compare(outputs, ref, scale)
    one = _compare(single, (ref[0][:1], None if ref[1] is None else ref[1][:1]), scale)
    diff, diff_units, wrong = max(diff, one[0]), max(diff_units, one[1]), wrong + one[2]
    if not diff <= tolerance or wrong:
        what = f", and the predicted class differs on {wrong} row(s)" if wrong else ""
        units = f" ({diff_units:.3g} in {run.info['target']!r} units)" if run.task != "classification" else ""
        raise ExportMismatchError(
            f"verification failed: the exported {fmt} model's outputs differ from fitloop's by up to "
            f"{diff:.3g}{units} (tolerance {tolerance:g}) on {source}{what}; nothing was written to {path}. "
            f"This is a bug: please report it with the run directory.")
    return diff, diff_units
