"""Hostile and unusual input files through the CLI (issue 19, parts 2 and 4, the reader's side): each one is
read (exit 0) or refused with exit 2 and a message that names the file or column, says what is wrong, and
how to fix it; never an internal error (exit 1) or a raw library message.

Most cases use `fitloop train --dry-run` (it reads the file and takes every decision of the run, trains
nothing); the cases that fail only when training starts train one epoch.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import random
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fitloop.cli import main

ROWS = 40
TEXT = "a,b,y\n" + "".join(f"{i * 0.5},{i * 2 % 7},{i % 3}\n" for i in range(ROWS))


def _cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def at(tmp_path, monkeypatch):
    """Work in `tmp_path` (the dry run writes its config there), with a wide terminal for the tables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    return tmp_path


def _dry_run(capsys, path: Path, *flags: str, target: str = "y") -> tuple[int, str, str]:
    return _cli(capsys, "train", path, "--target", target, "--dry-run", "--config-out", path.parent / "plan.toml",
                "--overwrite", *flags)


def _train(capsys, path: Path, *flags: str) -> tuple[int, str, str]:
    return _cli(capsys, "train", path, "--target", "y", "--epochs", "1", "--quiet", "--out",
                path.parent / "run", "--overwrite", *flags)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _assert_refused(code: int, err: str, path: Path, *phrases: str) -> None:
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert str(path) in err
    for phrase in phrases:
        assert phrase in err, err


# ------------------------------------------------------------------------------- read as they are


