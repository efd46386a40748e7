"""Run directories, checkpoints, exact resume, faults and safe loading (callbacks/checkpoint, checkpoint_format)."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

import pytest
import torch
from safetensors.torch import load_file

import fitloop as fl
from fitloop.callbacks.checkpoint import EXIT_SIGINT, EXIT_SIGTERM, RunInterrupted
from fitloop.checkpoint_format import (
    CheckpointError,
    CheckpointWarning,
    ResumeMismatchError,
    find_checkpoints,
    load_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("ckpt_child.py")


# --------------------------------------------------------------------------- helpers


def _data(n=80, nan_row=None):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    if nan_row is not None:
        X[nan_row, 0] = float("nan")
    return fl.split(X, y.unsqueeze(1), fractions=(0.75, 0.25), seed=0)


def _trainer(run_dir, *, callbacks=(), model_seed=1, hidden=8, **kw):
    torch.manual_seed(model_seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 1))
    settings = dict(lr=1e-2, epochs=3, batch_size=16, quiet=True,
                    run_dir=None if run_dir is None else str(run_dir),
                    checkpoint_every_steps=2, scheduler=("step", {"step_size": 1, "gamma": 0.5}))
    settings.update(kw)
    optimizer = settings.pop("optimizer", "adam")
    callbacks = [fl.EarlyStopping(patience=10), *callbacks]
    return fl.Trainer(model, "mse", optimizer, callbacks=callbacks, **settings)


class Crash(fl.Callback):
    """Simulates a crash (in-process) right after optimizer step `n`."""

    def __init__(self, n):
        self.n = n

    def on_train_batch_end(self, trainer, step, loss):
        if step == self.n:
            raise RuntimeError("simulated crash")


class SendSignal(fl.Callback):
    def __init__(self, n, sig):
        self.n, self.sig = n, sig

    def on_train_batch_end(self, trainer, step, loss):
        if step == self.n:
            os.kill(os.getpid(), self.sig)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "time"} for h in history]


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    t = _trainer(d / "run")
    train, val = _data()
    h = t.fit(train, val)
    return _strip(h), _weights(t)


# --------------------------------------------------------------------------- run directory


def test_run_dir_contents(tmp_path, reference):
    train, val = _data()
    t = _trainer(tmp_path / "run")
    hist = t.fit(train, val)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 1e-2
    lines = (run / "history.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == hist and len(hist) == 3
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["exit_code"] == 0
    assert info["versions"]["torch"] == torch.__version__
    assert info["ended"] and info["elapsed_s"] > 0
    splits = json.loads((run / "splits.json").read_text())
    assert splits["train"] == train.indices.tolist() and splits["val"] == val.indices.tolist()
    bundle = fl.load(run / "model", model=_trainer(None).model)
    assert _equal(bundle.state_dict(), t.model.state_dict())
    assert (run / "checkpoints" / "latest").read_text().strip() == find_checkpoints(run)[0].name
    assert _strip(hist) == reference[0]


def test_auto_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = _trainer("auto", epochs=1)
    t.fit(*_data())
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "run.json").exists()
    assert t.config.run_dir == str(Path("runs") / runs[0].name)


def test_existing_run_dir_refused(tmp_path):
    _trainer(tmp_path / "run", epochs=1).fit(*_data())
    with pytest.raises(FileExistsError, match="resume"):
        _trainer(tmp_path / "run", epochs=1).fit(*_data())


def test_keep_last_and_best(tmp_path):
    # lr decays fast, so the best val_loss is early: best must survive pruning alongside the last 2.
    t = _trainer(tmp_path / "run", epochs=6, checkpoint_every_steps=None, keep_last=2, lr=0.3,
                 scheduler=None, optimizer="sgd")
    hist = t.fit(*_data())
    names = [p.name for p in find_checkpoints(tmp_path / "run")]
    best_epoch = min(hist, key=lambda h: h["val_loss"])["epoch"]
    best_name = (tmp_path / "run" / "checkpoints" / "best").read_text().strip()
    assert f"-e{best_epoch}-" in best_name and best_name in names
    assert len(names) == (2 if best_epoch >= 5 else 3)
    assert names[0].startswith("ckpt-000006-e6-")


def test_temp_files_cleaned_and_atomic(tmp_path):
    t = _trainer(tmp_path / "run", epochs=1)
    t.fit(*_data())
    stale = tmp_path / "run" / "checkpoints" / ".ckpt-000009-e1-s9.safetensors.abc.tmp"
    stale.write_bytes(b"partial")
    t2 = _trainer(tmp_path / "run", epochs=1)
    t2.resume(*_data())
    assert not stale.exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))


# --------------------------------------------------------------------------- exact resume (in-process)


@pytest.mark.parametrize("crash_at", [3, 4, 8])  # mid-epoch, just after a checkpoint, end of an epoch
def test_resume_after_crash_is_exact(tmp_path, reference, crash_at):
    train, val = _data()
    with pytest.raises(RuntimeError, match="simulated"):
        _trainer(tmp_path / "run", callbacks=[Crash(crash_at)]).fit(train, val)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    t = _trainer(tmp_path / "run")
    hist = t.resume(train, val)
    assert _strip(hist) == reference[0]
    assert _equal(_weights(t), reference[1])
    assert [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()] == hist


@pytest.mark.parametrize("opt", [("adam", {"fused": True}), ("sgd", {"momentum": 0.9}), ("adamw", {})])
def test_resume_restores_optimizer_exactly(tmp_path, opt):
    name, kw = opt
    train, val = _data()
    settings = dict(optimizer=name, optimizer_kwargs=kw, accumulate=2, clip_grad_norm=1.0, model_seed=2)
    ref = _trainer(tmp_path / "ref", **settings)
    ref_hist = ref.fit(train, val)
    with pytest.raises(RuntimeError):
        _trainer(tmp_path / "run", callbacks=[Crash(5)], **settings).fit(train, val)
    t = _trainer(tmp_path / "run", **settings)
    assert _strip(t.resume(train, val)) == _strip(ref_hist)
    assert _equal(_weights(t), _weights(ref))
    assert t.optimizer.state_dict()["state"].keys() == ref.optimizer.state_dict()["state"].keys()


def test_sigint_and_sigterm_checkpoint_and_exit_code(tmp_path, reference, capsys):
    train, val = _data()
    prev = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as ei:
        _trainer(tmp_path / "run", callbacks=[SendSignal(3, signal.SIGINT)]).fit(train, val)
    assert ei.value.code == EXIT_SIGINT == 130
    assert "resume" in str(ei.value) and "resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is prev  # handlers restored after fit
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "interrupted" and info["exit_code"] == 130 and info["step"] == 3
    with pytest.raises(RunInterrupted) as ei:
        _trainer(tmp_path / "run", callbacks=[SendSignal(7, signal.SIGTERM)]).resume(train, val)
    assert ei.value.code == EXIT_SIGTERM == 143
    t = _trainer(tmp_path / "run")
    assert _strip(t.resume(train, val)) == reference[0]
    assert _equal(_weights(t), reference[1])


class SendTwice(fl.Callback):
    """Two SIGINTs at one step, `gap` seconds apart (each handled before the next is sent)."""

    def __init__(self, n, gap):
        self.n, self.gap = n, gap

    def on_train_batch_end(self, trainer, step, loss):
        if step == self.n:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(self.gap)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_repeated_signal_is_the_same_request_unless_it_comes_later(tmp_path, capsys):
    """A terminal's Ctrl-C under torchrun reaches a worker twice (from the terminal, then from the agent): the
    run still writes its checkpoint. A second Ctrl-C after REPEAT_SECONDS stops at once."""
    from fitloop.callbacks.checkpoint import REPEAT_SECONDS

    train, val = _data()
    with pytest.raises(RunInterrupted) as ei:
        _trainer(tmp_path / "a", callbacks=[SendTwice(3, 0.05)]).fit(train, val)
    assert ei.value.code == 130
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["status"] == "interrupted" and info["step"] == 3
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", callbacks=[SendTwice(3, REPEAT_SECONDS + 0.2)]).fit(train, val)
    names = [p.name for p in (tmp_path / "b" / "checkpoints").glob("ckpt-*.safetensors")]
    assert names and not any(n.endswith("-s3.safetensors") for n in names)  # stopped without the step-3 one


# --------------------------------------------------------------------------- refusals


def _crashed_run(tmp_path):
    train, val = _data()
    with pytest.raises(RuntimeError):
        _trainer(tmp_path / "run", callbacks=[Crash(5)]).fit(train, val)
    return train, val


def test_resume_with_changed_config_refused(tmp_path, reference):
    train, val = _crashed_run(tmp_path)
    with pytest.raises(ResumeMismatchError, match=r"config lr: 0\.01 -> 0\.02.*force=True"):
        _trainer(tmp_path / "run", lr=2e-2).resume(train, val)
    with pytest.warns(CheckpointWarning, match="despite"):
        _trainer(tmp_path / "run", lr=2e-2).resume(train, val, force=True)


def test_resume_with_changed_data_refused(tmp_path):
    train, val = _crashed_run(tmp_path)
    X = train.X.clone()
    X[0, 0] += 1
    with pytest.raises(ResumeMismatchError, match="train data: X"):
        _trainer(tmp_path / "run").resume((X, train.y), val)
    with pytest.warns(CheckpointWarning):
        _trainer(tmp_path / "run").resume((X, train.y), val, force=True)


def test_resume_with_other_model_shape_refused(tmp_path):
    train, val = _crashed_run(tmp_path)
    with pytest.raises(ValueError, match=r"0\.weight: saved \(8, 3\) vs model \(5, 3\)"):
        _trainer(tmp_path / "run", hidden=5).resume(train, val, force=True)


# --------------------------------------------------------------------------- corrupt files, crash in a write


def test_corrupt_checkpoint_falls_back_with_warning(tmp_path, reference):
    train, val = _crashed_run(tmp_path)
    newest, previous = find_checkpoints(tmp_path / "run")[:2]
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match=f"{newest.name}: truncated or corrupted"):
        load_checkpoint(newest)
    data = bytearray(previous.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the tensor data: caught by the checksum
    bad_copy = tmp_path / "flipped.safetensors"
    bad_copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="flipped.safetensors: truncated or corrupted.*checksum"):
        load_checkpoint(bad_copy)
    t = _trainer(tmp_path / "run")
    with pytest.warns(CheckpointWarning, match=newest.name):
        hist = t.resume(train, val)
    assert _strip(hist) == reference[0] and _equal(_weights(t), reference[1])
    assert (newest.parent / (newest.name + ".corrupt")).exists()


def test_all_checkpoints_bad_is_an_error_not_a_restart(tmp_path):
    train, val = _crashed_run(tmp_path)
    for p in find_checkpoints(tmp_path / "run"):
        p.write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no loadable checkpoint"):
        _trainer(tmp_path / "run").resume(train, val)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        _trainer(tmp_path / "empty").resume(train, val)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_never_loaded(tmp_path):
    target = tmp_path / "pwned.txt"
    payload = pickle.dumps({"model": _Evil(str(target))})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil = run / "checkpoints" / "ckpt-000001-e1-s1.safetensors"
    evil.write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a fitloop checkpoint"):
        load_checkpoint(evil)
    torch_file = tmp_path / "evil.pt"
    torch.save({"x": _Evil(str(target))}, torch_file)  # a torch.save zip with the payload inside
    with pytest.raises(CheckpointError, match="evil.pt: not a fitloop checkpoint"):
        load_checkpoint(torch_file)
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="not a fitloop checkpoint"):
        _trainer(run).resume(*_data())
    with pytest.raises(CheckpointError, match="not a fitloop checkpoint"):
        _trainer(None).resume(*_data(), checkpoint=str(torch_file))
    bundle = tmp_path / "bundle"
    _trainer(None, epochs=1).save(str(bundle))
    (bundle / "model.safetensors").write_bytes(payload)
    with pytest.raises(ValueError, match="cannot read the weights"):
        fl.load(bundle, model=_trainer(None).model)
    assert not target.exists()


# --------------------------------------------------------------------------- non-finite guards


def test_nan_in_data_stops_and_keeps_last_good_checkpoint(tmp_path):
    train, val = _data()
    X = train.X.clone()
    X[40, 0] = float("nan")  # reached at some step of epoch 1 or 2 (shuffled)
    t = _trainer(tmp_path / "run", checkpoint_every_steps=1)
    pattern = r"epoch \d+, step \d+ of the epoch.*the loss is nan.*lower learning"
    with pytest.raises(fl.NonFiniteError, match=pattern):
        t.fit((X, train.y), val)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and "NonFiniteError" in info["message"]
    last = load_checkpoint(find_checkpoints(tmp_path / "run")[0])
    assert last["train_state"]["step"] == t.state.step  # the failing step was not taken nor saved
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_huge_lr_stops_naming_loss_or_gradient(tmp_path):
    t = _trainer(tmp_path / "run", lr=1e6, scheduler=None, optimizer="sgd", epochs=20)
    with pytest.raises(fl.NonFiniteError, match=r"epoch \d+, step \d+.*(loss|gradient).*lr is 1e\+06"):
        t.fit(*_data())
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_nonfinite_gradient_with_finite_loss_names_parameter():
    w = torch.zeros(1, requires_grad=True)
    fn = lambda x, w: x * torch.sqrt(w.abs()) + x  # d/dw sqrt(|w|) at 0 is inf; the loss is finite
    t = fl.Trainer(fn, "mse", "sgd", params=[w], lr=0.1, epochs=1, quiet=True, batch_size=4)
    with pytest.raises(fl.NonFiniteError, match=r"epoch 1, step 1 .*gradient of parameter 'params\.0'"):
        t.fit((torch.ones(8, 1), torch.ones(8, 1) * 3))
    assert torch.equal(w.detach(), torch.zeros(1))


def test_skip_nonfinite_steps_counts_them(tmp_path):
    train, val = _data()
    X = train.X.clone()
    X[7, 1] = float("inf")
    t = _trainer(tmp_path / "run", on_nonfinite="skip", epochs=2)
    before = []

    class Watch(fl.Callback):
        def on_train_batch_end(self, trainer, step, loss):
            before.append((bool(torch.isfinite(loss)), step))
            losses.append(float(loss))

    losses: list[float] = []
    t.callbacks.append(Watch())
    hist = t.fit((X, train.y), val)
    assert hist[-1]["skipped_steps"] == 2  # one bad row, seen once per epoch
    # the epoch's loss is the row-weighted mean over the steps applied: the skipped batch is left out
    rows = [min(16, len(X) - i) for i in range(0, len(X), 16)]
    for e, h in enumerate(hist):
        per = list(zip(losses[e * len(rows):(e + 1) * len(rows)], rows, strict=True))
        kept = [(v, r) for v, r in per if math.isfinite(v)]
        assert len(kept) == len(rows) - 1
        assert h["loss"] == pytest.approx(sum(v * r for v, r in kept) / sum(r for _, r in kept), rel=1e-6)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    bad = [i for i, (ok, _) in enumerate(before) if not ok]
    assert all(before[i][1] == before[i - 1][1] for i in bad if i)  # the step counter did not advance


def test_a_skipped_accumulated_step_leaves_all_its_micro_batches_out_of_the_epoch_loss():
    train, val = _data()
    X = train.X.clone()
    X[0, 1] = float("nan")  # the first micro-batch of the first step: its loss is NaN, the step's gradients too
    t = _trainer(None, on_nonfinite="skip", epochs=1, accumulate=2, scheduler=None)
    hist = t.fit((X, train.y), val)
    assert hist[0]["skipped_steps"] == 1 and math.isfinite(hist[0]["loss"])
    assert t.global_step == 1  # 60 rows: batches of 16, 16, 16, 12, two steps of two micro-batches
    st = t.state  # the epoch's records (cleared when the next epoch starts): the applied step's two only
    assert len(st.epoch_losses) == 2 and sum(st.epoch_sizes) in (32, 28)
    assert all(math.isfinite(float(v)) for v in st.epoch_losses)
    mean = sum(float(v) * r for v, r in zip(st.epoch_losses, st.epoch_sizes, strict=True)) / sum(st.epoch_sizes)
    assert hist[0]["loss"] == pytest.approx(mean, rel=1e-6)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_weights_other_seed_differs():
    def run(seed):
        t = _trainer(None, seed=seed, epochs=2)
        t.fit(*_data())
        return _weights(t)

    a, b, c = run(5), run(5), run(6)
    assert _equal(a, b) and not _equal(a, c)


def test_deterministic_flag_turns_on_deterministic_algorithms():
    seen = []

    class Probe(fl.Callback):
        def on_epoch_start(self, trainer, epoch):
            seen.append(torch.are_deterministic_algorithms_enabled())

    try:
        _trainer(None, deterministic=True, epochs=1, callbacks=[Probe()]).fit(*_data())
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [True]


# --------------------------------------------------------------------------- SIGKILL matrix (subprocesses)


def _child(run_dir, mode, action, kill=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(CHILD), str(run_dir), mode, action] + ([kill] if kill else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


class ForkServer:
    """tests/ckpt_child.py --serve: one warm interpreter that forks a fresh process per run."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(CHILD), "--serve"], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, run_dir, mode, action, kill=None):
        log = Path(f"{run_dir}.{action}.{kill}.log")
        argv = [str(run_dir), mode, action] + ([kill] if kill else [])
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return subprocess.CompletedProcess(argv, rc, "", log.read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def fork_servers():
    with ThreadPoolExecutor(2) as pool:
        servers = list(pool.map(lambda _: ForkServer(), range(2)))
    queue = Queue()
    for s in servers:
        queue.put(s)
    yield queue
    for s in servers:
        s.close()


def _final(run_dir):
    ck = load_checkpoint(find_checkpoints(run_dir)[0])
    bundle = load_file(str(Path(run_dir) / "model" / "model.safetensors"))
    hist = [json.loads(x) for x in (Path(run_dir) / "history.jsonl").read_text().splitlines()]
    return ck["model"], bundle, _strip(hist)


def _chain(servers, run_dir, mode, kills):
    """Start a run, kill it at each point in turn (resuming in between), then let it finish."""
    server = servers.get()
    try:
        log = []
        for i, kill in enumerate(kills + [None]):
            r = server.run(run_dir, mode, "fit" if i == 0 else "resume", kill)
            log.append((kill, r.returncode, r.stderr[-2000:]))
            expected = 0 if kill is None else (EXIT_SIGTERM if kill.startswith("term") else -signal.SIGKILL)
            assert r.returncode == expected, log
            if kill and kill.startswith("term"):
                assert "resume" in r.stderr and "Exit code 143" in r.stderr
                assert json.loads((Path(run_dir) / "run.json").read_text())["status"] == "interrupted"
            if kill and kill.startswith("write"):
                assert list((Path(run_dir) / "checkpoints").glob(".*.tmp")), "the write was not interrupted"
            if kill and not kill.startswith("term"):
                assert json.loads((Path(run_dir) / "run.json").read_text())["status"] == "running"
        return log
    finally:
        servers.put(server)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tensor", "loader"])
def test_sigkill_matrix_resumes_exactly(tmp_path, mode, fork_servers):
    # 5 batches per epoch, 4 epochs (20 steps), a checkpoint every 4 steps and at every epoch end.
    chains = {
        "ref": [],
        "a": ["batch:6", "ckpt:8", "epoch:3"],       # mid-epoch; just after a step checkpoint; epoch end
        "b": ["write:12", "term:14", "batch:18"],    # during a checkpoint write; SIGTERM; late mid-epoch
        "c": ["ckpt:5", "batch:7", "batch:7", "ckpt:20"],  # right after an epoch-end checkpoint; twice
    }                                                      # at one step; after the last checkpoint
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(_chain, fork_servers, tmp_path / k, mode, v) for k, v in chains.items()}
        logs = {k: f.result() for k, f in futures.items()}
    ref = _final(tmp_path / "ref")
    assert len(ref[2]) == 4
    for k in chains:
        got = _final(tmp_path / k)
        assert _equal(got[0], ref[0]), (k, logs[k])
        assert _equal(got[1], ref[1]), (k, logs[k])
        assert got[2] == ref[2], (k, logs[k])
        assert json.loads((tmp_path / k / "run.json").read_text())["sessions"] == len(chains[k]) + 1


