"""Preprocessing without leakage: a `Preprocessor` fitted on the training rows, and `transform_table`.

    pre = Preprocessor.fit(data, target="price", task="regression", kinds=kinds, rows=train_rows)
    X = pre.transform(data)                                    # float32 (n_rows, len(pre.feature_names))
    new = transform_table(Preprocessor.from_dict(pre.to_dict()), "new.csv")

Numeric columns are standardized with train statistics (missing values: the train median plus a
`COL__missing` indicator); categorical columns are one-hot with an `<unknown>` slot. A text column with more
than `max_categories` values keeps its most frequent ones, the rest sharing the `<unknown>` slot, unless it
is ID-like (dropped; see `categorical_spec_from_counts`). A date or timestamp column becomes numeric
features (`DATE_PARTS`: days since 1970, year, month, day of week, day of year, and the hour of a timestamp),
each imputed and standardised as a number; their specs name the column in ``source`` and the part in
``part``. The state is plain JSON (`to_dict`/`from_dict`), never a pickle. The float32 feature matrix is
preallocated and filled column by column.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..warn import warn_user
from .reading import TableError, as_strings, column_as_float64, is_text_type, read_table, sorted_unique

if TYPE_CHECKING:  # pragma: no cover - a Table is accepted by duck typing (columns.py imports this module)
    from .columns import Table

__all__ = ["Preprocessor", "PreparedTable", "TableSplit", "transform_table"]

_HUGE = 1e300  # a column whose mean or spread is above this is standardised in an order that cannot overflow
DATE_PARTS = ("days", "year", "month", "weekday", "yearday")  # the numbers a date column becomes
TIME_PARTS = ("hour",)  # and a timestamp column, beside them (a part constant in training is left out)
DATE_MEANINGS = {"days": "days since 1970", "year": "year", "month": "month",
                 "weekday": "day of week (0 = Monday)", "yearday": "day of year", "hour": "hour"}


class Preprocessor:
    """Feature/target encoder fitted on training rows; JSON-serialisable via `to_dict`/`from_dict`.

    Attributes:
        target: Target column name.
        task: ``"classification"`` or ``"regression"``.
        features: One spec dict per used input column (kind, statistics, categories).
        classes: Sorted original class labels (classification), else None.
        id: Optional id column (kept for output, never a feature).
        notes: Human-readable notes from fitting (dropped columns, imputations).
    """

    VERSION = 1

    def __init__(self, target: str, task: str, features: list[dict[str, Any]],
                 classes: list[Any] | None = None, id: str | None = None,
                 notes: list[str] | None = None) -> None:
        self.target, self.task, self.features = target, task, features
        self.classes, self.id, self.notes = classes, id, list(notes or [])
        self.dropped: dict[str, str] = {}  # set by `fit`: columns left out, and why (not saved)
        self._plan_cache: dict[str, Any] | None = None  # see _plan

    @classmethod
    def fit(cls, data: pa.Table, *, target: str, task: str, kinds: Mapping[str, str],
            rows: np.ndarray | None = None, classes: list[Any] | None = None, id: str | None = None,
            max_categories: int = 50) -> Preprocessor:
        """Fit on ``data`` restricted to ``rows`` (the training rows).

        Args:
            data: Full table (only ``rows`` are looked at).
            target: Target column name.
            task: ``"classification"`` or ``"regression"``.
            kinds: Feature column name -> kind (``numeric``/``bool``/``categorical``/``date``), in output order.
            rows: Training row indices (all rows if None).
            classes: Class labels for classification; default: sorted labels seen in ``rows``.
            id: Id column name (excluded from features).
            max_categories: Categorical columns with more distinct training values keep the
                ``max_categories`` most frequent as categories (the rest share the ``<unknown>`` slot), or are
                dropped when ID-like (`categorical_spec_from_counts` states the rule).
        """
        features: list[dict[str, Any]] = []
        dropped: dict[str, str] = {}  # column -> why: the notes, and `fitloop train --dry-run`'s table
        imputed: list[str] = []
        cut: list[str] = []  # columns kept with their most frequent values only
        for name, kind in kinds.items():
            col = data.column(name)
            if kind in ("numeric", "bool"):
                spec, why, n_missing = _numeric_spec(name, col, rows)
                if spec is not None:  # what the column held: serve's /schema and JSON checks say true/false
                    spec["values"] = "bool" if kind == "bool" else "number"
                if spec is not None and n_missing:
                    imputed.append(f"{name}: {n_missing} (median {spec['median']:g})")
            elif kind == "date":
                specs, why, n_missing = date_specs(name, [(part, *_numeric_spec(f"{name}__{part}", values))
                                                          for part, values in _date_columns(name, col, rows)])
                features += specs
                if specs:
                    cut.append(date_note(name, specs))
                    imputed += [date_imputed(name, specs[0], n_missing)] if n_missing else []
                    continue
                spec = None
            else:
                spec, why = _categorical_spec(name, col, rows, max_categories)
                if spec is not None and why:
                    cut.append(f"column {name!r}: {why}")
            if spec is None:
                dropped[name] = why
            else:
                features.append(spec)
        notes = [f"dropped column {name!r}: {why}" for name, why in dropped.items()] + cut
        if imputed:
            notes.append("imputed missing numeric values with the train median (+ COL__missing indicator): "
                         + ", ".join(imputed))
        if task == "classification" and classes is None:
            tcol = data.column(target)
            classes = sorted_unique(tcol.take(rows) if rows is not None else tcol)
        if task == "classification" and classes is not None and len(classes) < 2:
            raise TableError(f"target {target!r} has a single class ({classes!r}) in the training rows; "
                             f"classification needs at least 2. Check the split or use --task regression.")
        pre = cls(target, task, features, classes, id, notes)
        pre.dropped = dropped
        return pre

    # --------------------------------------------------------------------------------- properties
    @property
    def input_columns(self) -> list[str]:
        """Columns a table must have at transform time."""
        return list(dict.fromkeys(f.get("source", f["name"]) for f in self.features))  # a date: several features

    @property
    def feature_names(self) -> list[str]:
        """Names of the output feature-matrix columns, in order."""
        names: list[str] = []
        for f in self.features:
            if f["kind"] == "numeric":
                names += [f["name"]] + ([f"{f['name']}__missing"] if f["missing"] else [])
            else:
                names += [f"{f['name']}={c}" for c in f["categories"]] + [f"{f['name']}=<unknown>"]
                names += [f"{f['name']}=<missing>"] if f["missing"] else []
        return names

    @property
    def numeric_positions(self) -> list[int]:
        """The feature-matrix columns that hold a standardised number with more than two values (not a
        missing flag, a one-hot slot or a true/false column): what a model's numeric embeddings take."""
        positions, j = [], 0
        for f in self.features:
            if f["kind"] == "numeric":
                if f.get("values") != "bool":
                    positions.append(j)
                j += 1 + f["missing"]
            else:
                j += len(f["categories"]) + 1 + f["missing"]
        return positions

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    # --------------------------------------------------------------------------------- transform
    def transform(self, data: pa.Table, rows: np.ndarray | None = None,
                  notes: list[str] | None = None) -> np.ndarray:
        """Encode features as a C-contiguous float32 matrix ``(n_rows, len(feature_names))``.

        Unknown categories go to the column's ``<unknown>`` slot, with a warning (counts per column)
        that is also appended to ``notes``. A column cut to its most frequent values (``others`` in its spec)
        sends its other values there by design, so it is not counted in that warning.

        Raises:
            TableError: Required columns are missing, or a numeric column contains junk.
        """
        # schema.names, not column_names (~15x slower: it is built anew on every call); columns by position
        pos = {name: i for i, name in enumerate(data.schema.names)}
        missing = [c for c in self.input_columns if c not in pos]
        if missing:
            raise TableError(f"the table lacks {len(missing)} column(s) the model needs: {missing}. "
                             f"Add them (cells may be empty, which are imputed).")
        n = data.num_rows if rows is None else len(rows)
        plan = self._plan()
        out = np.zeros((n, plan["width"]), dtype=np.float32)  # zeros: the one-hot blocks' background
        # Numeric columns a block at a time (one imputation and standardisation per block, not a handful of
        # numpy calls per column); blocks hold ~2 MiB, so a big table goes a column at a time, as before.
        names_num = plan["numeric"]
        per_block = max(1, (1 << 18) // max(n, 1))
        for b in range(0, len(names_num), per_block):
            part = slice(b, b + per_block)
            V = np.empty((n, len(names_num[part])), dtype=np.float64)
            for i, (source, date_part) in enumerate(plan["sources"][part]):
                col = data.column(pos[source])
                V[:, i] = (column_as_float64(col, source, rows) if date_part is None
                           else date_part_values(col, date_part, source, rows))
            self._numbers_into(out, V, part)
        unknown: list[str] = []
        for k, (f, _, value_set) in enumerate(plan["categorical"]):
            col = data.column(pos[f["name"]])
            s = as_strings(col.take(rows) if rows is not None else col)
            idx = pc.index_in(s, value_set=value_set)
            codes = np.asarray((pc.fill_null(idx, -1) if idx.null_count else idx).to_numpy(), dtype=np.int64)
            if s.null_count:
                codes[np.asarray(pc.is_null(s).to_numpy(zero_copy_only=False), dtype=bool)] = -2
            self._codes_into(out, k, codes, unknown)
        self._report_unknown(unknown, notes)
        return out

    def encode(self, numbers: np.ndarray, codes: Sequence[np.ndarray], notes: list[str] | None = None) -> np.ndarray:
        """The encoding `transform` does, from columns already turned into numbers (a server's requests).

        Args:
            numbers: float64 ``(n_rows, n_numeric)``, the numeric features in `features` order; NaN is
                missing. Overwritten (imputed and standardised in place).
            codes: One int64 array per categorical feature (in order): the index of the value in the
                feature's ``categories``, -1 for a value not seen in training, -2 for a missing one.
            notes: Where the unseen-categories note goes (as in `transform`, but without a warning).

        Returns:
            The float32 matrix ``(n_rows, len(feature_names))``, equal to what `transform` gives for the
            same values.
        """
        out = np.zeros((len(numbers), self._plan()["width"]), dtype=np.float32)
        self._numbers_into(out, numbers, slice(None))
        unknown: list[str] = []
        for k, c in enumerate(codes):
            self._codes_into(out, k, c, unknown)
        self._report_unknown(unknown, notes, warn=False)
        return out

    def category_codes(self, k: int, values: Sequence[Any]) -> np.ndarray:
        """The codes `encode` takes for the `k`-th categorical feature: text values (None for missing).

        Values are matched exactly, as `transform` matches the text of a table's cells.
        """
        index = self._plan()["index"][k]
        return np.fromiter(map(index.get, values, itertools.repeat(-1, len(values))), dtype=np.int64,
                           count=len(values))

    def _numbers_into(self, out: np.ndarray, V: np.ndarray, part: slice) -> None:
        """Impute (train median), standardise, and write the numeric features `part` and their flags.
        Works in place: `V` (float64) is overwritten."""
        plan = self._plan()
        miss = ~np.isfinite(V)
        np.copyto(V, np.broadcast_to(plan["median"][part], V.shape), where=miss)
        mean, std, huge = plan["mean"][part], plan["std"][part], plan["huge"][part]
        if huge.any():  # values near 1e308: x - mean overflows, x / std - mean / std does not
            V[:, huge] = V[:, huge] / std[huge] - mean[huge] / std[huge]
            mean, std = np.where(huge, 0.0, mean), np.where(huge, 1.0, std)  # the others as always (bit-exact)
        V -= mean
        V /= std
        try:
            with np.errstate(over="raise"):  # free unless a value overflows float32
                out[:, plan["at"][part]] = V
        except FloatingPointError:
            raise self._beyond_float32(V, part) from None
        flagged = plan["flagged"][part]
        if flagged.any():
            out[:, plan["flag_at"][part][flagged]] = miss[:, flagged]

    def _beyond_float32(self, V: np.ndarray, part: slice) -> TableError:
        """The error for standardised values beyond float32's range: a cell near 1e308 in a column whose
        training values were ordinary (training values themselves always fit)."""
        names = self._plan()["numeric"][part]
        too_big = np.abs(V) > np.finfo(np.float32).max
        column = int(np.argmax(too_big.any(0)))
        row = int(np.argmax(too_big[:, column]))
        return TableError(f"column {names[column]!r} has {int(too_big[:, column].sum())} value(s) too far outside "
                          f"the training range to use (first at row {row + 1}: standardised "
                          f"{V[row, column]:.3g}, beyond float32's 3.4e+38). Fix or blank out those cells (blank "
                          f"cells are imputed).")

    def _codes_into(self, out: np.ndarray, k: int, codes: np.ndarray, unknown: list[str]) -> None:
        """One-hot the `k`-th categorical feature from its codes (-1 unseen, -2 missing)."""
        f, j, _ = self._plan()["categorical"][k]
        n_cats = len(f["categories"])
        slot = np.where(codes >= 0, codes, n_cats)  # the unknown slot
        n_unknown = int(np.count_nonzero(codes < 0))
        if f["missing"]:
            isnull = codes == -2
            slot[isnull] = n_cats + 1
            n_unknown -= int(np.count_nonzero(isnull))
        if n_unknown and not f.get("others"):  # a cut column's <unknown> slot holds its other values by design
            unknown.append(f"{f['name']}: {n_unknown}")
        out[np.arange(len(codes)), j + slot] = 1.0

    @staticmethod
    def _report_unknown(unknown: list[str], notes: list[str] | None, warn: bool = True) -> None:
        if unknown:
            msg = "unseen (or missing) categories mapped to the <unknown> slot (rows per column): "
            msg += ", ".join(unknown)
            if warn:
                warn_user(msg)
            if notes is not None:
                notes.append(msg)

    def _plan(self) -> dict[str, Any]:
        """Where each feature goes in the output matrix, and the statistics as arrays: worked out on the
        first `transform` (the features do not change after fitting) instead of on every call."""
        if self._plan_cache is not None:
            return self._plan_cache
        num: list[dict[str, Any]] = []
        at: list[int] = []
        categorical: list[tuple[dict[str, Any], int, Any]] = []
        j = 0
        for f in self.features:
            if f["kind"] == "numeric":
                num.append(f)
                at.append(j)
                j += 1 + f["missing"]
            else:
                categorical.append((f, j, pa.array(f["categories"], pa.string())))
                j += len(f["categories"]) + 1 + f["missing"]
        plan = {"width": j, "numeric": [f["name"] for f in num], "categorical": categorical,
                "sources": [(f.get("source", f["name"]), f.get("part")) for f in num],
                "median": np.array([f["median"] for f in num], dtype=np.float64),
                "mean": np.array([f["mean"] for f in num], dtype=np.float64),
                "std": np.array([f["std"] for f in num], dtype=np.float64),
                "at": np.array(at, dtype=np.int64), "flag_at": np.array(at, dtype=np.int64) + 1,
                "flagged": np.array([bool(f["missing"]) for f in num], dtype=bool),
                "huge": np.array([max(abs(f["mean"]), f["std"]) > _HUGE for f in num], dtype=bool),
                "index": [{**{c: i for i, c in enumerate(f["categories"])}, None: -2} for f, _, _ in categorical]}
        self._plan_cache = plan
        return plan

    def encode_target(self, data: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """Target as float32 (regression) or int64 class indices (classification).

        Raises:
            TableError: Missing target values, or labels not seen when fitting.
        """
        col = data.column(self.target)
        if rows is not None:
            col = col.take(rows)
        if self.task == "regression":
            y64 = column_as_float64(col, self.target)
            _check_finite_target(self.target, y64, rows)
            with np.errstate(over="ignore"):
                y = y64.astype(np.float32)
            if not np.isfinite(y).all():
                big = float(np.abs(y64).max())
                raise TableError(f"target {self.target!r} has values too large for float32 (up to {big:.3g}; the "
                                 f"limit is 3.4e+38). Rescale the target (e.g. divide it by 1e30) before training.")
            return y
        assert self.classes is not None
        s = as_strings(col)
        idx = pc.index_in(s, value_set=pc.cast(pa.array(self.classes), pa.string()))
        if idx.null_count:
            bad = sorted({str(v) for v in pc.filter(s, pc.is_null(idx)).to_pylist()})
            raise TableError(f"target {self.target!r} has {idx.null_count} value(s) that are missing or not "
                             f"among the known classes {self.classes}: {bad[:10]}. Remove those rows.")
        return np.asarray(idx.to_numpy(), dtype=np.int64)

    def decode(self, indices: Any) -> list[Any]:
        """Map class indices (array/tensor/list) back to the original labels (int/bool/str kept)."""
        if self.classes is None:
            raise TableError("decode() is only for classification targets.")
        idx = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices, dtype=np.int64)
        return np.array(self.classes, dtype=object)[idx].tolist()

    # --------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (plain dicts/lists/str/float/int/bool)."""
        return {"version": self.VERSION, "target": self.target, "task": self.task, "id": self.id,
                "classes": self.classes, "features": [dict(f) for f in self.features], "notes": self.notes}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Preprocessor:
        """Inverse of `to_dict`."""
        if not isinstance(state, Mapping) or state.get("version") != cls.VERSION:
            version = state.get("version") if isinstance(state, Mapping) else None
            raise TableError(f"unsupported preprocessor state version {version!r}")
        try:
            return cls(state["target"], state["task"], [dict(f) for f in state["features"]],
                       state.get("classes"), state.get("id"), state.get("notes"))
        except (KeyError, TypeError, ValueError) as e:  # a hand-edited or truncated fitloop.json
            raise TableError(f"the saved preprocessor state is incomplete or damaged ({type(e).__name__}: {e}); "
                             f"retrain the run (fitloop train) to write it again.") from None

    def __repr__(self) -> str:
        return (f"Preprocessor(target={self.target!r}, task={self.task!r}, inputs={len(self.features)}, "
                f"features={len(self.feature_names)}, classes={self.num_classes})")


def _check_finite_target(target: str, y: np.ndarray, rows: np.ndarray | None) -> None:
    """Raise for missing or infinite target values, naming which (an infinite value is not a missing one)."""
    n_nan = int(np.isnan(y).sum())
    if n_nan:
        raise TableError(f"target {target!r} has {n_nan} missing value(s); drop those rows.")
    infinite = np.isinf(y)
    if infinite.any():
        at = int(np.argmax(infinite))
        row = int(rows[at]) if rows is not None else at
        raise TableError(f"target {target!r} has {int(infinite.sum())} infinite value(s) (first at data row "
                         f"{row + 1}: {y[at]:g}); a model cannot fit them. Fix those cells, or delete those rows.")


def _numeric_spec(name: str, col: Any, rows: np.ndarray | None = None) -> tuple[dict[str, Any] | None, str, int]:
    """A numeric (or bool) column's spec from the training rows (statistics, whether values are missing),
    or None and why it is dropped (all missing, or constant); and how many values are missing. `col` may be
    the training rows' values already, as float64 (a date's part)."""
    v = col if isinstance(col, np.ndarray) else column_as_float64(col, name, rows)
    ok = np.isfinite(v)
    n_missing = int(v.size - np.count_nonzero(ok))
    valid = v[ok] if n_missing else v
    if valid.size == 0:
        return None, "all values missing in the training rows", n_missing
    if valid.min() == valid.max():
        return None, f"constant ({valid[0]:g}) in the training rows", n_missing
    mean, std, median = _statistics(valid)
    return {"name": name, "kind": "numeric", "mean": mean, "std": std,
            "median": median, "missing": n_missing > 0}, "", n_missing


def _statistics(valid: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard deviation and median of finite values; values near 1e308 would overflow the sums
    (and the median's average of the middle two), so those are computed on the values divided by their
    largest magnitude (all stay finite: each is at most that magnitude)."""
    with np.errstate(over="ignore", invalid="ignore"):
        stats = float(valid.mean()), float(valid.std()), float(np.median(valid))
    if all(math.isfinite(x) for x in stats):
        return stats
    scale = float(np.abs(valid).max())
    scaled = valid / scale
    return float(scaled.mean()) * scale, float(scaled.std()) * scale, float(np.median(scaled)) * scale


def date_parts_of(data_type: Any) -> tuple[str, ...]:
    """The parts a date column of this Arrow type becomes: `DATE_PARTS`, and the hour of a timestamp."""
    return DATE_PARTS + (TIME_PARTS if pa.types.is_timestamp(data_type) else ())


def date_part_values(col: Any, part: str, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """One part of a date column as float64 (NaN where missing): ``days`` since 1970 (with the time of day as
    a fraction), ``year``, ``month``, ``weekday`` (0 = Monday), ``yearday`` (1-366) or ``hour``.

    The column may hold dates or timestamps, or text in ISO 8601 (``2024-01-05``, ``2024-01-05 10:30:00``:
    what a request's JSON sends, or a file whose column was not read as dates).

    Raises:
        TableError: text that is not a date, or a column of another type.
    """
    if rows is not None:
        col = col.take(rows)
    stamps = pc.cast(_as_timestamps(col, name), pa.timestamp("us"))
    if part == "days":
        values = pc.divide(pc.cast(pc.cast(stamps, pa.int64()), pa.float64()), 86_400e6)
    else:
        values = {"year": pc.year, "month": pc.month, "weekday": pc.day_of_week, "yearday": pc.day_of_year,
                  "hour": pc.hour}[part](stamps)
    filled = pc.fill_null(pc.cast(values, pa.float64()), math.nan)
    return np.asarray(filled.to_numpy() if hasattr(filled, "to_numpy") else filled, dtype=np.float64)


def _as_timestamps(col: Any, name: str) -> Any:
    """A date column as Arrow dates or timestamps; ISO text parsed (a timezone-aware one in UTC)."""
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type) or pa.types.is_null(col.type):
        return col
    if not is_text_type(col.type):
        raise TableError(f"column {name!r} was a date column in training; it holds {col.type} here. Send dates "
                         f"as text (2024-01-05 or 2024-01-05 10:30:00).")
    for stamp_type in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):  # local time, or with a zone (Z, +02:00)
        try:
            return pc.cast(col, stamp_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    bad = next((v for v in as_strings(col).to_pylist() if v is not None and not _is_iso_date(v)), None)
    raise TableError(f"column {name!r} was a date column in training; {bad!r} is not a date. Write dates as "
                     f"2024-01-05 or 2024-01-05 10:30:00 (or leave the cell empty).")


def _is_iso_date(text: str) -> bool:
    for stamp_type in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            pc.cast(pa.array([text]), stamp_type)
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return False


def _date_columns(name: str, col: Any, rows: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """A date column's parts over the training rows, as float64 columns (NaN where missing)."""
    if rows is not None:
        col = col.take(rows)
    return [(part, date_part_values(col, part, name)) for part in date_parts_of(col.type)]


def date_specs(name: str, parts: Sequence[tuple[str, dict[str, Any] | None, str, int]]
               ) -> tuple[list[dict[str, Any]], str, int]:
    """A date column's feature specs from its parts' numeric specs (`_numeric_spec` of each part, or a streamed
    summary's): the parts that vary in training, the missing-value indicator on the first only (all parts are
    missing together). None vary: no spec, and why (the days part's reason: all missing, or constant).

    Returns:
        ``(specs, why dropped, missing training values)``.
    """
    specs: list[dict[str, Any]] = []
    for part, spec, _, _ in parts:
        if spec is not None:
            spec.update(source=name, part=part, values="date", missing=bool(spec["missing"]) and not specs)
            specs.append(spec)
    days_why = parts[0][2] if parts else "no values"
    return specs, ("" if specs else days_why), (parts[0][3] if parts else 0)


def date_note(name: str, specs: Sequence[dict[str, Any]]) -> str:
    """The note of a date column turned into numbers."""
    return f"column {name!r}: a date, as numbers: " + ", ".join(DATE_MEANINGS[f["part"]] for f in specs)


def date_imputed(name: str, days: dict[str, Any], n_missing: int) -> str:
    """The imputation note's entry of a date column: how many are missing, the median date."""
    median = datetime.datetime(1970, 1, 1) + datetime.timedelta(days=days["median"])
    return f"{name}: {n_missing} (median date {median:%Y-%m-%d})"


ID_LIKE_SHARE = 0.5  # a text column with more distinct training values than this share of its rows is ID-like


def _categorical_spec(name: str, col: Any, rows: np.ndarray | None,
                      max_categories: int) -> tuple[dict[str, Any] | None, str]:
    """A text column's spec from its training rows, or `(None, why it is dropped)`: the decision of
    `categorical_spec_from_counts` on the column's exact value counts. A column with more than
    `max_categories` values whose cells are numbers in a format fitloop does not read raises."""
    s = as_strings(col.take(rows) if rows is not None else col)
    counted = pc.value_counts(s.drop_null() if s.null_count else s)
    values, counts = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
    if len(values) > max_categories:
        refuse_numbers_as_text(name, s)
    return categorical_spec_from_counts(name, values, counts, missing=s.null_count, max_categories=max_categories)


def categorical_spec_from_counts(name: str, values: Sequence[str], counts: Sequence[int], *, missing: int,
                                 max_categories: int, distinct: int | None = None,
                                 present: int | None = None) -> tuple[dict[str, Any] | None, str]:
    """A text column's spec from its training values and their counts, or `(None, why it is dropped)`.

    The rule (the in-memory and the streamed fit both decide here):

    * at most `max_categories` distinct values: each is a category (one-hot, sorted by value);
    * more, and ID-like: dropped. ID-like means more distinct values than half the column's non-missing
      training rows (most values are seen once or twice: an id, a name, free text), so no value is frequent
      enough to learn from;
    * more, and not ID-like: the `max_categories` most frequent values are the categories (ties broken by
      value, so the choice is deterministic); every other value, seen in training or not, shares the
      ``<unknown>`` slot. The spec records how many values share it (``others``);
    * a single value and no missing cell: dropped (constant).

    Args:
        name: The column.
        values: Its distinct non-missing values (in any order).
        counts: Each value's training rows (or a lower bound of them, from a streamed summary).
        missing: Its missing training cells.
        max_categories: The most categories kept.
        distinct: The number of distinct values, when `values` holds only some of them (a summary).
        present: The non-missing training rows, when `counts` do not add up to it (a summary).

    Returns:
        The spec (or None) and why: the drop reason, or for a column cut to its most frequent values, a
        sentence that says so ("" otherwise).
    """
    distinct = len(values) if distinct is None else distinct
    present = int(sum(counts)) if present is None else present
    if distinct + (missing > 0) <= 1:
        return None, f"constant ({values[0] if len(values) else None!r}) in the training rows"
    if distinct <= max_categories:
        return {"name": name, "kind": "categorical", "categories": sorted(values), "missing": missing > 0}, ""
    if distinct > ID_LIKE_SHARE * present:
        return None, (f"ID-like text: {distinct:,} distinct values in {present:,} non-missing training rows (more "
                      f"than half as many values as rows, so most are too rare to learn from)")
    top = sorted(zip(values, counts), key=lambda pair: (-pair[1], pair[0]))[:max_categories]
    covered = sum(count for _, count in top) / max(present, 1)
    spec = {"name": name, "kind": "categorical", "categories": sorted(value for value, _ in top),
            "missing": missing > 0, "others": distinct - max_categories}
    return spec, (f"kept the {max_categories} most frequent of {distinct:,} values ({covered:.0%} of the "
                  f"non-missing training rows; max_categories={max_categories}); the rest share one slot")


# Numbers in a format the reader does not parse ("1 234", "$3.50", "45%", "(12)"): never dropped as ID-like.
_NUMBERISH_RE = ("^\\s*[$€£¥]?\\s*[+\\-(]?[$€£¥]?(?:\\d{1,3}(?:[ .,'\u00a0\u202f]\\d{3})+|\\d+)(?:[.,]\\d+)?"
                 "\\s*[%)]?\\s*$")  # groups of 3: dates, phones stay text


def refuse_numbers_as_text(name: str, s: Any) -> None:
    """Raise instead of reading a high-cardinality text column whose cells are numbers in some format as text
    (its most frequent values as categories, or dropped as ID-like)."""
    n_valid = len(s) - s.null_count
    hits = pc.fill_null(pc.match_substring_regex(s, _NUMBERISH_RE), False)
    if n_valid and int(pc.sum(hits).as_py() or 0) >= 0.9 * n_valid:
        example = s[int(pc.index(hits, True).as_py())].as_py()
        raise TableError(f"column {name!r} holds numbers written in a format fitloop does not read (like "
                         f"{example!r}), so it would be read as text, not numbers; write them as plain numbers "
                         f"(1234.5), pass `--decimal ,` or `--decimal .` if that is the difference, or `--drop "
                         f"{name}`.")


@dataclass
class TableSplit:
    """Encoded rows: ``X`` float32 ``(n, d)``; ``y`` float32 or int64 (None if no target column)."""

    X: torch.Tensor
    y: torch.Tensor | None
    ids: list[Any] | None = None
    rows: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedTable:
    """Result of `Table.prepare`: the fitted preprocessor and one `TableSplit` per split name."""

    preprocessor: Preprocessor
    splits: dict[str, TableSplit]
    notes: list[str]

    def __getitem__(self, name: str) -> TableSplit:
        return self.splits[name]

    @property
    def train(self) -> TableSplit:
        return self.splits["train"]

    @property
    def val(self) -> TableSplit | None:
        return self.splits.get("val")

    @property
    def test(self) -> TableSplit | None:
        return self.splits.get("test")

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names


def transform_table(preprocessor: Preprocessor, table: str | Path | pa.Table | Table, *,
                    encoding: str = "utf-8", delimiter: str | None = None,
                    decimal: str | None = None) -> TableSplit:
    """Encode a new table (predict/evaluate time) with a fitted preprocessor.

    Args:
        preprocessor: Fitted (or `from_dict`-restored) preprocessor.
        table: Path, ``pyarrow.Table`` or `Table`.
        encoding: Text encoding when ``table`` is a path.
        delimiter: Field separator when ``table`` is a path (None: detected).
        decimal: Decimal mark of numbers written as text (None: detected).

    Returns:
        `TableSplit` with ``X``, ``y`` (None unless the target column is present and not all missing),
        ``ids`` (if the id column is present) and ``notes`` (ignored extra columns, unknown categories).

    Raises:
        TableError: Columns the model needs are missing, junk in numeric columns, unknown target labels.
    """
    if isinstance(table, (str, Path)):
        data = read_table(table, encoding=encoding, delimiter=delimiter, decimal=decimal)
    elif hasattr(table, "column_names"):  # a pyarrow.Table
        data = table
    else:  # a fitloop `Table` (not imported here: table.py imports this module)
        data = table.data
    notes: list[str] = []
    known = set(preprocessor.input_columns) | {preprocessor.target, preprocessor.id}
    names = data.schema.names  # (Table.column_names is rebuilt on every call)
    extra = [c for c in names if c not in known]
    if extra:
        notes.append(f"ignored {len(extra)} column(s) the model does not use: {extra}")
    X = torch.from_numpy(preprocessor.transform(data, None, notes))
    y = None
    if preprocessor.target in names:
        col = data.column(preprocessor.target)
        if col.null_count < len(col):
            y = torch.from_numpy(preprocessor.encode_target(data))
    ids = data.column(preprocessor.id).to_pylist() if preprocessor.id in names else None
    return TableSplit(X, y, ids, None, notes)
