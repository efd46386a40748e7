"""`fitloop train --nproc 2` and user errors: the message is printed once, not once per rank and again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from fitloop.cli.launch import _worker_errors

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_user_error_in_the_workers_is_printed_once_and_exits_2(tmp_path):
    rng = np.random.default_rng(0)
    pcsv.write_csv(pa.table({"x": rng.normal(size=40), "y": rng.normal(size=40)}), tmp_path / "t.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    # the target is only looked for once the workers have started: each of them reads the table
    proc = subprocess.run([sys.executable, "-m", "fitloop", "train", str(tmp_path / "t.csv"), "--target", "nope",
                           "--nproc", "2", "--epochs", "1", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    message = "target column 'nope' not found"
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "fitloop: the job stopped: the workers refused the command" in proc.stderr


def _failure(local_rank: int, exitcode: int, message: str) -> SimpleNamespace:
    return SimpleNamespace(local_rank=local_rank, exitcode=exitcode, message=message)


def test_the_launcher_prints_each_workers_error_once():
    same = "fitloop: error: t.csv: target column 'nope' not found."
    failed = SimpleNamespace(failures={0: _failure(0, 2, same), 1: _failure(1, 2, same), 2: _failure(2, 2, same)})
    assert _worker_errors(failed) == [same]
    # rank 1 met it first and the agent stopped rank 0 (whose own print, if any, the launcher cannot see):
    # the workers print nothing under the launcher, so it prints the error once
    alone = "fitloop: error: /data/t.csv: no such file"
    failed = SimpleNamespace(failures={0: _failure(0, -15, "Signal 15 (SIGTERM) received by PID 7"),
                                       1: _failure(1, 2, alone), 2: _failure(2, 2, alone)})
    assert _worker_errors(failed) == [alone]


def test_a_worker_of_the_launcher_leaves_printing_to_it(tmp_path, monkeypatch, capsys):
    """Under `fitloop train --nproc` a worker only writes its error file (the launcher prints it once); under a
    plain torchrun local rank 0 prints it too; outside a job it is printed."""
    import json

    from fitloop.cli.launch import LAUNCHED_ENV, print_user_error

    message = "fitloop: error: t.csv: target column 'nope' not found."
    print_user_error(message)
    assert capsys.readouterr().err == message + "\n"
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("LOCAL_RANK", "0")
    print_user_error(message)  # plain torchrun: local rank 0 prints
    assert capsys.readouterr().err == message + "\n"
    monkeypatch.setenv(LAUNCHED_ENV, "1")
    print_user_error(message)
    assert capsys.readouterr().err == ""
    assert json.loads(error_file.read_text())["message"] == message
