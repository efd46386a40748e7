"""fitloop benchmark suite: `python -m bench [--quick] [--rounds N] [--only W2[,W3]] [--no-studies]`.

Runs every arm of every workload in the same process, interleaved round by round, then import-time and
peak-memory probes in subprocesses, then the side studies (threads, fused optimizers, loop details,
torch.compile), and rewrites BENCHMARKS.md at the repository root.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ------------------------------------------------------------------------------------ import time


def import_times(n: int) -> dict:
    def t(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        return time.perf_counter() - t0

    # `import fitloop` is lazy (PEP 562) and does not import torch; touching `fitloop.Trainer` imports
    # torch and every module a training run needs: that is the figure compared with `import torch`.
    res = {"python": [], "torch": [], "fitloop": [], "fitloop_lazy": []}
    t("import torch")  # warm the page cache
    for _ in range(n):  # interleaved
        res["python"].append(t("pass"))
        res["torch"].append(t("import torch"))
        res["fitloop"].append(t("import fitloop; fitloop.Trainer; fitloop.split; fitloop.load"))
        res["fitloop_lazy"].append(t("import fitloop"))
    out = {k: st.median(v) for k, v in res.items()}
    out["fitloop_minus_torch"] = st.median([f - tt for f, tt in zip(res["fitloop"], res["torch"])])
    out["n"] = n
    fl_imports_torch = subprocess.run(
        [sys.executable, "-c", "import sys, fitloop; print('torch' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out["fitloop_imports_torch"] = fl_imports_torch
    return out


# ----------------------------------------------------------------------------------------- memory


def memory_probe(wname: str, arms: list[str], reps: int) -> dict:
    out = {}
    for arm in arms:
        runs = []
        for _ in range(reps):
            p = subprocess.run([sys.executable, "-m", "bench.memprobe", wname, arm], cwd=ROOT,
                               capture_output=True, text=True)
            if p.returncode != 0:
                out[arm] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
                break
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        else:
            out[arm] = {k: min(r[k] for r in runs) for k in ("base_kib", "peak_kib", "train_kib")}
        log(f"  memory {wname}/{arm}: {out[arm]}")
    return out


# --------------------------------------------------------------------------------------- main runs


def run_workload(wl, arms: dict, rounds: int) -> dict:
    import torch

    from .side_studies import _sub
    from .workloads import score

    default_threads = torch.get_num_threads()
    wl.data()
    # untimed warm-up of every arm on a short version (lazy init, allocator, MKL/oneDNN kernels)
    short = _sub(wl, epochs=1, n_train=min(wl.n_train, 4096))
    for fn in arms.values():
        torch.set_num_threads(default_threads)
        fn(short, short.model())
    names = list(arms)
    rec = {a: {"time": [], "epoch_loss": [], "score": None, "threads": []} for a in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate start to spread drift
        for a in order:
            torch.set_num_threads(default_threads)  # an arm may change it; each starts from default
            gc.collect()
            model = wl.model()
            res = arms[a](wl, model)
            rec[a]["time"].append(res["time"])
            rec[a]["epoch_loss"].append(res["epoch_loss"])
            rec[a]["threads"].append(torch.get_num_threads())
            if rec[a]["score"] is None:
                rec[a]["score"] = score(wl, model)
        log(f"  {wl.name} round {r + 1}/{rounds}: " +
            ", ".join(f"{a}={rec[a]['time'][-1]:.3f}s" for a in names))
    torch.set_num_threads(default_threads)
    steps = wl.steps
    hand = rec["hand"]["time"]
    rows = []
    for a in names:
        ts = rec[a]["time"]
        rows.append({
            "arm": a,
            "median_s": st.median(ts), "min_s": min(ts), "max_s": max(ts),
            "ratio_hand": st.median([x / h for x, h in zip(ts, hand)]),
            "ratio_min": min(x / h for x, h in zip(ts, hand)),
            "ratio_max": max(x / h for x, h in zip(ts, hand)),
            "us_step": st.median(ts) / steps * 1e6,
            "overhead_us": st.median([(x - h) / steps * 1e6 for x, h in zip(ts, hand)]),
            "epoch_loss": rec[a]["epoch_loss"][-1],
            "threads_after": rec[a]["threads"][-1],
            **(rec[a]["score"] or {}),
        })
    if "hand_fused" in rec:
        hf = rec["hand_fused"]["time"]
        for row in rows:
            row["ratio_fused"] = st.median([x / h for x, h in zip(rec[row["arm"]]["time"], hf)])
    return {"name": wl.name, "title": wl.title, "steps": steps, "params": wl.n_params(),
            "n_train": wl.n_train, "batch": wl.bs, "rounds": rounds, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2 rounds, shorter side studies")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per workload (default 5; quick 2)")
    ap.add_argument("--only", default=None, help="comma-separated workloads, e.g. W2 or W1,W3")
    ap.add_argument("--no-studies", action="store_true", help="skip threads/fused/micro/compile studies")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile study and arm")
    ap.add_argument("--compile-arm", action="store_true", help="also run fitloop with compile=True")
    ap.add_argument("--threads", type=int, default=None,
                    help="pin every arm to N intra-op threads (default: torch's default, as a user gets it)")
    ap.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="markdown report path")
    ap.add_argument("--json", default=None, help="also dump raw results as JSON here")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only re-render the markdown from a --json dump of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        from . import report

        Path(args.output).write_text(report.render(json.loads(Path(args.render).read_text())))
        log(f"wrote {args.output}")
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from . import report, side_studies
    from .workloads import ARMS, WORKLOADS, fitloop_available, fitloop_compile_loop

    rounds = args.rounds or (2 if args.quick else 5)
    only = [w.strip().upper() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    t_start = time.perf_counter()
    results: dict = {"machine": machine_info(), "rounds": rounds, "quick": args.quick, "only": only}
    ok, why = fitloop_available()
    results["fitloop"] = {"available": ok, "reason": why}
    arms = dict(ARMS)
    if not ok:
        log(f"SKIPPING the fitloop arm: {why}")
        arms.pop("fitloop")
    elif args.compile_arm and not args.no_compile:
        arms["compile"] = fitloop_compile_loop

    log("import time ...")
    results["import"] = import_times(3 if args.quick else 7)
    log(f"  {results['import']}")

    results["workloads"] = {}
    for name in only:
        log(f"{name}: {WORKLOADS[name].title}")
        results["workloads"][name] = run_workload(WORKLOADS[name], arms, rounds)

    if "W2" in only:
        log("memory (W2, one subprocess per arm) ...")
        results["memory"] = memory_probe("W2", [a for a in arms if a != "compile"], 1 if args.quick else 2)

    if torch.cuda.is_available():
        from . import gpu

        log("GPU section (W2, W4 on the device) ...")
        results["gpu"] = gpu.run(rounds, log)

    if not args.no_studies:
        log("threads study ...")
        results["threads"] = side_studies.threads_study(rounds=2 if args.quick else 3, quick=args.quick, log=log)
        results["thread_sweep"] = side_studies.thread_sweep(rounds=2 if args.quick else 3, quick=args.quick,
                                                       log=log)
        log("fused study ...")
        results["fused"] = side_studies.fused_study(rounds=3 if args.quick else 5, quick=args.quick, log=log)
        log("micro study ...")
        results["micro"] = side_studies.micro_study(rounds=2 if args.quick else 5, quick=args.quick, log=log)
        if not args.no_compile:
            log("compile study ...")
            results["compile"] = side_studies.compile_study(steps=500 if args.quick else 1500,
                                                       rounds=2 if args.quick else 3, log=log)
    else:  # keep the studies of the last full run, so BENCHMARKS.md stays complete
        last = ROOT / "bench" / "last_results.json"
        if last.is_file():
            previous = json.loads(last.read_text())
            for key in ("threads", "threads_extra", "thread_sweep", "fused", "micro", "compile"):
                if key in previous:
                    results[key] = previous[key]
    torch.set_num_threads(results["machine"]["torch_threads"])
    try:
        results["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    results["elapsed_s"] = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    (ROOT / "bench" / "last_results.json").write_text(json.dumps(results, indent=1, default=str))
    Path(args.output).write_text(report.render(results))
    log(f"wrote {args.output} in {results['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
