"""Streamed tables, measured (issue 22 parts 6-7): `python -m bench.stream [--quick] [--json OUT]`.

Three studies, each in fresh processes so that one cannot hide another's memory:

**Throughput** on a table that fits in memory (`--rows` rows of `--cols` float32 columns and a target, in
row groups of 64k rows): samples per second of

* `raw scan`: pyarrow reading the same columns, every batch decoded into a float32 numpy matrix (the
  floor any Parquet reader pays; no shuffle, no model);
* `source`: a `fitloop.data.stream.ParquetSource` epoch (global two-level shuffle, prefetch thread,
  the default transform), no model;
* `streamed train`: `Trainer.fit` for one epoch on that source, a small MLP (`--cols` -> 32 -> 1, Adam);
* `in-memory train`: the same `Trainer.fit` on the same rows as tensors (fitloop's in-memory path);
* `streamed train (linear)`, `in-memory train (linear)`: the same two with the smallest model, `nn.Linear(--cols, 1)`.

The issue's targets: streamed train >= 80 % of the raw scan with a small model, and >= 0.8x the in-memory
train. Each arm runs `--rounds` times, interleaved; the best round counts (the machine is shared).

**Memory, enforced.** A generated Parquet table (`--table-gb` GiB of float32 in memory) is trained for one
epoch by the table workflow's streamed path (`fitloop.tabular.streaming.open_streamed`: the one-pass
preprocessor fit over every row, then `Trainer.fit` on the training split's `ParquetSource`, encoded batch
by batch) in a child process. The child reports its resident memory after the imports and the model
(`base`); this process then polls the child's `VmRSS` every 20 ms and SIGKILLs it, failing the benchmark,
when it exceeds `base + --limit-mb`. The table is at least 4x the limit (checked). Reported: the peak RSS
above `base` (the child's `VmHWM`, reset to `base` before the data is touched) and the samples per second.

**Streamed predict against the file's length** (`--only predict`): `predict_stream` of tables of
`--predict-rows` rows (10k, 400k, 2M) with a small MLP run, each in a child under the same watchdog; the
peak above `base` should not grow with the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROW_GROUP = 1 << 16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_table(path: Path, rows: int, cols: int, seed: int = 0) -> int:
    """A Parquet file of `rows` rows: `cols` float32 features and a float32 target (a noisy linear function
    of them), written row group by row group; returns its in-memory size in bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=cols).astype(np.float32)
    schema = pa.schema([*(pa.field(f"x{i}", pa.float32()) for i in range(cols)), pa.field("y", pa.float32())])
    blocks = [rng.standard_normal((ROW_GROUP, cols), dtype=np.float32) for _ in range(8)]  # reused: fast to write
    with pq.ParquetWriter(str(path), schema, compression="none", use_dictionary=False) as writer:
        for index, start in enumerate(range(0, rows, ROW_GROUP)):
            n = min(ROW_GROUP, rows - start)
            X = blocks[index % len(blocks)][:n]
            y = X @ weights + np.float32(0.01 * index)
            writer.write_table(pa.table([*X.T, y], schema=schema), row_group_size=ROW_GROUP)
    return rows * (cols + 1) * 4


# ------------------------------------------------------------------------------------------- throughput


def _raw_scan(path: str, columns: list[str]) -> float:
    """Rows per second of pyarrow reading `columns` into float32 matrices, batch by batch."""
    import numpy as np
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    rows = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP, columns=columns):
        matrix = np.empty((batch.num_rows, len(columns)), dtype=np.float32)
        for j, column in enumerate(batch.columns):
            matrix[:, j] = column.to_numpy()
        rows += batch.num_rows
    return rows / (time.perf_counter() - t0)


def _source_epoch(path: str, columns: list[str], batch: int) -> float:
    import torch

    from fitloop.data.stream import ParquetSource

    source = ParquetSource(path, columns=columns, target="y", batch_size=batch)
    batches = source.batches(train=True, batch_size=batch, shuffle=True, device=torch.device("cpu"))
    t0 = time.perf_counter()
    rows = sum(len(x) for x, _ in batches.epoch(torch.Generator().manual_seed(0)))
    return rows / (time.perf_counter() - t0)