MIXED = ("a,b,y\r\n" + "".join(f"{i * 0.5},{i * 2 % 7},{i % 3}" + ("\r", "\n", "\r\n")[i % 3] for i in range(ROWS)))
READABLE = {
    "cr_only.csv": TEXT.replace("\n", "\r").encode(),
    "mixed_line_ends.csv": MIXED.encode(),
    "gzip_named.csv": gzip.compress(TEXT.encode()),
    "plain_named.csv.gz": TEXT.encode(),
    "utf16_bom.csv": TEXT.encode("utf-16"),
    "utf16le_no_bom.csv": TEXT.encode("utf-16-le"),
    "utf16be_no_bom.csv": TEXT.encode("utf-16-be"),
    "utf32_bom.csv": TEXT.encode("utf-32"),
    "utf32le_no_bom.csv": TEXT.encode("utf-32-le"),
    "long_field.csv": ("a,b,c,y\n" + "".join(f"{i * 0.5},{i % 7},{'x' * 140_000 if i == 3 else 'p'},{i % 3}\n"
                                             for i in range(ROWS))).encode(),
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_unusual_but_valid_files_are_read(at, capsys, name):
    path = _write(at / name, READABLE[name])
    code, out, err = _dry_run(capsys, path)
    assert code == 0, err
    assert f"{ROWS} rows x {3 + (name == 'long_field.csv')} columns" in out


def test_the_content_not_the_name_decides_and_is_noted(at, capsys):
    code, out, _ = _dry_run(capsys, _write(at / "g.csv", gzip.compress(TEXT.encode())))
    assert code == 0 and "g.csv is gzip-compressed (its name says .csv): read decompressed" in out
    code, out, _ = _dry_run(capsys, _write(at / "u.csv", TEXT.encode("utf-16")))
    assert code == 0 and "u.csv: encoding utf-16 (from the byte-order mark; --encoding overrides)" in out
    code, out, _ = _dry_run(capsys, _write(at / "u2.csv", TEXT.encode("utf-16-le")))
    assert code == 0 and "encoding utf-16-le (detected from the NUL bytes between the characters" in out


def test_a_parquet_file_named_csv_is_read_as_parquet(at, capsys):
    table = pa.table({"a": [i * 0.5 for i in range(ROWS)], "b": [i % 7 for i in range(ROWS)],
                      "y": [i % 3 for i in range(ROWS)]})
    code, out, err = _dry_run(capsys, _write(at / "p.csv", _parquet_bytes(table)))
    assert code == 0, err
    assert f"{ROWS} rows x 3 columns" in out and "p.csv is a Parquet file (its name says .csv)" in out


def test_a_header_of_10000_columns_is_read(at, capsys):
    """A 200 KiB header line: the delimiter sniffer's csv module stopped at its 128 KiB field limit."""
    header = ",".join([f"feature_column_{i:05d}" for i in range(10_000)] + ["y"])
    rows = "".join(",".join([str((i + k) % 3) for k in range(10_000)] + [str(i % 2)]) + "\n" for i in range(8))
    path = _write(at / "wide.csv", f"{header}\n{rows}".encode())
    code, out, err = _dry_run(capsys, path, "--split", "0.5,0.5", "--quiet")
    assert code == 0, err


def test_integers_beyond_2_to_the_53_are_numbers(at, capsys):
    big = 18446744073709551615  # uint64's largest: pyarrow's cast to float64 refused it ("not in range")
    table = pa.table({"id_like": pa.array([big - i * 7 for i in range(ROWS)], pa.uint64()),
                      "b": [i % 7 for i in range(ROWS)], "y": [i % 3 for i in range(ROWS)]})
    path = _write(at / "u.parquet", _parquet_bytes(table))
    code, _, err = _dry_run(capsys, path)
    assert code == 0, err
    code, _, err = _dry_run(capsys, path, target="id_like")
    assert code == 0, err


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow warning is an internal error (exit 1) here
@pytest.mark.parametrize("values", ["mixed signs", "all large"])
def test_values_near_1e308_train(at, capsys, values):
    """The scaling used to overflow (mean, std and median of values near 1.7e308) and the ridge start
    failed in linalg.svd."""
    def value(i: int) -> float:
        return (1.7e308 if i % 2 else -1.6e308) if values == "mixed signs" else 1.0e308 + (i % 7) * 1e307

    rows = "".join(f"{value(i)},{i % 7},{i % 3 * 1.5}\n" for i in range(ROWS))
    code, _, err = _train(capsys, _write(at / "huge.csv", f"a,b,y\n{rows}".encode()))
    assert code == 0, err


# ------------------------------------------------------------------------------------ refused, clearly


REFUSED = {
    "random.csv": (random.Random(1).randbytes(4000), ["is not a text file"]),
    "random17.csv": (random.Random(2).randbytes(17), ["is not a text file"]),
    "program.csv": (b"\x7fELF\x02\x01\x01" + bytes(200), ["is an executable program (ELF), not a table"]),
    "book.csv": (b"PK\x03\x04" + bytes(100), ["ZIP archive", "export the sheet as CSV"]),
    "zeros.csv": (bytes(64), ["holds only NUL (zero) bytes, no text"]),
    "nul_inside.csv": (TEXT.encode() + b"1,2,\x003\n", ["its text holds NUL (zero) bytes, first on line 42"]),
    "data.csv": (json.dumps({"a": [1, 2], "y": [3, 4]}).encode(), ["looks like JSON", "pandas.read_json"]),
    "lines.csv": (b'{"a": 1, "y": 2}\n{"a": 3, "y": 4}\n', ["looks like JSON", "lines=True"]),
    "quote.csv": (b'"a,b,y\n1,2,3\n4,5,6\n', ["line 1 (the header) opens a quote", "never closed"]),
    "blank.csv": (b"\n\n  \n", ["holds only blank lines"]),
    "truncated.csv.gz": (gzip.compress(TEXT.encode())[:-30], ["the file is truncated", "download it again"]),
    "not_parquet.parquet": (TEXT.encode(), ["is not a Parquet file", "rename it to .csv"]),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_files_that_are_no_table_say_what_they_are(at, capsys, name):
    data, phrases = REFUSED[name]
    path = _write(at / name, data)
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, *phrases)
    assert "the file is empty" not in err


def test_a_damaged_gzip_says_so(at, capsys):
    damaged = bytearray(gzip.compress(TEXT.encode()))
    damaged[-6] ^= 0xFF  # the CRC
    path = _write(at / "crc.csv.gz", bytes(damaged))
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "the file is damaged: its gzip data fails the checks")


