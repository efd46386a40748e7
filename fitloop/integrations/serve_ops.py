"""The operations side of `fitloop serve`: Prometheus metrics, the JSON log line, the API-key gate.

    metrics = Metrics()             # a registry of its own: two apps in one process do not collide
    app = Gate(fastapi_app, metrics, api_key="s3cret", log=sys.stderr)

`Gate` is a pure ASGI middleware: it checks the key (every path but /health), then counts the request,
times it and writes one JSON line for it, whatever the app answered.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from typing import Any, TextIO

from .serve_input import RequestError

# prometheus_client (the `serve` extra) is imported where it is used: `fitloop --help` imports this module.

__all__ = ["Metrics", "Gate", "log_line", "send_json", "ENDPOINTS", "LATENCY_BUCKETS"]

ENDPOINTS = ("/predict", "/predict_csv", "/health", "/schema", "/metrics", "/version")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The Prometheus series, in a registry of this app's own (two apps in one process don't collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only add noise to every scrape
        self.registry = CollectorRegistry()
        self.requests = Counter("fitloop_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("fitloop_request_duration_seconds", "Time to answer a request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("fitloop_errors", "Requests refused or failed, by kind", ["kind"],
                              registry=self.registry)
        self.rows = Counter("fitloop_rows_predicted", "Rows predicted", registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # --workers N: add up every worker's files
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


_stamp_cache: list[Any] = [-1, ""]  # (second, its text): strftime once a second, not once a request


def log_line(stream: TextIO, **fields: Any) -> None:
    now = time.time()
    second = int(now)
    if second != _stamp_cache[0]:
        _stamp_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    stamp = f"{_stamp_cache[1]}.{int(now % 1 * 1000):03d}Z"
    stream.write(json.dumps({"ts": stamp, **fields}, default=str) + "\n")  # stderr is line-buffered
    if not getattr(stream, "line_buffering", True):
        stream.flush()


class Gate:
    """Pure ASGI middleware around the app: the API key, then one metrics update and one log line per
    request. (Starlette's BaseHTTPMiddleware would cost a task and a queue per request.)"""

    def __init__(self, app: Any, metrics: Metrics, api_key: str | None, log: TextIO | None) -> None:
        self.app, self.metrics, self.log = app, metrics, log
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for k, v in scope["headers"]:
            if k == b"authorization":
                return hmac.compare_digest(v, self.expected or b"")
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        note: dict[str, Any] = {"rows": 0, "error": None}
        scope["fitloop"] = note
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope["path"]
        try:
            if self.expected is not None and path != "/health" and not self._authorized(scope):
                note["error"] = "unauthorized"
                err = RequestError(401, "unauthorized", "this server needs an API key: send the header "
                                                        "'Authorization: Bearer <key>'.")
                await send_json(send_status, 401, err.body(), ((b"www-authenticate", b"Bearer"),))
            else:
                await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            code = status[0]
            endpoint = path if path in ENDPOINTS else "other"  # unknown paths share one series
            kind = note["error"] or (f"http_{code}" if code >= 400 else None)
            m = self.metrics
            m.requests.labels(endpoint, scope["method"], str(code)).inc()
            m.latency.labels(endpoint).observe(seconds)
            if kind:
                m.errors.labels(kind).inc()
            if note["rows"]:
                m.rows.inc(note["rows"])
            client = scope.get("client")
            if self.log is not None:
                log_line(self.log, event="request", method=scope["method"], path=path, status=code,
                         ms=round(seconds * 1000, 3), rows=note["rows"], error=kind,
                         client=client[0] if client else None)


async def send_json(send: Any, status: int, body: dict[str, Any],
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})
