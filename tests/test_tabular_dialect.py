"""CSV as people write it (delimiters, decimal commas, thousands separators, unnamed and duplicate
header names), the task rule, tables too small for their split, and user errors exiting 2."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from helpers import exactly
from tablefiles import write

from fitloop.cli import main
from fitloop.tabular import Table, TableError, read_table
from fitloop.tabular.columns import infer_task
from fitloop.tabular.reading import ReadInfo


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(n: int, seed: int = 0) -> list[tuple[float, float, str]]:
    r = np.random.default_rng(seed)
    return [(round(float(a), 2), round(float(b), 2), "abc"[i % 3]) for i, (a, b) in
            enumerate(r.normal(size=(n, 2)) * 100)]


# ----------------------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_delimiter_is_detected_and_reported(tmp_path, sep):
    text = sep.join(["x", "z", "label"]) + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in rows(30))
    info = ReadInfo()
    t = read_table(write(tmp_path / "d.csv", text), info=info)
    assert t.column_names == ["x", "z", "label"] and t.num_rows == 30
    assert t.column("x").type == pa.float64() and t.column("x")[0].as_py() == rows(30)[0][0]
    assert (info.delimiter, info.delimiter_detected) == (sep, True)
    name = "tab" if sep == "\t" else repr(sep)
    assert info.notes == [f"delimiter {name} (detected from the first lines; --delimiter overrides)"]
    info = ReadInfo()  # given explicitly: used, and nothing to report
    read_table(tmp_path / "d.csv", delimiter="tab" if sep == "\t" else sep, info=info)
    assert (info.delimiter, info.delimiter_detected, info.notes) == (sep, False, [])


@pytest.mark.parametrize("first", ["sep=;", '"sep=;"', "\ufeffsep=;"])
def test_excel_sep_line_sets_the_delimiter_and_is_not_the_header(tmp_path, capsys, first):
    body = "x;z;label\n" + "".join(";".join(str(v).replace(".", ",") for v in r) + "\n" for r in rows(30))
    f = tmp_path / "excel.csv"
    f.write_text(first + "\r\n" + body, encoding="utf-8")
    info = ReadInfo()
    t = read_table(f, info=info)
    assert t.column_names == ["x", "z", "label"] and t.num_rows == 30
    assert t.column("x").to_pylist()[:2] == [rows(30)[0][0], rows(30)[1][0]]  # decimal commas as well
    assert info.notes[0] == "delimiter ';' (from the file's first line `sep=`; --delimiter overrides)"
    # an explicit --delimiter wins, and the sep= line is still skipped
    t = read_table(f, delimiter=";", info=ReadInfo())
    assert t.column_names == ["x", "z", "label"] and t.num_rows == 30
    code, out, err = run_cli(capsys, "train", f, "--target", "label", "--epochs", "1", "--out", tmp_path / "r")
    assert code == 0, err
    assert "first line `sep=`" in out


def test_predict_and_evaluate_read_with_the_training_delimiter(tmp_path, capsys):
    """A file only `--delimiter ';'` reads (`,` splits every line too): the run remembers the flag."""
    lines = ["x;z;kind,code"] + [f"{a};{b};{'p,q' if i % 2 else 'r,s'}" for i, (a, b, _) in enumerate(rows(40))]
    f = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    with pytest.raises(TableError, match="cannot tell the delimiter"):
        read_table(f)
    code, _, err = run_cli(capsys, "train", f, "--target", "kind,code", "--delimiter", ";", "--epochs", "1",
                           "--out", tmp_path / "r")
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", tmp_path / "r", f)
    assert code == 0, err
    assert out.splitlines()[0] == '"prediction"' and len(out.splitlines()) == 41
    assert set(out.splitlines()[1:]) <= {'"p,q"', '"r,s"'}
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "r", f)
    assert code == 0, err
    code, _, err = run_cli(capsys, "predict", tmp_path / "r", f, "--delimiter", ",")  # the flag still wins
    assert code == 2 and "internal error" not in err


def test_ambiguous_delimiter_says_which_flag_to_pass(tmp_path, capsys):
    f = write(tmp_path / "d.csv", "a,b;c\n1,2;3\n4,5;6\n")
    with pytest.raises(TableError, match=r"cannot tell the delimiter: ',' \(2 fields\) and ';' \(2 fields\).*"
                                         r"Pass the right one: `--delimiter ','` or `--delimiter ';'`"):
        read_table(f)
    code, _, err = run_cli(capsys, "train", f, "--target", "a")
    assert code == 2 and "--delimiter ';'" in err and "internal error" not in err


def test_semicolon_file_with_decimal_commas_trains(tmp_path, capsys):
    """The issue's case: `;` delimiter and `3,75` numbers; read as numbers, not dropped as text."""
    r = np.random.default_rng(1)
    x = r.normal(size=120)
    lines = ["species;mass;price"] + [f"{'ab'[i % 2]};{v:.2f};{3 * v + 1:.3f}".replace(".", ",")
                                      for i, v in enumerate(x)]
    f = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    tab = Table.read(f, target="price")
    assert tab.kinds == {"species": "categorical", "mass": "numeric", "price": "numeric"}
    assert tab.data.column("mass").to_pylist()[:2] == [round(x[0], 2), round(x[1], 2)]
    assert tab.task == "regression" and tab.read_info is not None and tab.read_info.decimal == ","
    assert tab.notes[:2] == ["delimiter ';' (detected from the first lines; --delimiter overrides)",
                             f"column 'mass': numbers written with a decimal comma (like "
                             f"{lines[1].split(';')[1]!r}), read as numbers (detected; --decimal overrides)"]
    code, out, err = run_cli(capsys, "train", f, "--target", "price", "--epochs", "2", "--out", tmp_path / "r")
    assert code == 0, err
    assert "numbers written with a decimal comma" in out and "dropped column 'mass'" not in out


