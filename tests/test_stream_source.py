"""The streamed Parquet source (fitloop.data.stream): reading, the order, exactly-once, resume, ranks.

The SIGKILL and 2-process tests run this file as a script in child processes:

    python tests/test_stream_source.py train DATA OUT [--kill-at STEP] [--resume]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/test_stream_source.py ddp DATA OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.callbacks.base import Callback
from fitloop.callbacks.checkpoint import RunInterrupted
from fitloop.callbacks.fingerprints import data_fingerprint
from fitloop.checkpoint_format import ResumeMismatchError, load_checkpoint, serialize
from fitloop.data.batches import make_batches
from fitloop.data.gather import gather_rows
from fitloop.data.stream import ParquetSource, StreamBatches, StreamError, _BlockReader

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# rows of each row group, per file: uneven files and row groups, 1,000 rows in all
LAYOUT = [[100, 37, 250], [13], [200, 1, 99], [300]]


def write_files(folder: Path, layout: list[list[int]] = LAYOUT, seed: int = 0) -> int:
    """Parquet files `part-<i>.parquet` with the row groups of `layout`; columns `id` (the row's number in
    the files' order), `a`, `b` and the target `y` (a linear function of them plus noise). Returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    first = 0
    for index, groups in enumerate(layout):
        n = sum(groups)
        ids = np.arange(first, first + n)
        a, b = rng.normal(size=n), rng.normal(size=n)
        table = pa.table({"id": ids, "a": a, "b": b, "y": 2 * a - b + 0.1 * rng.normal(size=n)})
        with pq.ParquetWriter(folder / f"part-{index}.parquet", table.schema) as writer:
            offset = 0
            for size in groups:
                writer.write_table(table.slice(offset, size), row_group_size=size)
                offset += size
        first += n
    return first


def batches(source: ParquetSource, *, rank: int = 0, world: int = 1, shuffle: bool = True) -> StreamBatches:
    return source.batches(train=True, batch_size=None, shuffle=shuffle, device=CPU, rank=rank, world=world)


def ids_of(epoch) -> list[list[int]]:
    return [x[:, 0].long().tolist() for x, _ in epoch]


@pytest.fixture
def data(tmp_path) -> Path:
    write_files(tmp_path / "data")
    return tmp_path / "data"


# ------------------------------------------------------------------------------------------ reading


def test_a_file_a_directory_a_glob_and_a_list_read_the_same_rows(data):
    files = sorted(data.glob("*.parquet"))
    for path in (data, str(data / "*.parquet"), files):
        plan = ParquetSource(path, columns=["id"]).plan()
        assert plan.rows == 1000 and len(plan.blocks) == 8
        assert [(b.file, b.row_group, b.kept) for b in plan.blocks][:3] == [(0, 0, 100), (0, 1, 37), (0, 2, 250)]
    one = batches(ParquetSource(files[0], columns=["id"], target="y", batch_size=50), shuffle=False)
    assert sum(ids_of(one.epoch(None)), []) == list(range(387))


def test_hive_partitions_become_columns(tmp_path):
    table = pa.table({"id": np.arange(60), "x": np.arange(60) * 1.0, "y": np.zeros(60),
                      "year": np.repeat([2020, 2021, 2022], 20)})
    pq.write_to_dataset(table, tmp_path / "hive", partition_cols=["year"])
    source = ParquetSource(tmp_path / "hive", columns=["id", "year"], target="y", batch_size=7)
    x = torch.cat([x for x, _ in batches(source, shuffle=False).epoch(None)])
    assert sorted(x[:, 0].long().tolist()) == list(range(60))
    assert torch.equal(x[:, 1], 2020 + (x[:, 0] // 20))  # the partition key, per row


def test_block_rows_slices_row_groups(data):
    plan = ParquetSource(data, columns=["id"], block_rows=64).plan()
    assert [b.stop - b.start for b in plan.blocks[:5]] == [64, 36, 37, 64, 64]
    source = ParquetSource(data, columns=["id"], block_rows=64, buffer_rows=100, batch_size=10)
    assert sorted(sum(ids_of(batches(source).epoch(torch.Generator().manual_seed(1))), [])) == list(range(1000))


def test_errors_name_the_file_and_the_row_group(data, tmp_path):
    with pytest.raises(StreamError, match=r"part-0\.parquet: no column 'nope' \(its columns: a, b, id, y\)"):
        ParquetSource(data, columns=["a", "nope"]).plan()
    with pytest.raises(StreamError, match="no such file"):
        ParquetSource(tmp_path / "missing.parquet", columns=["a"]).plan()
    with pytest.raises(StreamError, match="the glob matches no file"):
        ParquetSource(str(tmp_path / "*.nothing"), columns=["a"]).plan()
    with pytest.raises(ValueError, match="the target 'a' is also one of the feature columns"):
        ParquetSource(data, columns=["a"], target="a")
    with pytest.raises(TypeError, match=r"columns is a list of column names, got one string \('a'\)"):
        ParquetSource(data, columns="a")
    with pytest.raises(ValueError, match="buffer_rows must be an integer >= 1, got 0"):
        ParquetSource(data, columns=["a"], buffer_rows=0)
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        ParquetSource(data, columns=["a"], workers=0)
    holes = tmp_path / "holes"
    holes.mkdir()
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0, None], "y": [0.0] * 4}), holes / "h.parquet", row_group_size=2)
    with pytest.raises(StreamError, match=r"h\.parquet: row group 1: column 'a' has 1 missing values"):
        list(batches(ParquetSource(holes, columns=["a"], target="y")).epoch(None))
    words = tmp_path / "words.parquet"
    pq.write_table(pa.table({"a": ["x", "y"], "y": [0.0, 1.0]}), words)
    with pytest.raises(StreamError, match="column 'a' is string, not numeric: pass a transform"):
        list(batches(ParquetSource(words, columns=["a"], target="y")).epoch(None))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(StreamError, match=r"bad\.parquet"):
        ParquetSource(broken, columns=["a"]).plan()


