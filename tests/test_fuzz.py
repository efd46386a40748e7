"""Fuzzing the command line (issue 19, part 5): malformed tables and option values, as a careless user gives them.

A seeded generator (no extra dependency) builds small broken tables and bad option values; each case runs
`fitloop train` (then `predict` and `evaluate` when it trained) in-process, and must:

- exit 0 or 2, never 1 (`internal error` is for fitloop's own bugs);
- print no traceback;
- leave the input file unchanged, byte for byte;
- write or delete nothing outside `--out` (the temporary folder is snapshotted before and after).

The corpus below keeps the cases of issue 19 as regression tests under the same rules. Everything runs on
tiny tables with `--epochs 1`, so the module takes well under a minute.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fitloop.cli import main

CASES = 40  # generated cases; each is one train (and predict/evaluate when it trained)
SEED = 19


# ------------------------------------------------------------------------------------------ checking


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> content hash); folders as entries too."""
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            state[rel] = "special"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def outside(state: dict[str, str], out: str) -> dict[str, str]:
    """The entries of a snapshot that are not `out` or under it."""
    return {k: v for k, v in state.items() if k != out and not k.startswith(out + "/")}


def run_checked(capsys, root: Path, argv: list[str], data: Path | None, out: str = "out") -> int:
    """Run `fitloop ARGV` in `root` and check the rules above; returns the exit code."""
    before = snapshot(root)
    data_bytes = data.read_bytes() if data is not None and data.is_file() else None
    code = main(argv)
    stdout, stderr = capsys.readouterr()
    shown = f"fitloop {' '.join(map(repr, argv))}\nexit {code}\n{stderr[-2000:]}"
    assert code in (0, 2), shown
    assert "Traceback" not in stdout + stderr, shown
    assert "internal error" not in stderr, shown
    if data_bytes is not None:
        assert data.read_bytes() == data_bytes, f"the input file changed: {shown}"
    assert outside(snapshot(root), out) == outside(before, out), f"files outside --out changed: {shown}"
    return code


def train_predict_evaluate(capsys, root: Path, data: Path, options: list[str], target: str = "y") -> None:
    """`train` with `options`, then `predict` and `evaluate` on the same file when it trained."""
    code = run_checked(capsys, root, ["train", str(data), "--target", target, "--out", "out", "--epochs", "1",
                                      *options], data)
    if code == 0:
        run_checked(capsys, root, ["predict", "out", str(data), "-o", "out/preds.csv", "--quiet"], data)
        run_checked(capsys, root, ["evaluate", "out", str(data), "--quiet"], data)


# ----------------------------------------------------------------------------------------- generating


def base_rows(rng: random.Random, n: int) -> list[list[str]]:
    """`n` rows of a number, a category and a 0/1 target, as text."""
    return [[f"{rng.uniform(-5, 5):.3f}", rng.choice(["red", "green", "blue"]), str(rng.randint(0, 1))]
            for _ in range(n)]


def as_text(header: list[str], rows: list[list[str]], sep: str = ",", newline: str = "\n") -> str:
    return newline.join(sep.join(r) for r in [header, *rows]) + newline


def _mutations() -> list[Callable[[random.Random, list[str], list[list[str]]], bytes]]:
    """Ways to break a table: each takes (rng, header, rows) and returns the file's bytes."""
    def delimiter(rng, h, r):
        return as_text(h, r, rng.choice([";", "\t", "|", " "])).encode()

    def line_endings(rng, h, r):
        text = as_text(h, r)
        return (text.replace("\n", "\r") if rng.random() < 0.5 else
                "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in text.splitlines())).encode()

    def ragged(rng, h, r):
        r[rng.randrange(len(r))].append("extra")
        return as_text(h, r).encode()

    def header_quote(rng, h, r):
        h[rng.randrange(len(h))] = '"' + h[0]
        return as_text(h, r).encode()

    def duplicate_header(rng, h, r):
        h[0] = h[1]
        return as_text(h, r).encode()

    def empty_header(rng, h, r):
        h[rng.randrange(len(h))] = ""
        return as_text(h, r).encode()

    def bad_cells(rng, h, r):
        for _ in range(rng.randint(1, 4)):
            r[rng.randrange(len(r))][rng.randrange(3)] = rng.choice(["", "nan", "inf", "-inf", "1e308", "abc",
                                                                      "  ", "1,5", "NULL", "-0.0"])
        return as_text(h, r).encode()

    def huge_values(rng, h, r):
        for row in r:
            row[0] = f"{rng.uniform(1, 1.7):.3f}e308"
        return as_text(h, r).encode()

    def constant_target(rng, h, r):
        value = rng.choice(["1", "0.0", "a"])
        for row in r:
            row[2] = value
        return as_text(h, r).encode()

    def numbers_with_commas(rng, h, r):
        for row in r:
            row[0] = f'"{rng.randint(1, 9)},{rng.randint(100, 999)}"'
        return as_text(h, r).encode()

    def encoding(rng, h, r):
        return as_text(h, r).encode(rng.choice(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1"]))

    def nul_bytes(rng, h, r):
        data = bytearray(as_text(h, r).encode())
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = 0
        return bytes(data)

    def truncated(rng, h, r):
        data = as_text(h, r).encode()
        return data[:rng.randrange(1, len(data))]

    def random_bytes(rng, h, r):
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 17, 300])))

    def header_only(rng, h, r):
        return as_text(h, []).encode()

    def gzipped(rng, h, r):  # gzip content in a file named .csv
        return gzip.compress(as_text(h, r).encode(), mtime=0)

    def long_field(rng, h, r):
        r[0][1] = "x" * (1 << 17)
        return as_text(h, r).encode()

    return [delimiter, line_endings, ragged, header_quote, duplicate_header, empty_header, bad_cells,
            huge_values, constant_target, numbers_with_commas, encoding, nul_bytes, truncated, random_bytes,
            header_only, gzipped, long_field]


