"""Start-up of the command line: `fitloop train` launch to first step, and `fitloop predict`, vs `import torch`.

Run: python bench/startup.py [--rounds 5] [--rows 300] [--before /path/to/other/checkout]

Each round runs, back to back in fresh processes: `python -c "import torch"`, `fitloop train` on a
generated table of `--rows` rows x 10 columns (the default settings, `--epochs 3`), the same with
`FITLOOP_FASTPATH=0` (every shortcut off, so torch._dynamo is imported again) and, with `--before`,
the same command from another checkout (e.g. the main branch) and `fitloop predict` on the run.
"Launch to first step" is `run.json`'s `timings.launch_to_first_step` (from the process's start,
read from /proc); predict is its whole wall time. Target (issue 15): both <= `import torch` + 1 s.
Reported: median seconds over the rounds. `--importtime` also prints the largest imports of one train.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


CPU: dict[str, list[float]] = {}  # CPU seconds (user + sys) of each command, by arm


def _wall(cmd: list[str], env: dict[str, str], arm: str = "") -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # cwd: a neutral directory, so `python -m fitloop` imports the checkout on PYTHONPATH (not the cwd's)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {r.stderr[-2000:]}")
    if arm:
        CPU.setdefault(arm, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--before", default=None, help="another checkout of fitloop to compare with")
    ap.add_argument("--importtime", action="store_true")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    py = sys.executable
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FITLOOP_FASTPATH")}
    env = {**base_env, "PYTHONPATH": str(ROOT)}
    arms: dict[str, dict[str, str]] = {"train": env, "train FITLOOP_FASTPATH=0": {**env, "FITLOOP_FASTPATH": "0"}}
    if args.before:
        arms["train (before)"] = {**base_env, "PYTHONPATH": str(Path(args.before).resolve())}
    times: dict[str, list[float]] = {k: [] for k in ["import torch", *arms, *(f"{a} wall" for a in arms),
                                                     "predict"]}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(args.rows, 10))
        y = X @ rng.normal(size=10) + 0.1 * rng.normal(size=args.rows)
        csv = Path(tmp) / "t.csv"
        header = ",".join([f"x{j}" for j in range(10)] + ["y"])
        np.savetxt(csv, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.5f")
        for r in range(args.rounds):
            times["import torch"].append(_wall([py, "-c", "import torch"], base_env, "import torch"))
            for name, e in arms.items():
                out = Path(tmp) / f"run-{r}-{len(name)}"
                cmd = [py, "-m", "fitloop", "train", str(csv), "--target", "y", "--epochs", "3", "--out", str(out),
                       "-q"]
                times[f"{name} wall"].append(_wall(cmd, e, name))
                info = json.loads((out / "run.json").read_text())
                t = info["timings"]
                # from the process's start where run.json has it; an older checkout only counts from main()
                times[name].append(t.get("launch_to_first_step", t["to_first_step"]))
                times.setdefault(f"{name} from main", []).append(t["to_first_step"])
                if "launch_to_first_step_cpu" in t:
                    times.setdefault(f"{name} cpu", []).append(t["launch_to_first_step_cpu"])
                if name == "train":
                    run = out
            times["predict"].append(_wall([py, "-m", "fitloop", "predict", str(run), str(csv), "-o",
                                           str(Path(tmp) / "p.csv"), "-q"], env, "predict"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items() if v), flush=True)
        if args.importtime:
            r_ = subprocess.run([py, "-X", "importtime", "-m", "fitloop", "train", str(csv), "--target", "y",
                                 "--epochs", "1", "--out", str(Path(tmp) / "imp"), "-q"], capture_output=True,
                                text=True, env=env)
            rows = []
            for line in r_.stderr.splitlines():
                if line.startswith("import time:") and "|" in line and "cumulative" not in line:
                    _, cum, name = line.split("|")
                    if len(name) - len(name.lstrip()) <= 2:  # top-level imports only
                        rows.append((int(cum), name.strip()))
            print("largest top-level imports (cumulative us):")
            for cum, name in sorted(rows, reverse=True)[:12]:
                print(f"  {cum / 1e6:6.3f}s  {name}")
    med = {k: statistics.median(v) for k, v in times.items() if v}
    torch_s = med["import torch"]
    lines = [f"`python bench/startup.py --rounds {args.rounds} --rows {args.rows}`"
             f"{' --before ' + args.before if args.before else ''}: median seconds over {args.rounds} interleaved "
             f"rounds, {args.rows}-row x 10-column CSV, `fitloop train --epochs 3` (default settings otherwise).\n",
             "| measure | median s | minus `import torch` | target (<= import torch + 1 s) |", "|---|---|---|---|",
             f"| `python -c 'import torch'` (wall) | {torch_s:.2f} | | |"]
    for name in arms:
        lines.append(f"| {name}: launch to first step (run.json) | {med[name]:.2f} | {med[name] - torch_s:+.2f} | "
                     f"{'PASS' if med[name] <= torch_s + 1 else 'FAIL'} |")
        lines.append(f"| {name}: main() to first step (run.json `to_first_step`) | {med[name + ' from main']:.2f} "
                     f"| {med[name + ' from main'] - torch_s:+.2f} | |")
        lines.append(f"| {name}: whole command (wall) | {med[name + ' wall']:.2f} | "
                     f"{med[name + ' wall'] - torch_s:+.2f} | |")
    lines.append(f"| predict: whole command (wall) | {med['predict']:.2f} | {med['predict'] - torch_s:+.2f} | "
                 f"{'PASS' if med['predict'] <= torch_s + 1 else 'FAIL'} |")
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    torch_cpu = cpu["import torch"]
    lines += ["", "CPU seconds (user + sys; steadier than wall time on a shared machine):", "",
              "| measure | median CPU s | minus `import torch` | target (<= import torch + 1 s) |", "|---|---|---|---|",
              f"| `python -c 'import torch'` | {torch_cpu:.2f} | | |"]
    for name in arms:
        if f"{name} cpu" in med:
            v = med[f"{name} cpu"]
            lines.append(f"| {name}: launch to first step (run.json `launch_to_first_step_cpu`) | {v:.2f} | "
                         f"{v - torch_cpu:+.2f} | {'PASS' if v <= torch_cpu + 1 else 'FAIL'} |")
        lines.append(f"| {name}: whole command | {cpu[name]:.2f} | {cpu[name] - torch_cpu:+.2f} | |")
    lines.append(f"| predict: whole command | {cpu['predict']:.2f} | {cpu['predict'] - torch_cpu:+.2f} | "
                 f"{'PASS' if cpu['predict'] <= torch_cpu + 1 else 'FAIL'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
