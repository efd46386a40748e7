"""The rough edges a new user hit (issue 21): each one's message or output, checked exactly."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fitloop as fl
import fitloop.tabular
from fitloop.cli import main
from fitloop.data.batches import make_batches
from fitloop.diagnose.checks import GuardWarning
from fitloop.tabular.config import ConfigError

SMALL = "x,z,y\n" + "".join(f"{i * 0.5},{i % 3},{i * 1.5 + (i % 3)}\n" for i in range(40))


def _guard_messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, GuardWarning)]


# ------------------------------------------------------------------ float class targets honour the guard


def _float_class_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 3, generator=g), torch.randint(0, 3, (32,), generator=g).float()


@pytest.mark.parametrize("guards, warned", [(True, True), ({}, True), ({"class_targets": False}, False),
                                            (False, False)])
def test_float_class_target_warning_honours_the_class_targets_guard(guards, warned):
    X, y = _float_class_data()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        batches = make_batches((X, y), train=True, batch_size=8, shuffle=False, device=torch.device("cpu"),
                               task="multiclass", split="train", guards=guards)
    expected = ["train y: the class targets are floats (torch.float32); their whole values were converted to "
                "class indices (int64) for cross-entropy. Pass integer labels (y.long()) to make this explicit, "
                "or use a regression loss if y is a quantity. (guards={'class_targets': False} switches this off.)"]
    assert _guard_messages(rec) == (expected if warned else [])
    assert batches.y.dtype == torch.int64  # converted either way


def test_float_class_targets_in_a_fit_honour_the_class_targets_guard():
    X, y = _float_class_data()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fl.Trainer(nn.Linear(3, 3), loss="cross_entropy", epochs=1, quiet=True,
                   guards={"class_targets": False}).fit((X, y))
    assert not [m for m in _guard_messages(rec) if "class targets are floats" in m]


# ------------------------------------------------------------------ --epochs 0 is a user error


EPOCHS_0 = ("train.epochs: got 0; pass a whole number >= 1 (--epochs N, the epochs to train), or leave --epochs "
            "out to decide it from the data. To score a trained run's model on a table without training, use "
            "`fitloop evaluate RUN_DIR DATA`.")


@pytest.mark.parametrize("how", ["flag", "set", "config"])
def test_epochs_0_is_a_user_error_and_writes_no_run(tmp_path, capsys, how):
    data = tmp_path / "d.csv"
    data.write_text(SMALL)
    args = {"flag": ["--epochs", "0"], "set": ["--set", "train.epochs=0"], "config": ["--config", "c.toml"]}[how]
    (tmp_path / "c.toml").write_text("[train]\nepochs = 0\n")
    out = tmp_path / "runs" / "zero"
    code = main(["train", str(data), "--target", "y", "--out", str(out),
                 *[str(tmp_path / a) if a == "c.toml" else a for a in args]])
    stdout, err = capsys.readouterr()
    assert code == 2
    assert err == f"fitloop: error: {EPOCHS_0}\n"
    assert not (tmp_path / "runs").exists()


def test_epochs_0_is_refused_by_the_python_api_with_the_same_words(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text(SMALL)
    with pytest.raises(ConfigError) as e:
        fitloop.tabular.train(data, "y", epochs=0, out=tmp_path / "runs" / "zero")
    assert str(e.value) == EPOCHS_0
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ timings: one origin for the first step and total


def test_time_to_first_step_is_within_the_total(tmp_path):
    """`fitloop train` passes the command's start (before its imports) as `t_command`; the time to the first
    step counts from there, so the total must count from there too."""
    import time

    data = tmp_path / "d.csv"
    data.write_text(SMALL)
    started = time.perf_counter() - 600.0  # a command whose imports took 600 s before train_table began
    run = fitloop.tabular.train(data, "y", epochs=2, out=tmp_path / "run", t_command=started)
    assert run.timings["to_first_step"] >= 600.0
    assert run.timings["to_first_step"] <= run.timings["total"]



def test_the_report_says_what_each_timing_counts_from():
    from fitloop.report.data import ReportData
    from fitloop.report.html import render_html

    timings = {"total": 9.5, "to_first_step": 8.25, "launch_to_first_step": 8.5}
    html = render_html(ReportData(title="t", source="s", timings=timings), {})
    assert ("<tr><td>total (from the command's start)</td><td class=\"num\">9.50 s</td></tr>"
            "<tr><td>to first step (from the command's start)</td><td class=\"num\">8.25 s</td></tr>"
            "<tr><td>to first step from the process's launch (imports included)</td><td class=\"num\">8.50 s</td>"
            "</tr>") in html.replace("&#x27;", "'")

# ------------------------------------------------------------------ the lr panel only when the lr changes



def _report_of_a_fit(tmp_path, **settings):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])
    trainer = fl.Trainer(nn.Linear(3, 1), "mse", lr=0.02, epochs=4, quiet=True, **settings)
    trainer.fit((X, y))
    files = trainer.report(tmp_path / "rep")
    return files, files.html.read_text()


def test_a_constant_lr_is_one_line_of_text_not_a_plot(tmp_path):
    files, html = _report_of_a_fit(tmp_path)
    assert "lr" not in files.plots and not (tmp_path / "rep" / "plots" / "lr.png").exists()
    assert not [a for a in files.absent if "learning rate" in a]  # not missing: said in words
    assert '<p id="lr-constant">Learning rate: 0.02 in every epoch (constant, so not plotted).</p>' in html
    assert 'id="plot-lr"' not in html


def test_a_changing_lr_is_plotted_without_the_line(tmp_path):
    files, html = _report_of_a_fit(tmp_path, scheduler="cosine")
    assert "lr" in files.plots and 'id="plot-lr"' in html
    assert "lr-constant" not in html and "Learning rate: " not in html


# ------------------------------------------------------------------ a DataLoader over a TensorDataset has a baseline


def test_a_tensor_dataset_loader_gets_the_trivial_baseline():
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from fitloop.callbacks.verdict import verdict_in
    from fitloop.diagnose.verdict import baseline_loss

    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 3.0
    expected = baseline_loss(nn.MSELoss(), y, "regression")  # the loss of predicting the mean of y
    for data in (TensorDataset(X, y), DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True),
                 DataLoader(Subset(TensorDataset(X, y), range(96)), batch_size=16)):
        trainer = fl.Trainer(nn.Linear(3, 1), "mse", lr=0.05, epochs=3, quiet=True)
        trainer.fit(data)
        verdict = verdict_in(trainer)
        assert verdict["facts"]["baseline_loss"] == pytest.approx(expected, rel=1e-6), type(data).__name__
        assert not [n for n in verdict["not_judged"] if "baseline" in n]
        assert "the trivial baseline's " in verdict["reason"]  # judged against it


# ------------------------------------------------------------------ predict: float32 digits, notes not warnings

CATEGORIES = "x,c,y\n" + "".join(f"{i * 0.25},{'abc'[i % 3]},{i * 1.75 + 5 * (i % 3) + (i * 7 % 5) * 0.37}\n"
                           for i in range(45))
NEW_ROWS = "x,c\n1.5,a\n2.25,zzz\n7.75,\n3.1,b\n"


@pytest.fixture(scope="module")
def category_run(tmp_path_factory):
    """A regression run on a table with a category column, and new rows with an unseen and a missing one."""
    root = tmp_path_factory.mktemp("category_run")
    (root / "train.csv").write_text(CATEGORIES)
    (root / "new.csv").write_text(NEW_ROWS)
    (root / "labelled.csv").write_text("x,c,y\n1.5,a,3\n2.25,zzz,9\n7.75,,20\n3.1,b,11\n")
    fitloop.tabular.train(root / "train.csv", "y", epochs=3, seed=0, out=root / "run")
    return root


def _float32_predictions(root) -> list[np.float32]:
    """The model's own float32 outputs in the target's units, computed apart from `predict`."""
    from fitloop.tabular.preprocess import transform_table

    run = fitloop.tabular.load_run(root / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = transform_table(run.preprocessor, root / "new.csv").X
    scaling = run.info["target_scaling"]
    out = run.outputs(torch.as_tensor(X)).reshape(-1) * scaling["std"] + scaling["mean"]
    assert out.dtype == torch.float32
    return [np.float32(v) for v in out.tolist()]


def test_predict_writes_the_shortest_digits_of_float32_values(category_run, tmp_path, capsys):
    expected = _float32_predictions(category_run)
    assert main(["predict", str(category_run / "run"), str(category_run / "new.csv"), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert stdout == '"prediction"\n' + "".join(str(v) + "\n" for v in expected)  # the shortest repr
    assert all(len(line.replace(".", "").lstrip("-0")) <= 9 for line in stdout.splitlines()[1:])
    assert main(["predict", str(category_run / "run"), str(category_run / "new.csv"), "-o",
                 str(tmp_path / "p.tsv"), "--quiet"]) == 0
    assert (tmp_path / "p.tsv").read_text() == stdout
    # Parquet: float64 values, each the float32's shortest decimal (what the CSV shows)
    import pyarrow.parquet as pq

    assert main(["predict", str(category_run / "run"), str(category_run / "new.csv"), "-o",
                 str(tmp_path / "p.parquet"), "--quiet"]) == 0
    column = pq.read_table(tmp_path / "p.parquet").column("prediction")
    assert str(column.type) == "double"
    assert column.to_pylist() == [float(str(v)) for v in expected]


NOTE = ("fitloop: note: unseen (or missing) categories mapped to the <unknown> slot (rows per column): c: 2\n")


def test_predict_and_evaluate_print_unseen_categories_as_a_note_line(category_run, tmp_path, capsys):
    args = [str(category_run / "run"), str(category_run / "new.csv")]
    assert main(["predict", *args, "-o", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert err == NOTE + f"wrote 4 predictions to {tmp_path / 'p.csv'}\n"
    assert main(["evaluate", str(category_run / "run"), str(category_run / "labelled.csv"), "--json"]) == 0
    err = capsys.readouterr().err
    assert err == NOTE
    for text in (err,):
        assert "UserWarning" not in text and "fitloop/" not in text


# ------------------------------------------------------------------ library warnings point at the user's line


def _one(record, category):
    found = [w for w in record if issubclass(w.category, category)]
    assert len(found) == 1, [str(w.message) for w in record]
    return found[0]


def test_a_guard_warning_points_at_the_users_fit_call():
    import inspect

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g) * torch.tensor([1.0, 1000.0, 1.0])  # the unscaled-features guard
    y = torch.randn(64, generator=g)
    trainer = fl.Trainer(nn.Linear(3, 1), "mse", epochs=1, quiet=True)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        trainer.fit((X, y))
    found = _one(rec, GuardWarning)
    assert str(found.message).startswith("inputs: feature scales differ by ")
    assert (found.filename, found.lineno) == (__file__, line)


def test_warnings_from_a_users_callback_and_from_predict_point_at_the_user(category_run):
    import inspect

    from fitloop.diagnose.checks import check_leakage

    lines = []

    class Check(fl.Callback):
        def on_fit_start(self, trainer):
            lines.append(inspect.currentframe().f_lineno + 1)
            check_leakage({"train": (X, y), "val": (X[:4], y[:4])})  # a fitloop call made by the user's code

    X, y = torch.randn(16, 2), torch.randn(16)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fl.Trainer(nn.Linear(2, 1), "mse", epochs=1, quiet=True, callbacks=[Check()],
                   guards={"leakage": False}).fit((X, y))
    found = _one(rec, GuardWarning)
    assert str(found.message).startswith("leakage: identical input rows")
    assert (found.filename, found.lineno) == (__file__, lines[0])

    run = fitloop.tabular.load_run(category_run / "run")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        run.predict(category_run / "new.csv")
    found = _one(rec, UserWarning)
    assert str(found.message) == NOTE.removeprefix("fitloop: note: ").rstrip("\n")
    assert (found.filename, found.lineno) == (__file__, line)


def test_warn_user_skips_library_frames_between_fitloop_frames():
    """fitloop code entered through contextlib (a library) from fitloop code: the user's frame is still found."""
    import inspect
    import os

    from fitloop.warn import user_frame

    source = (  # functions whose code says it is fitloop's (compiled with a file name in the package)
        "import contextlib, inspect\n"
        "from fitloop.warn import user_frame\n"
        "@contextlib.contextmanager\n"
        "def entered():\n"
        "    frame = user_frame(inspect.currentframe())\n"
        "    yield frame.f_code.co_filename, frame.f_lineno\n"
        "def outer():\n"
        "    with entered() as where:\n"
        "        return where\n")
    namespace: dict = {}
    exec(compile(source, os.path.join(os.path.dirname(fl.__file__), "_fake_module.py"), "exec"), namespace)
    line = inspect.currentframe().f_lineno + 1
    assert namespace["outer"]() == (__file__, line)
    assert user_frame(inspect.currentframe()).f_code.co_filename == __file__


def test_python_shows_the_users_line_in_a_script_and_under_python_c(tmp_path):
    """What the user sees: the script's line and its source (not fitloop/callbacks/base.py); `python -c` too,
    whose __main__ has no source file (its loader cannot give source: no ImportError from the warning)."""
    import subprocess
    import sys

    code = ("import torch, fitloop as fl\n"
            "X = torch.randn(64, 3); y = torch.randint(0, 3, (64,))\n"
            "t = fl.Trainer(torch.nn.Linear(3, 3), loss='cross_entropy', epochs=1, quiet=True)\n"
            "t.fit((X, y), (X, y))\n")
    script = tmp_path / "user_script.py"
    script.write_text(code)
    for argv, where in (([str(script)], f"{script}:4: GuardWarning: leakage: "), (["-c", code], "<string>:4: ")):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stderr.startswith(where), out.stderr
        assert "fitloop/" not in out.stderr
        if argv[0] == str(script):
            assert out.stderr.endswith("\n  t.fit((X, y), (X, y))\n")  # the user's line, as Python shows it
        else:
            assert out.stderr.count("\n") == 1  # no source line to show
