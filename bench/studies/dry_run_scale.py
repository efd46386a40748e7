"""Scale check for `fitloop train --dry-run` on a generated 1,000,000-row x 20-column CSV.

The CSV is the one bench/studies/table_scale.py writes.

Run: python -m bench.studies.dry_run_scale [--rows N] [--repeats 2]. Runs the real command in a subprocess, as a
user would, and reports the wall time (imports included) and the plan's own read/decide times, next to a
subprocess that only imports the same libraries (the start-up floor). Not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.studies.table_scale import write_csv  # noqa: E402


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.csv"
        t0 = time.perf_counter()
        write_csv(path, args.rows)
        mib = path.stat().st_size / 2**20
        print(f"rows={args.rows:,} csv {mib:.0f} MiB generated in {time.perf_counter() - t0:.1f}s")
        libs = "import fitloop.tabular.pipeline, torch, pyarrow.csv, pyarrow.compute, rich.table"
        floor_cmd = [sys.executable, "-c", libs]
        cmd = [sys.executable, "-m", "fitloop", "train", str(path), "--target", "target", "--id", "id", "--dry-run",
               "--config-out", str(Path(tmp) / "config.toml"), "--overwrite"]
        for i in range(args.repeats):  # interleaved: the floor and the dry run back to back
            floor, _ = _timed(floor_cmd, env)
            wall, r = _timed(cmd, env)
            if r.returncode != 0:
                raise SystemExit(f"dry run failed ({r.returncode}): {r.stderr}")
            m = re.search(r"read in ([\d.]+)s, decided in ([\d.]+)s", r.stdout)
            read, decide = (float(m[1]), float(m[2])) if m else (float("nan"), float("nan"))
            print(f"round {i + 1}: dry run wall {wall:.2f}s (read {read:.2f}s, decide {decide:.2f}s); "
                  f"import-only floor {floor:.2f}s")
        print(r.stdout)


if __name__ == "__main__":
    main()
