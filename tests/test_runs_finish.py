"""Runs always finish: the run-directory lock (two real processes), `fitloop resume` of a run killed
before its first checkpoint (a real SIGKILL), and the time-based checkpoint (a kill mid-epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fitloop.cli import main
from fitloop.runlock import LOCK_NAME, hold_run_dir, lock_holder

ROOT = Path(__file__).resolve().parents[1]
# 3000 rows with batch 2: the first epoch is ~1000 steps, long enough to act while it runs
COMMON = ["--target", "y", "--epochs", "2", "--batch-size", "2", "--quiet"]


def _data(path: Path) -> Path:
    r = np.random.default_rng(0)
    X = r.normal(size=(3000, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * r.normal(size=3000)
    lines = ["a,b,c,d,y"] + [",".join(f"{v:.5f}" for v in (*row, t)) for row, t in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def _popen_train(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fitloop", "train", str(data), "--out", str(out), *COMMON, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run both kill tests must reproduce exactly."""
    tmp = tmp_path_factory.mktemp("ref")
    data = _data(tmp / "d.csv")
    assert main(["train", str(data), "--out", str(tmp / "ref"), *COMMON]) == 0
    return data, tmp / "ref"


# -------------------------------------------------------------------------------------- in-process


def test_lock_is_reentrant_and_released(tmp_path):
    d = tmp_path / "run"
    with hold_run_dir(d):
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
        with hold_run_dir(d):  # the CLI around the run, the Checkpointer around fit
            pass
        assert (d / LOCK_NAME).exists() and lock_holder(d) is None  # we hold it: nobody else does
    assert not (d / LOCK_NAME).exists()
    (d / LOCK_NAME).write_text(json.dumps({"pid": 999999999}))  # left by a killed process: stale
    assert lock_holder(d) is None
    with hold_run_dir(d):
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_pid_fallback_without_flock(tmp_path):
    """Where the filesystem cannot flock: a live holder's pid blocks, a dead one's does not."""
    from fitloop.runlock import _pid_lock

    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": os.getppid()}))  # alive: the process that started the tests
    assert _pid_lock(path) is None
    path.write_text(json.dumps({"pid": 999999999}))
    fd = _pid_lock(path)
    assert fd is not None and path.read_text() == ""
    os.close(fd)


def test_resume_of_a_run_killed_before_it_started_trains_it_from_the_beginning(tmp_path, capsys):
    """Killed between writing config.toml and the first run.json: `resume` starts it again."""
    f = tmp_path / "d.csv"
    f.write_text("x,y\n" + "".join(f"{i * 0.37 % 5:.2f},{i * 0.37 % 5 * 2:.3f}\n" for i in range(60)))
    args = ["--target", "y", "--epochs", "3", "--quiet"]
    assert main(["train", str(f), "--out", str(tmp_path / "ref"), *args]) == 0
    run = tmp_path / "run"
    assert main(["train", str(f), "--out", str(run), *args]) == 0
    for p in run.iterdir():  # as if killed right after config.toml was written
        if p.name != "config.toml":
            subprocess.run(["rm", "-rf", str(p)], check=True)
    capsys.readouterr()
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet: starting the run again from the beginning" in out
    _same_run(tmp_path / "ref", run)


# -------------------------------------------------------------------------------------- subprocesses


@pytest.mark.slow
def test_lock_and_resume_after_sigkill_before_the_first_checkpoint(reference, tmp_path, capsys):
    data, ref = reference
    run = tmp_path / "run"
    proc = _popen_train(data, run)
    try:
        _wait_for(lambda: (run / "run.json").is_file(), proc, "the run started")
        # a second process on the same directory: refused, naming the pid; --overwrite deletes nothing
        for argv in (["train", str(data), "--out", str(run), "--overwrite", *COMMON], ["resume", str(run)]):
            code, err = main(argv), capsys.readouterr().err
            assert code == 2 and f"in use by another fitloop process (pid {proc.pid}" in err, err
            assert (run / "run.json").is_file() and (run / "config.toml").is_file()
        assert not list((run / "checkpoints").glob("ckpt-*")), "the first checkpoint came too early for this test"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == proc.pid  # a stale lock file is left
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert main(["resume", str(run)]) == 0
    assert "no checkpoint yet: starting the run again from the beginning" in capsys.readouterr().out
    _same_run(ref, run)
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_time_based_checkpoint_mid_epoch_changes_no_result(reference, tmp_path, capsys):
    data, ref = reference
    run = tmp_path / "run"
    proc = _popen_train(data, run, "--checkpoint-every", "0.3s")
    try:
        _wait_for(lambda: bool(list((run / "checkpoints").glob("ckpt-*"))) if (run / "checkpoints").is_dir()
                  else False, proc, "the first time-based checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    names = [p.name for p in (run / "checkpoints").glob("ckpt-*")]
    assert any("-e0-" in n for n in names), names  # written inside the first epoch, by the clock
    assert main(["resume", str(run)]) == 0
    capsys.readouterr()
    assert json.loads((run / "run.json").read_text())["resumed_from"].split("-e")[1].startswith("0-")
    _same_run(ref, run)


def test_checkpoint_every_flag_and_setting(tmp_path, capsys):
    from fitloop import TrainConfig
    from fitloop.cli.commands import _seconds
    from fitloop.tabular.config import ConfigError

    assert [_seconds(t) for t in ("300", "30s", "5m", "1.5h", "off", "0")] == [300.0, 30.0, 300.0, 5400.0, None, None]
    with pytest.raises(ConfigError, match=r"--checkpoint-every: got 'soon'; pass seconds \(300\), or 30s, 5m, 1h"):
        _seconds("soon")
    assert TrainConfig().checkpoint_every_seconds == 300.0
    with pytest.raises(ValueError, match="checkpoint_every_seconds: got -1; pass a number of seconds > 0 or None."):
        TrainConfig(checkpoint_every_seconds=-1)
    assert main(["train", "nope.csv", "--target", "y", "--checkpoint-every", "soon"]) == 2
    assert "--checkpoint-every: got 'soon'" in capsys.readouterr().err
