"""Issue 19, parts 2-4 outside the reader: options and run directories a user can get wrong.

Each case exits 0 with the right result, or exits 2 with one line naming the option (or file) and the
fix; never `internal error` (exit 1). Also: every exception class the reader, the preprocessor and the
run code raise on user input is one the CLI maps to exit 2.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import random
import sys
import typing
import warnings
from pathlib import Path

import pytest
import torch
from tablefiles import write_rows

import fitloop
from fitloop.cli import main
from fitloop.cli.app import _user_errors

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--quiet"]


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A 60-row table: a number, a category, a 0/1 target."""
    rng = random.Random(0)
    rows = [[round(rng.random(), 3), rng.choice("pq"), rng.randint(0, 1)] for _ in range(60)]
    return write_rows(tmp_path / "d.csv", ["a", "b", "y"], rows)


def train(capsys, data: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return run_cli(capsys, "train", data, "--target", "y", "--out", out, *FAST, *extra)


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("device, why", [("foo", "which is not a device name"),
                                         ("mps", "MPS (Apple's GPU) is not available here"),
                                         ("meta", "which holds no data to compute on")])
def test_a_device_this_machine_lacks_is_exit_2_listing_its_devices(capsys, monkeypatch, tmp_path, table,
                                                                    device, why):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, _, err = train(capsys, table, tmp_path / "run", "--device", device)
    assert code == 2, err
    assert f"device (--device, train.device): got {device!r}" in err and why in err
    assert "this machine has: auto, cpu" in err and not (tmp_path / "run").exists()


def test_available_devices_lists_what_auto_can_pick(monkeypatch):
    from fitloop.devices import available_devices

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert "mps" in available_devices() and available_devices()[:2] == ["auto", "cpu"]
    assert fitloop.pick_device("mps").type == "mps"


# ------------------------------------------------------------------------------------- list options


@pytest.mark.parametrize("flag, value, item", [("--split", "0.7,,0.3", "item 2 of 3"),
                                               ("--hidden", "64,,32", "item 2 of 3"),
                                               ("--hidden", "64,32,", "item 3 of 3"),
                                               ("--split", "0.7,0.3,", "item 3 of 3")])
def test_an_empty_item_in_a_list_option_is_exit_2(capsys, tmp_path, table, flag, value, item):
    code, _, err = train(capsys, table, tmp_path / "run", flag, value)
    assert code == 2, err
    assert f"({flag}): got {value!r}, whose {item} is empty" in err and "single commas" in err


def test_blank_hidden_is_still_the_linear_model(capsys, tmp_path, table):
    code, _, err = train(capsys, table, tmp_path / "run", "--hidden", "")
    assert code == 0, err
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "hidden = []" in config


def test_nan_split_names_the_option(capsys, tmp_path, table):
    code, _, err = train(capsys, table, tmp_path / "run", "--split", "nan,0.5,0.5")
    assert code == 2
    assert "data.split (--split): got [nan, 0.5, 0.5]; each fraction must be a finite number" in err
    assert "cannot convert" not in err


@pytest.mark.parametrize("flag, seed", [("--seed", str(2**70)), ("--set", f"data.seed={-2**64}")])
def test_a_seed_out_of_range_names_the_option_and_the_range(capsys, tmp_path, table, flag, seed):
    code, _, err = train(capsys, table, tmp_path / "run", flag, seed)
    assert code == 2
    assert "outside the range of a seed; pass a whole number from -9223372036854775808 to " \
           "18446744073709551615" in err
    assert "Overflow" not in err


def test_the_largest_seed_trains(capsys, tmp_path, table):
    assert train(capsys, table, tmp_path / "run", "--seed", str(2**64 - 1))[0] == 0


# ------------------------------------------------------------------------------------------- target


def test_a_target_of_zero_and_minus_zero_is_constant(capsys, tmp_path):
    rng = random.Random(1)
    data = write_rows(tmp_path / "z.csv", ["a", "y"], [[rng.random(), rng.choice(["0.0", "-0.0"])]
                                                        for _ in range(60)])
    code, _, err = train(capsys, data, tmp_path / "run")
    assert code == 2
    assert "target 'y' has a single class (0.0)" in err


def test_minus_zero_is_the_class_zero(capsys, tmp_path):
    rng = random.Random(2)
    data = write_rows(tmp_path / "z.csv", ["a", "y"], [[rng.random(), rng.choice(["0.0", "-0.0", "1.0"])]
                                                        for _ in range(60)])
    code, _, err = train(capsys, data, tmp_path / "run")
    assert code == 0, err
    assert fitloop.tabular.load_run(tmp_path / "run").info["classes"] == [0.0, 1.0]
    code, stdout, err = run_cli(capsys, "evaluate", tmp_path / "run", data, "--json")  # -0.0 is the class 0.0
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 60


# ---------------------------------------------------------------------------------- predict/evaluate


@pytest.fixture
def thousands(tmp_path: Path) -> Path:
    """Numbers like "2,503": ambiguous alone; a ','-delimited file reads them with a thousands separator."""
    rng = random.Random(3)
    rows = [[f"{rng.randint(1, 9)},{rng.randint(100, 999)}", round(rng.random(), 3), round(rng.random(), 3)]
            for _ in range(60)]
    return write_rows(tmp_path / "th.csv", ["a", "b", "y"], rows)


def test_predict_and_evaluate_reuse_the_thousands_separator_training_read(capsys, tmp_path, thousands):
    out = tmp_path / "run"
    assert train(capsys, thousands, out)[0] == 0
    assert fitloop.tabular.load_run(out).info["decimal"] == "."  # recorded in the run
    code, stdout, err = run_cli(capsys, "predict", out, thousands)
    assert code == 0, err
    assert stdout.splitlines()[0] == '"prediction"' and len(stdout.splitlines()) == 61
    code, stdout, err = run_cli(capsys, "evaluate", out, thousands, "--json")
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 60


def test_predict_ignores_the_target_column_evaluate_needs_it(capsys, tmp_path, table):
    out = tmp_path / "run"
    assert train(capsys, table, out)[0] == 0
    rows = [[0.5, "p", ""], [0.25, "q", "unseen"], [0.75, "p", ""]]
    new = write_rows(tmp_path / "new.csv", ["a", "b", "y"], rows)
    code, stdout, err = run_cli(capsys, "predict", out, new)
    assert code == 0, err
    assert len(stdout.splitlines()) == 4
    code, _, err = run_cli(capsys, "evaluate", out, new)
    assert code == 2 and "internal error" not in err


def test_predict_refuses_an_empty_delimiter_like_train(capsys, tmp_path, table):
    out = tmp_path / "run"
    assert train(capsys, table, out)[0] == 0
    for argv in (["train", table, "--target", "y", "--out", tmp_path / "other", *FAST], ["predict", out, table],
                 ["evaluate", out, table]):
        code, _, err = run_cli(capsys, *argv, "--delimiter", "")
        assert code == 2 and "delimiter: got ''" in err, (argv, err)


# ----------------------------------------------------------------------------------- run directories


def test_a_finished_run_without_its_model_says_the_model_files_are_missing(capsys, tmp_path, table):
    out = tmp_path / "run"
    assert train(capsys, table, out)[0] == 0
    for path in sorted((out / "model").iterdir()):
        path.unlink()
    (out / "model").rmdir()
    code, _, err = run_cli(capsys, "predict", out, table)
    assert code == 2
    assert "the run finished, but its model files are missing" in err and "did not finish" not in err


# -------------------------------------------------------------------------------------------- quiet


def test_quiet_silences_python_warnings(capsys, monkeypatch, tmp_path, table):
    out = tmp_path / "run"
    assert train(capsys, table, out)[0] == 0
    real = fitloop.tabular.load_run

    def warning_load_run(path):
        warnings.warn("a warning from the package", UserWarning, stacklevel=1)
        return real(path)

    monkeypatch.setattr(fitloop.tabular, "load_run", warning_load_run)
    for quiet, expected in ((["--quiet"], 0), ([], 1)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert run_cli(capsys, "evaluate", out, table, *quiet)[0] == 0
        assert len(seen) == expected, quiet


# ------------------------------------------------------------------------------- exceptions -> exit 2

# The modules that read tables, preprocess them and run them: what they raise on user input.
USER_INPUT_MODULES = [*sorted(f"fitloop.tabular.{p.stem}" for p in (ROOT / "fitloop" / "tabular").glob("*.py")),
                      *sorted(f"fitloop.data.{p.stem}" for p in (ROOT / "fitloop" / "data").glob("*.py")),
                      "fitloop.outputs", "fitloop.runlock", "fitloop.checkpoint_format", "fitloop.bundle",
                      "fitloop.files", "fitloop.devices", "fitloop.config"]
# Raised only for fitloop's own bugs (the CLI's exit 1): e.g. the dry-run config not loading back.
BUG_CLASSES = (RuntimeError,)


def raised_classes(module_name: str) -> set[type[BaseException]]:
    """The exception classes `raise Name(...)` / `raise factory(...)` statements of a module create."""
    module = importlib.import_module(module_name)
    tree = ast.parse(Path(typing.cast(str, module.__file__)).read_text())
    found: set[type[BaseException]] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
            continue
        func = node.exc.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        obj = getattr(module, name, getattr(builtins, name, None)) if name else None
        if isinstance(obj, type) and issubclass(obj, BaseException):
            found.add(obj)
        elif callable(obj):  # a function building the exception: its return annotation says which
            returned = typing.get_type_hints(obj).get("return")
            if isinstance(returned, type) and issubclass(returned, BaseException):
                found.add(returned)
    return found


def test_every_exception_raised_on_user_input_is_exit_2():
    for name in USER_INPUT_MODULES:
        importlib.import_module(name)  # checkpoint_format and pyarrow loaded: _user_errors lists theirs
    assert "fitloop.checkpoint_format" in sys.modules
    mapped = _user_errors()
    raised = set().union(*(raised_classes(name) for name in USER_INPUT_MODULES))
    assert len(raised) >= 8  # TableError, ConfigError, OutputPathError, NotARunError, CheckpointError, ...
    unmapped = sorted(c.__qualname__ for c in raised if not issubclass(c, mapped) and not issubclass(c, BUG_CLASSES))
    assert not unmapped, f"raised on user input but mapped to exit 1 (internal error): {unmapped}"
