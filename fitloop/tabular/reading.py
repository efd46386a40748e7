"""Reading tables: CSV/TSV(.gz)/Parquet files into pyarrow, and Arrow columns as numbers or text.

`read_table` and `TableError` are the public part; the column helpers at the end are shared by
`fitloop.tabular.columns` (inference), `fitloop.tabular.preprocess` (encoding) and the integrations that
convert request and graph inputs the same way (`fitloop.integrations.serve_input`, `.graph`).
"""

from __future__ import annotations

import codecs
import gzip
import math
import re
import stat
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from . import dialect
from .dialect import ReadInfo, check_header, parse_number_columns
from .errors import TableError

__all__ = ["SUPPORTED_EXTENSIONS", "ReadInfo", "TableError", "read_table", "read_csv_bytes", "in_memory",
           "Content", "detect_content",
           "is_text_type", "as_strings", "numeric_mask", "column_as_float64", "non_numeric_error", "sorted_unique",
           "signless_zero"]

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet")
_NUMBER_RE = r"^\s*[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity))\s*$"


# --------------------------------------------------------------------------------------------- reading


def _extension(path: Path) -> str:
    name = path.name.lower()
    longest_first = sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True)
    return next((ext for ext in longest_first if name.endswith(ext)), "")


def read_table(path: str | Path, *, encoding: str = "utf-8", delimiter: str | None = None,
               decimal: str | None = None, info: ReadInfo | None = None) -> pa.Table:
    """Read a `.csv`, `.tsv`, `.csv.gz`, `.tsv.gz` or `.parquet` file with pyarrow.

    The dialect rules (delimiter sniffing, decimal commas and thousands separators, unnamed and
    duplicate header names) are `fitloop.tabular.dialect`'s.

    Args:
        path: File to read.
        encoding: Text encoding of CSV/TSV files (e.g. ``"latin-1"``).
        delimiter: Field separator; None sniffs ``,`` ``;`` tab ``|`` from the first lines.
        decimal: ``","`` or ``"."``: the decimal mark of numbers written as text; None detects it
            per column (an ambiguous column raises, naming ``--decimal``).
        info: When given, receives the delimiter used, whether it was detected, and notes.

    Returns:
        The file as a ``pyarrow.Table`` (column types inferred by pyarrow; numbers with a decimal comma
        or thousands separators parsed; empty header names as ``(unnamed N)``).

    The content, not the name, decides how the file is read (`detect_content`): gzip and Parquet by
    their first bytes, UTF-16/32 text by its byte-order mark or NUL pattern (when `encoding` is UTF-8).

    Raises:
        TableError: Missing/empty file, a directory, FIFO or device, unsupported extension, a file that is
            no table (binary data, an archive, JSON...), a truncated or damaged gzip stream, bad encoding,
            ragged rows, an ambiguous delimiter or decimal mark, or duplicate column names.
    """
    path = Path(path)
    ext = _check_file(path)
    content = detect_content(path, ext, encoding)
    if info is not None and content.note:
        info.notes.append(content.note)
    if content.format == "parquet":
        return _finish(_read_parquet(path), str(path), decimal, info)
    sep, sep_line = detect_delimiter(path, ext, content, delimiter, info)
    return _finish(_read_csv(path, content, sep, decimal, sep_line), str(path), decimal, info)


