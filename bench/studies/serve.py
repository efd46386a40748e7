"""Load test of `fitloop serve` against a minimal hand-written FastAPI app serving the same bundle.

    python -m bench.studies.serve               # 2,000 requests per arm and body, concurrency 8
    python -m bench.studies.serve --requests 400 --rounds 2 --no-write

Both servers run at once on loopback (one uvicorn process each, the same uvicorn settings); the rounds
interleave the arms (and alternate which goes first), so a busy machine slows both alike. fitloop runs
with every check on: an API key, request validation, metrics and the JSON log line per request (to a
file). The client is a small asyncio HTTP/1.1 keep-alive client (pre-encoded requests), so that it costs
less CPU than the servers it measures. Writes bench/studies/SERVE.md and its section of BENCHMARKS.md.
Target: fitloop's requests/s >= 0.8x the minimal app's, for both body sizes (the median of the per-round
ratios, which a burst of other load on one round does not move).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.8
KEY = "bench-secret"


def make_run(tmp: Path) -> Path:
    """A small classification run: 8 numeric columns (one with gaps), 2 categorical, 3 classes."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(0)
    n = 2000
    cols: dict[str, object] = {f"x{j}": rng.normal(j, 1 + j, n) for j in range(8)}
    cols["x0"] = [None if i % 20 == 0 else float(v) for i, v in enumerate(cols["x0"])]  # type: ignore[arg-type]
    cols["city"] = rng.choice([f"city_{i}" for i in range(12)], n)
    cols["color"] = rng.choice(["red", "green", "blue"], n)
    score = sum(np.asarray(cols[f"x{j}"], dtype=float) for j in range(1, 8)) + (cols["color"] == "red")
    cols["label"] = np.where(score > np.quantile(score, 0.6), "high", np.where(score > np.quantile(score, 0.3),
                                                                                "mid", "low"))
    pcsv.write_csv(pa.table(cols), tmp / "data.csv")
    run = tmp / "run"
    subprocess.run([sys.executable, "-m", "fitloop", "train", str(tmp / "data.csv"), "--target", "label",
                    "--epochs", "3", "--out", str(run), "-q"], check=True, env=_env(), stdout=subprocess.DEVNULL)
    return run


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def start(cmd: list[str], log: Path, pattern: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    f = log.open("w")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = re.search(pattern, log.read_text())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"{cmd} did not start")


def request_bytes(port: int, body: bytes) -> bytes:
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[int, bytes]:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    return status, await reader.readexactly(length)