def test_thousands_separators(tmp_path):
    f = write(tmp_path / "d.csv", 'n,amount,y\n1,"3,750",0\n2,"1,234,567.5",1\n3,"12",0\n')
    t = read_table(f)
    assert t.column("amount").to_pylist() == [3750.0, 1234567.5, 12.0]
    # "3,750" alone could be 3.75: a ','-delimited file settles it
    info = ReadInfo()
    t = read_table(write(tmp_path / "c.csv", 'n,amount\n1,"3,750"\n2,"12"\n'), info=info)
    assert t.column("amount").to_pylist() == [3750.0, 12.0]
    assert info.notes[1] == ("column 'amount': numbers written with ',' as the thousands separator (like '3,750'), "
                             "read as numbers (ambiguous alone: a ','-delimited file writes decimals with '.'; "
                             "--decimal overrides)")
    # European: dots for thousands, a comma for decimals
    f = write(tmp_path / "e.csv", "n;amount\n1;1.234,5\n2;7,25\n")
    assert read_table(f).column("amount").to_pylist() == [1234.5, 7.25]


def test_ambiguous_numbers_stop_naming_the_column_and_the_option(tmp_path, capsys):
    f = write(tmp_path / "d.csv", "k;amount;y\n" + "".join(f"{i};{i % 9 + 1},{i:03d};{i % 2}\n" for i in range(40)))
    msg = (f"{f}: column 'amount' has numbers like '1,000', which read as a decimal comma (1.000) or with a "
           f"thousands separator (1000). Say which: `--decimal ,` or `--decimal .`.")
    with pytest.raises(TableError, match=exactly(msg)):
        read_table(f)
    assert read_table(f, decimal=",").column("amount")[1].as_py() == 2.001
    assert read_table(f, decimal=".").column("amount")[1].as_py() == 2001.0
    code, _, err = run_cli(capsys, "train", f, "--target", "y", "--epochs", "1", "--out", tmp_path / "r")
    assert code == 2 and err == f"fitloop: error: {msg}\n"
    code, out, err = run_cli(capsys, "train", f, "--target", "y", "--decimal", ",", "--epochs", "1",
                             "--out", tmp_path / "r")
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "r", f)  # the run's --decimal is the default
    assert code == 0, err
    # a column whose values settle it decides the file's other columns
    f = write(tmp_path / "e.csv", "a;b;y\n" + "".join(f"{i},{i % 9 + 1};{i},5;{i % 2}\n" for i in range(1, 40)))
    t = read_table(f)
    assert t.column("a")[0].as_py() == 1.2 and t.column("b")[0].as_py() == 1.5


