"""Request bodies for `fitloop serve`, checked and turned into what `fitloop predict` makes of a file.

    numbers, codes, info = records_table(loads(body), preprocessor, max_rows=10_000)  # for pre.encode
    table, info = csv_table(body, preprocessor, max_rows=10_000)                      # for predict_file

JSON records become the inputs of `Preprocessor.encode` (numbers and category codes: the values a file's
cells become inside `Preprocessor.transform`, which then calls the same encoding); CSV text becomes the
``pyarrow.Table`` `fitloop predict` reads from a file, with only the columns the model uses (plus the
run's id column). Both come with an `InputInfo` (the ignored columns, the ids). Every problem raises
`RequestError`, which carries the HTTP status, a short machine-readable `kind` and a message naming the
column and the row (its `row` field is 0-based: the position in the JSON list, or the data row of the
CSV text, whose messages count data rows from 1 and name the line, as `fitloop predict` does for a
file). The checks run over whole columns at C speed (itemgetter, zip, set of types, one numpy
conversion); the slow search for the first bad cell runs only when a check has already failed.

JSON types: a numeric column takes numbers and refuses ``true``/``false`` (almost always a column mix-up
upstream); a column that was true/false in training takes ``true``/``false`` (and 1/0), the 1/0 the model
was trained on; a text column takes strings (and integers, as their digits). A bundle from before the
fitted features recorded their "values" takes both in a numeric column, as it always did.

Missing values: JSON ``null`` (or an empty CSV cell, or a CSV ``NaN``/``NA``) is missing and is imputed
exactly as `fitloop predict` imputes an empty cell. ``NaN`` and ``Infinity`` JSON literals, and infinite
numbers in a CSV, are refused: they are almost always an upstream bug, and silently imputing them would
hide it.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# numpy, pyarrow and fitloop.data are imported in the functions that use them: `fitloop --help` imports
# this module (through fitloop.integrations.serve, for the serve flags' defaults) and must stay fast.

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

    from ..tabular.preprocess import Preprocessor

__all__ = ["RequestError", "InputInfo", "NonFinite", "loads", "records_table", "csv_table", "json_kind",
           "is_bool_feature"]

_NUMBER_TYPES: set[type] = {int, float, type(None)}  # JSON true/false is refused in a numeric column
_BOOL_TYPES: set[type] = {bool, type(None)}  # a column that was true/false in training (1/0 to the model)
# A fitted numeric feature's "values" (numbers, or true/false read as 1/0) -> the JSON types it takes. A bundle
# from before fitloop recorded it has no "values": it takes both, as it always did.
_JSON_TYPES: dict[str | None, set[type]] = {"number": _NUMBER_TYPES, "bool": _BOOL_TYPES, None: _NUMBER_TYPES | {bool}}
_TEXT_TYPES = {str, type(None)}


class NonFinite(float):
    """A ``NaN``/``Infinity`` JSON literal, kept apart from numbers so the checks refuse it by name."""

    def __repr__(self) -> str:
        return self.literal

    literal = "NaN"


def loads(body: bytes) -> Any:
    """The JSON body decoded; ``NaN``, ``Infinity`` and ``-Infinity`` literals become `NonFinite` values.

    Raises:
        RequestError: the body is not UTF-8 JSON (400).
    """
    def constant(literal: str) -> NonFinite:
        v = NonFinite(literal.replace("Infinity", "inf"))
        v.literal = literal
        return v

    try:
        return json.loads(body, parse_constant=constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, "malformed_json", f"the body is not valid JSON: {e}.") from None
    except RecursionError:
        raise RequestError(400, "malformed_json", "the body's JSON nests too deeply to read; send a list of "
                           "row objects (or {column: [values]}).") from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts (4300 digits)
        raise RequestError(400, "malformed_json", f"the body's JSON holds a value that cannot be read: {e}.") from None


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, error `kind`, a message, and where (column, row)."""

    def __init__(self, status: int, kind: str, message: str, *, column: str | None = None,
                 row: int | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.column, self.row = status, kind, message, column, row

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": kind, "detail": message[, "column": ..., "row": ...]}``."""
        out: dict[str, Any] = {"error": self.kind, "detail": self.message}
        if self.column is not None:
            out["column"] = self.column
        if self.row is not None:
            out["row"] = self.row
        return out


@dataclass
class InputInfo:
    """What the request held besides the model's columns."""

    rows: int
    ignored: list[str] = field(default_factory=list)  # columns the model does not use, in request order
    ids: list[Any] | None = None  # the run's id column, when the request has it


def json_kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _show(value: Any) -> str:
    text = json.dumps(value) if type(value) is bool else repr(value)  # JSON's true/false, as the client sent
    return text if len(text) <= 40 else text[:37] + "..."


def _check_rows(n: int, max_rows: int, what: str) -> None:
    if n == 0:
        raise RequestError(422, "empty_batch", f"{what} has no rows; send at least one.")
    if n > max_rows:
        raise RequestError(413, "too_many_rows", f"{what} has {n} rows, more than this server's limit of "
                                                 f"{max_rows} (--max-rows); split it into smaller batches.")


# ------------------------------------------------------------------------------------------ JSON records


def records_table(records: Any, pre: Preprocessor, *,
                  max_rows: int) -> tuple[np.ndarray, list[np.ndarray], InputInfo]:
    """Check decoded JSON records (a list of ``{column: value}``) and turn them into the inputs of
    `Preprocessor.encode`, the encoding `transform` applies to a file's table.

    Args:
        records: The decoded JSON body.
        pre: The run's fitted preprocessor (it says which columns are needed and of which kind).
        max_rows: The most rows one request may hold.

    Returns:
        ``(numbers, codes, info)``: the numeric features as float64 ``(rows, columns)`` (missing = NaN,
        imputed by the encoding), one category-code array per categorical feature, and `InputInfo`
        with the ignored columns and the ids.

    Raises:
        RequestError: wrong top-level shape, empty or too large a batch, a missing column, a value of
            the wrong type, or NaN/Infinity.
    """
    import numpy as np

    if not isinstance(records, list):
        raise RequestError(422, "bad_shape", f"the body is a JSON {json_kind(records)}; send a JSON list of "
                                             f"records, one object per row: [{{\"column\": value, ...}}, ...].")
    _check_rows(len(records), max_rows, "the request")
    if set(map(type, records)) != {dict}:
        i = next(i for i, r in enumerate(records) if type(r) is not dict)
        raise RequestError(422, "bad_shape", f"row {i} is a JSON {json_kind(records[i])}, not an object; "
                                             f"each row must be an object {{\"column\": value, ...}}.", row=i)
    needed = pre.input_columns
    first = records[0].keys()
    # The common case, checked at C speed: every row has the same number of keys as the first, which holds
    # exactly the needed ones (the itemgetter below proves each row has them all), so nothing is ignored.
    seen: dict[str, None] = dict.fromkeys(first)
    if len(first) != len(needed) or set(map(len, records)) != {len(first)}:
        for r in records:
            seen.update(dict.fromkeys(r))
    absent = [c for c in needed if c not in seen]
    if absent:
        raise RequestError(422, "missing_column", f"missing required column(s) {absent}: the model needs "
                                                  f"{needed}. Send null for a missing value (it is imputed).",
                           column=absent[0])
    try:  # one C-level pass: the rows as tuples of the needed values, then transposed into columns
        picked = list(map(operator.itemgetter(*needed), records))
    except KeyError:
        c, i = next((c, i) for c in needed for i, r in enumerate(records) if c not in r)
        raise RequestError(422, "missing_column", f"row {i} lacks required column {c!r}; send null for a "
                                                  f"missing value (it is imputed).", column=c, row=i) from None
    by_column = dict(zip(needed, list(zip(*picked)) if len(needed) > 1 else [tuple(picked)]))
    features = [(f, by_column[f.get("source", f["name"])]) for f in pre.features]  # a date: several features
    numeric = [(f, values) for f, values in features if f["kind"] == "numeric" and "source" not in f]
    block = _number_block(numeric) if numeric else np.empty((0, len(records)))
    if not len(block) and numeric:  # a bad cell somewhere: check each column alone, for the message
        block = np.array([_numbers(values, f["name"], f.get("values")) for f, values in numeric])
    if len(numeric) < sum(f["kind"] == "numeric" for f in pre.features):
        block = _with_dates(block, [(f, values) for f, values in features if f["kind"] == "numeric"])
    text = [(f["name"], values) for f, values in features if f["kind"] != "numeric"]
    codes = [pre.category_codes(k, _texts(values, name)) for k, (name, values) in enumerate(text)]
    used = set(needed)
    ids = None
    if pre.id is not None and pre.id in seen:
        used.add(pre.id)
        ids = [r.get(pre.id) for r in records]
    ignored = [c for c in seen if c not in used]
    return block.T, codes, InputInfo(len(records), ignored, ids)


def _with_dates(block: Any, numeric: list[tuple[dict[str, Any], tuple[Any, ...]]]) -> Any:
    """The numeric block with the date columns' parts in their places (`numeric`: every numeric feature, in
    order, with its column's JSON values; `block`: the plain numbers among them, already converted)."""
    import numpy as np

    out = np.empty((len(numeric), len(numeric[0][1])), dtype=np.float64)
    plain = [i for i, (f, _) in enumerate(numeric) if "source" not in f]
    out[plain] = block
    for i, (f, values) in enumerate(numeric):
        if "source" in f:
            out[i] = _date_part(values, f["source"], f["part"])
    return out


def _date_part(values: Sequence[Any], name: str, part: str) -> Any:
    """One part of a date column's JSON values (ISO 8601 text, ``"2024-01-05"``, or null), as float64."""
    import pyarrow as pa

    from ..tabular.errors import TableError
    from ..tabular.preprocess import date_part_values

    if not set(map(type, values)) <= _TEXT_TYPES:
        i = _first(values, lambda v: type(v) not in _TEXT_TYPES)
        raise RequestError(422, "wrong_type", f"column {name!r}, row {i}: expected a date as text (2024-01-05 or "
                                              f"2024-01-05 10:30:00) or null, got a {json_kind(values[i])} "
                                              f"{_show(values[i])}.", column=name, row=i)
    try:
        return date_part_values(pa.array(values, pa.string()), part, name)
    except TableError as e:
        raise RequestError(422, "wrong_type", str(e), column=name) from None


def _first(values: Sequence[Any], bad: Any) -> int:
    return next(i for i, v in enumerate(values) if bad(v))


def is_bool_feature(feature: dict[str, Any]) -> bool:
    """Whether a fitted numeric feature was a true/false column in training (encoded as 1/0)."""
    return feature.get("values") == "bool"


def _number_block(numeric: list[tuple[dict[str, Any], tuple[Any, ...]]]) -> Any:
    """All numeric columns (the true/false ones among them) checked and converted at once, as a
    ``(columns, rows)`` float64 array (null is NaN); an empty list when any cell is not of its column's
    type or not finite (then each column is checked alone, for the message). NaN never comes as a float
    here (`loads` turns the literal into a `NonFinite`), so an infinite value is the only non-finite number
    left to look for."""
    import numpy as np

    for kind, allowed in _JSON_TYPES.items():
        group = [values for f, values in numeric if f.get("values") == kind]
        if not set(map(type, itertools.chain.from_iterable(group))) <= allowed:
            return []
    columns = [values for _, values in numeric]
    try:
        block = np.array(columns, dtype=np.float64)
    except OverflowError:
        return []
    return [] if np.isinf(block).any() else block


def _numbers(values: Sequence[Any], name: str, kind: str | None) -> Any:
    """float64 numpy of a numeric column's JSON values (numbers; true/false in a column that was true/false
    in training, as 1/0); null is NaN (missing)."""
    import numpy as np

    types = set(map(type, values))
    if NonFinite in types:
        _refuse_non_finite(values, name)
    if kind == "bool":
        _check_booleans(values, name)
    elif not types <= _JSON_TYPES[kind]:
        i = _first(values, lambda v: type(v) not in _JSON_TYPES[kind])
        why = "; the column held numbers in training (see GET /schema)" if type(values[i]) is bool else ""
        raise RequestError(422, "wrong_type", f"column {name!r}, row {i}: expected a number (or null for a "
                                              f"missing value), got a {json_kind(values[i])} "
                                              f"{_show(values[i])}{why}.", column=name, row=i)
    try:
        a = np.array(values, dtype=np.float64)  # None -> NaN
    except OverflowError:  # an integer beyond float64's range
        i = _first(values, lambda v: type(v) is int and abs(v) > 1e308)
        raise RequestError(422, "non_finite", f"column {name!r}, row {i}: the number {_show(values[i])} is "
                                              f"out of range.", column=name, row=i) from None
    if np.isinf(a).any():  # 1e999 parses as a float infinity
        _refuse_non_finite(values, name)
    return a


def _check_booleans(values: Sequence[Any], name: str) -> None:
    """A true/false column's values: JSON true/false or null (missing); 1 and 0 are taken as a file's are."""
    i = next((i for i, v in enumerate(values) if not (type(v) in _BOOL_TYPES or (type(v) is int and v in (0, 1)))),
             None)
    if i is not None:
        raise RequestError(422, "wrong_type", f"column {name!r}, row {i}: expected true or false (or null for a "
                                              f"missing value), got a {json_kind(values[i])} {_show(values[i])}.",
                           column=name, row=i)


def _refuse_non_finite(values: Sequence[Any], name: str) -> None:
    i = _first(values, lambda v: isinstance(v, float) and not math.isfinite(v))
    v = values[i]
    shown = v.literal if type(v) is NonFinite else ("Infinity" if v > 0 else "-Infinity")
    raise RequestError(422, "non_finite", f"column {name!r}, row {i}: {shown} is not allowed; send a finite "
                                          f"number, or null for a missing value (it is imputed).",
                       column=name, row=i)


def _texts(values: Sequence[Any], name: str) -> Sequence[Any]:
    """A categorical column's JSON values, checked: text or None (integers become their digits)."""
    types = set(map(type, values))
    if NonFinite in types:
        _refuse_non_finite(values, name)
    if not types <= _TEXT_TYPES:
        if types <= _TEXT_TYPES | {int}:  # a category spelt as digits ("3") may arrive as the number 3
            values = [str(v) if type(v) is int else v for v in values]
        else:
            i = _first(values, lambda v: type(v) not in _TEXT_TYPES | {int})
            raise RequestError(422, "wrong_type", f"column {name!r}, row {i}: expected text (one of the "
                                                  f"categories seen in training; see GET /schema) or null, "
                                                  f"got a {json_kind(values[i])} {_show(values[i])}.",
                               column=name, row=i)
    return values


# --------------------------------------------------------------------------------------------- CSV text


def _check_dates(col: Any, name: str) -> None:
    """A CSV body's date column: dates, or text that reads as dates (else a 422 naming the column)."""
    from ..tabular.errors import TableError
    from ..tabular.preprocess import date_part_values

    try:
        date_part_values(col, "days", name)
    except TableError as e:
        raise RequestError(422, "wrong_type", str(e), column=name) from None


def csv_table(body: bytes, pre: Preprocessor, *, max_rows: int, decimal: str | None = None,
              delimiter: str | None = None) -> tuple[pa.Table, InputInfo]:
    """Parse a CSV body as `fitloop predict` parses a file, check it, keep the model's columns.

    Args:
        body: UTF-8 CSV text, header row first.
        pre: The run's fitted preprocessor.
        max_rows: The most rows one request may hold.
        decimal: The decimal mark of numbers written as text (the run's ``--decimal``; None detects it).
        delimiter: The field separator (``?delimiter=``, else the run's ``--delimiter``); None detects it as
            `fitloop predict` does for a file.

    Returns:
        ``(table, info)``: the model's columns and the id column (when present), as read.

    Raises:
        RequestError: unparsable text, empty or too large a batch, a missing column, text in a numeric
            column, or an infinite number.
    """
    import numpy as np
    import pyarrow.compute as pc

    from ..tabular.errors import TableError
    from ..tabular.reading import column_as_float64, numeric_mask, read_csv_bytes

    try:
        data = read_csv_bytes(body, decimal=decimal, delimiter=delimiter, delimiter_flag="?delimiter")
    except TableError as e:
        raise RequestError(400, "bad_csv", str(e)) from None
    _check_rows(data.num_rows, max_rows, "the CSV body")
    names = data.column_names
    needed = pre.input_columns
    absent = [c for c in needed if c not in names]
    if absent:
        raise RequestError(422, "missing_column", f"missing required column(s) {absent}: the model needs "
                                                  f"{needed}. Empty cells are allowed (they are imputed).",
                           column=absent[0])
    for f in pre.features:
        if f.get("part") == "days":  # a date column: its text must read as dates, as transform() reads them
            _check_dates(data.column(f["source"]), f["source"])
        if f["kind"] != "numeric" or "source" in f:
            continue
        name = f["name"]
        col = data.column(name)
        try:
            v = column_as_float64(col, name)  # the conversion transform() does, so the same cells fail
        except TableError as e:  # its message names the column and the 1-based data row
            bad = pc.invert(pc.fill_null(numeric_mask(col), True))
            raise RequestError(422, "wrong_type", str(e), column=name, row=int(pc.index(bad, True).as_py())) from None
        inf = np.isinf(v)
        if inf.any():
            i = int(np.argmax(inf))
            raise RequestError(422, "non_finite", f"column {name!r} has {v[i]} at data row {i + 1} (line {i + 2}, "
                                                  f"counting the header), which is not allowed; send a finite "
                                                  f"number, or an empty cell for a missing value.",
                               column=name, row=i)
    keep = [pre.id, *needed] if pre.id is not None and pre.id in names else list(needed)
    ignored = [c for c in names if c not in keep]
    return data.select(keep), InputInfo(data.num_rows, ignored)