def test_a_large_truncated_gzip_says_so(at, capsys):
    """Cut after the sniffer's sample: pyarrow's reader, not Python's gzip, meets the end."""
    rng = random.Random(0)
    text = "a,b,y\n" + "".join(f"{rng.random()},{rng.random()},{i % 3}\n" for i in range(20_000))
    packed = gzip.compress(text.encode())
    path = _write(at / "cut.csv.gz", packed[: len(packed) * 3 // 4])
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "the file is truncated")


def test_parquet_with_duplicate_names_is_one_line_like_csv(at, capsys):
    table = pa.Table.from_arrays([pa.array(range(ROWS)), pa.array(range(ROWS)), pa.array([i % 3 for i in range(ROWS)])],
                                 names=["a", "a", "y"])
    path = _write(at / "dup.parquet", _parquet_bytes(table))
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "the header has duplicate column names: 'a' at columns 1, 2")
    assert len(err.strip().splitlines()) == 1


def test_a_directory_says_so_and_lists_its_data_files(at, capsys):
    folder = at / "tables"
    folder.mkdir()
    (folder / "train.csv").write_text(TEXT)
    (folder / "notes.txt").write_text("x")
    code, _, err = _dry_run(capsys, folder)
    _assert_refused(code, err, folder, "is a directory, not a file", "1 data file(s): train.csv")
    empty = at / "empty_folder"
    empty.mkdir()
    code, _, err = _dry_run(capsys, empty)
    _assert_refused(code, err, empty, "is a directory, not a file, and holds no data files")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_and_a_device_are_not_regular_files(at, capsys):
    fifo = at / "pipe.csv"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    code, _, err = _dry_run(capsys, fifo)
    _assert_refused(code, err, fifo, "is not a regular file but a FIFO (named pipe)")
    if os.path.exists("/dev/null"):
        code, _, err = _dry_run(capsys, Path("/dev/null"))
        _assert_refused(code, err, Path("/dev/null"), "is not a regular file but a character device")


def test_a_cell_of_megabytes_is_shortened_in_the_message(at, capsys):
    rows = "".join(f"{'x' * 200_000 if i == 3 else i},{i % 7},{i % 3}\n" for i in range(ROWS))
    path = _write(at / "junk.csv", f"a,b,y\n{rows}".encode())
    code, _, err = _dry_run(capsys, path)
    assert code == 2 and "column 'a' is numeric but has 1 non-numeric value(s)" in err
    assert "(200000 characters)" in err and len(err) < 1000


# ---------------------------------------------------------------------------- the real problem, named


def test_an_infinite_target_is_not_called_missing(at, capsys):
    rows = "".join(f"{i * 0.5},{i % 7},{'inf' if i == 5 else i * 0.25}\n" for i in range(ROWS))
    path = _write(at / "inf.csv", f"a,b,y\n{rows}".encode())
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "target 'y' has 1 infinite value(s), first at data row 6 (line 7 of the file)")
    assert "missing" not in err


def test_evaluate_names_an_infinite_target(at, capsys):
    rows = "".join(f"{i * 0.5},{i % 7},{i * 0.25}\n" for i in range(ROWS))
    data = _write(at / "ok.csv", f"a,b,y\n{rows}".encode())
    assert _train(capsys, data)[0] == 0
    bad = _write(at / "bad.csv", f"a,b,y\n{rows}1,2,-inf\n".encode())
    code, _, err = _cli(capsys, "evaluate", at / "run", bad)
    assert code == 2 and "target 'y' has 1 infinite value(s) (first at data row 41: -inf)" in err, err