def test_numbers_are_never_silently_dropped(tmp_path):
    # many distinct values (over max_categories) in a number format: parsed, or an error; never "ID-like"
    f = write(tmp_path / "d.csv", "x;y\n" + "".join(f"{i},{i % 7};{i % 2}\n" for i in range(200)))
    tab = Table.read(f, target="y")
    assert tab.kinds["x"] == "numeric" and tab.feature_columns == ["x"]
    f = write(tmp_path / "e.csv", "x;y\n" + "".join(f"{i},{i % 7};{i % 2}\n" for i in range(200)) + "n/a?;1\n")
    with pytest.raises(TableError, match=r"column 'x' holds numbers \(like '0,0'\) but 1 cell\(s\) are not; first "
                                         r"at data row 201 \(line 202 of the file\): 'n/a\?'"):
        Table.read(f, target="y")
    # a format the reader does not parse (space thousands, currency): an error, not a dropped "ID-like" column
    f = write(tmp_path / "s.csv", "x;z;y\n" + "".join(f"{1000 + i * 7:,}".replace(",", " ") + f";{i % 3};{i % 2}\n"
                                                      for i in range(120)))
    with pytest.raises(TableError, match=r"column 'x' holds numbers written in a format fitloop does not read "
                                         r"\(like '1 000'\), so it would be read as text, not numbers"):
        Table.read(f, target="y").prepare(fractions=(0.8, 0.2))
    with pytest.raises(TableError, match=r"column 'x' has numbers written like '0,0', which do not read with "
                                         r"--decimal '\.'; pass `--decimal ,`"):
        Table.read(tmp_path / "d.csv", target="y", decimal=".")


# ------------------------------------------------------------------------------------------- header


def test_unnamed_column_and_row_index_are_ids_not_features(tmp_path, capsys):
    # what pandas' df.to_csv() writes: the index as an unnamed first column; plus a 1..n "n" column
    r = np.random.default_rng(0)
    x = r.normal(size=40)
    f = write(tmp_path / "d.csv", ",n,x,y\n" + "".join(f"{i},{i + 1},{v:.4f},{2 * v:.4f}\n" for i, v in enumerate(x)))
    tab = Table.read(f, target="y")
    assert tab.columns == ["(unnamed 1)", "n", "x", "y"]
    assert tab.id_like == ["(unnamed 1)", "n"] and tab.feature_columns == ["x"]
    assert "column '(unnamed 1)' has no header name: treated as a row id, not a feature (a model would learn " \
           "the row order)" in tab.notes
    assert "column 'n' counts the rows in order (0..n-1 or 1..n): treated as a row id, not a feature (a model " \
           "would learn the row order)" in tab.notes
    code, out, err = run_cli(capsys, "train", f, "--target", "y", "--epochs", "1", "--out", tmp_path / "r")
    assert code == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["inputs"] == 1 and any("has no header name" in n for n in info["notes"])
    # predict on the same kind of file: the id-like columns are ignored, not required
    code, _, err = run_cli(capsys, "predict", tmp_path / "r", f, "-o", tmp_path / "p.csv")
    assert code == 0, err


def test_arrow_tables_get_the_header_rules_too():
    with pytest.raises(TableError, match=r"duplicate column names: 'x' at columns 1, 2 \(1-based\)"):
        Table.from_arrow(pa.Table.from_arrays([pa.array([1.0, 2.0])] * 3, names=["x", "x", "y"]), "y")
    tab = Table.from_arrow(pa.table({"": list(range(12)), "x": [float(i % 5) for i in range(12)],
                                     "y": [i % 2 for i in range(12)]}), "y")
    assert tab.columns == ["(unnamed 1)", "x", "y"] and tab.feature_columns == ["x"]


def test_duplicate_column_names_exit_2_naming_the_positions(tmp_path, capsys):
    f = write(tmp_path / "d.csv", "species,island,mass,island\na,x,1,y\nb,y,2,x\n")
    code, _, err = run_cli(capsys, "train", f, "--target", "species")
    assert code == 2
    assert err == (f"fitloop: error: {f}: the header has duplicate column names: 'island' at columns 2, 4 "
                   f"(1-based). Rename them so that each column has its own name.\n")


