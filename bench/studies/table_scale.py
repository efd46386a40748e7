"""Scale check for fitloop.tabular.columns: 1,000,000 rows x 20 columns (numeric + categorical, some missing).

Run: python -m bench.studies.table_scale [--rows N]. Prints load time, preprocess time and peak RSS vs the
size of the float32 feature matrix. Not a test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_csv(path: Path, rows: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Write the synthetic CSV in chunks so generation does not inflate the peak RSS."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    cities = np.array([f"city_{i}" for i in range(30)])
    colors = np.array(["red", "green", "blue", "black", "white"])
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        cols: dict[str, pa.Array] = {"id": pa.array(np.arange(start, start + n))}
        for j in range(13):
            v = rng.normal(j, 1 + j, n)
            mask = rng.random(n) < 0.02 if j % 3 == 0 else None  # ~2% missing in some columns
            cols[f"num_{j}"] = pa.array(v, mask=mask)
        cols["int_0"] = pa.array(rng.integers(0, 100, n))
        cols["city"] = pa.array(cities[rng.integers(0, len(cities), n)], mask=rng.random(n) < 0.01)
        cols["color"] = pa.array(colors[rng.integers(0, len(colors), n)])
        cols["flag"] = pa.array(rng.random(n) < 0.3)
        cols["grade"] = pa.array(np.array(list("ABCD"))[rng.integers(0, 4, n)])
        cols["target"] = pa.array(cols["num_1"].to_numpy(zero_copy_only=False) * 2 + rng.normal(0, 1, n))
        batch = pa.table(cols)
        if writer is None:
            writer = pcsv.CSVWriter(str(path), batch.schema)
        writer.write_table(batch)
    assert writer is not None
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()

    import torch  # noqa: F401  (import cost is part of the baseline, not of the pipeline)

    from fitloop.tabular import Table

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.csv"
        t0 = time.perf_counter()
        write_csv(path, args.rows)
        gen_s = time.perf_counter() - t0
        size_mib = path.stat().st_size / 2**20
        base = rss_mib()
        table = Table.read(path, target="target", id="id")
        after_load = rss_mib()
        t0 = time.perf_counter()
        prep = table.prepare(fractions=(0.8, 0.1, 0.1), seed=0)
        prep_s = time.perf_counter() - t0
        peak = rss_mib()
    n_rows = sum(s.X.shape[0] for s in prep.splits.values())
    n_feat = len(prep.feature_names)
    x_mib = n_rows * n_feat * 4 / 2**20
    print(f"rows={args.rows:,} columns={len(table.columns)} csv={size_mib:.0f} MiB "
          f"(generated in {gen_s:.1f}s)")
    print(f"task={table.task} features={n_feat} splits={ {k: v.X.shape[0] for k, v in prep.splits.items()} }")
    print(f"load:       {table.load_seconds:.2f} s")
    print(f"preprocess: {prep_s:.2f} s (fit on train + transform all splits)")
    print(f"float32 X:  {x_mib:.0f} MiB total over splits")
    print(f"peak RSS:   baseline {base:.0f} MiB, after load {after_load:.0f} MiB, peak {peak:.0f} MiB")
    print(f"peak - baseline = {peak - base:.0f} MiB = {(peak - base) / x_mib:.2f}x X "
          f"(of which arrow table after load: {after_load - base:.0f} MiB)")
    for note in prep.notes:
        print("note:", note)


if __name__ == "__main__":
    main()
