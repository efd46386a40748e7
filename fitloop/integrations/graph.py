"""The exported graph: a run's preprocessing and model as one `nn.Module`, and its input layout.

`build_graph` wraps the model so that raw column values go in and predictions come out (the math of
`fitloop.tabular.Preprocessor.transform`, then the MLP, then softmax/argmax or the target's unscaling);
`input_matrix` turns a table into its ``features`` input; `layout` is the JSON written next to an export.
`fitloop.integrations.export` exports and verifies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from ..tabular.preprocess import DATE_MEANINGS, date_part_values
from ..tabular.reading import TableError, as_strings, column_as_float64

__all__ = ["build_graph", "input_matrix", "layout"]


def build_graph(model: Any, pre: Any, info: dict[str, Any]) -> Any:
    """`model` wrapped in the run's preprocessing and output mapping, as one exportable `nn.Module`.

    Args:
        model: the run's MLP (from the bundle), in eval mode.
        pre: the run's fitted `Preprocessor`: its statistics and categories become buffers of the graph.
        info: the bundle's table info (`task`, `target_scaling`).

    Returns:
        A module taking ``features`` (float64, ``(batch, len(pre.features))``) and returning
        ``(label, probabilities)`` for classification or ``prediction`` for regression.
    """
    return FitloopGraph(model, pre, info).eval()


class FitloopGraph(nn.Module):
    """raw float64 columns -> impute, standardize, one-hot (the `Preprocessor`'s math) -> MLP -> outputs."""

    num_idx: torch.Tensor
    median: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    miss_pos: torch.Tensor
    slots: torch.Tensor
    perm: torch.Tensor

    def __init__(self, model: nn.Module, pre: Any, info: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        feats = pre.features
        num = [i for i, f in enumerate(feats) if f["kind"] == "numeric"]
        self.register_buffer("num_idx", torch.tensor(num, dtype=torch.long))
        for key in ("median", "mean", "std"):
            self.register_buffer(key, torch.tensor([feats[i][key] for i in num], dtype=torch.float64))
        miss = [p for p, i in enumerate(num) if feats[i]["missing"]]
        self.register_buffer("miss_pos", torch.tensor(miss, dtype=torch.long))
        self.cats = [(i, len(f["categories"]), bool(f["missing"])) for i, f in enumerate(feats)
                     if f["kind"] == "categorical"]
        width = max([k + 1 + m for _, k, m in self.cats], default=1)
        self.register_buffer("slots", torch.arange(width, dtype=torch.float64))
        self.register_buffer("perm", torch.tensor(_feature_order(feats, num, miss), dtype=torch.long))
        self.task = info["task"]
        scaling = info.get("target_scaling") or {"mean": 0.0, "std": 1.0}
        self.y_mean, self.y_std = float(scaling["mean"]), float(scaling["std"])

    def forward(self, x: torch.Tensor) -> Any:
        parts = []
        if len(self.num_idx):
            v = x.index_select(1, self.num_idx)
            missing = ~torch.isfinite(v)
            v = torch.where(missing, self.median, v)
            v = (v - self.mean) / self.std  # float64, then float32: the same rounding as `transform`
            parts.append(v.float())
            if len(self.miss_pos):
                parts.append(missing.index_select(1, self.miss_pos).float())
        for j, k, has_missing in self.cats:
            c = x[:, j]
            known = (c >= 0) & (c < k) & (c == torch.floor(c))  # NaN compares False: not known
            slot = torch.where(known, c, torch.full_like(c, k))
            if has_missing:
                slot = torch.where(torch.isnan(c), torch.full_like(c, k + 1), slot)
            parts.append((slot.unsqueeze(1) == self.slots[:k + 1 + has_missing]).float())
        out = self.model(torch.cat(parts, 1).index_select(1, self.perm)).float()
        if self.task == "classification":
            return out.argmax(-1), torch.softmax(out, -1)
        return out.reshape(-1) * self.y_std + self.y_mean  # `unscale`, in float32 as `fitloop predict`


def _feature_order(feats: list[dict[str, Any]], num: list[int], miss: list[int]) -> list[int]:
    """The graph builds its blocks as [standardized numerics | missing indicators | one-hot blocks...]; the
    positions that gather them into the Preprocessor's feature order (`feature_names`)."""
    order: list[int] = []
    ind_base, off = len(num), len(num) + len(miss)
    for i, f in enumerate(feats):
        if f["kind"] == "numeric":
            p = num.index(i)
            order.append(p)
            if f["missing"]:
                order.append(ind_base + miss.index(p))
        else:
            k = len(f["categories"]) + 1 + bool(f["missing"])
            order += range(off, off + k)
            off += k
    return order


def input_matrix(pre: Any, data: Any) -> np.ndarray:
    """A table's rows as the exported model's ``features`` input: float64 ``(rows, len(columns))``.

    Numeric columns are parsed as `fitloop predict` parses them (NaN = missing); categorical columns
    become their code in ``pre.features[i]["categories"]`` (-1 when unseen, NaN when missing).

    Args:
        pre: the run's fitted `Preprocessor`.
        data: a ``pyarrow.Table`` with (at least) the run's input columns.

    Raises:
        TableError: a column the model needs is missing, or a numeric column holds text.
    """
    missing = [c for c in pre.input_columns if c not in data.column_names]
    if missing:
        raise TableError(f"the table lacks {len(missing)} column(s) the model needs: {missing}.")
    out = np.empty((data.num_rows, len(pre.features)), dtype=np.float64)
    for j, f in enumerate(pre.features):
        if "source" in f:  # one part of a date column (year, month...), computed as `transform` computes it
            out[:, j] = date_part_values(data.column(f["source"]), f["part"], f["source"])
            continue
        col = data.column(f["name"])
        if f["kind"] == "numeric":
            out[:, j] = column_as_float64(col, f["name"])
            continue
        s = as_strings(col)
        idx = pc.fill_null(pc.index_in(s, value_set=pa.array(f["categories"], pa.string())), -1)
        out[:, j] = np.asarray(idx.to_numpy(), dtype=np.float64)
        out[np.asarray(pc.is_null(s).to_numpy(zero_copy_only=False), dtype=bool), j] = np.nan
    return out


def layout(run_dir: Path, fmt: str, path: Path, pre: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The JSON written next to an export: the input layout, category codes and the outputs.

    Args:
        run_dir: the run directory exported.
        fmt: ``"onnx"`` or ``"torch-export"``.
        path: the exported file.
        pre: the run's `Preprocessor`.
        info: the bundle's table info (task, target, classes).

    Returns:
        A JSON-able dict (`export` adds ``verification`` and ``versions``).
    """
    columns = []
    for j, f in enumerate(pre.features):
        if f["kind"] == "numeric":
            columns.append({"index": j, "name": f["name"], "kind": "numeric", "train_median": f["median"],
                            "train_mean": f["mean"], "train_std": f["std"]})
            if "source" in f:  # the caller computes the part from the date column
                columns[-1]["date"] = {"column": f["source"], "part": f["part"], "meaning": DATE_MEANINGS[f["part"]]}
        else:
            columns.append({"index": j, "name": f["name"], "kind": "categorical",
                            "codes": {c: i for i, c in enumerate(f["categories"])}})
    if info["task"] == "classification":
        outputs = [{"name": "label", "dtype": "int64", "shape": ["batch"], "meaning": "index into classes"},
                   {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(info["classes"])],
                    "meaning": "softmax over classes, in the order of classes"}]
    else:
        outputs = [{"name": "prediction", "dtype": "float32", "shape": ["batch"],
                    "meaning": f"the predicted {info['target']!r}, in the target's units"}]
    return {
        "format": "fitloop-export", "format_version": 1, "model": path.name, "model_format": fmt,
        "run_dir": str(run_dir.resolve()), "task": info["task"], "target": info["target"],
        "classes": info.get("classes"),
        "input": {
            "name": "features", "dtype": "float64", "shape": ["batch", len(columns)], "columns": columns,
            "layout": "one column per entry of `columns`, in this order. numeric (and boolean, as 0/1): the raw "
                      "value; NaN or inf = missing (imputed with the train median, then standardized inside "
                      "the model); a date column is several numeric entries, each with `date` naming the column "
                      "and the part to compute from it (days since 1970-01-01 with the time of day as a "
                      "fraction, year, month, weekday with Monday = 0, day of year from 1, hour). categorical: "
                      "the integer code from `codes`; any other code (e.g. -1) = an "
                      "unseen category, NaN = missing.",
        },
        "outputs": outputs,
    }