def _check_file(path: Path) -> str:
    """The extension of a file `read_table` can read; raises `TableError` for a missing, empty or other file."""
    if path.is_dir():
        raise _directory_error(path)
    if path.exists() and not path.is_file():
        raise TableError(f"{path}: is not a regular file but {_special_kind(path)}; fitloop reads a table from "
                         f"a regular file (it reads it more than once). Save the data to a file and pass that.")
    if not path.is_file():
        raise TableError(f"{path}: file not found (check the path; cwd is {Path.cwd()}).")
    ext = _extension(path)
    if not ext:
        raise TableError(
            f"{path}: unsupported file extension {''.join(path.suffixes) or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    if path.stat().st_size == 0:
        raise TableError(f"{path}: the file is empty; it needs a header row and at least one data row.")
    return ext


def _directory_error(path: Path) -> TableError:
    """A directory passed as the table: say so, and name the data files in it (if any)."""
    try:
        files = sorted(p.name for p in path.iterdir() if _extension(p) and p.is_file())
    except OSError:
        files = []
    if not files:
        return TableError(f"{path}: is a directory, not a file, and holds no data files "
                          f"({', '.join(SUPPORTED_EXTENSIONS)}). Pass the path of a table file.")
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    return TableError(f"{path}: is a directory, not a file. It holds {len(files)} data file(s): {shown}. "
                      f"Pass one of them, e.g. {path / files[0]}.")


def _special_kind(path: Path) -> str:
    """What a path that exists but is neither a file nor a directory is, in words."""
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device (like /dev/null)"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


# ------------------------------------------------------------------------------------- file content


@dataclass
class Content:
    """What a file holds, from its first bytes rather than its name (`detect_content`).

    Attributes:
        format: ``"text"`` (delimited text) or ``"parquet"``.
        compressed: True when the bytes are gzip-compressed.
        encoding: The text encoding to read it with (a byte-order mark or NUL pattern overrides UTF-8).
        note: What differs from the file's name or the given encoding, for the user (None: nothing).
    """

    format: str
    compressed: bool
    encoding: str
    note: str | None = None


# Formats that are not tables, by their first bytes: what they are, and what to do instead
_NOT_TABLES = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one)", "export the sheet as CSV, or unzip it"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls (or other Office) document", "save the sheet as CSV"),
    (b"\x7fELF", "an executable program (ELF)", "pass the data file"),
    (b"MZ", "a Windows executable", "pass the data file"),
    (b"\xcf\xfa\xed\xfe", "an executable program (Mach-O)", "pass the data file"),
    (b"BZh", "bzip2-compressed", "decompress it (bunzip2), or compress it with gzip as .csv.gz"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it (unxz), or compress it with gzip as .csv.gz"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it (unzstd), or compress it with gzip as .csv.gz"),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV"),
    (b"%PDF", "a PDF document", "export the table as CSV"),
)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_HEAD_BYTES = 4096
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\x0c")  # never in text (NUL among them)


def detect_content(path: Path, ext: str, encoding: str = "utf-8") -> Content:
    """What the file holds, from its first bytes: gzip and Parquet are recognised whatever the name,
    UTF-16/32 text from a byte-order mark or its NUL pattern, and files that are no table are refused.

    Args:
        path: The file (a regular, non-empty file).
        ext: Its extension (one of `SUPPORTED_EXTENSIONS`).
        encoding: The encoding asked for; UTF-8 (the default) gives way to what the bytes show.

    Raises:
        TableError: the file is not a table (binary data, an archive, an executable, JSON...), or its gzip
            stream is truncated or damaged; the message says what it is and what to do.
    """
    head = _read_head(path, compressed=False)
    compressed, note = ext.endswith(".gz"), None
    if head.startswith(b"\x1f\x8b"):
        if not compressed:
            note = f"{path.name} is gzip-compressed (its name says {ext}): read decompressed"
        compressed = True
        head = _read_head(path, compressed=True)
    elif compressed:
        note = f"{path.name} is not gzip-compressed although its name ends in .gz: read as plain text"
        compressed = False
    if head.startswith((b"PAR1", b"PARE")):  # PARE: an encrypted footer
        if ext != ".parquet":
            note = f"{path.name} is a Parquet file (its name says {ext}): read as Parquet"
        return Content("parquet", False, encoding, note)
    if ext == ".parquet":
        raise TableError(f"{path}: is not a Parquet file (it does not start with the Parquet marker PAR1; first "
                         f"bytes {head[:8]!r}). If it is delimited text, rename it to .csv.")
    for magic, what, fix in _NOT_TABLES:
        if head.startswith(magic):
            raise TableError(f"{path}: is {what}, not a table; {fix}. fitloop reads delimited text (.csv, .tsv), "
                             f"gzip-compressed text (.csv.gz, .tsv.gz) and Parquet (.parquet).")
    found = _text_encoding(head) if _is_utf8(encoding) else None
    if found is not None and not _is_utf8(found[0]):
        note = f"{path.name}: encoding {found[0]} ({found[1]}; --encoding overrides)"
        return Content("text", compressed, found[0], note)
    if _one_byte_ascii(encoding):  # UTF-16/32 given explicitly: NUL bytes are their text
        _check_text(path, head)
    return Content("text", compressed, encoding, note)


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False  # the reader names the unknown encoding