# ---------------------------------------------------------------------------------------- task rule


@pytest.mark.parametrize("values, task, reason", [
    (np.arange(16) * 7 + 1900, "regression",
     "16 distinct integer values in 16 rows (1 row per value; classes need 5 on average)"),
    (np.arange(150) % 3, "classification", "3 distinct integer values in 150 rows (50 rows per class)"),
    (np.arange(8) % 2, "classification", "2 distinct integer values in 8 rows"),
    (np.arange(30) % 10, "regression",
     "10 distinct integer values in 30 rows (3 rows per value; classes need 5 on average)"),
    (np.arange(100) % 20, "classification", "20 distinct integer values in 100 rows (5 rows per class)"),
    (np.arange(1000) % 25, "regression", "25 distinct integer values in 1000 rows (more than 20 would be classes)"),
    (np.linspace(0, 1, 50), "regression", "a numeric target with non-integer values"),
])
def test_task_rule_on_generated_targets(tmp_path, values, task, reason):
    n = len(values)
    x = np.random.default_rng(0).normal(size=n)
    f = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{a:.3f},{b}\n" for a, b in zip(x, values)))
    tab = Table.read(f, target="y")
    assert (tab.task, tab.task_reason) == (task, reason)
    assert infer_task("numeric", values.astype(float), len(set(values.tolist())), n) == (task, reason)


def test_task_rule_text_bool_and_given():
    assert infer_task("categorical", None, 3, 9) == ("classification", "a text target with 3 distinct values")
    assert infer_task("bool", None, 2, 9) == ("classification", "a true/false target")
    tab = Table.from_arrow(pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [1, 2, 1, 2]}), "y", task="regression")
    assert (tab.task, tab.task_reason) == ("regression", "as given (--task)")


def test_the_decision_is_printed_with_its_reason(tmp_path, capsys):
    f = write(tmp_path / "d.csv", "year,total\n" + "".join(f"{2000 + i},{100 + 13 * i}\n" for i in range(16)))
    code, out, err = run_cli(capsys, "train", f, "--target", "total", "--epochs", "1", "--split", "0.5,0.5",
                             "--out", tmp_path / "r")
    assert code == 0, err
    assert "task: regression: 16 distinct integer values in 16 rows" in " ".join(out.split())


# ------------------------------------------------------------------------------- too small to split


@pytest.mark.parametrize("case", ["rare_class", "tiny", "no_held_out"])
def test_table_too_small_for_the_split_exits_2(tmp_path, capsys, case):
    if case == "rare_class":
        f = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{i * 0.1:.1f},{'a' if i < 20 else 'b' if i < 38 else 'c'}\n"
                                                       for i in range(40)))
        args, expect = [], (f"{tmp_path / 'd.csv'}: target 'y' has 1 class(es) with too few rows to stratify over "
                            f"train/val/test (--split 0.7,0.15,0.15): 'c' (2 rows); each class needs at least 4 "
                            f"rows here. Add rows of those classes, or remove or merge them into another class.")
    elif case == "tiny":
        f = write(tmp_path / "d.csv", "x,y\n1,2.5\n2,3.5\n3,1.5\n")
        args, expect = [], (f"{tmp_path / 'd.csv'}: 3 row(s) are too few for --split 0.7,0.15,0.15: the test part "
                            f"would get no rows (the split needs at least 4 rows). Add rows, or give the held-out "
                            f"parts a larger share, e.g. --split 0.5,0.5.")
    else:
        f = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{i * 0.1:.1f},{i * 0.5}\n" for i in range(20)))
        args, expect = ["--split", "1,0,0"], ("--split 1,0,0 holds out no rows, so the model could not be "
                                              "evaluated; keep a test (or val) part, e.g. --split 0.8,0.2 or the "
                                              "default 0.7,0.15,0.15.")
    code, _, err = run_cli(capsys, "train", f, "--target", "y", "--quiet", "--out", tmp_path / "r", *args)
    assert (code, err) == (2, f"fitloop: error: {expect}\n")
    assert not (tmp_path / "r").exists()


