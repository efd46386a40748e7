"""`fitloop serve --workers 2`: a real server process with two workers, on a free loopback port.

The requests are spread over the workers by the kernel (they share one listening socket), so the test does
not know which worker answered which: /metrics must add up every worker's counters whatever the split.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fitloop.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve_workers")
    rng = np.random.default_rng(0)
    x = rng.normal(size=120)
    pcsv.write_csv(pa.table({"x": x, "y": 2 * x + 1}), d / "t.csv")
    assert main(["train", str(d / "t.csv"), "--target", "y", "--epochs", "1", "--hidden", "4",
                 "--out", str(d / "run"), "-q"]) == 0
    return d / "run"


def _start_line(log: Path, proc: subprocess.Popen) -> dict:
    deadline = time.time() + 60
    while time.time() < deadline:
        for line in log.read_text().splitlines():
            if '"event": "start"' in line:
                return json.loads(line)
        if proc.poll() is not None:
            raise AssertionError(f"fitloop serve exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"fitloop serve did not start: {log.read_text()}")


def _wait_until_answering(base: str) -> None:
    """The start line comes from the parent before the workers have loaded the model."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("no worker answered /health within 60 s")


def _counter(text: str, name: str, **labels: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _predict(base: str) -> int:
    # a fresh connection per request, so the kernel can hand it to either worker
    return httpx.post(f"{base}/predict", json=[{"x": 0.5}, {"x": -1.0}], timeout=30).status_code


@pytest.mark.slow
def test_two_workers_sum_their_metrics_and_sigterm_exits_0(run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fitloop", "serve", str(run_dir), "--host", "127.0.0.1",
                                 "--port", "0", "--workers", "2", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        start = _start_line(log, proc)
        assert start["workers"] == 2 and start["url"].startswith("http://127.0.0.1:")
        base = start["url"]
        _wait_until_answering(base)
        with ThreadPoolExecutor(4) as pool:  # concurrent requests: both workers get some of them
            statuses = list(pool.map(lambda _: _predict(base), range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        text = httpx.get(f"{base}/metrics", timeout=30).text
        assert _counter(text, "fitloop_requests_total", endpoint="/predict", status="200") == REQUESTS
        assert _counter(text, "fitloop_rows_predicted_total") == 2 * REQUESTS
        assert _counter(text, "fitloop_request_duration_seconds_count", endpoint="/predict") == REQUESTS

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stops = [json.loads(line) for line in log.read_text().splitlines() if '"event": "stop"' in line]
    assert len(stops) == 1 and stops[0]["signal"] == "SIGTERM", log.read_text()