def test_sigterm_real_process_exit_code(tmp_path):
    r = _child(tmp_path / "run", "tensor", "fit", "term:3")
    assert r.returncode == EXIT_SIGTERM, r.stderr
    assert "SIGTERM received" in r.stderr and "trainer.resume(train, val)" in r.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "interrupted" and info["exit_code"] == 143 and info["step"] == 3


def test_sparse_gradients_pass_the_finite_check(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 1, sparse=True), torch.nn.Flatten())
    t = fl.Trainer(model, "mse", "sparseadam", lr=1e-2, epochs=1, quiet=True, batch_size=8,
                   run_dir=str(tmp_path / "run"))
    x = torch.randint(0, 10, (32, 1))
    t.fit((x, torch.randn(32, 1)))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_resume_takes_the_run_directory_first(tmp_path):
    train, val = _data()
    _trainer(tmp_path / "run", epochs=2).fit(train, val)
    t = _trainer(None, epochs=2)  # no run_dir of its own: the path names the run
    hist = t.resume(str(tmp_path / "run"), train, val)  # a finished run: restored, nothing left to train
    assert [h["epoch"] for h in hist] == [1, 2] and t.state.epoch == 2
    with pytest.raises(TypeError, match=r"trainer.resume\(train, val\)"):
        t.resume()


