"""Scaling out, tested with real processes on the CPU (gloo).

Starting a DDP process costs ~6 s (torch._dynamo's import), so the checks share few launches: one torchrun
job runs every in-process scenario of tests/dist_child.py (equivalence, sample counts, signal + resume,
a one-rank stop, FSDP) and the tests below read its results; the failure test, the CLI (with a restart)
and the two "nodes" on loopback are one launch each. The fast tests at the end need no process group.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

import fitloop as fl
from fitloop.checkpoint_format import ResumeMismatchError
from fitloop.cli.launch import _worker_argv, wants_launch
from fitloop.data.batches import TensorBatches, in_memory, make_batches
from fitloop.data.sharding import ShardedBatches, shard_bounds

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "dist_child.py"
sys.path.insert(0, str(ROOT / "tests"))
import dist_child  # noqa: E402


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    env.update(extra)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One 2-process torchrun job running every in-process scenario; its output directory."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(CHILD), str(out), "equal", "count", "resume", "fsdp", "timed", "nonfinite"],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def _load(out: Path, name: str) -> tuple[dict, dict]:
    return torch.load(out / f"{name}-0.pt"), torch.load(out / f"{name}-1.pt")


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process(job, tmp_path):
    out, _ = job
    r0, r1 = _load(out, "equal")
    dist_child.equal(tmp_path)  # the one-process reference: batch_size 16, the same seed
    ref = torch.load(tmp_path / "equal-0.pt")
    assert set(ref) == {"sgd-1", "adam-1", "adam-2"}
    for key in ref:
        for a, b, c in zip(r0[key]["params"], r1[key]["params"], ref[key]["params"], strict=True):
            assert torch.equal(a, b), key  # DDP keeps the ranks identical
            assert torch.allclose(a, c, atol=1e-5), (key, (a - c).abs().max())
        # accumulate=2 over 7 batches an epoch: micro-batches 0, 2, 4 don't step and skip the all-reduce
        assert r0[key]["no_sync"] == (9 if key == "adam-2" else 0)
        # the logged epoch losses and metrics are the global ones (weighted by rows), equal on both ranks
        assert r0[key]["history"] == r1[key]["history"]
        for h, g in zip(r0[key]["history"], ref[key]["history"], strict=True):
            for k in ("loss", "r2", "val_loss", "val_r2"):
                assert h[k] == pytest.approx(g[k], rel=1e-5, abs=1e-6), (key, k)


@pytest.mark.slow
def test_every_row_once_per_epoch_on_an_odd_number_of_rows(job):
    out, _ = job
    r0, r1 = _load(out, "count")
    assert sorted(r0["tensors"]) == [1, 2, 3]
    for epoch in (1, 2, 3):
        seen = r0["tensors"][epoch] + r1["tensors"][epoch]
        assert sorted(seen) == list(range(101))  # exactly once each: no padding, no row dropped
        assert abs(len(r0["tensors"][epoch]) - len(r1["tensors"][epoch])) == 1  # the odd row goes to rank 0
    assert r0["tensors"][1] != r0["tensors"][2]  # a new permutation each epoch
    # the Dataset path: DistributedSampler pads 101 rows to 2 x 51 by repeating one, and set_epoch reshuffles
    for epoch in (1, 2, 3):
        counts = collections.Counter(r0["dataset"][epoch] + r1["dataset"][epoch])
        assert set(counts) == set(range(101)) and sum(counts.values()) == 102
    assert r0["dataset"][1] != r0["dataset"][2]


@pytest.mark.slow
def test_time_based_checkpoints_land_on_the_same_step_on_every_rank(job):
    out, _ = job
    r0, r1 = _load(out, "timed")
    assert r0["steps"] == r1["steps"] == 2 * 125  # 2000 rows, global batch 16: finished, no deadlock
    steps = sorted(int(n.split("-s")[1].split(".")[0]) for n in r0["ckpts"] if n.endswith(".safetensors"))
    assert any(s % 64 == 0 and s % 125 for s in steps), steps  # mid-epoch ones, at the agreement points


@pytest.mark.slow
def test_a_loss_nonfinite_on_one_rank_only_is_acted_on_by_every_rank(job):
    out, _ = job
    r0, r1 = _load(out, "nonfinite")
    assert r0["skip"] == r1["skip"] == {"skipped": 1, "steps": 1}  # 32 rows, global batch 16: step 1 skipped
    assert "error" in r0["stop"] and "error" in r1["stop"] and r0["stop"]["steps"] == r1["stop"]["steps"] == 0


@pytest.mark.slow
def test_signal_on_one_rank_stops_both_and_the_resumed_run_equals_the_uninterrupted(job):
    out, proc = job
    for strategy in ("ddp", "fsdp"):
        r0, r1 = _load(out, f"resume-{strategy}")
        for r in (r0, r1):
            assert r["code"] == 130 and r["stopped_at"] == 10  # both ranks stopped at the same step
            assert all(torch.equal(a, b) for a, b in zip(r["full"], r["resumed"], strict=True)), strategy
            assert r["history_full"] == r["history_resumed"]
        assert all(torch.equal(a, b) for a, b in zip(r0["resumed"], r1["resumed"], strict=True))
        # a stop asked for by rank 1 alone ends the run on both, after the same epoch
        assert r0["stop_epochs"] == r1["stop_epochs"] == 2 and r0["stop_reason"] == "rank 1 asked"
    assert proc.stdout.count("Run interrupted by SIGINT") + proc.stderr.count("Run interrupted by SIGINT") == 2
    ckpts = sorted(p.name for p in (out / "fsdp-full" / "checkpoints").iterdir())
    assert any(n.endswith(".dcp") for n in ckpts)  # FSDP: sharded checkpoints through DCP


@pytest.mark.slow
def test_fsdp_bundle_loads_in_one_process_and_other_world_size_is_refused(job):
    out, _ = job
    r0, _ = _load(out, "resume-fsdp")
    model = fl.load(str(out / "fsdp-full" / "model"), model=dist_child.model())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), r0["full"], strict=True))
    X, y = dist_child.data(101)
    t = dist_child.trainer("adam", run_dir=str(out / "ddp-cut"), epochs=4, checkpoint_every_steps=3)
    with pytest.raises(ResumeMismatchError, match=r"written by 2 process\(es\), this run has 1"):
        t.resume((X, y), (X[:30], y[:30]))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_dead_or_hung_rank_ends_the_job_within_the_timeout_naming_it(tmp_path, how):
    """Workers without an agent (as on a node whose peer is gone): rank 1 is killed, or hangs, at step 3."""
    port = _port()
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), "kill"], stderr=subprocess.PIPE, text=True,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port), TIMEOUT="3", HOW=how))
             for r in (0, 1)]
    try:
        t0 = time.monotonic()
        if how == "kill":
            assert procs[1].wait(timeout=120) == -9
            t0 = time.monotonic()
        err = procs[0].communicate(timeout=120)[1]
        # after the death: the timeout (3 s), the diagnosis' grace (3 s), slack; a hang adds the start-up
        assert time.monotonic() - t0 < (15 if how == "kill" else 60)
        assert procs[0].returncode == 3, err
        assert "rank 0 of 2: rank 1 stopped responding (died or hangs)" in err
        assert "Traceback" not in err
        if how == "hang":
            assert "Timed out" in err and procs[1].poll() is None  # rank 1 still hangs: rank 0 did not wait
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _table(tmp_path: Path) -> Path:
    csv = tmp_path / "data.csv"
    g = torch.Generator().manual_seed(0)
    X = torch.randn(151, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(151, generator=g)
    csv.write_text("a,b,c,y\n" + "".join(",".join(f"{v:.5f}" for v in [*r.tolist(), t]) + "\n"
                                         for r, t in zip(X, y.tolist())))
    return csv


def _dying_rank_1(tmp_path: Path, first_try_only: bool) -> dict[str, str]:
    """The environment of a CLI job whose rank 1 is killed (SIGKILL) after epoch 2's checkpoint."""
    site = tmp_path / "site"
    site.mkdir()
    when = " and os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0'" if first_try_only else ""
    (site / "sitecustomize.py").write_text(
        "import os\n"
        f"if os.environ.get('RANK') == '1'{when}:\n"
        "    import fitloop.callbacks.checkpoint as c\n"
        "    orig = c.Checkpointer.on_epoch_end\n"
        "    def on_epoch_end(self, trainer, epoch, logs):\n"
        "        orig(self, trainer, epoch, logs)\n"
        "        if epoch == 2:\n"
        "            os.kill(os.getpid(), 9)\n"
        "    c.Checkpointer.on_epoch_end = on_epoch_end\n")
    return _env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))


