# ruff: noqa: E501  (markdown prose in f-strings)
"""What the live progress bar costs (``python -m bench.progress``): W2 with the bar on, in a pseudo-terminal,
against ``quiet=True``. Target: bar / quiet <= 1.05.

One child process runs every arm with its stdout on the slave end of a pty (so the Trainer's own
``ProgressPrinter`` sees a terminal and draws the rich bar; the parent drains the master end, like a terminal
emulator). Arms: ``bar`` = ``fl.Trainer(..., quiet=False)`` (the default printer, which draws the bar here) and
``quiet`` = ``quiet=True``. After an untimed warm-up of both, each round times both arms back to back, the order
alternating per round; the ratio is the median of the per-round ratios. The clock covers Trainer construction and
``fit`` (2 epochs of 2,813 steps, validation included), as in ``bench.workloads.fitloop_loop``. Writes
``bench/PROGRESS.md`` (included in BENCHMARKS.md by ``python -m bench``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(rounds: int, out: str) -> None:
    import torch

    import fitloop as fl
    from bench.workloads import SEED, WORKLOADS

    wl = WORKLOADS["W2"]
    (Xtr, ytr), val = wl.data()

    def arm(quiet: bool, data=(Xtr, ytr), epochs: int = wl.epochs) -> tuple[float, str | None, float]:
        model = wl.model()
        t0 = time.perf_counter()
        trainer = fl.Trainer(model, loss=wl.loss, optimizer=wl.optimizer, lr=wl.lr, epochs=epochs, batch_size=wl.bs,
                             seed=SEED, device="cpu", quiet=quiet)
        history = trainer.fit(data, val)
        dt = time.perf_counter() - t0
        printer = next((cb for cb in trainer.callbacks if isinstance(cb, fl.ProgressPrinter)), None)
        return dt, None if printer is None else printer.mode, history[-1]["loss"]

    small = (Xtr[:20_000], ytr[:20_000])
    arm(False, small, 1), arm(True, small, 1)  # warm-up
    times: dict[str, list[float]] = {"bar": [], "quiet": []}
    modes, losses = set(), {"bar": set(), "quiet": set()}
    for r in range(rounds):
        for name in (("bar", "quiet") if r % 2 == 0 else ("quiet", "bar")):
            dt, mode, loss = arm(name == "quiet")
            times[name].append(dt)
            losses[name].add(loss)
            if name == "bar":
                modes.add(mode)
    Path(out).write_text(json.dumps({"times": times, "modes": sorted(modes), "threads": torch.get_num_threads(),
                                     "losses": {k: sorted(v) for k, v in losses.items()}}))


def _run_under_pty(rounds: int) -> tuple[dict, int, int]:
    """Run `_child` with stdout/stderr on a pty; returns its results, the bytes it drew and the control sequences."""
    master, slave = pty.openpty()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "bench.progress", "--child", out, "--rounds", str(rounds)],
                                stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        os.close(slave)
        drawn = bytearray()
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                drawn += chunk
            elif proc.poll() is not None:
                break
        proc.wait()
        os.close(master)
        if proc.returncode != 0:
            raise SystemExit(f"bench.progress child failed ({proc.returncode}):\n{drawn.decode(errors='replace')[-3000:]}")
        return json.loads(Path(out).read_text()), len(drawn), drawn.count(b"\x1b[")


def render(res: dict, drawn: int, escapes: int, rounds: int, elapsed: float) -> str:
    t = res["times"]
    ratios = [b / q for b, q in zip(t["bar"], t["quiet"])]
    med = statistics.median(ratios)
    fits = len(t["bar"]) + 1  # + the warm-up
    status = "PASS" if med <= 1.05 else "FAIL"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return (
        "## Progress bar cost (W2, bar in a pseudo-terminal vs `quiet=True`)\n\n"
        f"`python -m bench.progress --rounds {rounds}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPU cores shared with other jobs, load average at the end {load}, {res['threads']} torch "
        f"thread(s) in the fit, total {elapsed:.0f} s). One process with its stdout on a pty runs W2 (Trainer "
        "construction + `fit`: 2 epochs x 2,813 steps + validation) with the Trainer's own `ProgressPrinter` "
        f"(mode seen: {', '.join(map(str, res['modes']))}) and with `quiet=True`, alternating which goes first per "
        "round after an untimed warm-up of both. The bar reads the clock per batch and redraws (reading the running "
        "loss: the one host sync) at most 4 times a second.\n\n"
        "| arm | median s | min–max s |\n|---|---|---|\n"
        + "".join(f"| `{k}` | {statistics.median(v):.3f} | {min(v):.3f}–{max(v):.3f} |\n" for k, v in t.items())
        + f"\n| target | limit | measured (median of {len(ratios)} per-round ratios) | min–max | status |\n"
        "|---|---|---|---|---|\n"
        f"| W2 bar / quiet | <= 1.05 | {med:.3f} | {min(ratios):.3f}–{max(ratios):.3f} | {status} |\n\n"
        f"The terminal received {drawn / fits / 1024:.1f} KiB per fit ({escapes // fits} control sequences per fit). "
        f"Final epoch losses, bar / quiet: {res['losses']['bar']} / {res['losses']['quiet']} (the bar changes no "
        "number).\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", metavar="RESULT_JSON", help=argparse.SUPPRESS)
    ap.add_argument("--output", default=str(ROOT / "bench" / "PROGRESS.md"))
    args = ap.parse_args()
    if args.child:
        _child(args.rounds, args.child)
        return 0
    t0 = time.perf_counter()
    res, drawn, escapes = _run_under_pty(args.rounds)
    text = render(res, drawn, escapes, args.rounds, time.perf_counter() - t0)
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
