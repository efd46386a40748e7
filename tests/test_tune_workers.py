"""fitloop tune across processes (issue 23): a real SIGKILL mid-trial then --resume, two parallel workers on
one journal, and one trial on two torchrun ranks. Each runs the command line in subprocesses."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from fitloop.tune.workers import worker_threads

ROOT = Path(__file__).resolve().parents[1]
SPACE = ('[lr]\ntype = "float"\nlow = 1e-3\nhigh = 3e-2\nlog = true\n\n'
         '[width]\ntype = "int"\nlow = 4\nhigh = 32\n')


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env.update(extra)
    return env


def _files(tmp_path: Path, rows: int = 400) -> tuple[Path, Path]:
    """A regression table and a two-parameter space (the batch size stays fixed)."""
    csv = tmp_path / "data.csv"
    g = torch.Generator().manual_seed(0)
    X = torch.randn(rows, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(rows, generator=g)
    csv.write_text("a,b,c,y\n" + "".join(",".join(f"{v:.5f}" for v in [*r.tolist(), t]) + "\n"
                                         for r, t in zip(X, y.tolist())))
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    return csv, space


def _tune(csv: Path, space: Path, out: Path, *extra: str, env: dict[str, str] | None = None,
          timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fitloop", "tune", str(csv), "--target", "y", "--space", str(space),
                           "--out", str(out), "--no-ensemble", *extra], env=env or _env(), capture_output=True,
                          text=True, timeout=timeout, cwd=out.parent)


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="fitloop", storage=storage).get_trials()


def _killed_in_trial_1(tmp_path: Path) -> dict[str, str]:
    """The environment of a tune command that SIGKILLs itself after trial 1's epoch-2 checkpoint (once)."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "killed-once"
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "import fitloop.callbacks.checkpoint as c\n"
        "orig = c.Checkpointer.on_epoch_end\n"
        "def on_epoch_end(self, trainer, epoch, logs):\n"
        "    orig(self, trainer, epoch, logs)\n"
        f"    if epoch == 2 and str(self.dir).endswith('0001') and not os.path.exists({str(marker)!r}):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "        os.kill(os.getpid(), 9)\n"
        "c.Checkpointer.on_epoch_end = on_epoch_end\n")
    return _env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))


def _finished_once_each(trials: list[optuna.trial.FrozenTrial], n: int) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == n
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == n  # each parameter set trained once
    return done


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_loses_no_trial_and_counts_none_twice(tmp_path):
    csv, space = _files(tmp_path)
    out = tmp_path / "tuned"
    killed = _tune(csv, space, out, "--trials", "3", "--epochs", "4", "--pruner", "none",
                   env=_killed_in_trial_1(tmp_path))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [t.state.name for t in _trials(out)] == ["COMPLETE", "RUNNING"]
    resumed = subprocess.run([sys.executable, "-m", "fitloop", "tune", "--resume", str(out)], env=_env(),
                             capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming: trial(s) 1 stopped unfinished; each runs again." in resumed.stdout
    trials = _trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    done = _finished_once_each(trials, 3)
    stale, retry = trials[1], trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == stale.params  # the killed trial, re-run once
    assert retry.user_attrs["run_dir"] == stale.user_attrs["run_dir"] == str(out / "trials" / "0001")
    info = json.loads((out / "trials" / "0001" / "run.json").read_text())
    assert info["status"] == "finished" and info["sessions"] == 2 and "-e2-" in info["resumed_from"]
    history = [json.loads(line) for line in (out / "trials" / "0001" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4  # epochs 1-2 before the kill, 3-4 continued from the checkpoint
    kept = info["verdict"]["facts"]["kept_val_loss"]  # the model the run kept (its linear start: epoch 0)
    assert retry.user_attrs["epochs"] == 4 and retry.value == pytest.approx(kept)  # the trial's value: the kept model's
    assert json.loads((out / "tune.json").read_text())["counts"] == {"COMPLETE": 3, "FAIL": 1}
    assert {t.number for t in done} == {0, 2, 3}


@pytest.mark.slow
def test_sigkill_from_outside_at_any_moment_then_resume_finishes_the_budget_exactly(tmp_path):
    csv, space = _files(tmp_path, rows=800)
    out = tmp_path / "tuned"
    cmd = [sys.executable, "-m", "fitloop", "tune", str(csv), "--target", "y", "--space", str(space), "--out",
           str(out), "--no-ensemble", "--trials", "4", "--epochs", "4", "--pruner", "asha", "--jobs", "2"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill once a trial has run an epoch
        if any(p.stat().st_size for p in (out / "trials").glob("*/history.jsonl")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the workers die with the tune process (PR_SET_PDEATHSIG)
    resumed = subprocess.run(cmd[:4] + ["--resume", str(out), "--jobs", "2"], env=_env(), capture_output=True,
                             text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = _trials(out)
    _finished_once_each(trials, 4)
    assert all(t.state.name != "RUNNING" for t in trials)
    stale = [t for t in trials if t.state.name == "FAIL"]
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == sorted(t.number for t in stale)


@pytest.mark.slow
def test_two_parallel_workers_share_the_journal_and_finish_the_budget_exactly(tmp_path):
    csv, space = _files(tmp_path, rows=1500)
    out = tmp_path / "tuned"
    proc = _tune(csv, space, out, "--trials", "4", "--jobs", "2", "--epochs", "3", "--pruner", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    _finished_once_each(trials, 4)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    assert {t.user_attrs["threads"] for t in trials} == {worker_threads(2)}
    assert proc.stdout.count("  complete  ") == 4 and "trials: 4 complete, 0 pruned, 0 failed" in proc.stdout


@pytest.mark.slow
def test_torchrun_one_trial_on_two_ranks(tmp_path):
    csv, space = _files(tmp_path)
    out = tmp_path / "tuned"
    proc = _tune(csv, space, out, "--trials", "2", "--epochs", "2", "--pruner", "asha", "--nproc", "2",
                 "--dist-timeout", "20", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = _trials(out)
    _finished_once_each(trials, 2)
    assert len(trials) == 2 and proc.stdout.count("trial ") >= 2  # rank 0 alone prints and tells the study
    for trial in trials:
        info = json.loads((Path(trial.user_attrs["run_dir"]) / "run.json").read_text())
        assert info["status"] == "finished"  # both ranks trained it: a step takes a batch on each of 2 processes
        budget = info["budget"]
        assert budget["steps_per_epoch"] == math.ceil(info["rows"]["train"] / (budget["batch_size"] * 2))
    predicted = subprocess.run([sys.executable, "-m", "fitloop", "predict", str(out / "best"), str(csv)], env=_env(),
                               capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 401
