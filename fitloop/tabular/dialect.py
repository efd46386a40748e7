"""CSV as people write it: the delimiter sniffed from a sample, numbers with decimal commas or thousands
separators, unnamed and duplicate header names.

`read_table` (`fitloop.tabular.reading`) calls these; they are the rules `fitloop train`, `predict`,
`evaluate` and `--dry-run` share:

- **Delimiter** (when none is given): each of ``,`` ``;`` tab ``|`` parses the first 16 KiB (and
  at least 50 lines) of the file (quotes respected); the one that splits every line into the same
  number (>= 2) of fields wins. When two do, `.tsv` files take the tab; otherwise it is ambiguous
  and the error says which ``--delimiter`` to pass.
- **Numbers** in text columns: ``3,75`` / ``1.234,5`` (decimal comma) and ``3,750`` / ``1,234.5``
  (thousands separator) are parsed when every value of the column reads one way only; a column whose
  values read both ways (``3,750``: 3.75 or 3750?) follows ``--decimal`` or the file's other columns,
  and otherwise stops with an error naming the column and the option.
- **Excel's ``sep=`` line**: a first line ``sep=;`` (which Excel writes and reads as "the delimiter is
  ``;``") sets the delimiter and is skipped; an explicit ``--delimiter`` still wins.
- **Header**: an empty name becomes ``(unnamed N)`` (N its 1-based position; the table treats it as a
  row id), and a name that appears twice stops with an error naming it and its positions.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import TableError

__all__ = ["ReadInfo", "CANDIDATE_DELIMITERS", "sniff_delimiter", "sniff_text", "sample", "excel_sep",
           "parse_number_columns", "check_header", "gzip_error", "UNNAMED_PREFIX"]

CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
SAMPLE_BYTES, SAMPLE_LINES, MAX_SAMPLE_BYTES = 1 << 14, 50, 1 << 22  # the sniffer's sample
UNNAMED_PREFIX = "(unnamed "
# One way of writing a number each (whitespace trimmed first). Plain integers match both.
_DECIMAL_COMMA_RE = r"^[+-]?(?:\d+|\d{1,3}(?:\.\d{3})+)(?:,\d+)?(?:[eE][+-]?\d+)?$"
_THOUSANDS_RE = r"^[+-]?(?:\d+|\d{1,3}(?:,\d{3})+)(?:\.\d+)?(?:[eE][+-]?\d+)?$"
_HEAD = 2000  # rows that decide whether a text column is worth a full look
_MOSTLY = 0.9  # share of cells in one number format above which the rest are reported as bad cells


def _name(d: str) -> str:
    return "tab" if d == "\t" else repr(d)


def _flag(d: str, flag: str = "--delimiter") -> str:
    if flag.startswith("?"):  # a query parameter
        return f"{flag}={'%09' if d == chr(9) else d}"
    return f"{flag} $'\\t'" if d == "\t" else f"{flag} '{d}'"


@dataclass
class ReadInfo:
    """How a file was read: filled in by `read_table(..., info=ReadInfo())`.

    Attributes:
        delimiter: The field separator used (None for Parquet).
        delimiter_detected: True when it was sniffed rather than given.
        decimal: ``","`` or ``"."`` when a text column was read as numbers with that decimal mark.
        notes: What was detected and converted, one line each (shown to the user).
    """

    delimiter: str | None = None
    delimiter_detected: bool = False
    decimal: str | None = None
    notes: list[str] = field(default_factory=list)


def sample(path: Path, encoding: str, compressed: bool | None = None) -> tuple[str, bool]:
    """The file's first `SAMPLE_BYTES` (more, up to `MAX_SAMPLE_BYTES`, until `SAMPLE_LINES` lines are in),
    as text, and whether that is the whole file.

    Args:
        path: The file.
        encoding: Its text encoding.
        compressed: Whether it is gzip-compressed (None: when its name ends in ``.gz``).

    Raises:
        TableError: the gzip stream is truncated or damaged (the message names the file).
    """
    if compressed is None:
        compressed = path.name.lower().endswith(".gz")
    opener: Any = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(SAMPLE_BYTES)
            while _count_lines(raw) < SAMPLE_LINES and len(raw) < MAX_SAMPLE_BYTES:  # wide rows: read on
                more = f.read(len(raw))
                if not more:
                    break
                raw += more
            complete = not f.read(1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise gzip_error(path, e) from e
    return raw.decode(encoding, errors="replace"), complete


def gzip_error(path: Path | str, error: BaseException) -> TableError:
    """The error for a gzip stream that ends early or fails its checks, worded for the user."""
    text = str(error)
    if isinstance(error, EOFError) or "runcated" in text or "ended before" in text:
        return TableError(f"{path}: the file is truncated: its gzip stream ends before the end marker (it was "
                          f"cut off while copying or downloading). Copy or download it again.")
    return TableError(f"{path}: the file is damaged: its gzip data fails the checks ({text}). Copy or download "
                      f"it again, or recompress the original (gzip -k data.csv).")


def _count_lines(raw: bytes) -> int:
    """Line breaks in `raw`: LF, or CR alone (old Mac and some Excel exports end lines with CR only)."""
    return max(raw.count(b"\n"), raw.count(b"\r"))


def _field_counts(text: str, delimiter: str, complete: bool) -> list[int]:
    # newline="": the csv module reads CR, LF and CRLF line ends (Excel and old Mac files mix them)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"')
    rows: list[list[str]] = []
    try:
        rows.extend(reader)
    except csv.Error:  # a field over the csv module's 128 KiB limit: sniff on the rows before it
        complete = False
    if not complete and rows:
        rows.pop()  # the sample cut the last record
    return [len(r) for r in rows if r and any(c.strip() for c in r)]


def excel_sep(text: str) -> str | None:
    """The delimiter named by an Excel ``sep=X`` first line of `text` (optionally quoted, after a byte-order
    mark), or None when it does not start with one."""
    first = re.split(r"\r\n|\r|\n", text.lstrip("\ufeff"), maxsplit=1)[0]
    m = re.fullmatch(r'"?sep=(.)"?\s*', first, flags=re.IGNORECASE)
    return m.group(1) if m else None


def sniff_delimiter(path: str | Path, *, encoding: str = "utf-8", default: str = ",") -> str:
    """The field separator of a delimited text file, from a sample of its first lines.

    Args:
        path: The CSV/TSV file (optionally gzipped).
        encoding: Its text encoding.
        default: What a file of one column (no candidate splits its lines) is read with.

    Returns:
        One of `CANDIDATE_DELIMITERS`.

    Raises:
        TableError: two candidates split every line consistently (the message names the flag to pass).
        LookupError: unknown encoding.
    """
    path = Path(path)
    text, complete = sample(path, encoding)
    return sniff_text(text, complete, str(path), default=default,
                      prefer_tab=path.name.lower().endswith((".tsv", ".tsv.gz")))


def sniff_text(text: str, complete: bool, source: str, *, default: str = ",", prefer_tab: bool = False,
               flag: str = "--delimiter") -> str:
    """`sniff_delimiter`'s rule on text already in memory (the first lines of a file, or a request body):
    `complete` says whether `text` is all of it; `flag` is how the error names the option to pass."""
    counts = {d: _field_counts(text, d, complete) for d in CANDIDATE_DELIMITERS}
    consistent = [d for d, c in counts.items() if c and c[0] >= 2 and all(n == c[0] for n in c)]
    if len(consistent) == 1:
        return consistent[0]
    if len(consistent) > 1:
        if "\t" in consistent and prefer_tab:
            return "\t"
        consistent.sort(key=lambda d: -counts[d][0])
        how = " and ".join(f"{_name(d)} ({counts[d][0]} fields)" for d in consistent)
        raise TableError(
            f"{source}: cannot tell the delimiter: {how} each split every line of the first lines into the "
            f"same number of fields. Pass the right one: `{_flag(consistent[0], flag)}`"
            + "".join(f" or `{_flag(d, flag)}`" for d in consistent[1:]) + ".")
    # No candidate is consistent (ragged rows): take the one whose header count most lines share, so the
    # reader's error points at the first bad line; a single column falls back to the default.
    best, best_score = default, 0
    for d, c in counts.items():
        if c and c[0] >= 2:
            share = sum(n == c[0] for n in c)
            if share > best_score:
                best, best_score = d, share
    return best


# ------------------------------------------------------------------------------------------ header


def check_header(names: list[str], source: str) -> list[str] | None:
    """New column names when the header has empty ones (``(unnamed N)``), else None.

    Raises:
        TableError: a name appears more than once (naming it and its 1-based positions).
    """
    seen: dict[str, list[int]] = {}
    for i, n in enumerate(names, 1):
        if n.strip():
            seen.setdefault(n, []).append(i)
    dup = {n: pos for n, pos in seen.items() if len(pos) > 1}
    if dup:
        what = "; ".join(f"{n!r} at columns {', '.join(map(str, pos))}" for n, pos in dup.items())
        raise TableError(f"{source}: the header has duplicate column names: {what} (1-based). Rename them "
                         f"so that each column has its own name.")
    if all(n.strip() for n in names):
        return None
    return [n if n.strip() else f"{UNNAMED_PREFIX}{i})" for i, n in enumerate(names, 1)]


# ------------------------------------------------------------------------------------------ numbers


def _looks_numeric(head: Any) -> bool:
    """Whether most of these cells are numbers in one of the two comma formats."""
    s = pc.utf8_trim_whitespace(head)
    s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
    n_valid = len(s) - s.null_count
    best = max(int(pc.sum(pc.match_substring_regex(s, r)).as_py() or 0) for r in (_DECIMAL_COMMA_RE, _THOUSANDS_RE))
    return n_valid == 0 or best >= _MOSTLY * n_valid  # no values up front: look at the whole column


def _example(col: Any, mask: Any) -> str:
    i = pc.index(mask, True).as_py()
    return str(col[i].as_py()) if i is not None and i >= 0 else ""


def parse_number_columns(table: Any, decimal: str | None, source: str, info: ReadInfo) -> Any:
    """Text columns that hold numbers with a decimal comma or thousands separators, as float64 columns.

    Args:
        table: The ``pyarrow.Table`` as read.
        decimal: ``","`` or ``"."`` (``--decimal``), or None to decide per column (and by the file's
            other columns when a column alone cannot tell).
        source: The file, for messages.
        info: Receives the notes and the decimal mark used.

    Returns:
        The table with those columns replaced.

    Raises:
        TableError: a column's numbers read two ways and nothing decides (names the column and
            ``--decimal``), a column that contradicts ``--decimal``, or a few bad cells among numbers.
    """
    if decimal not in (None, ",", "."):
        raise TableError(f"decimal: got {decimal!r}; pass ',' or '.' (`--decimal ,`).")
    found: dict[str, tuple[int, Any, bool, bool, str]] = {}
    for i, (name, col) in enumerate(zip(table.column_names, table.columns)):
        number = _number_column(name, col, decimal, source)
        if number is not None:
            found[name] = (i, *number)
    if not found:
        return table
    file_mark, why = _file_mark(found, decimal, info)
    for name, (i, s, can_dec, can_thou, example) in found.items():
        if decimal is not None and not (can_dec if decimal == "," else can_thou):
            other = "." if decimal == "," else ","
            example = example or _example(s, pc.is_valid(s))
            raise TableError(f"{source}: column {name!r} has numbers written like {example!r}, which do not "
                             f"read with --decimal '{decimal}'; pass `--decimal {other}`.")
        alone = can_dec != can_thou  # the column's own values tell
        mark = ("," if can_dec else ".") if alone else file_mark
        if mark is None:
            raise TableError(
                f"{source}: column {name!r} has numbers like {example!r}, which read as a decimal comma "
                f"({example.replace('.', '').replace(',', '.')}) or with a thousands separator "
                f"({example.replace(',', '')}). Say which: `--decimal ,` or `--decimal .`.")
        table = table.set_column(i, name, _as_numbers(s, mark))
        how = "a decimal comma" if mark == "," else "',' as the thousands separator"
        detected = "" if decimal else (" (detected; --decimal overrides)" if alone else
                                        f" (ambiguous alone: {why}; --decimal overrides)")
        info.notes.append(f"column {name!r}: numbers written with {how} (like {example!r}), read as numbers"
                          + detected)
        info.decimal = info.decimal or mark
    return table


def _number_column(name: str, col: Any, decimal: str | None, source: str) -> tuple[Any, bool, bool, str] | None:
    """A text column of numbers written with a comma: `(trimmed text, reads with a decimal comma, reads with
    a thousands separator, an example with a comma)`; None for any other column.

    Raises:
        TableError: the column holds such numbers but a few cells are not numbers.
    """
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_dictionary(col.type)):
        return None
    raw = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
    # a comma marks these numbers; with --decimal ',' also a dot (pyarrow left "1.234" as text)
    if not any(pc.any(pc.match_substring(raw, m)).as_py() for m in ("," if decimal != "," else ",.")):
        return None
    if not _looks_numeric(raw.slice(0, _HEAD)):  # text: decided on the first rows, cheaply
        return None
    s = pc.utf8_trim_whitespace(raw)
    s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
    n_valid = len(s) - s.null_count
    if n_valid == 0:
        return None
    dec = pc.fill_null(pc.match_substring_regex(s, _DECIMAL_COMMA_RE), False)
    thou = pc.fill_null(pc.match_substring_regex(s, _THOUSANDS_RE), False)
    n_dec, n_thou = int(pc.sum(dec).as_py() or 0), int(pc.sum(thou).as_py() or 0)
    if max(n_dec, n_thou) < _MOSTLY * n_valid:
        return None  # text
    if max(n_dec, n_thou) < n_valid:  # numbers with a few bad cells
        ok = dec if n_dec >= n_thou else thou
        bad = pc.and_(pc.is_valid(s), pc.invert(ok))
        n_bad = n_valid - max(n_dec, n_thou)
        row = int(pc.index(bad, True).as_py())
        raise TableError(f"{source}: column {name!r} holds numbers (like {_example(s, ok)!r}) but {n_bad} "
                         f"cell(s) are not; first at data row {row + 1} (line {row + 2} of the file): "
                         f"{s[row].as_py()!r}. Fix or blank out those cells, or `--drop {name}`.")
    return s, n_dec == n_valid, n_thou == n_valid, _example(s, pc.match_substring(s, ","))


def _file_mark(found: dict[str, tuple[int, Any, bool, bool, str]], decimal: str | None,
               info: ReadInfo) -> tuple[str | None, str]:
    """The decimal mark of a file's columns that read both ways alone, and why: `--decimal`, else the
    columns that read one way only, else a ','-delimited file's '.'; `(None, "")` when nothing decides."""
    only_dec = [n for n, f in found.items() if f[2] and not f[3]]
    only_thou = [n for n, f in found.items() if f[3] and not f[2]]
    if decimal is None and bool(only_dec) != bool(only_thou):
        return ("," if only_dec else "."), f"read like column {(only_dec or only_thou)[0]!r}"
    if decimal is None and not only_dec and info.delimiter == ",":
        # decimal-comma locales separate fields with ';' (a ',' file would have to quote every number)
        return ".", "a ','-delimited file writes decimals with '.'"
    return decimal, ""


def _as_numbers(s: Any, mark: str) -> Any:
    """Text numbers with decimal mark `mark` (the other of ',' and '.' separates thousands) as float64."""
    if mark == ",":
        text = pc.replace_substring(pc.replace_substring(s, ".", ""), ",", ".")
    else:
        text = pc.replace_substring(s, ",", "")
    return pc.cast(text, pa.float64())