@pytest.mark.slow
def test_cli_launcher_names_the_rank_that_died(tmp_path):
    csv, env = _table(tmp_path), _dying_rank_1(tmp_path, first_try_only=False)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fitloop", "train", str(csv), "--target", "y", "--epochs", "4",
                           "--out", str(tmp_path / "run"), "--nproc", "2", "--dist-timeout", "3"],
                          env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "fitloop: the job failed: rank 1 (local rank 1) was killed by SIGKILL" in proc.stderr
    assert f"`fitloop resume {tmp_path / 'run'} --nproc 2` continues it" in proc.stderr
    assert time.monotonic() - t0 < 120


@pytest.mark.slow
def test_cli_nproc_restarts_after_a_death_resumes_and_predicts(tmp_path):
    csv, env = _table(tmp_path), _dying_rank_1(tmp_path, first_try_only=True)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fitloop", "train", str(csv), "--target", "y", "--epochs", "4",
                           "--batch-size", "64", "--out", str(run), "--nproc", "2", "--max-restarts", "1",
                           "--dist-timeout", "3"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "global batch 128" in proc.stdout
    assert proc.stdout.count("Epoch 2/4") == 1 and proc.stdout.count("Epoch 3/4") == 1  # resumed, not restarted
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["sessions"] == 2 and info["epoch"] == 4
    assert "-e2-" in info["resumed_from"]  # the checkpoint of epoch 2
    assert len((run / "history.jsonl").read_text().splitlines()) == 4
    rows = (run / "history.csv").read_text().splitlines()  # rank 0 writes it, once per epoch
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3", "4"]
    pred = subprocess.run([sys.executable, "-m", "fitloop", "predict", str(run), str(csv)], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert pred.returncode == 0, pred.stderr
    assert len(pred.stdout.splitlines()) == 152


@pytest.mark.slow
def test_ctrl_c_on_the_cli_job_checkpoints_and_resume_finishes_it(tmp_path):
    """A terminal's Ctrl-C: SIGINT to every process of the job (fitloop, torchrun's agent, the workers), and the
    agent forwards its own copy to each worker. The workers still finish the step and write a checkpoint, the
    command exits 130 naming the resume command, and that command finishes the run."""
    import signal

    csv, run = tmp_path / "data.csv", tmp_path / "run"
    g = torch.Generator().manual_seed(0)
    X = torch.rand(2000, 2, generator=g)
    y = 2 * X[:, 0] - X[:, 1] + 0.1 * torch.rand(2000, generator=g)
    csv.write_text("x1,x2,y\n" + "".join(f"{a:.4f},{b:.4f},{t:.4f}\n" for (a, b), t in zip(X.tolist(), y.tolist())))
    proc = subprocess.Popen([sys.executable, "-m", "fitloop", "train", str(csv), "--target", "y", "--epochs", "300",
                             "--out", str(run), "--nproc", "2", "--checkpoint-every", "off"], env=_env(),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        history = run / "history.jsonl"
        while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    assert err.count("Run interrupted by SIGINT") == 1  # rank 0 says it, after both ranks agreed on the step
    assert f"fitloop: the job was interrupted by SIGINT; the workers wrote a checkpoint at the step they stopped " \
           f"at: `fitloop resume {run} --nproc 2` continues it." in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["exit_code"] == 130
    assert any(p.name.endswith(f"-s{info['step']}.safetensors") for p in (run / "checkpoints").iterdir())
    again = subprocess.run([sys.executable, "-m", "fitloop", "resume", str(run), "--nproc", "2"], env=_env(),
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    done = json.loads((run / "run.json").read_text())
    assert done["status"] == "finished" and done["sessions"] == 2 and done["step"] > info["step"]


@pytest.mark.slow
def test_a_user_mistake_under_nproc_exits_2_without_a_resume_hint(tmp_path):
    csv = _table(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "fitloop", "train", str(csv), "--target", "nope", "--nproc", "2",
                           "--out", str(tmp_path / "run")], env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "target column 'nope' not found" in proc.stderr and "fitloop resume" not in proc.stderr
    assert "fitloop: the job stopped: the workers refused the command (the error above)" in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--nproc", "0"], "argument --nproc: '0': must be at least 1"),
    (["--nproc", "-2"], "argument --nproc: '-2': must be at least 1"),
    (["--nproc", "2", "--max-restarts", "-1"], "argument --max-restarts: '-1': must be at least 0"),
    (["--nnodes", "2", "--node-rank", "3", "--rdzv-endpoint", "127.0.0.1:1"],
     "--node-rank 3: machines are numbered 0..nnodes-1 (--nnodes 2)."),
    (["--node-rank", "1"], "--node-rank 1: machines are numbered 0..nnodes-1; pass --nnodes N with it."),
])
def test_bad_launch_flags_exit_2_naming_them(tmp_path, capsys, flags, message):
    from fitloop.cli import main

    csv = _table(tmp_path)
    code = main(["train", str(csv), "--target", "y", "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_nodes_on_loopback(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n" + "".join(f"{i / 10},{i % 7}\n" for i in range(120)))
    port, run = _port(), tmp_path / "run"
    cmd = [sys.executable, "-m", "fitloop", "train", str(csv), "--target", "y", "--task", "regression",
           "--epochs", "2", "--out", str(run), "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    nodes = [subprocess.Popen([*cmd, "--node-rank", str(r)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path) for r in (0, 1)]
    outs = [n.communicate(timeout=240) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert "Distributed: 2 processes" in outs[0][0] + outs[1][0]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------- no process group


def test_shard_bounds_split_a_batch_evenly_first_ranks_first():
    assert [shard_bounds(5, r, 2) for r in (0, 1)] == [(0, 3), (3, 2)]
    assert [shard_bounds(1, r, 2) for r in (0, 1)] == [(0, 1), (1, 0)]
    assert [shard_bounds(16, r, 2) for r in (0, 1)] == [(0, 8), (8, 8)]


def test_sharded_batches_cover_the_global_batches_of_one_process():
    X, y = torch.arange(21.0).unsqueeze(1), torch.arange(21.0)
    one = TensorBatches(X, y, 8, shuffle=True)
    ranks = [ShardedBatches(X, y, 4, shuffle=True, rank=r, world=2) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == 3 and [ranks[0].global_rows(i) for i in range(3)] == [8, 8, 5]
    batches = [list(b.epoch(torch.Generator().manual_seed(3))) for b in (one, *ranks)]
    for (x1, _), (xa, _), (xb, _) in zip(*batches, strict=True):
        assert torch.equal(torch.cat([xa, xb]), x1)  # the same rows as one process's batch, rank order
    assert [len(x) for x, _ in batches[1]] == [4, 4, 3] and [len(x) for x, _ in batches[2]] == [4, 4, 2]
    resumed = list(ranks[1].epoch(torch.Generator().manual_seed(3), start=2))
    assert torch.equal(resumed[0][0], batches[2][2][0])


def test_tensor_dataset_subset_and_loader_are_in_memory_data():
    X, y = torch.randn(40, 3), torch.randn(40, 1)
    ds = TensorDataset(X, y)
    split, opts = in_memory(ds)
    assert torch.equal(split.X, X) and opts == {}
    split, _ = in_memory(Subset(ds, [3, 1]))
    assert torch.equal(split.X, X[[3, 1]]) and torch.equal(split.y, y[[3, 1]])
    _, opts = in_memory(DataLoader(Subset(ds, range(30)), batch_size=7, shuffle=True, drop_last=True))
    assert opts == {"batch_size": 7, "shuffle": True, "drop_last": True}
    b = make_batches(DataLoader(ds, batch_size=7, drop_last=True), train=True, batch_size=64, shuffle=True,
                     device=torch.device("cpu"))
    assert isinstance(b, TensorBatches) and len(b) == 5 and not b.shuffle
    assert in_memory(DataLoader(ds, batch_size=7, collate_fn=lambda items: items)) is None  # own collate
    assert in_memory(TensorDataset(X, y, y)) is None


def test_a_loader_over_a_tensor_dataset_trains_like_the_tensors():
    X, y = torch.randn(50, 3), torch.randn(50, 1)

    def fit(data):
        torch.manual_seed(0)
        t = fl.Trainer(torch.nn.Linear(3, 1), optimizer="adam", lr=0.01, epochs=3, batch_size=8, quiet=True)
        t.fit(data)
        return [p.detach() for p in t.model.parameters()]

    ref = fit((X, y))
    for data in (TensorDataset(X, y), DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True)):
        assert all(torch.equal(a, b) for a, b in zip(fit(data), ref, strict=True))


def test_launcher_passes_the_command_on_without_its_own_flags(monkeypatch):
    argv = ["train", "d.csv", "--target", "y", "--nproc", "2", "--max-restarts=1", "--strategy", "fsdp"]
    assert _worker_argv(argv, "runs/x") == ["train", "d.csv", "--target", "y", "--strategy", "fsdp",
                                             "--out", "runs/x"]
    assert _worker_argv([*argv, "--out", "r"], "runs/x")[-2:] == ["--out", "r"]
    from fitloop.cli.app import build_parser

    args = build_parser().parse_args(argv)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert wants_launch(args)
    monkeypatch.setenv("LOCAL_RANK", "0")  # a worker does not launch again
    assert not wants_launch(args)


def test_one_process_needs_no_group_and_bad_settings_are_named():
    from fitloop.config import TrainConfig
    from fitloop.distributed import is_main_process, rank, world_size
    from fitloop.distributed.group import RankFailure, diagnose, is_collective_error
    from fitloop.distributed.strategy import Strategy

    t = fl.Trainer(torch.nn.Linear(2, 1), quiet=True)
    assert t.strategy is None and Strategy.from_config(TrainConfig()) is None
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    assert diagnose(RuntimeError("Connection closed by peer"), "testing") is None  # no group: nothing to name
    assert is_collective_error(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer"))
    assert not is_collective_error(ValueError("bad input")) and not is_collective_error(RankFailure("x", [1]))
    with pytest.raises(ValueError, match="strategy: got 'zero'; choose 'auto', 'ddp' or 'fsdp'"):
        fl.Trainer(torch.nn.Linear(2, 1), strategy="zero")
    with pytest.raises(ValueError, match="dist_timeout: got 0; pass a number of seconds > 0"):
        fl.Trainer(torch.nn.Linear(2, 1), dist_timeout=0)


def test_a_dataloader_with_its_own_sampler_is_refused_under_several_processes():
    from torch.utils.data import WeightedRandomSampler

    from fitloop.data.batches import LoaderBatches

    ds = TensorDataset(torch.randn(40, 2), torch.randn(40, 1))
    weighted = DataLoader(ds, batch_size=8, sampler=WeightedRandomSampler(torch.ones(40), 40))
    with pytest.raises(ValueError, match=r"a DataLoader with its own sampler \(WeightedRandomSampler\) cannot be "
                                         r"sharded over the processes"):
        LoaderBatches(weighted, None, True, rank=0, world=2)
    assert len(LoaderBatches(weighted, None, True)) == 5  # one process: the user's loader as it is
    assert len(LoaderBatches(DataLoader(ds, batch_size=8, shuffle=True), None, True, rank=1, world=2)) == 3


def test_device_errors_in_a_distributed_run_say_what_is_missing(monkeypatch):
    from fitloop.distributed.group import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="got 'cuda', but CUDA is not available on this machine; pass device='cpu'"):
        _device("cuda")
    assert _device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match=r"this machine has 2 CUDA device\(s\), and local rank 3 would need cuda:3"):
        _device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _device("auto") == torch.device("cuda", 1)