def test_python_split_of_a_tiny_table_names_the_empty_part():
    tab = Table.from_arrow(pa.table({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [1.5, 2.0, 0.5, 3.0, 1.0]}), "y")
    with pytest.raises(TableError, match=exactly(
            "table: 5 row(s) are too few for fractions (0.8, 0.1, 0.1): the val part would get no rows. Add "
            "rows, or give it a larger fraction.")):
        tab.prepare()
    assert {k: len(v) for k, v in tab.split_indices((0.6, 0.2, 0.2)).items()} == {"train": 3, "val": 1, "test": 1}
    assert len(tab.split_indices((0.8, 0.2, 0.0))["test"]) == 0  # a part not asked for may be empty


# --------------------------------------------------------------------------- exit codes, float32 metrics


def _user_error_instances():
    from fitloop.checkpoint_format import CheckpointError, ResumeMismatchError
    from fitloop.runlock import RunLockedError
    from fitloop.step import NonFiniteError
    from fitloop.tabular.config import ConfigError
    from fitloop.tabular.runs import NotARunError

    return [TableError("bad table"), ConfigError("bad setting"), NotARunError("not a run"),
            CheckpointError("corrupt checkpoint"), ResumeMismatchError("data changed"), NonFiniteError("nan loss"),
            RunLockedError("runs/x", {"pid": 4242}), FileExistsError("run dir holds a run"),
            PermissionError("read-only"), OSError(28, "No space left on device"), IsADirectoryError("a dir"),
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), pa.ArrowInvalid("arrow: bad csv"),
            pa.ArrowNotImplementedError("arrow: unsupported type"), TypeError("wrong type")]


@pytest.mark.parametrize("error", _user_error_instances(), ids=lambda e: type(e).__name__)
def test_every_user_error_class_exits_2(monkeypatch, capsys, error):
    import fitloop.cli.app as app

    def boom(args, argv=None):
        raise error

    monkeypatch.setattr(app, "cmd_report", boom)
    code, _, err = run_cli(capsys, "report", "runs/x")
    assert code == 2 and err.startswith("fitloop: error: ") and "internal error" not in err, err
    assert "pid 4242" in err if type(error).__name__ == "RunLockedError" else True


def test_a_fitloop_bug_is_still_exit_1(monkeypatch, capsys):
    import fitloop.cli.app as app

    monkeypatch.setattr(app, "cmd_report", lambda args, argv=None: {}["missing"])
    code, _, err = run_cli(capsys, "report", "runs/x")
    assert code == 1 and err.startswith("fitloop: internal error: KeyError")


@pytest.mark.filterwarnings("ignore::fitloop.checkpoint_format.CheckpointWarning")
def test_corrupt_checkpoint_and_damaged_bundle_are_user_errors(tmp_path, capsys):
    f = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{i * 0.37 % 5:.2f},{i % 2}\n" for i in range(60)))
    run = tmp_path / "r"
    assert main(["train", str(f), "--target", "y", "--epochs", "2", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    (run / "metrics.json").unlink()
    for ck in (run / "checkpoints").glob("ckpt-*"):
        ck.write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "resume", run)
    assert code == 2 and "no loadable checkpoint" in err and "internal error" not in err
    meta = json.loads((run / "model" / "fitloop.json").read_text())
    del meta["preprocessor"]["features"]
    (run / "model" / "fitloop.json").write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, "predict", run, f)
    assert code == 2 and "the saved preprocessor state is incomplete or damaged" in err


def test_metrics_are_float32_values(tmp_path, capsys):
    f = write(tmp_path / "d.csv", "x,z,y\n" + "".join(f"{i * 0.37 % 5:.2f},{i % 7},{'ab'[i % 2]}\n"
                                                      for i in range(72)))
    run = tmp_path / "r"
    assert main(["train", str(f), "--target", "y", "--epochs", "2", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    m = json.loads((run / "metrics.json").read_text())
    code, out, _ = run_cli(capsys, "evaluate", run, f, "--json")
    assert code == 0
    for values in (m["metrics"], m["baseline"], json.loads(out)["metrics"]):
        floats = [v for v in values.values() if isinstance(v, float)]
        assert floats and all(v == float(str(np.float32(v))) and len(repr(v)) <= 12 for v in floats), values