async def load(port: int, req: bytes, total: int, concurrency: int) -> tuple[float, list[float], int]:
    """Send `total` requests over `concurrency` keep-alive connections: (wall seconds, latencies, errors)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    left = [total]
    lat: list[float] = []
    errors = [0]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            status, _ = await _one(reader, writer, req)
            lat.append(time.perf_counter() - t0)
            errors[0] += status != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return wall, lat, errors[0]


async def answer(port: int, body: bytes) -> dict:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    status, data = await _one(r, w, request_bytes(port, body))
    w.close()
    assert status == 200, data
    return json.loads(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per arm and body size (default 2000)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=20,
                    help="interleaved rounds the requests are split into (many short rounds: the machine's "
                         "load changes by the second)")
    ap.add_argument("--run-dir", help="serve this run instead of training a small one")
    ap.add_argument("--no-write", action="store_true", help="print only; leave SERVE.md/BENCHMARKS.md alone")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fitloop-bench-serve-"))
    run = Path(args.run_dir) if args.run_dir else make_run(tmp)
    env = _env()
    procs = []
    try:
        fl_proc, fl_port = start([sys.executable, "-m", "fitloop", "serve", str(run), "--port", "0"], tmp / "fl.log",
                                 r"127\.0\.0\.1:(\d+)", {**env, "FITLOOP_API_KEY": KEY})
        procs.append(fl_proc)
        mini_proc, mini_port = start([sys.executable, str(Path(__file__).with_name("serve_minimal.py")), str(run), "0"],
                                     tmp / "mini.log", r"listening on (\d+)", env)
        procs.append(mini_proc)
        import pyarrow.csv as pcsv

        info = json.loads((run / "run.json").read_text())
        rows = pcsv.read_csv(info["data"]).drop([info["target"]]).slice(0, 100).to_pylist()
        bodies = {"1 row": json.dumps(rows[:1]).encode(), "100 rows": json.dumps(rows).encode()}
        arms = {"fitloop serve": fl_port, "minimal FastAPI": mini_port}
        same = {size: asyncio.run(answer(fl_port, b))["predictions"] == asyncio.run(answer(mini_port, b))["predictions"]
                for size, b in bodies.items()}
        stats: dict[tuple[str, str], dict] = {(a, s): {"wall": 0.0, "lat": [], "n": 0, "errors": 0, "rates": []}
                                              for a in arms for s in bodies}
        per_round = max(1, args.requests // args.rounds)
        for port in arms.values():  # warm-up: connections, caches, first-call costs
            for b in bodies.values():
                asyncio.run(load(port, request_bytes(port, b), 100, args.concurrency))
        t_start = time.time()
        load_start = os.getloadavg()
        for rnd in range(args.rounds):
            order = list(arms) if rnd % 2 == 0 else list(arms)[::-1]
            for size, b in bodies.items():
                for arm in order:
                    port = arms[arm]
                    wall, lat, errors = asyncio.run(load(port, request_bytes(port, b), per_round, args.concurrency))
                    s = stats[(arm, size)]
                    s["wall"] += wall
                    s["lat"] += lat
                    s["n"] += per_round
                    s["errors"] += errors
                    s["rates"].append(per_round / wall)
        seconds = time.time() - t_start
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    lines = report(stats, bodies, same, args, per_round, seconds, load_start)
    print("\n".join(lines))
    if not args.no_write:
        text = "\n".join(lines) + "\n"
        Path(__file__).with_name("SERVE.md").write_text(text)
        update_benchmarks(text)
    ok = all(np.median(np.array(stats[("fitloop serve", s)]["rates"])
                       / np.array(stats[("minimal FastAPI", s)]["rates"])) >= TARGET for s in bodies)
    return 0 if ok else 1


def report(stats: dict, bodies: dict, same: dict, args: argparse.Namespace, per_round: int, seconds: float,
           load_start: tuple) -> list[str]:
    L = ["## Serving: `fitloop serve` vs a minimal FastAPI app (bench/studies/serve.py)", ""]
    L.append(f"Generated by `python -m bench.studies.serve` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
             f"{per_round * args.rounds} requests per arm and body size, concurrency {args.concurrency}, "
             f"{args.rounds} interleaved rounds, {seconds:.0f} s; loopback, one uvicorn process per server (h11), "
             f"client and both servers on the same {os.cpu_count()} cores; load average "
             f"{' '.join(f'{x:.2f}' for x in load_start)} at the start, "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.")
    L.append("")
    L.append("fitloop runs with every check on (API key, request validation, metrics, one JSON log line per request "
             "written to a file); the minimal app (bench/studies/serve_minimal.py) encodes the records with numpy "
             "from the same bundle and checks nothing. Both answer the same predictions: "
             + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()) + ".")
    L.append("")
    L.append("The target is checked on the median of the per-round ratios (each round runs both arms back to back "
             "on the same body): on this shared machine a burst of someone else's load lands on one arm's rounds "
             "and moves the pooled ratio by ±0.1 from run to run (1 row, seven runs of the last versions: 0.71x "
             "to 0.88x pooled, 0.80x to 0.84x as the median); both are shown.")
    L.append("")
    L.append("What the profile of the first version found, and what changed (each also speeds up `fitloop predict` "
             "where it shares the code): the listening socket lacked TCP_NODELAY (created with proto 0, which asyncio "
             "skips), so every keep-alive response waited ~40 ms for a delayed ACK; the model ran on 2 intra-op "
             "threads, and on a busy machine a split op waits for a descheduled thread (now 1 thread for small "
             "models, in both arms); `Preprocessor.transform` made a handful of numpy calls per column and re-read "
             "`Table.column_names` (rebuilt on every call) in a loop (now the numeric columns in blocks, the layout "
             "worked out once); and JSON records went through an Arrow table, whose per-call overheads cost more "
             "than the rest of a small request (now they go straight to `Preprocessor.encode`, the encoding "
             "`transform` ends in, with checks over whole columns at C speed). The start-up heap is frozen out of "
             "the garbage collector's sight, and one warm-up prediction runs before the port opens.")
    L.append("")
    L.append("| body | server | requests/s | p50 ms | p99 ms | errors | fitloop / minimal | median of the "
             "round ratios | target | status |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for size in bodies:
        rates = {}
        for arm in ("fitloop serve", "minimal FastAPI"):
            s = stats[(arm, size)]
            rates[arm] = s["n"] / s["wall"]
        ratio = rates["fitloop serve"] / rates["minimal FastAPI"]
        rounds = np.median(np.array(stats[("fitloop serve", size)]["rates"])
                           / np.array(stats[("minimal FastAPI", size)]["rates"]))
        for arm in ("fitloop serve", "minimal FastAPI"):
            s = stats[(arm, size)]
            p50, p99 = np.percentile(np.array(s["lat"]) * 1000, [50, 99])
            tail = (f"{ratio:.2f}x | {rounds:.2f}x | >= {TARGET}x | {'PASS' if rounds >= TARGET else 'FAIL'}"
                    if arm == "fitloop serve" else " | | | ")
            L.append(f"| {size} | {arm} | {rates[arm]:.0f} | {p50:.2f} | {p99:.2f} | {s['errors']} | {tail} |")
    return L


def update_benchmarks(section: str) -> None:
    """Replace (or add) this section in BENCHMARKS.md.

    bench/report.py appends bench/studies/SERVE.md when `python -m bench` regenerates the page.
    """
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.is_file() else ""
    title = section.splitlines()[0]
    if title in text:
        start = text.index(title)
        nxt = text.find("\n## ", start + len(title))
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    elif "\n## Method notes" in text:  # where `python -m bench` puts the bench/*.md notes
        at = text.index("\n## Method notes") + 1
        text = text[:at] + section + "\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