def test_a_target_beyond_float32_says_so(at, capsys):
    rows = "".join(f"{i * 0.5},{i % 7},{(1.7e308 if i % 2 else -1.6e308) if i < 20 else i * 0.5}\n"
                   for i in range(ROWS))
    code, _, err = _train(capsys, _write(at / "bigy.csv", f"a,b,y\n{rows}".encode()))
    assert code == 2 and "target 'y' has values too large for float32" in err, err


def test_no_feature_columns_gives_the_reason_not_the_delimiter(at, capsys):
    path = _write(at / "const.csv", ("x,y\n" + "".join(f"1,{i % 3}\n" for i in range(ROWS))).encode())
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "no usable feature columns are left ('x': constant (1) in the training rows)")
    assert "delimiter" not in err
    path = _write(at / "alone.csv", ("y\n" + "".join(f"{i % 3}\n" for i in range(ROWS))).encode())
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "the table has only the target column 'y'", "--delimiter")


def test_bom_detection_leaves_an_explicit_encoding_alone(at, capsys):
    path = _write(at / "le.csv", codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"))
    code, out, err = _dry_run(capsys, path, "--encoding", "utf-16")
    assert code == 0, err
    assert "encoding utf-16" not in out  # nothing detected: the given encoding was used


def test_a_ragged_row_with_bytes_that_are_not_utf8_prints_no_traceback(at, capsys):
    """pyarrow decodes the bad row's text itself and printed "Exception ignored ... UnicodeDecodeError"."""
    path = _write(at / "rag.csv", b"a,b,y\n1,2,3\n4,5,6\n7,\xe98,9,10\n" + b"1,2,3\n" * 30)
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "line 4 has 4 fields but the header has 3")
    assert "Exception ignored" not in err and len(err.strip().splitlines()) == 1


def test_predict_and_evaluate_read_by_content_too(at, capsys):
    data = _write(at / "ok.csv", TEXT.encode())
    assert _train(capsys, data)[0] == 0
    for name, content in [("g.csv", gzip.compress(TEXT.encode())), ("u.csv", TEXT.encode("utf-16")),
                          ("cr.csv", TEXT.replace("\n", "\r").encode())]:
        path = _write(at / name, content)
        code, _, err = _cli(capsys, "predict", at / "run", path, "--out", at / f"pred_{name}")
        assert code == 0, err
        assert len((at / f"pred_{name}").read_text().strip().splitlines()) == ROWS + 1
        code, _, err = _cli(capsys, "evaluate", at / "run", path)
        assert code == 0, err
    code, _, err = _cli(capsys, "predict", at / "run", _write(at / "z.csv", bytes(50)), "--out", at / "p.csv")
    _assert_refused(code, err, at / "z.csv", "holds only NUL (zero) bytes")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_predict_names_a_column_with_values_near_1e308(at, capsys):
    """Ordinary training values, then 1.7e308 at predict time: standardised, it overflowed float32 (a
    RuntimeWarning and an inf input)."""
    data = _write(at / "ok.csv", TEXT.encode())
    assert _train(capsys, data)[0] == 0
    rows = "".join(f"{i * 0.5},{-1.7e308 if i == 4 else i * 2 % 7},{i % 3}\n" for i in range(ROWS))
    path = _write(at / "new.csv", f"a,b,y\n{rows}".encode())
    code, _, err = _cli(capsys, "predict", at / "run", path, "--out", at / "p.csv")
    assert code == 2, err
    assert "column 'b' has 1 value(s) too far outside the training range" in err and "Warning" not in err


def test_a_single_line_without_a_line_break_is_not_called_empty(at, capsys):
    path = _write(at / "one_line.csv", b"a,b,y")
    code, _, err = _dry_run(capsys, path)
    _assert_refused(code, err, path, "holds a single line and no line break outside quotes ('a,b,y')")