# (flag, values): good and bad values of the options a user types
OPTIONS = [
    ("--split", ["0.5,0.5", "0.8,0.1,0.1", "1,0", "0.7,,0.3", "0.5,0.5,", "nan,0.5,0.5", "-1,2", "abc", ""]),
    ("--hidden", ["", "8", "8,4", "0", "-1", "8,,4", "abc", "4,"]),
    ("--seed", ["0", "-1", str(2**70), "7"]),
    ("--device", ["cpu", "auto", "foo", "meta", "mps", "cuda:9"]),
    ("--delimiter", ["", ";", ",", "tab", "ab"]),
    ("--decimal", [",", "."]),
    ("--batch-size", ["none", "0", "-3", "abc", "8"]),
    ("--dropout", ["0.1", "1.5", "-0.1"]),
    ("--max-categories", ["0", "1", "3"]),
    ("--early-stopping", ["-1", "0", "2"]),
    ("--task", ["classification", "regression"]),
    ("--encoding", ["latin-1", "nope", "utf-16"]),
    ("--activation", ["relu", "nope"]),
    ("--drop", ["a", "zz", "y"]),
    ("--id", ["a", "zz", "y"]),
]


def generated_case(index: int) -> tuple[bytes, str, list[str]]:
    """Case `index`: a table's bytes, its file name and a few options (seeded, so reruns are the same)."""
    rng = random.Random(SEED * 1000 + index)
    header, rows = ["a", "b", "y"], base_rows(rng, rng.choice([12, 30]))
    mutations = _mutations()
    mutate = mutations[index % len(mutations)]  # every mutation at least twice over the cases
    data = mutate(rng, header, rows)
    name = rng.choice(["data.csv", "data.csv", "data.tsv", "data.csv.gz" if mutate.__name__ != "gzipped" else
                       "data.csv"])
    if name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    options: list[str] = []
    for flag, values in rng.sample(OPTIONS, rng.randint(0, 2)):
        options += [flag, rng.choice(values)]
    if rng.random() < 0.5:
        options.append("--quiet")
    return data, name, options


@pytest.mark.parametrize("index", range(CASES))
def test_generated_case(capsys, tmp_path, monkeypatch, index):
    data, name, options = generated_case(index)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_bytes(data)
    train_predict_evaluate(capsys, tmp_path, path, options)


# --------------------------------------------------------------------------------------------- corpus


def good_table(n: int = 30, seed: int = 0) -> str:
    rng = random.Random(seed)
    return as_text(["a", "b", "y"], base_rows(rng, n))


def parquet_bytes(names: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table([pa.array([1.0, 2.0, 3.0, 4.0]) for _ in names], names=names), sink)
    return sink.getvalue()