def test_a_truncated_row_group_is_named(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(4000) * 1.0}), path, row_group_size=1000)
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(2).column(0)
    raw = bytearray(path.read_bytes())
    start = column.data_page_offset
    raw[start: start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    path.write_bytes(bytes(raw))
    with pytest.raises(StreamError, match=r"t\.parquet: row group 2: cannot be read"):
        list(batches(ParquetSource(path, columns=["a"], batch_size=500), shuffle=False).epoch(None))


# ------------------------------------------------------------------------------------------ the order


def test_every_row_once_per_epoch_in_an_order_independent_of_the_world_size(data):
    source = ParquetSource(data, columns=["id"], buffer_rows=300)
    reference = batches(ParquetSource(data, columns=["id"], buffer_rows=300, batch_size=24))
    generator = torch.Generator().manual_seed(7)
    epochs = []
    for _ in range(2):  # successive epochs from one generator: different orders
        state = generator.get_state()
        one = ids_of(reference.epoch(generator))
        assert sorted(sum(one, [])) == list(range(1000)) and len(one) == len(reference) == 42
        for world in (2, 3, 4):
            source.batch_size = 24 // world if 24 % world == 0 else None
            if source.batch_size is None:
                continue
            ranks = []
            for rank in range(world):
                ranks.append(ids_of(batches(source, rank=rank, world=world).epoch(
                    torch.Generator().set_state(state))))
            assert all(len(r) == len(one) for r in ranks)  # every rank the same number of batches
            assert [sum(parts, []) for parts in zip(*ranks, strict=True)] == one  # rank shares, rank order
        epochs.append(sum(one, []))
    assert epochs[0] != epochs[1]


def test_the_order_does_not_depend_on_the_batch_size_the_prefetch_or_the_reader_threads(data):
    orders = []
    for batch_size, prefetch, workers in ((10, 0, 1), (64, 1, 1), (333, 3, 2), (7, 1, 4)):
        source = ParquetSource(data, columns=["id"], batch_size=batch_size, buffer_rows=250, prefetch=prefetch,
                               workers=workers)
        orders.append(sum(ids_of(batches(source).epoch(torch.Generator().manual_seed(3))), []))
    assert orders[0] == orders[1] == orders[2] == orders[3]
    assert sorted(orders[0]) == list(range(1000))
    windows = batches(ParquetSource(data, columns=["id"], buffer_rows=250)).windows(torch.Generator().manual_seed(3))
    assert all(w.rows <= 250 or len(w.blocks) == 1 for w in windows)  # bounded (a bigger block: alone)


def test_gather_rows_takes_whole_rows_in_order_whatever_the_dtype():
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    order = np.array([5, 0, 3, 3, 1])
    assert torch.equal(gather_rows(x, order), x[torch.from_numpy(order)])  # np.take(axis=0)
    assert torch.equal(gather_rows(x.to(torch.bfloat16), order), x.to(torch.bfloat16)[torch.from_numpy(order)])
    assert torch.equal(gather_rows(x.T, np.array([3, 0, 2])), x.T[[3, 0, 2]])  # not row-major: torch's indexing
    assert torch.equal(gather_rows(torch.arange(6), order), torch.tensor([5, 0, 3, 3, 1]))  # a 1-D target
    z = torch.complex(x, x).conj()  # a conjugate view: numpy cannot take it, torch can
    assert torch.equal(gather_rows(z, order), z[torch.from_numpy(order)])
    assert torch.equal(gather_rows(x, torch.from_numpy(order)), x[torch.from_numpy(order)])  # a tensor index
    taken = gather_rows(x, order)
    taken[0, 0] = -1.0  # a new tensor, not a view of x
    assert x[5, 0] == 20.0


def test_a_reader_threads_error_is_raised_in_the_training_thread_at_its_window(data):
    calls = []

    def transform(table: pa.Table) -> tuple[torch.Tensor, None]:
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise ValueError("bad value in the third block")
        return torch.from_numpy(table.column("id").to_numpy().astype(np.float32)[:, None]), None

    source = ParquetSource(data, columns=["id"], batch_size=10, buffer_rows=100, transform=transform, workers=2)
    with pytest.raises(ValueError, match=r"part-.*\.parquet: row group \d+: bad value in the third block"):
        for _ in batches(source).epoch(torch.Generator().manual_seed(0)):
            pass
    assert all(name.startswith("fitloop-stream-reader") for name in calls)
    assert not any(t.name.startswith("fitloop-stream-reader") for t in threading.enumerate())


def test_the_reader_thread_stops_when_the_epoch_is_left_early(data):
    source = ParquetSource(data, columns=["id"], batch_size=10, buffer_rows=100, prefetch=1)
    epoch = batches(source).epoch(torch.Generator().manual_seed(0))
    next(epoch)
    assert any(t.name.startswith("fitloop-stream-reader") for t in threading.enumerate())
    epoch.close()  # what a `break` out of the loop does
    assert not any(t.name.startswith("fitloop-stream-reader") for t in threading.enumerate())


def test_rows_are_shuffled_across_blocks_and_within_the_buffer(data):
    source = ParquetSource(data, columns=["id"], buffer_rows=400, batch_size=1000)
    delivered = np.asarray(sum(ids_of(batches(source).epoch(torch.Generator().manual_seed(0))), []))
    position = np.argsort(delivered)  # where each file row was delivered
    rho = np.corrcoef(np.arange(1000), position)[0, 1]  # both are ranks: Pearson's r on ranks is Spearman's
    assert abs(rho) < 0.5
    first = delivered[:100]
    assert len({int(np.searchsorted([0, 100, 137, 387, 400, 600, 601, 700, 1000], i, "right")) for i in first}) >= 2


def test_a_position_filter_is_counted_without_reading_and_applied_when_reading(data):
    def keep(file_index: int, row_group: int, offsets: np.ndarray) -> np.ndarray:
        key = (file_index * 1_000_003 + row_group * 10_007 + offsets) * 2654435761 % 2**32
        return key % 10 < 8

    source = ParquetSource(data, columns=["id"], rows=keep, batch_size=50, buffer_rows=200)
    plan = source.plan()
    assert 700 < plan.rows < 900
    got = sorted(sum(ids_of(batches(source).epoch(torch.Generator().manual_seed(0))), []))
    starts = np.cumsum([0] + [sum(g) for g in LAYOUT])
    expected = []
    for file_index, groups in enumerate(LAYOUT):
        first = starts[file_index]
        for group, size in enumerate(groups):
            expected += (first + np.flatnonzero(keep(file_index, group, np.arange(size)))).tolist()
            first += size
    assert got == expected and len(got) == plan.rows
    bad = ParquetSource(data, columns=["id"], rows=lambda f, g, offsets: offsets % 2)
    with pytest.raises(StreamError, match=r"part-0\.parquet: row group 0: the row filter returned int64 of shape "
                                          r"\(100,\); it must return a bool mask of shape \(100,\)"):
        bad.plan()


def test_a_transform_and_the_targets_dtype(data):
    def transform(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack([table["id"].to_numpy(), table["a"].to_numpy() * 2], 1))
        return x, torch.from_numpy(table["y"].to_numpy() > 0)

    source = ParquetSource(data, columns=["id", "a"], target="y", transform=transform, batch_size=100)
    got = make_batches(source, train=True, batch_size=8, shuffle=True, device=CPU, float_dtype=torch.float64,
                       task="binary")
    x, y = next(got.epoch(torch.Generator().manual_seed(0)))
    assert x.dtype == torch.float64 and y.dtype == torch.float64 and len(x) == 100  # the source's batch size
    short = ParquetSource(data, columns=["id"], transform=lambda table: (torch.zeros(1, 1), None))
    with pytest.raises(StreamError, match=r"part-0\.parquet: row group 0: the transform returned 1 rows of X for "
                                          r"100 rows; it must keep every row, in order"):
        list(batches(short, shuffle=False).epoch(None))

    def refuse(table: pa.Table) -> tuple[torch.Tensor, None]:
        if 650 in table["id"].to_pylist():
            raise ValueError("column 'a': a value beyond float32's range")
        return torch.zeros(table.num_rows, 1), None

    with pytest.raises(ValueError, match=r"part-2\.parquet: row group 2: column 'a': a value beyond float32's range"):
        list(batches(ParquetSource(data, columns=["id"], transform=refuse, batch_size=10)).epoch(None))


# ------------------------------------------------------------------------------------------ resume


def test_resuming_at_a_batch_reads_no_window_before_it(data, monkeypatch):
    source = ParquetSource(data, columns=["id"], buffer_rows=200, batch_size=25)
    full = ids_of(batches(source).epoch(torch.Generator().manual_seed(5)))
    read: list[int] = []
    original = StreamBatches._convert

    def counting(self, parts, order=None):
        read.append(sum(table.num_rows for _, table in parts) if order is None else len(order))
        return original(self, parts, order)

    monkeypatch.setattr(StreamBatches, "_convert", counting)
    for start in (0, 1, 17, 39, 40):
        read.clear()
        assert ids_of(batches(source).epoch(torch.Generator().manual_seed(5), start)) == full[start:]
        assert sum(read) == 1000 - 25 * start  # only the rows still to come are converted
    # at another world size: the same rows from the same global batch on, in the same global order
    source.batch_size = 5
    halves = [ids_of(batches(source, rank=r, world=5).epoch(torch.Generator().manual_seed(5), 17)) for r in range(5)]
    assert [sum(parts, []) for parts in zip(*halves, strict=True)] == full[17:]


def test_each_rank_reads_only_the_blocks_holding_its_rows(data, monkeypatch):
    read: list[tuple[int, int]] = []
    original = _BlockReader.read

    def counting(self, index):
        read.append(index)
        return original(self, index)

    monkeypatch.setattr(_BlockReader, "read", counting)
    source = ParquetSource(data, columns=["id"], batch_size=100, buffer_rows=1000)
    shares = {}
    for rank in (0, 1):  # unshuffled: global batches of 200 rows, rank 0 takes the first 100 of each
        mine = batches(source, rank=rank, world=2, shuffle=False)
        assert mine.filler[0].tolist() == [[0.0]]  # read once (block 0), for an empty share
        read.clear()
        shares[rank] = sum(ids_of(mine.epoch(None)), [])
        shares[f"read-{rank}"] = sorted(read)
    assert shares[0][:100] == list(range(100)) and shares[1][:100] == list(range(100, 200))
    assert shares["read-0"] == [0, 2, 4, 5, 6, 7] and shares["read-1"] == [1, 2, 3, 4, 7]  # of the 8 blocks


def test_the_fingerprint_tells_a_changed_file_set(data, tmp_path):
    before = ParquetSource(data, columns=["id"]).fingerprint()
    assert before == ParquetSource(str(data / "*.parquet"), columns=["id"]).fingerprint()
    moved = tmp_path / "moved"
    data.rename(moved)
    assert before == ParquetSource(moved, columns=["id"]).fingerprint()
    write_files(tmp_path / "other", [[100, 37, 250], [13], [200, 1, 99], [301]])
    after = ParquetSource(tmp_path / "other", columns=["id"]).fingerprint()
    assert after["rows"] == 1001 and after["files_sha256"] != before["files_sha256"]


class _SignalAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_optimizer_step(self, trainer, step):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_run_directory_resumes_mid_epoch_and_refuses_other_files(data, tmp_path):
    source = ParquetSource(data, columns=["a", "b"], target="y", buffer_rows=300)
    assert data_fingerprint(source) == source.fingerprint()  # what the checkpoint remembers of the data

    def trainer(run: Path, callbacks=()) -> fl.Trainer:
        torch.manual_seed(0)
        return fl.Trainer(nn.Linear(2, 1), loss="mse", optimizer="adam", epochs=3, batch_size=40, quiet=True,
                          threads=1, run_dir=str(run), callbacks=list(callbacks))

    full = trainer(tmp_path / "full")
    full.fit(source)
    with pytest.raises(RunInterrupted):
        trainer(tmp_path / "cut", [_SignalAt(37)]).fit(source)  # epoch 2, batch 12: checkpointed on SIGINT
    resumed = trainer(tmp_path / "cut")
    resumed.resume(source)
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True))
    write_files(tmp_path / "other", [[100, 37, 250], [13], [200, 1, 99], [301]])
    with pytest.raises(ResumeMismatchError, match=r"train data: files_sha256: '[0-9a-f]+' -> '[0-9a-f]+'; "
                                                  r"train data: rows: 1000 -> 1001"):
        trainer(tmp_path / "cut").resume(ParquetSource(tmp_path / "other", columns=["a", "b"], target="y",
                                                       buffer_rows=300))


