"""Scale check for the command line: `fitloop train` on a generated 1,000,000-row x 20-column CSV, 1 epoch.

Run: python -m bench.studies.cli_scale [--rows N] [--epochs 1] [--batch-size 64]. Runs the real command in a
subprocess (same as a user would) and reports wall time, the run's own timings (load, preprocess,
train) and the peak RSS of the child against the float32 feature matrix plus torch's baseline (the RSS
of a process that only imports fitloop and torch). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.studies.table_scale import write_csv  # noqa: E402


def child_peak_mib(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `cmd` and return (wall seconds, peak RSS in MiB of that child, result)."""
    # RUSAGE_CHILDREN's ru_maxrss is the max over all waited-for children: run each in a fresh
    # intermediate Python so the numbers don't mix.
    probe = ("import resource, subprocess, sys, json, time; t=time.perf_counter(); "
             "r=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps({'rc': r.returncode, 'out': r.stdout[-4000:], 'err': r.stderr[-4000:], "
             "'wall': time.perf_counter()-t, "
             "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env)
    info = json.loads(r.stdout)
    return info["wall"], info["rss"], subprocess.CompletedProcess(cmd, info["rc"], info["out"], info["err"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.csv"
        t0 = time.perf_counter()
        write_csv(path, args.rows)
        gen_s = time.perf_counter() - t0
        libs = ("import fitloop.tabular.pipeline, torch, pyarrow.csv, pyarrow.compute, torchmetrics.functional, "
                "rich.table")
        _, base_rss, _ = child_peak_mib([sys.executable, "-c", libs], env)
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "fitloop", "train", str(path), "--target", "target", "--id", "id",
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--out", str(out)]
        wall, peak_rss, r = child_peak_mib(cmd, env)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            raise SystemExit(f"fitloop train failed with exit code {r.returncode}")
        run = json.loads((out / "run.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    n_rows, n_feat = sum(run["rows"].values()), run["features"]
    x_mib = n_rows * n_feat * 4 / 2**20
    t = run["timings"]
    print(f"rows={args.rows:,} csv={path.name} generated in {gen_s:.1f}s; epochs={args.epochs} "
          f"batch_size={args.batch_size}")
    print(f"rows per split: {run['rows']}, features: {n_feat}, parameters: {run['parameters']}")
    print(f"timings (run.json): load {t['load']:.2f}s, preprocess {t['preprocess']:.2f}s, "
          f"train {t['train']:.2f}s, total in-process {t['total']:.2f}s; wall incl. startup {wall:.2f}s")
    print(f"float32 X: {x_mib:.0f} MiB; import baseline RSS (torch, pyarrow, torchmetrics, rich): {base_rss:.0f} MiB")
    print(f"peak RSS {peak_rss:.0f} MiB = baseline + {peak_rss - base_rss:.0f} MiB "
          f"= baseline + {(peak_rss - base_rss) / x_mib:.2f}x X (target: <= 3x)")
    print(f"test: {json.dumps({k: round(v, 4) for k, v in metrics['metrics'].items()})}")
    print(f"baseline ({metrics['baseline_kind']}): "
          f"{json.dumps({k: round(v, 4) for k, v in metrics['baseline'].items()})}")


if __name__ == "__main__":
    main()