def _one_byte_ascii(encoding: str) -> bool:
    try:
        return len("a".encode(encoding)) == 1
    except LookupError:
        return False  # the reader names the unknown encoding


def _read_head(path: Path, compressed: bool) -> bytes:
    """The first bytes of the file (decompressed when `compressed`)."""
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise dialect.gzip_error(path, e) from e
    except OSError as e:
        raise TableError(f"{path}: cannot read the file ({e.strerror or e}).") from e


def _text_encoding(head: bytes) -> tuple[str, str] | None:
    """The encoding that the byte-order mark or the NUL pattern of ASCII text in UTF-16/32 shows, and how."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name, "from the byte-order mark"
    n = len(head) // 4 * 4
    if n < 8:
        return None
    zero = [head[k:n:4].count(0) / (n // 4) for k in range(4)]
    patterns = {"utf-32-le": (0, 1, 1, 1), "utf-32-be": (1, 1, 1, 0), "utf-16-le": (0, 1, 0, 1),
                "utf-16-be": (1, 0, 1, 0)}
    for name, pattern in patterns.items():
        if all((z > 0.9) if nul else (z < 0.1) for z, nul in zip(zero, pattern)):
            return name, "detected from the NUL bytes between the characters"
    return None


def _check_text(path: Path, head: bytes) -> None:
    """Refuse bytes that are no delimited text: NUL bytes, control characters, JSON."""
    if not head.strip(b"\x00"):
        raise TableError(f"{path}: holds only NUL (zero) bytes, no text: it may be a damaged copy, or a file not "
                         f"yet fully written. Write the table again.")
    if not head.strip() and len(head) < _HEAD_BYTES:  # the whole file, and nothing but whitespace
        raise TableError(f"{path}: holds only blank lines, no header row and no data rows.")
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if controls > 0.05 * len(head):
        raise TableError(f"{path}: is not a text file: its first bytes are binary data ({head[:12]!r}...). fitloop "
                         f"reads delimited text (.csv, .tsv), gzip-compressed text (.csv.gz, .tsv.gz) and Parquet "
                         f"(.parquet); check that this is the file you meant.")
    if b"\x00" in head:  # text with a few NUL bytes: a damaged copy, or a tool that pads with zeros
        line = head[:head.index(b"\x00")].count(b"\n") + 1
        raise TableError(f"{path}: its text holds NUL (zero) bytes, first on line {line}; a table has none. Remove "
                         f"them (e.g. `tr -d '\\000' < {path.name} > clean.csv`) or write the file again.")
    if re.match(rb'\s*(\{\s*"|\[\s*[\[{"\d-])', head.lstrip(codecs.BOM_UTF8)):
        raise TableError(f"{path}: looks like JSON, not a delimited table. fitloop reads CSV/TSV(.gz) and Parquet: "
                         f"convert it first, e.g. `pandas.read_json(path).to_csv('data.csv', index=False)` "
                         f"(JSON Lines: `lines=True`).")


def detect_delimiter(path: Path, ext: str, content: Content, delimiter: str | None,
               info: ReadInfo | None) -> tuple[str, bool]:
    """The field separator (`delimiter`, else Excel's `sep=` first line, else sniffed from the first lines),
    and whether the file starts with a `sep=` line (which is not the header); notes what was detected.
    `ext` is the file's extension (`.tsv...` prefers a tab); `read_table` and the streamed CSV cache
    (`fitloop.tabular.csv_cache`) both read a file's dialect through here."""
    sep = _check_delimiter(delimiter)
    detected = sep is None
    try:
        text, complete = dialect.sample(path, content.encoding, content.compressed)  # read once for both
        hint = dialect.excel_sep(text)
        if sep is None:
            sep = hint or dialect.sniff_text(text, complete, str(path), default="\t" if ext.startswith(".tsv") else ",",
                                             prefer_tab=ext.startswith(".tsv"))
    except LookupError as e:
        raise TableError(f"{path}: unknown encoding {content.encoding!r}: {e}") from e
    if info is not None:
        info.delimiter, info.delimiter_detected = sep, detected
        if detected:
            how = "from the file's first line `sep=`" if hint else "detected from the first lines"
            info.notes.append(f"delimiter {'tab' if sep == chr(9) else repr(sep)} ({how}; --delimiter overrides)")
    return sep, hint is not None


def _source(path: Path, content: Content) -> Any:
    """What pyarrow's CSV reader reads: the path, decompressed by content rather than by name."""
    return pa.input_stream(str(path), compression="gzip" if content.compressed else None)


def _read_csv(path: Path, content: Content, sep: str, decimal: str | None, sep_line: bool) -> pa.Table:
    """Delimited text as pyarrow reads it, every reader failure worded as a `TableError` about the file."""
    encoding = content.encoding
    read_opts, parse_opts, conv_opts = _csv_options(encoding, sep, decimal)
    if sep_line:
        read_opts.skip_rows = 1  # Excel's `sep=` line is not the header
    try:
        try:
            # Streaming keeps peak memory near the final table size, but infers types from the first
            # block only; if a later block disagrees, fall back to the whole-file reader (unifies types).
            reader = pcsv.open_csv(_source(path, content), read_options=read_opts, parse_options=parse_opts,
                                   convert_options=conv_opts)
            table = reader.read_all()
        except pa.ArrowInvalid as e:
            if "conversion error" not in str(e):
                raise
            table = pcsv.read_csv(_source(path, content), read_options=read_opts, parse_options=parse_opts,
                                  convert_options=conv_opts)
        names = table.column_names  # decodes the header: raises UnicodeDecodeError on bad bytes
    except UnicodeDecodeError as e:
        raise _encoding_error(path, content, "the header row") from e
    except LookupError as e:
        raise TableError(f"{path}: unknown encoding {encoding!r}: {e}") from e
    except pa.ArrowInvalid as e:
        msg = str(e)
        if "Empty CSV file" in msg:
            raise _no_rows_error(path, content) from e
        if "Expected" in msg and "columns" in msg:
            raise _ragged_error(path, content, sep, msg) from e
        raise TableError(f"{path}: cannot parse as delimited text ({msg}).") from e
    except (pa.ArrowException, OSError) as e:  # any other reader failure is about the file, never a fitloop bug
        if content.compressed and ("compressed" in str(e) or "zlib" in str(e) or "gzip" in str(e)):
            raise dialect.gzip_error(path, e) from e
        raise TableError(f"{path}: cannot read the file ({e}).") from e
    for name, col in zip(names, table.columns):
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            raise _encoding_error(path, content, f"column {name!r}")
    return table


def _no_rows_error(path: Path, content: Content) -> TableError:
    """Why a non-empty file gave pyarrow no row at all (its "Empty CSV file"): what the text holds instead."""
    text, _ = dialect.sample(path, content.encoding, content.compressed)
    if not text.strip():
        return TableError(f"{path}: holds only blank lines, no header row and no data rows.")
    first = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    if first.count('"') % 2:
        return TableError(f"{path}: line 1 (the header) opens a quote (\") that is never closed, so the rest of "
                          f"the file reads as one field. Close or remove that quote: {first[:80]!r}.")
    return TableError(f"{path}: holds a single line and no line break outside quotes ({text[:60]!r}); a table "
                      f"needs a header line and data lines below it.")


def _read_parquet(path: Path) -> pa.Table:
    """A Parquet file as a ``pyarrow.Table``; duplicate column names and reader failures as one-line errors."""
    try:
        parquet = pq.ParquetFile(path)
        check_header(list(parquet.schema_arrow.names), str(path))  # before reading: pyarrow cannot select them
        return parquet.read()
    except (pa.ArrowException, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TableError(f"{path}: cannot read the Parquet file ({first_line}). Check that the file is complete; "
                         f"write it again if it was cut off.") from e


def in_memory(data: Any) -> pa.Table | None:
    """`data` as a ``pyarrow.Table`` when it is a table in memory: a ``pyarrow.Table`` as it is, a
    ``pandas.DataFrame`` converted (its index left out); None for anything else (a path).

    pandas is not a dependency: a DataFrame can only come from a program that imported pandas already,
    so it is looked up in `sys.modules`, never imported here.
    """
    if isinstance(data, pa.Table):
        return data
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    return None


def _check_delimiter(delimiter: str | None) -> str | None:
    """`--delimiter` as one character (``\\t`` and ``tab`` spelled out mean a tab); None to sniff."""
    if delimiter is None:
        return None
    d = {"\\t": "\t", "tab": "\t", "\\s": " ", "space": " "}.get(delimiter, delimiter)
    if len(d) != 1 or d in "\"\r\n":
        raise TableError(f"delimiter: got {delimiter!r}; pass one character, e.g. `--delimiter ';'` (or "
                         f"`--delimiter tab`).")
    return d


def _finish(table: pa.Table, source: str, decimal: str | None, info: ReadInfo | None) -> pa.Table:
    """The dialect checks every file gets: header names, then numbers written as text."""
    names = check_header(list(table.column_names), source)
    if names is not None:
        table = table.rename_columns(names)
    return parse_number_columns(table, decimal, source, info if info is not None else ReadInfo())


def _csv_options(encoding: str, sep: str, decimal: str | None = None) -> tuple[Any, Any, Any]:
    """pyarrow's read, parse and convert options for delimited text: one place for files and request bodies."""
    read_opts = pcsv.ReadOptions(encoding=encoding, block_size=1 << 22)
    parse_opts = pcsv.ParseOptions(delimiter=sep)
    conv_opts = pcsv.ConvertOptions(strings_can_be_null=True,  # empty text cells are missing values
                                    decimal_point=decimal if decimal in (",", ".") else ".")
    return read_opts, parse_opts, conv_opts


def read_csv_bytes(data: bytes, *, delimiter: str | None = ",", decimal: str | None = None,
                   source: str = "the CSV body", delimiter_flag: str = "--delimiter") -> pa.Table:
    """Parse UTF-8 delimited text held in memory (an HTTP body) as `read_table` parses a file.

    Args:
        data: The text, header row first.
        delimiter: Field separator; None detects it from the first 16 KiB, as `read_table` does (an
            ambiguous text is an error naming `delimiter_flag`, the option that settles it).
        decimal: The decimal mark of numbers written as text, as in `read_table`.
        source: How error messages name the text.

    Returns:
        The rows as a ``pyarrow.Table`` (the same dialect checks as a file: header names, numbers
        written as text).

    Raises:
        TableError: Empty text, bytes that are not UTF-8, ragged rows or unparsable text.
    """
    if not data.strip():
        raise TableError(f"{source} is empty; it needs a header row and at least one data row.")
    if delimiter is None:
        head = data[:dialect.SAMPLE_BYTES]
        delimiter = dialect.sniff_text(head.decode("utf-8", errors="replace"), len(head) == len(data), source,
                               flag=delimiter_flag)
    read_opts, parse_opts, conv_opts = _csv_options("utf-8", delimiter, decimal)
    try:
        table = pcsv.read_csv(pa.BufferReader(data), read_options=read_opts, parse_options=parse_opts,
                              convert_options=conv_opts)
        names = table.column_names
    except UnicodeDecodeError as e:
        raise TableError(f"{source} is not valid UTF-8 ({e}); send UTF-8 text.") from e
    except pa.ArrowException as e:
        raise TableError(f"{source}: cannot parse as delimited text ({e}).") from e
    for name, col in zip(names, table.columns):
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            raise TableError(f"{source}: column {name!r} holds bytes that are not valid UTF-8; send UTF-8 text.")
    return _finish(table, source, decimal, None)


def _first_undecodable_line(path: Path, content: Content) -> int | None:
    """1-based line number of the first line that does not decode (error path only)."""
    decoder = codecs.getincrementaldecoder(content.encoding)()
    with (gzip.open if content.compressed else open)(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError:
                return number
    return None


def _encoding_error(path: Path, content: Content, where: str) -> TableError:
    encoding = content.encoding
    line = _first_undecodable_line(path, content)
    where += f" (first at line {line})" if line else ""
    return TableError(
        f"{path}: {where} contains bytes that are not valid {encoding}. If the file is in another "
        f"encoding, pass it explicitly: `--encoding latin-1` on the command line or `encoding=\"latin-1\"` "
        f"in Python (cp1252 is also common for Excel exports)."
    )


def _ragged_error(path: Path, content: Content, sep: str, msg: str) -> TableError:
    """Re-parse single-threaded to learn the line number of the first ragged row (error path only)."""
    bad: list[Any] = []

    def handler(row: Any) -> str:
        bad.append(row)
        return "error"

    # pyarrow decodes a bad row's text as UTF-8 before calling the handler, and prints a traceback when that
    # fails: UTF-8 is read as latin-1 here (every byte decodes), and the text decoded back below
    as_latin1 = _is_utf8(content.encoding)
    try:
        pcsv.read_csv(
            _source(path, content),
            read_options=pcsv.ReadOptions(encoding="latin-1" if as_latin1 else content.encoding, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=sep, invalid_row_handler=handler),
        )
    except Exception:  # noqa: BLE001 - we only want the recorded row
        pass
    if not bad:
        return TableError(f"{path}: rows have inconsistent column counts ({msg}).")
    row = bad[0]
    line = f"line {row.number}" if row.number is not None else "a row"
    text = row.text.encode("latin-1").decode("utf-8", errors="replace") if as_latin1 else row.text
    return TableError(
        f"{path}: {line} has {row.actual_columns} fields but the header has {row.expected_columns} "
        f"(row text: {text[:80]!r}). Fix that line: quote fields that contain {sep!r}, or pass the "
        f"right delimiter (`--delimiter` / `delimiter=`)."
    )


# ----------------------------------------------------------------------------------- column helpers


def is_text_type(t: pa.DataType) -> bool:
    """Whether an Arrow column of type `t` holds text (plain, large or dictionary-encoded strings)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def as_strings(col: Any) -> Any:
    """An Arrow column as a string column (cast unless it is one already)."""
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def non_numeric_error(name: str, col: Any, bad: Any, rows: np.ndarray | None) -> TableError:
    """The error for a numeric column with cells that are not numbers, naming the first one and its line.

    Args:
        name: The column's name.
        col: The column.
        bad: Boolean array, true where a cell is not a number.
        rows: The file's data rows `col` holds (None: all of them, in order), to name the right line.
    """
    i = int(pc.index(bad, True).as_py())
    value = col[i].as_py()
    row = int(rows[i]) if rows is not None else i
    n_bad = int(pc.sum(bad).as_py() or 0)
    return TableError(
        f"column {name!r} is numeric but has {n_bad} non-numeric value(s); first at data row {row + 1} "
        f"(line {row + 2} of the file, counting the header): {_shorten(value)}. Fix or blank out those cells "
        f"(empty cells are treated as missing and imputed), or `--drop {name}`."
    )


def _shorten(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to about `limit` characters (a cell can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def numeric_mask(col: Any) -> Any:
    """Boolean array: value looks like a number (null for missing)."""
    return pc.match_substring_regex(as_strings(col), _NUMBER_RE)


def column_as_float64(col: Any, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Column as float64 numpy (NaN = missing); numeric strings are parsed, junk raises TableError."""
    if rows is not None:
        col = col.take(rows)
    t = col.type
    if pa.types.is_float64(t) and not col.null_count:  # already numbers, no gaps: nothing to parse or fill
        out = col.to_numpy()
        return out if out.flags.writeable else np.array(out, dtype=np.float64, copy=True)
    if pa.types.is_null(t):
        return np.full(len(col), np.nan)
    if is_text_type(t):
        ok = numeric_mask(col)
        bad = pc.invert(pc.fill_null(ok, True))
        if pc.any(bad).as_py():
            raise non_numeric_error(name, col, bad, rows)
        col = pc.utf8_trim_whitespace(as_strings(col))
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise TableError(f"column {name!r} has type {t}, which cannot be used as a number; `--drop {name}`.")
    # integers beyond 2**53 (a uint64 id, 18446744073709551615) round to the nearest float, as numbers do
    out = pc.cast(col, pa.float64(), safe=not pa.types.is_integer(col.type))
    out = (pc.fill_null(out, math.nan) if out.null_count else out).to_numpy()
    return np.array(out, dtype=np.float64, copy=True) if not out.flags.writeable else out


def sorted_unique(col: Any) -> list[Any]:
    """The distinct values of an Arrow column, sorted, without missing values (null or NaN)."""
    return sorted(v for v in pc.unique(col).to_pylist() if v is not None and v == v)


def signless_zero(data: pa.Table, name: str) -> pa.Table:
    """`data` with -0.0 read as 0.0 in the float column `name` (other columns and types as they are).

    Arrow tells the two zeros apart by their bits, so a class target of 0.0 and -0.0 would be two classes;
    they are one number. Training and `evaluate` read a target through this one rule.
    """
    i = data.schema.get_field_index(name)
    column = data.column(i)
    if not pa.types.is_floating(column.type):
        return data
    return data.set_column(i, name, pc.add(column, pa.scalar(0.0, column.type)))  # -0.0 + 0.0 is 0.0