def _train(data: object, cols: int, batch: int, rows: int, linear: bool = False) -> float:
    import torch

    from fitloop import TrainConfig, Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(cols, 1) if linear else \
        torch.nn.Sequential(torch.nn.Linear(cols, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    trainer = Trainer(model, loss="mse", optimizer="adam",
                      config=TrainConfig(epochs=1, batch_size=batch, quiet=True, guards=False, train_metrics=False))
    t0 = time.perf_counter()
    trainer.fit(data)
    return rows / (time.perf_counter() - t0)


def throughput_arm(arm: str, path: str, cols: int, batch: int) -> float:
    """One arm's rows per second (runs in a child process)."""
    import pyarrow.parquet as pq
    import torch

    from fitloop.data.stream import ParquetSource

    columns = [f"x{i}" for i in range(cols)]
    rows = pq.ParquetFile(path).metadata.num_rows
    if arm == "raw scan":
        return _raw_scan(path, columns)
    if arm == "source":
        return _source_epoch(path, columns, batch)
    linear = arm.endswith("(linear)")
    if arm.startswith("streamed train"):
        return _train(ParquetSource(path, columns=columns, target="y", batch_size=batch), cols, batch, rows, linear)
    table = pq.read_table(path)
    X = torch.from_numpy(_matrix(table, columns))
    y = torch.from_numpy(table.column("y").to_numpy().copy())
    return _train((X, y), cols, batch, rows, linear)


def _matrix(table: object, columns: list[str]) -> object:
    import numpy as np

    out = np.empty((table.num_rows, len(columns)), dtype=np.float32)  # type: ignore[attr-defined]
    for j, name in enumerate(columns):
        out[:, j] = table.column(name).to_numpy()  # type: ignore[attr-defined]
    return out


ARMS = ("raw scan", "source", "streamed train", "in-memory train", "streamed train (linear)",
        "in-memory train (linear)")


def throughput(tmp: Path, rows: int, cols: int, batch: int, rounds: int) -> dict[str, float]:
    path = tmp / "fits.parquet"
    write_table(path, rows, cols)
    best: dict[str, float] = {}
    for round_ in range(rounds):
        for arm in ARMS:
            out = subprocess.run([sys.executable, "-m", "bench.stream", "--child-arm", arm, str(path), str(cols),
                                  str(batch)], capture_output=True, text=True, cwd=ROOT, check=True)
            value = float(out.stdout.strip().splitlines()[-1])
            best[arm] = max(best.get(arm, 0.0), value)
            log(f"round {round_ + 1}: {arm:16s} {value:12,.0f} rows/s")
    return best


# ---------------------------------------------------------------------------------------------- memory


def _status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(path: str, batch: int) -> None:
    """The streamed table workflow on `path` for one epoch (runs in the watched child process)."""
    import torch

    from fitloop import TrainConfig, Trainer
    from fitloop.tabular.config import resolve_run_config
    from fitloop.tabular.streaming import open_streamed

    cfg = resolve_run_config({"data.path": path, "data.target": "y", "train.quiet": True})
    base = _status_kib("self", "VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here on: what the data adds
    print(f"BASE {base}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        table = open_streamed(cfg, run_dir)
    t_fit = time.perf_counter() - t0
    source = table.source("train", batch)
    torch.manual_seed(0)
    width = len(table.preprocessor.feature_names)  # a tiny model: its memory is not the data's
    model = torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    trainer = Trainer(model, loss="mse", optimizer="adam",  # no train metrics, as a streamed table run
                      config=TrainConfig(epochs=1, batch_size=batch, quiet=True, guards=False, train_metrics=False))
    t1 = time.perf_counter()
    trainer.fit(source)
    seconds = time.perf_counter() - t1
    rows = table.fit.rows["train"]
    print(json.dumps({"base_kib": base, "peak_above_base_kib": _status_kib("self", "VmHWM") - base,
                      "train_rows": rows, "fit_pass_s": t_fit, "epoch_s": seconds, "rows_per_s": rows / seconds}),
          flush=True)


def memory(tmp: Path, table_gb: float, limit_mb: int, batch: int) -> dict[str, object]:
    cols = 31
    rows = int(table_gb * 2**30 / ((cols + 1) * 4))
    path = tmp / "big.parquet"
    t0 = time.perf_counter()
    size = write_table(path, rows, cols)
    log(f"wrote {rows:,} rows ({size / 2**30:.2f} GiB in memory, {path.stat().st_size / 2**30:.2f} GiB on disk) "
        f"in {time.perf_counter() - t0:.0f}s")
    if size < 4 * limit_mb * 2**20:
        raise SystemExit(f"the table ({size / 2**20:.0f} MiB) must be at least 4x the limit ({limit_mb} MiB)")
    result, peak_mib = _watched(["--child-memory", str(path), str(batch)], limit_mb)
    return {**result, "table_gib": size / 2**30, "limit_mib": limit_mb, "watchdog_peak_above_base_mib": peak_mib,
            "rows": rows}


def _watched(child_args: list[str], limit_mb: int) -> tuple[dict[str, object], float]:
    """Run `python -m bench.stream CHILD_ARGS` under the watchdog: the child prints `BASE <KiB>` once its
    imports are done, then its result as a JSON line; it is SIGKILLed (and the benchmark fails) when its
    resident memory exceeds that base plus `limit_mb`. Returns the result and the highest RSS seen above
    the base, in MiB."""
    child = subprocess.Popen([sys.executable, "-m", "bench.stream", *child_args], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    assert child.stdout is not None
    base = int(child.stdout.readline().split()[1])
    limit_kib = base + limit_mb * 1024
    highest = 0
    while child.poll() is None:
        try:
            rss = _status_kib(child.pid, "VmRSS")
        except (OSError, KeyError):
            break
        highest = max(highest, rss)
        if rss > limit_kib:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            raise SystemExit(f"FAILED: resident memory {rss / 1024:.0f} MiB exceeded base {base / 1024:.0f} MiB + "
                             f"limit {limit_mb} MiB; the child was killed")
        time.sleep(0.02)
    result = json.loads(child.stdout.read().strip().splitlines()[-1])
    if child.wait() != 0:
        raise SystemExit(f"FAILED: the child exited {child.returncode}")
    return result, (highest - base) / 1024


# -------------------------------------------------------------------------------------------- predict


def predict_child(run: str, path: str, out: str) -> None:
    """`fitloop.tabular.streaming.predict_stream` of `path` with the run at `run` (the watched child)."""
    from fitloop.tabular.runs import load_run
    from fitloop.tabular.streaming import predict_stream

    loaded = load_run(run)
    base = _status_kib("self", "VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here on: what the data adds
    print(f"BASE {base}", flush=True)
    t0 = time.perf_counter()
    rows, _ = predict_stream(loaded, path, out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": rows, "peak_above_base_kib": _status_kib("self", "VmHWM") - base, "seconds": seconds,
                      "rows_per_s": rows / seconds}), flush=True)


def predict_memory(tmp: Path, sizes: list[int], cols: int, limit_mb: int) -> dict[str, object]:
    """Streamed predict's peak memory against the file's length: a small MLP run (trained here on 20,000
    rows; the model's own memory is not the study's), then `predict_stream` on tables of `sizes` rows of
    `cols` float32 columns in 64k-row row groups, each in a watched child."""
    import fitloop.tabular as ft

    write_table(tmp / "train.parquet", 20_000, cols)
    settings: dict[str, Any] = {"model.kind": "mlp"}
    run = ft.train(str(tmp / "train.parquet"), target="y", out=tmp / "run", epochs=1, quiet=True, **settings).run_dir
    results: dict[str, object] = {}
    for rows in sizes:
        path = tmp / f"predict-{rows}.parquet"
        write_table(path, rows, cols)
        result, peak_mib = _watched(["--child-predict", str(run), str(path), str(tmp / "out.parquet")], limit_mb)
        results[str(rows)] = {**result, "watchdog_peak_above_base_mib": peak_mib}
        log(f"predict {rows:,} rows: peak {int(str(result['peak_above_base_kib'])) / 1024:.1f} MiB above base")
        path.unlink()
    return results


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child-arm":
        print(throughput_arm(args[1], args[2], int(args[3]), int(args[4])))
        return 0
    if args and args[0] == "--child-memory":
        memory_child(args[1], int(args[2]))
        return 0
    if args and args[0] == "--child-predict":
        predict_child(args[1], args[2], args[3])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller table and one round")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the throughput table")
    parser.add_argument("--cols", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--table-gb", type=float, default=1.5, help="the memory study's table, GiB in memory")
    parser.add_argument("--limit-mb", type=int, default=384, help="memory allowed above the child's base")
    parser.add_argument("--predict-rows", default="10000,400000,2000000",
                        help="the streamed predict study's table sizes (comma-separated rows)")
    parser.add_argument("--only", choices=("throughput", "memory", "predict"))
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    opts = parser.parse_args(args)
    if opts.quick:
        opts.rows, opts.rounds, opts.table_gb, opts.limit_mb = 500_000, 1, 0.4, 96
    results: dict[str, object] = {"batch": opts.batch}
    with tempfile.TemporaryDirectory() as tmp:
        if opts.only in (None, "throughput"):
            speed = throughput(Path(tmp), opts.rows, opts.cols, opts.batch, opts.rounds)
            results["throughput_rows_per_s"] = speed
            results["streamed_vs_raw"] = speed["streamed train"] / speed["raw scan"]
            results["streamed_vs_in_memory"] = speed["streamed train"] / speed["in-memory train"]
            results["source_vs_raw"] = speed["source"] / speed["raw scan"]
            results["linear_streamed_vs_raw"] = speed["streamed train (linear)"] / speed["raw scan"]
            results["linear_streamed_vs_in_memory"] = (speed["streamed train (linear)"]
                                                       / speed["in-memory train (linear)"])
        if opts.only in (None, "memory"):
            results["memory"] = memory(Path(tmp), opts.table_gb, opts.limit_mb, max(opts.batch, 4096))
        if opts.only in (None, "predict"):
            sizes = [int(rows) for rows in opts.predict_rows.split(",")]
            results["predict_memory"] = predict_memory(Path(tmp), sizes, opts.cols, opts.limit_mb)
    print(json.dumps(results, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
