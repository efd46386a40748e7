"""A streamed run resumed at another number of processes (fitloop.callbacks.resume, fitloop.data.stream).

The SIGKILL and 2-process test runs this file as a script in child processes:

    python tests/test_stream_resume.py train DATA RUN OUT [--kill-at STEP]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/test_stream_resume.py resume DATA RUN OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_stream_source import _env, _Ids, write_files
from torch import nn

import fitloop as fl
from fitloop.callbacks.base import Callback
from fitloop.callbacks.resume import load_for_resume
from fitloop.checkpoint_format import ResumeMismatchError, load_checkpoint, serialize
from fitloop.data.stream import ParquetSource

CPU = torch.device("cpu")
BATCH = 40  # rows per process: 25 batches an epoch of 1,000 rows in one process, 12.5 in two


def _source(data: str | Path) -> ParquetSource:
    return ParquetSource(data, columns=["id", "a", "b"], target="y", buffer_rows=300)


def _trainer(model: nn.Module, run: str | Path, callbacks=()) -> fl.Trainer:
    return fl.Trainer(model, loss="mse", optimizer="adam", lr=0.05, epochs=3, batch_size=BATCH, quiet=True,
                      threads=1, run_dir=str(run), checkpoint_every_steps=3, checkpoint_every_seconds=None,
                      callbacks=list(callbacks))


class _LogIds(Callback):
    """Appends each training batch's row ids (with the epoch and the global step) to `out`; SIGKILLs
    itself at global step `kill_at` (after the steps' checkpoints: none is due at that step)."""

    def __init__(self, out: Path, model: _Ids, kill_at: int | None):
        self.out, self.model, self.kill_at = out, model, kill_at

    def on_train_batch_end(self, trainer, step, loss):
        with open(self.out, "a") as log:
            log.write(json.dumps({"epoch": trainer.state.epoch, "step": step, "ids": self.model.seen[-1]}) + "\n")
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def child_train(data: str, run: str, out: str, kill_at: int | None) -> None:
    """One process: 3 epochs in run directory RUN, checkpointed every 3 steps; the ids go to OUT."""
    model = _Ids()
    _trainer(model, run, [_LogIds(Path(out), model, kill_at)]).fit(_source(data))


def child_resume(data: str, run: str, out: str) -> None:
    """One rank of a torchrun job: `Trainer.resume` of RUN (written by one process), the same settings."""
    from fitloop.distributed import rank

    model = _Ids()
    trainer = _trainer(model, run)
    trainer.resume(_source(data))
    torch.save({"seen": model.seen, "params": [p.detach().clone() for p in model.parameters()],
                "history": trainer.history}, Path(out) / f"resumed-{rank()}.pt")


def _run(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return subprocess.run([sys.executable, *launcher, __file__, *args], env=_env(), capture_output=True, text=True,
                          timeout=240)


def _logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_in_one_process_then_resume_in_two_delivers_the_same_rows_in_the_same_global_order(tmp_path):
    data = tmp_path / "data"
    write_files(data)
    child_train(str(data), str(tmp_path / "full"), str(tmp_path / "full.jsonl"), None)  # the reference
    reference: dict[int, list[int]] = {}
    for entry in _logged(tmp_path / "full.jsonl"):
        reference.setdefault(entry["epoch"], []).extend(entry["ids"])
    # checkpoints every 3 steps: the last one before the kill is at step 36, epoch 2 (index 1) batch 11,
    # row 440 of its order: not on the 2-process grid of 80-row global batches (batch 5 is rows 400-480)
    killed = _run("train", str(data), str(tmp_path / "cut"), str(tmp_path / "cut.jsonl"), "--kill-at", "38")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    two = _run("resume", str(data), str(tmp_path / "cut"), str(tmp_path), nproc=2)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"resumed-{rank}.pt") for rank in (0, 1)]
    # every global batch of the resumed run: rank 0's share, then rank 1's
    batches = [x + y for x, y in zip(ranks[0]["seen"], ranks[1]["seen"], strict=True)]
    assert [len(b) for b in batches[:2]] == [40, 80]  # the rest of batch 5 (rows 440-480), then the grid
    before = [entry["ids"] for entry in _logged(tmp_path / "cut.jsonl") if entry["step"] <= 36]
    delivered = [row for batch in before + batches for row in batch]
    epochs = [delivered[:1000], delivered[1000:2000], delivered[2000:]]
    assert len(delivered) == 3000
    for epoch, ids in enumerate(epochs):
        assert sorted(ids) == list(range(1000))  # exactly once
        assert ids == reference[epoch]  # in the one-process run's global order
        digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
        assert digest == hashlib.sha256(json.dumps(reference[epoch]).encode()).hexdigest()
    # 12.5 global batches an epoch: the rest of epoch 2 is batches 5 (its second half) to 12, epoch 3 is 13
    assert len(batches) == 8 + 13
    for x, y in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(x, y)  # DDP keeps the ranks identical
    history = ranks[0]["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert all(torch.isfinite(torch.as_tensor(entry["loss"])) for entry in history)


@pytest.mark.slow
def test_cli_resumes_a_streamed_run_of_one_process_with_two(tmp_path):
    """`fitloop train DIR` (one process) SIGKILLed mid-epoch after its first checkpoint, then `fitloop resume
    RUN --nproc 2`: the run finishes under DDP from the checkpoint's row of the stream."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):
        x1, x2 = rng.normal(size=2500), rng.normal(size=2500)
        pq.write_table(pa.table({"x1": x1, "x2": x2, "y": np.sin(3 * x1) + x2 ** 2 + 0.1 * rng.normal(size=2500)}),
                       data / f"p{part}.parquet", row_group_size=500)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fitloop", "train", str(data), "--target", "y", "--epochs", "3",
               "--batch-size", "16", "--out", str(run), "--set", "train.checkpoint_every_steps=10", "--quiet"]
    child = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("ckpt-*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    first = sorted((run / "checkpoints").glob("ckpt-*"))[0]
    assert "-e0-" in first.name and load_checkpoint(first)["train_state"]["batch"] > 0  # mid-epoch 1
    resumed = subprocess.run([sys.executable, "-m", "fitloop", "resume", str(run), "--nproc", "2"], env=_env(),
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Distributed: 2 processes (DDP" in resumed.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs"] == 3
    assert json.loads((run / "metrics.json").read_text())["rows"] > 0


def _linear(run: Path, strategy: str = "auto") -> fl.Trainer:
    torch.manual_seed(0)
    return fl.Trainer(nn.Linear(3, 1), loss="mse", epochs=1, batch_size=BATCH, quiet=True, threads=1,
                      run_dir=str(run), checkpoint_every_steps=3, checkpoint_every_seconds=None, strategy=strategy)


def _one_process_run(tmp_path: Path, train) -> Path:
    """A finished 1-epoch run in one process, checkpointed mid-epoch (every 3 steps)."""
    run = tmp_path / "run"
    _linear(run).fit(train)
    return run


def _mid_epoch(run: Path, change=None) -> Path:
    """A mid-epoch checkpoint of `run`, changed by `change` and written to a file of its own."""
    checkpoints = sorted((run / "checkpoints").glob("ckpt-*"))
    ck = next(c for c in map(load_checkpoint, checkpoints) if c["train_state"]["batch"])
    if change is not None:
        change(ck)
    path = run.parent / "changed.safetensors"
    path.write_bytes(serialize({k: v for k, v in ck.items() if not k.startswith("_")}))
    return path


def test_another_world_size_is_refused_for_in_memory_data_fsdp_and_checkpoints_without_the_order(
        tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_files(data)
    X, y = torch.randn(1000, 3), torch.randn(1000, 1)
    refused = r"written by 1 process\(es\), this run has 2; resume with as many"
    memory = _one_process_run(tmp_path / "memory", (X, y))
    stream = _one_process_run(tmp_path / "stream", _source(data))

    def old(ck):  # a checkpoint of an earlier fitloop: its fingerprint does not record the order
        ck["data"]["train"].pop("order")

    cases = [(memory, (X, y), None, "auto"),  # in-memory data: each rank's shard depends on the world
             (stream, _source(data), old, "auto"),
             (stream, _source(data), None, "fsdp")]  # FSDP: the sharded states depend on it
    for run, train, change, strategy in cases:
        trainer, checkpoint = _linear(run, strategy), _mid_epoch(run, change)
        with monkeypatch.context() as patch:
            patch.setenv("WORLD_SIZE", "2")  # what world_size() reads without a process group
            with pytest.raises(ResumeMismatchError, match=refused):
                load_for_resume(run, trainer, train, None, checkpoint=str(checkpoint), force=False)
    ck = load_for_resume(stream, _linear(stream), _source(data), None, checkpoint=str(_mid_epoch(stream, old)),
                         force=False)
    assert ck["train_state"]["batch"] == 24  # the same world size: an earlier checkpoint resumes as before


def test_a_checkpoint_of_two_processes_continues_in_one_at_its_row(tmp_path):
    """The rank states of two processes merged for one: the epoch's losses weighted by rows, rank 0's RNGs;
    the position (batch 5 of 80-row global batches: row 400) is batch 10 of one process's 40-row batches."""
    data = tmp_path / "data"
    write_files(data)
    run = _one_process_run(tmp_path, _source(data))

    def two_ranks(ck):
        ck["world_size"], ck["train_state"]["batch"] = 2, 5
        rank_state = {"rng": ck["rng"], "losses": [torch.tensor(1.0), torch.tensor(3.0)], "sizes": [40, 40],
                      "outputs": []}
        ck["ranks"] = [rank_state, {**rank_state, "losses": [torch.tensor(2.0), torch.tensor(5.0)],
                                    "sizes": [40, 0]}]

    source = _source(data)
    ck = load_for_resume(run, _linear(run), source, None, checkpoint=str(_mid_epoch(run, two_ranks)), force=False)
    assert ck["train_state"]["batch"] == 10 and len(ck["ranks"]) == 1
    assert [float(loss) for loss in ck["ranks"][0]["losses"]] == [1.5, 3.0] and ck["ranks"][0]["sizes"] == [80, 40]
    assert source.batches(train=True, batch_size=BATCH, shuffle=True, device=CPU)._continue_at == 400


def test_an_epoch_continued_off_the_grid_starts_at_its_row_in_every_rank(tmp_path):
    data = tmp_path / "data"
    write_files(data)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    order = [row for batch in _source(data).batches(train=True, batch_size=BATCH, shuffle=True, device=CPU)
             .epoch(generator) for row in batch[0][:, 0].long().tolist()]
    shares = []
    for rank in (0, 1):
        source = _source(data)
        assert source.continue_at(440, BATCH, 2) == 5
        batches = source.batches(train=True, batch_size=BATCH, shuffle=True, device=CPU, rank=rank, world=2)
        generator.set_state(state)
        shares.append([x[:, 0].long().tolist() for x, _ in batches.epoch(generator, 5)])
        assert [batches.global_rows(i) for i in (4, 5, 6, 12)] == [0, 40, 80, 40]
        generator.set_state(state)
        assert len(list(batches.epoch(generator))) == 13 and batches.global_rows(5) == 80  # the next epoch: the grid
    assert [row for x, y in zip(*shares, strict=True) for row in x + y] == order[440:]


if __name__ == "__main__":
    command, data_dir, run_dir, out, *options = sys.argv[1:]
    if command == "train":
        child_train(data_dir, run_dir, out, int(options[options.index("--kill-at") + 1]) if options else None)
    else:
        child_resume(data_dir, run_dir, out)