def test_a_checkpoint_from_the_previous_layout_resumes_with_its_best_pointer(tmp_path):
    """fitloop 0.1's first release kept the best pointer under "checkpointer" and the epoch's outputs and
    gradient norms at the top level; such a checkpoint still resumes, best checkpoint included."""
    from fitloop.checkpoint_format import serialize

    train, val = _data()
    run = tmp_path / "run"
    t = fl.Trainer(torch.nn.Linear(3, 1), "mse", "adam", epochs=3, batch_size=16, quiet=True, run_dir=str(run))
    t.state.target_epochs = 2
    t.fit(train, val)
    best = t.checkpointer.best
    latest = find_checkpoints(run)[0]
    ck = load_checkpoint(latest)
    ck.pop("_path")
    ck["checkpointer"] = next(c["state"] for c in ck["callbacks"] if c["class"] == "Checkpointer")
    ck["callbacks"] = [c for c in ck["callbacks"] if c["class"] != "Checkpointer"]
    for key in ("outputs", "grad_norms"):
        ck[key] = ck["train_state"].pop(key)
    latest.write_bytes(serialize(ck))
    again = fl.Trainer(torch.nn.Linear(3, 1), "mse", "adam", epochs=3, batch_size=16, quiet=True, run_dir=str(run))
    state = again.checkpointer.prepare_resume(again, train, val)
    again.load_state_dict(state)
    assert again.checkpointer.best == best and again.state.grad_norms == [] and again.state.epoch == 2
    fresh = fl.Trainer(torch.nn.Linear(3, 1), "mse", "adam", epochs=3, batch_size=16, quiet=True, run_dir=str(run))
    fresh.resume(train, val)
    assert fresh.state.epoch == 2 and json.loads((run / "run.json").read_text())["status"] == "finished"