# The cases of issue 19: name -> (file name, its bytes, options).
CORPUS: dict[str, tuple[str, bytes, list[str]]] = {
    "cr_only_line_endings": ("data.csv", good_table().replace("\n", "\r").encode(), []),
    "mixed_line_endings": ("data.csv", good_table().replace("\n", "\r", 5).encode(), []),
    "random_bytes_named_csv": ("data.csv", bytes(random.Random(1).randrange(256) for _ in range(400)), []),
    "executable_named_csv": ("data.csv", b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 4, []),
    "gzip_named_csv": ("data.csv", gzip.compress(good_table().encode(), mtime=0), []),
    "parquet_named_csv": ("data.csv", b"", []),  # filled in by the test (pyarrow)
    "truncated_csv_gz": ("data.csv.gz", gzip.compress(good_table().encode(), mtime=0)[:-30], []),
    "not_gzip_named_csv_gz": ("data.csv.gz", b"\xa2\x8d" + good_table().encode(), []),
    "bad_crc_csv_gz": ("data.csv.gz", gzip.compress(good_table().encode(), mtime=0)[:-8] + b"\0" * 8, []),
    "field_over_128_kib": ("data.csv", good_table().replace("red", "x" * (1 << 17), 1).encode(), []),
    "header_of_10000_columns": ("data.csv", (",".join(f"c{i}" for i in range(10_000)) + ",y\n"
                                             + ",".join("1" for _ in range(10_001)) + "\n").encode(), []),
    "values_near_1e308": ("data.csv", as_text(["a", "y"], [[f"{1 + i / 100:.2f}e308", str(i % 2)]
                                                           for i in range(30)]).encode(), []),
    "device_foo": ("data.csv", good_table().encode(), ["--device", "foo"]),
    "device_mps": ("data.csv", good_table().encode(), ["--device", "mps"]),
    "device_meta": ("data.csv", good_table().encode(), ["--device", "meta"]),
    "zero_and_minus_zero_target": ("data.csv", as_text(["a", "y"], [[str(i), "-0.0" if i % 2 else "0.0"]
                                                                    for i in range(30)]).encode(), []),
    "split_empty_item": ("data.csv", good_table().encode(), ["--split", "0.7,,0.3"]),
    "hidden_empty_item": ("data.csv", good_table().encode(), ["--hidden", "64,,32"]),
    "hidden_trailing_comma": ("data.csv", good_table().encode(), ["--hidden", "64,32,"]),
    "thousands_separators": ("data.csv", as_text(["a", "y"], [[f'"{i % 9 + 1},{100 + i}"', str(i % 2)]
                                                              for i in range(30)]).encode(), []),
    "delimiter_empty": ("data.csv", good_table().encode(), ["--delimiter", ""]),
    "seventeen_random_bytes": ("data.csv", bytes(random.Random(17).randrange(256) for _ in range(17)), []),
    "json_file": ("data.csv", b'{"a": [1, 2, 3], "y": [0, 1, 0]}\n', []),
    "quote_in_header": ("data.csv", ('"a,b,y\n' + good_table().split("\n", 1)[1]).encode(), []),
    "nul_bytes": ("data.csv", b"\0" * 64, []),
    "utf16_with_bom": ("data.csv", good_table().encode("utf-16"), []),
    "utf16_without_bom": ("data.csv", good_table().encode("utf-16-le"), []),
    "utf32_with_bom": ("data.csv", good_table().encode("utf-32"), []),
    "infinite_target": ("data.csv", as_text(["a", "y"], [[str(i), "inf" if i == 3 else str(i * 1.5)]
                                                         for i in range(30)]).encode(), []),
    "split_nan": ("data.csv", good_table().encode(), ["--split", "nan,0.5,0.5"]),
    "seed_2_to_the_70": ("data.csv", good_table().encode(), ["--seed", str(2**70)]),
    "parquet_duplicate_columns": ("data.parquet", b"", []),  # filled in by the test (pyarrow)
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus(capsys, tmp_path, monkeypatch, name):
    file_name, data, options = CORPUS[name]
    if name == "parquet_named_csv":
        data = parquet_bytes(["a", "y"])
    elif name == "parquet_duplicate_columns":
        data = parquet_bytes(["a", "a", "y"])
    monkeypatch.chdir(tmp_path)
    path = tmp_path / file_name
    path.write_bytes(data)
    train_predict_evaluate(capsys, tmp_path, path, [*options, "--quiet"])


# a FIFO only where the system has them (os.mkfifo: not on Windows)
@pytest.mark.parametrize("special", ["directory", *(["fifo"] if hasattr(os, "mkfifo") else []), "dev_null",
                                     "missing_under_proc"])
def test_corpus_data_that_is_not_a_file(capsys, tmp_path, monkeypatch, special):
    monkeypatch.chdir(tmp_path)
    if special == "directory":
        path = tmp_path / "folder.csv"
        path.mkdir()
        (path / "inside.csv").write_text(good_table())
    elif special == "fifo":
        path = tmp_path / "pipe.csv"
        os.mkfifo(path)
    else:
        path = Path("/dev/null") if special == "dev_null" else Path("/proc/nope")
    code = run_checked(capsys, tmp_path, ["train", str(path), "--target", "y", "--out", "out", "--quiet"], None)
    assert code == 2


def test_corpus_overwrite_keeps_the_users_files(capsys, tmp_path, monkeypatch):
    """Part 1: `--out .`, `--out ''` and a folder of the user's files are refused with --overwrite."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.csv"
    data.write_text(good_table())
    (tmp_path / "important.txt").write_text("keep me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("and me")
    for out in (".", "", "sub"):
        before = snapshot(tmp_path)
        code = main(["train", str(data), "--target", "y", "--out", out, "--overwrite", "--epochs", "1", "--quiet"])
        capsys.readouterr()
        assert code == 2 and snapshot(tmp_path) == before, out


def test_corpus_a_run_without_its_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.csv"
    data.write_text(good_table())
    assert run_checked(capsys, tmp_path, ["train", str(data), "--target", "y", "--out", "out", "--epochs", "1",
                                          "--quiet"], data) == 0
    for path in (tmp_path / "out" / "model").iterdir():
        path.unlink()
    for command in ("predict", "evaluate"):
        assert run_checked(capsys, tmp_path, [command, "out", str(data)], data) == 2
