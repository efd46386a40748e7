# ruff: noqa: E501  (markdown prose in f-strings)
"""The Trainer's compiled step (``compile="step"``) against the hand loop: ``python -m bench.compiled``.

For each workload, in one process:
  1. cold fits from the same initial weights: ``fl.Trainer(compile="step")`` and the default eager Trainer. The
     difference of their wall times, minus the steady-state difference, is the compile time; their validation
     metrics (scored identically by ``workloads.score``) show the compiled step trains the same model.
  2. ``--rounds`` interleaved rounds (order rotated): the workload's ``hand`` arm (a fresh model each round), the
     eager Trainer and the compiled Trainer, each Trainer *continuing* with one more ``fit`` of the workload's
     epochs (the compiled graph is warm: steady state). Ratio = arm / hand within the round; median [min-max].
  3. a second process with the same ``TORCHINDUCTOR_CACHE_DIR`` repeats the cold compiled fit: the compile time
     when torch's on-disk caches (FX graph cache, AOTAutogradCache) are warm.

Writes bench/COMPILED.md (appended to BENCHMARKS.md by ``python -m bench``) and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fitloop_compiled_inductor_")

import torch  # noqa: E402

from bench.workloads import SEED, WORKLOADS, hand_loop, score  # noqa: E402

OUT = Path(__file__).with_name("COMPILED.md")


def _trainer(wl, compile):
    import fitloop as fl

    return fl.Trainer(wl.model(SEED), loss=wl.loss, optimizer=wl.optimizer, lr=wl.lr, epochs=wl.epochs,
                      batch_size=wl.bs, seed=SEED, device="cpu", quiet=True, compile=compile)


def _fit(trainer, wl) -> float:
    (Xtr, ytr), val = wl.data()
    t0 = time.perf_counter()
    trainer.fit((Xtr, ytr), val)
    return time.perf_counter() - t0


def cold(name: str) -> dict:
    wl = WORKLOADS[name]
    step = _trainer(wl, "step")
    t_step = _fit(step, wl)
    return {"cold_s": t_step, "score": score(wl, step.model), "trainer": step}


def study(name: str, rounds: int) -> dict:
    wl = WORKLOADS[name]
    wl.data()
    eager = _trainer(wl, False)
    t_eager_cold = _fit(eager, wl)
    eager_score = score(wl, eager.model)
    c = cold(name)
    step = c.pop("trainer")
    arms = {
        "hand": lambda: hand_loop(wl, wl.model(SEED))["time"],
        "fitloop": lambda: _fit(eager, wl),
        "fitloop_step": lambda: _fit(step, wl),
    }
    if wl.data()[1] is not None:  # the training steps alone: the same fits without validation
        steps_only = dataclasses.replace(wl, _data=(wl.data()[0], None))
        arms["hand_steps_only"] = lambda: hand_loop(steps_only, wl.model(SEED))["time"]
        arms["fitloop_step_steps_only"] = lambda: _fit(step, steps_only)
    names = list(arms)
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            times[n].append(arms[n]())
        print(f"{name} round {r}: " + "  ".join(f"{n}={times[n][-1]:.3f}s" for n in names), flush=True)
    ratios = {n: [a / h for a, h in zip(times[n], times["hand_steps_only" if "steps_only" in n else "hand"])]
              for n in names}
    steady_step = statistics.median(times["fitloop_step"])
    steady_eager = statistics.median(times["fitloop"])
    return {
        "title": wl.title,
        "steps": wl.steps,
        "times": times,
        "ratio": {n: statistics.median(v) for n, v in ratios.items()},
        "ratio_range": {n: (min(v), max(v)) for n, v in ratios.items()},
        "us_per_step": {n: statistics.median(v) / wl.steps * 1e6 for n, v in times.items()},
        "compile_s": max(0.0, c["cold_s"] - steady_step - max(0.0, t_eager_cold - steady_eager)),
        "score_step": c["score"],
        "score_eager": eager_score,
        "compiled_steps": step.training_step.compiled.steps,
    }


def _loss(score: dict) -> str:
    """The validation loss, or the training loss for a workload without validation data (W1)."""
    return f"{score['val_loss']:.6f}" if "val_loss" in score else f"{score['train_loss']:.6f} (train)"


def render(res: dict, second: dict, rounds: int) -> str:
    L = ["## The compiled step in the Trainer (`compile=\"step\"`)", ""]
    L.append(
        f"`python -m bench.compiled` (torch {torch.__version__}, {os.cpu_count()} CPU cores, shared). Steady state: "
        f"each Trainer continues with one more `fit` of the workload (same epochs, validation included) after a "
        f"first, cold `fit`; `hand` is the hand-written eager loop (fresh model each round, torch's default "
        f"optimizer and threads), as in the tables above. Median [min-max] of {rounds} interleaved rounds of the "
        f"per-round ratio to `hand`. Compile s = the cold compiled fit minus its steady-state time (minus the eager "
        f"Trainer's own cold-start excess); 2nd process = the same with torch's on-disk caches warm "
        f"(`TORCHINDUCTOR_CACHE_DIR` shared). The metrics are the cold fits' models, scored identically.")
    L.append("")
    L.append("| workload | steps | hand us/step | fitloop (eager) | fitloop compile=\"step\" | step us/step | compile s | 2nd process compile s | val loss eager / step |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        rr, rg = r["ratio"], r["ratio_range"]
        s2 = second.get(name)
        L.append(
            f"| {name} | {r['steps']} | {r['us_per_step']['hand']:.0f} | {rr['fitloop']:.2f}x "
            f"[{rg['fitloop'][0]:.2f}-{rg['fitloop'][1]:.2f}] | **{rr['fitloop_step']:.2f}x** "
            f"[{rg['fitloop_step'][0]:.2f}-{rg['fitloop_step'][1]:.2f}] | {r['us_per_step']['fitloop_step']:.0f} | "
            f"{r['compile_s']:.1f} | {'-' if s2 is None else f'{s2:.1f}'} | "
            f"{_loss(r['score_eager'])} / {_loss(r['score_step'])} |")
    L.append("")
    only = {n: r for n, r in res.items() if "fitloop_step_steps_only" in r["ratio"]}
    if only:
        L.append("The training steps alone (the same fits without validation; the hand loop likewise), the "
                 "steady-state step time the target speaks of:")
        L.append("")
        L.append("| workload | hand us/step | compile=\"step\" us/step | ratio to hand |")
        L.append("|---|---:|---:|---:|")
        for name, r in only.items():
            rg = r["ratio_range"]["fitloop_step_steps_only"]
            L.append(f"| {name} | {r['us_per_step']['hand_steps_only']:.0f} | "
                     f"{r['us_per_step']['fitloop_step_steps_only']:.0f} | "
                     f"**{r['ratio']['fitloop_step_steps_only']:.2f}x** [{rg[0]:.2f}-{rg[1]:.2f}] |")
        L.append("")
    L.append("Per-round seconds: " + "; ".join(
        f"{name} " + ", ".join(f"{n} {[round(x, 3) for x in v]}" for n, v in r["times"].items())
        for name, r in res.items()))
    L.append("")
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="W1,W2,W3")
    ap.add_argument("--cold-only", action="store_true", help="(internal) one cold compiled fit per workload")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    if args.cold_only:
        out = {}
        for n in names:
            wl = WORKLOADS[n]
            wl.data()
            c = cold(n)
            t = c["trainer"]
            out[n] = max(0.0, c["cold_s"] - _fit(t, wl))
        print("JSON:" + json.dumps(out))
        return
    res = {n: study(n, args.rounds) for n in names}
    print("JSON:" + json.dumps({"res": res}, default=str), flush=True)
    p = subprocess.run([sys.executable, "-m", "bench.compiled", "--cold-only", "--only", ",".join(names)],
                       capture_output=True, text=True, env=os.environ.copy())
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON:")]
    second = json.loads(line[-1][5:]) if line else {}
    if not line:
        print(p.stderr[-3000:])
    md = render(res, second, args.rounds)
    print(md)
    Path(args.out).write_text(md + "\n")
    print("JSON:" + json.dumps({"res": res, "second": second}, default=str))


if __name__ == "__main__":
    main()