def test_fit_evaluate_and_predict_take_a_source(data):
    source = ParquetSource(data, columns=["a", "b"], target="y", batch_size=50, buffer_rows=300)
    torch.manual_seed(0)
    trainer = fl.Trainer(nn.Linear(2, 1), loss="mse", optimizer="adam", lr=0.05, epochs=4, quiet=True, threads=1)
    history = trainer.fit(source, source)
    assert len(history) == 4 and history[-1]["val_loss"] < 0.1
    table = pq.read_table(data)
    X = torch.from_numpy(np.stack([table["a"].to_numpy(), table["b"].to_numpy()], 1)).float()
    expected = trainer.predict(X)
    assert torch.equal(trainer.predict(ParquetSource(data, columns=["a", "b"])), expected)  # the files' order
    assert trainer.evaluate(source)["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)


# ------------------------------------------------------------------------------------------ SIGKILL, 2 processes


class _Ids(nn.Module):
    """A linear model over (a, b) that records the row ids (column 0) of each training batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 1)
        self.seen: list[list[int]] = []

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.seen.append(x[:, 0].long().tolist())
        return self.lin(x[:, 1:])


class _SaveEachBatch(Callback):
    """Writes `trainer.state_dict()` (atomically) and the batch's ids after every batch; SIGKILLs itself
    at global step `kill_at`."""

    def __init__(self, out: Path, model: _Ids, kill_at: int | None):
        self.out, self.model, self.kill_at = out, model, kill_at

    def on_train_batch_end(self, trainer, step, loss):
        (self.out / "state.tmp").write_bytes(serialize(trainer.state_dict()))
        with open(self.out / "ids.jsonl", "a") as log:
            log.write(json.dumps({"epoch": trainer.state.epoch, "ids": self.model.seen[-1]}) + "\n")
        os.replace(self.out / "state.tmp", self.out / "state.pt")
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _stream_trainer(model: nn.Module, batch_size: int, callbacks=()) -> fl.Trainer:
    return fl.Trainer(model, loss="mse", optimizer="adam", lr=0.05, epochs=3, batch_size=batch_size, quiet=True,
                      threads=1, callbacks=list(callbacks))


def _source(data: str) -> ParquetSource:
    return ParquetSource(data, columns=["id", "a", "b"], target="y", buffer_rows=300)


def child_train(data: str, out: str, kill_at: int | None, resume: bool) -> None:
    """One process: train 3 epochs on the streamed files, saving after every batch (see _SaveEachBatch)."""
    out_dir = Path(out)
    model = _Ids()
    trainer = _stream_trainer(model, 40, [_SaveEachBatch(out_dir, model, kill_at)])
    if resume:
        trainer.load_state_dict(load_checkpoint(out_dir / "state.pt"))
    trainer.fit(_source(data))
    torch.save([p.detach().clone() for p in model.parameters()], out_dir / "params.pt")


def child_resume(data: str, out: str) -> None:
    """One rank of a torchrun job: continue OUT/state.pt (written by one process, global batch 40) with a
    global batch of 40 rows split over the processes."""
    from fitloop.distributed import rank, world_size

    model = _Ids()
    trainer = _stream_trainer(model, 40 // world_size())
    trainer.load_state_dict(load_checkpoint(Path(out) / "state.pt"))
    trainer.fit(_source(data))
    result = {"params": [p.detach().clone() for p in model.parameters()], "seen": model.seen}
    torch.save(result, Path(out) / f"resumed-{rank()}.pt")


def _without_the_first_39(file_index: int, row_group: int, offsets: np.ndarray) -> np.ndarray:
    return (offsets >= 39) | ((file_index, row_group) != (0, 0))


def child_ddp(data: str, out: str) -> None:
    """One rank of a torchrun job (or one process): 3 epochs with a global batch of 40 rows, of 961 rows (the
    filter leaves out ids 0-38): the last global batch has 1 row, rank 1's share of it is empty."""
    from fitloop.distributed import rank, world_size

    model = _Ids()
    trainer = _stream_trainer(model, 40 // world_size())
    train = ParquetSource(data, columns=["id", "a", "b"], target="y", buffer_rows=300, rows=_without_the_first_39)
    trainer.fit(train, _source(data))
    result = {"params": [p.detach().clone() for p in model.parameters()], "seen": model.seen,
              "history": [{k: v for k, v in e.items() if k != "time"} for e in trainer.history]}
    torch.save(result, Path(out) / f"ddp-{world_size()}-{rank()}.pt")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    return env


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *args], env=_env(), capture_output=True, text=True, timeout=120)


def _epochs(log: Path) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        seen.setdefault(entry["epoch"], []).extend(entry["ids"])
    return seen


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run_bit_for_bit_also_at_two_processes(data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    child_train(str(data), str(full), kill_at=None, resume=False)  # the reference, in this process
    killed = _run("train", str(data), str(cut), "--kill-at", "37")  # epoch 2 (25 batches an epoch), batch 12
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (cut / "params.pt").exists()
    wider = tmp_path / "wider"
    wider.mkdir()
    shutil.copy(cut / "state.pt", wider / "state.pt")
    resumed = _run("train", str(data), str(cut), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = torch.load(full / "params.pt"), torch.load(cut / "params.pt")
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # exactly once: every row id once per epoch, in the uninterrupted run's order, across the kill
    reference, joined = _epochs(full / "ids.jsonl"), _epochs(cut / "ids.jsonl")
    assert joined == reference and sorted(reference) == [0, 1, 2]
    for ids in joined.values():
        assert sorted(ids) == list(range(1000))
    digest = [hashlib.sha256(json.dumps(ids).encode()).hexdigest() for ids in joined.values()]
    assert len(set(digest)) == 3  # a new order every epoch
    # the same checkpoint resumed by 2 processes: the rest of the run's rows, in the same global batches
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          __file__, "resume", str(data), str(wider)], env=_env(), capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    r0, r1 = (torch.load(wider / f"resumed-{rank}.pt") for rank in (0, 1))
    batches_after = [json.loads(line)["ids"] for line in (full / "ids.jsonl").read_text().splitlines()][37:]
    assert [x + y for x, y in zip(r0["seen"], r1["seen"], strict=True)] == batches_after
    for x, y, z in zip(r0["params"], r1["params"], a, strict=True):
        assert torch.equal(x, y) and torch.allclose(x, z, atol=1e-5), (x - z).abs().max()


@pytest.mark.slow
def test_two_gloo_processes_equal_one(data, tmp_path):
    child_ddp(str(data), str(tmp_path))  # the one-process reference, in this process
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          __file__, "ddp", str(data), str(tmp_path)], env=_env(), capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    ref, r0, r1 = (torch.load(tmp_path / f"ddp-{name}.pt") for name in ("1-0", "2-0", "2-1"))
    for a, b, c in zip(r0["params"], r1["params"], ref["params"], strict=True):
        assert torch.equal(a, b)  # DDP keeps the ranks identical
        assert torch.allclose(a, c, atol=1e-5), (a - c).abs().max()
    # each global batch: rank 0's share then rank 1's is the one-process batch; rank 1 has no row of each
    # epoch's last batch (1 row) and steps on the filler row (id 39, the first kept) with weight 0
    assert len(r0["seen"]) == len(r1["seen"]) == len(ref["seen"]) == 3 * 25
    for batch, (x, y, one) in enumerate(zip(r0["seen"], r1["seen"], ref["seen"], strict=True)):
        assert (x == one and y == [39]) if batch % 25 == 24 else x + y == one
    assert sorted(sum(ref["seen"][:25], [])) == list(range(39, 1000))
    for h, g in zip(r0["history"], ref["history"], strict=True):
        assert h.keys() == g.keys() and all(h[k] == pytest.approx(g[k], rel=1e-4, abs=1e-6) for k in h)


if __name__ == "__main__":
    command, data_dir, out_dir, *options = sys.argv[1:]
    if command == "train":
        kill = int(options[options.index("--kill-at") + 1]) if "--kill-at" in options else None
        child_train(data_dir, out_dir, kill, "--resume" in options)
    elif command == "resume":
        child_resume(data_dir, out_dir)
    else:
        child_ddp(data_dir, out_dir)
