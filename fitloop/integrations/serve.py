"""`fitloop serve RUN_DIR`: a finished run's model over HTTP, with the answers `fitloop predict` gives.

    app = create_app("runs/wine", api_key="s3cret")   # an ASGI app; the model is loaded here, once
    serve("runs/wine", port=8000)                     # blocks; SIGTERM or Ctrl-C shut it down gracefully

Endpoints (see the README, "Serve over HTTP"):

    POST /predict        JSON records [{column: value}, ...] -> {"predictions": [...], ...}; ?proba=true
    POST /predict_csv    CSV text -> CSV text (the columns `fitloop predict` writes); ?proba=true
    GET  /health         {"status": "ok"}, never behind the API key (for load balancers)
    GET  /schema         the expected columns, their types, the categories seen in training, the limits
    GET  /metrics        Prometheus text: requests, latency histogram, errors by kind, rows predicted
    GET  /version        fitloop/torch versions, the run, the model file's sha256

The answers are `fitloop predict`'s: a CSV body becomes the Arrow table a file becomes and goes through
`fitloop.tabular.runs.predict_file` itself; JSON records become the numbers and category codes a file's cells
become inside `Preprocessor.transform`, and go through the same encoding (`Preprocessor.encode`) and the
same output step (`predict_columns`), without the Arrow detour that would cost more than the rest of a
small request. Bad input is a 4xx with a JSON body naming the column and the row, never a 500. The
bundle is read once at start-up (safetensors and JSON, never a pickle); no request names a file, so the
server answers with that model only, whatever happens on disk later.
Inference runs on the event loop under `torch.inference_mode`: for the small batches a server sees a
thread hop costs more than the work, and one thread keeps the model's outputs deterministic.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gc
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .. import __version__
from ..extras import require
from .serve_input import InputInfo, RequestError, csv_table, is_bool_feature, loads, records_table
from .serve_ops import Gate, Metrics, log_line

# `fitloop --help` imports this module (serve's defaults), so what it imports at the top is light: torch,
# numpy, pyarrow, the run loader, fitloop.files and tempfile (platform, random), and the `serve` extra
# (FastAPI, uvicorn) are imported where they are used.

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

    from ..tabular.runs import LoadedRun

__all__ = ["create_app", "serve", "require_serve_extra", "ServeError", "DEFAULT_MAX_ROWS", "DEFAULT_MAX_BODY"]

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BODY = 10 * 1024 * 1024  # 10 MiB: ~10,000 rows of a few dozen columns as JSON
GRACEFUL_SECONDS = 30  # on SIGTERM, in-flight requests get this long to finish
_SETTINGS_ENV = "FITLOOP_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process


class ServeError(ValueError):
    """A setting or a machine problem the user fixes (a port in use, a bad limit): exit 2 on the CLI."""


def require_serve_extra() -> None:
    """Import FastAPI, uvicorn and prometheus-client, or raise `MissingExtraError` naming the `pip install`."""
    require(("fastapi", "uvicorn", "prometheus_client"), "serve", "`fitloop serve`")


# ------------------------------------------------------------------------------------------ the model


class _Model:
    """The run, loaded once, and what the read-only endpoints answer (computed once)."""

    def __init__(self, run_dir: str | os.PathLike, max_rows: int, max_body: int) -> None:
        from ..files import versions
        from ..tabular.runs import load_run

        self.run: LoadedRun = load_run(run_dir)
        self.pre = self.run.preprocessor
        self.threads = _thread_policy(self.run.model)
        self.max_rows, self.max_body = max_rows, max_body
        meta = self.run.model.fitloop_meta
        weights = Path(run_dir) / "model" / "model.safetensors"
        self.version = {"fitloop": __version__, "versions": versions(), "run_dir": str(Path(run_dir).resolve()),
                        "trained_with": meta.get("versions"), "bundle_format": meta.get("format_version"),
                        "torch_threads": self.threads,
                        "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
        self.schema = self._schema()
        # One prediction each way now, so the first request does not pay for lazy imports and first-call
        # set-up (pyarrow's first conversions alone take a fraction of a second).
        import pyarrow as pa  # not at the top: `fitloop --help` imports this module

        numbers, codes, _ = records_table(self.schema["example"], self.pre, max_rows=1)
        self.predict_records(numbers, codes, False)
        self.predict_table(pa.Table.from_pylist(self.schema["example"]), False)

    def _schema(self) -> dict[str, Any]:
        pre = self.pre
        columns: list[dict[str, Any]] = []
        example: dict[str, Any] = {}
        for f in pre.features:
            if "source" in f:  # a date column, turned into several numeric features: one input
                if f["part"] == "days":
                    columns.append({"name": f["source"], "type": "date", "missing_in_training": f["missing"],
                                    "format": "ISO 8601 text: 2024-01-05 or 2024-01-05 10:30:00"})
                    example[f["source"]] = _iso_date(f["median"])
            elif f["kind"] == "numeric" and is_bool_feature(f):  # true/false in training, 1/0 to the model
                columns.append({"name": f["name"], "type": "boolean", "missing_in_training": f["missing"],
                                "train_fraction_true": f["mean"]})
                example[f["name"]] = bool(f["median"])
            elif f["kind"] == "numeric":
                columns.append({"name": f["name"], "type": "number", "missing_in_training": f["missing"],
                                "train_mean": f["mean"], "train_std": f["std"], "train_median": f["median"]})
                example[f["name"]] = f["median"]
            else:
                columns.append({"name": f["name"], "type": "string", "missing_in_training": f["missing"],
                                "categories": f["categories"]})
                if f.get("others"):  # cut to its most frequent values: the others share the <unknown> slot
                    columns[-1]["other_values_in_training"] = f["others"]
                example[f["name"]] = f["categories"][0]
        return {"target": pre.target, "task": pre.task, "classes": pre.classes, "id": pre.id, "columns": columns,
                "missing_values": "JSON null or an empty CSV cell: imputed as in training (numbers: the train "
                                  "median; text: its own slot). NaN/Infinity are refused.",
                "unknown_categories": "mapped to the column's <unknown> slot, and reported in the notes; a column "
                                      "with other_values_in_training kept only its most frequent values, and "
                                      "its other values share that slot without a note",
                "limits": {"max_rows": self.max_rows, "max_body_bytes": self.max_body}, "example": [example]}

    def _check_proba(self, proba: bool) -> None:
        if proba and self.pre.task != "classification":
            raise RequestError(422, "bad_query", "proba=true is for classification runs; this run does regression.")

    def predict_table(self, table: Any, proba: bool) -> tuple[Any, list[str]]:
        """`fitloop predict`'s function on an in-memory table: ``(pyarrow.Table, notes)``."""
        from ..tabular.runs import predict_file

        self._check_proba(proba)
        return predict_file(self.run, table, proba=proba)

    def predict_records(self, numbers: Any, codes: list[Any], proba: bool) -> tuple[dict[str, Any], list[str]]:
        """JSON records' values through the encoding `transform` ends in, then the columns `predict_file`
        writes: ``({"prediction": ..., ["proba_<class>": ...]}, notes)``."""
        import torch  # not at the top: `fitloop --help` imports this module

        from ..tabular.runs import predict_columns

        self._check_proba(proba)
        notes: list[str] = []
        X = torch.from_numpy(self.pre.encode(numbers, codes, notes))
        return predict_columns(self.run, X, proba=proba), notes


def _iso_date(days: float) -> str:
    """Days since 1970 as an ISO date (the schema's example of a date column)."""
    return f"{datetime.date(1970, 1, 1) + datetime.timedelta(days=int(days // 1)):%Y-%m-%d}"


def _thread_policy(model: Any) -> int:
    """The Trainer's rule for small models, for the whole server process: one intra-op thread. Their ops
    are too small to split, and on a busy machine a split op waits for a descheduled thread (measured
    here: 100-row requests 40-100x slower with 2 threads on 2 shared cores)."""
    import torch  # not at the top: `fitloop --help` imports this module

    from ..devices import SMALL_MODEL_PARAMS  # imports torch

    if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def _json_answer(model: _Model, out: dict[str, Any], notes: list[str], info: InputInfo,
                 proba: bool) -> dict[str, Any]:
    # not at the top: `fitloop --help` imports this module
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    pred = out["prediction"]
    body: dict[str, Any] = {"rows": info.rows, "predictions": pred if isinstance(pred, list) else pred.tolist()}
    if info.ids is not None:
        body["ids"] = info.ids
    if proba:
        classes = model.pre.classes or []
        # float32 -> its shortest decimal -> float64: the numbers the CLI writes into its CSV
        cols = [pc.cast(pc.cast(pa.array(out[f"proba_{c}"]), pa.string()), pa.float64()).to_numpy()
                for c in classes]
        body["classes"] = classes
        body["probabilities"] = np.column_stack(cols).tolist()
    body["ignored_columns"] = info.ignored
    body["notes"] = notes
    return body


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise RequestError(422, "bad_query", f"query parameter {name}={value!r}: use true or false.")


# ------------------------------------------------------------------------------------------ the app


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`: from Content-Length before
    reading anything, and while reading a chunked body (which declares no length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"the body is {int(declared)} bytes, more than this server's "
                                                  f"limit of {limit} (--max-body); send smaller batches.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body_too_large", f"the body is over this server's limit of {limit} bytes "
                                                      f"(--max-body); send smaller batches.")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(run_dir: str | os.PathLike, *, max_rows: int = DEFAULT_MAX_ROWS, max_body: int = DEFAULT_MAX_BODY,
               api_key: str | None = None, log: TextIO | None = None, access_log: bool = True) -> Any:
    """The ASGI app serving one finished run directory (the model is loaded now, once).

    Args:
        run_dir: A run directory written by `fitloop train`.
        max_rows: The most rows one request may hold (more: 413).
        max_body: The largest request body in bytes (larger: 413).
        api_key: When set, every endpoint but /health needs ``Authorization: Bearer <api_key>`` (else 401).
        log: Where the JSON log lines go, one per request (default stderr).
        access_log: Write the per-request line (errors are logged either way).

    Returns:
        The app, for uvicorn or any ASGI server.

    Raises:
        ImportError: the `serve` extra is not installed (the message names the `pip install`).
        NotARunError, ValueError: `run_dir` is not a finished run directory.
    """
    require_serve_extra()
    from fastapi import FastAPI  # the `serve` extra

    if max_rows < 1 or max_body < 1:
        raise ServeError(f"max_rows and max_body must be >= 1, got {max_rows} and {max_body}.")
    model = _Model(run_dir, max_rows, max_body)
    metrics = Metrics()
    app = FastAPI(title="fitloop serve", version=model.version["fitloop"], docs_url=None, redoc_url=None,
                  openapi_url=None)  # no docs pages: they would load scripts from a CDN
    endpoints = _Endpoints(model, metrics, log)
    # Plain Starlette routes: the endpoints read the body themselves, so FastAPI's parameter machinery
    # would only add work to every request.
    for path, endpoint, method in [("/predict", endpoints.predict, "POST"),
                                   ("/predict_csv", endpoints.predict_csv, "POST"),
                                   ("/health", endpoints.health, "GET"), ("/schema", endpoints.schema, "GET"),
                                   ("/version", endpoints.version, "GET"), ("/metrics", endpoints.prometheus, "GET")]:
        app.add_route(path, endpoint, methods=[method])

    return Gate(app, metrics, api_key, (log or sys.stderr) if access_log else None)


def _proba_flag(request: Request) -> bool:
    return _flag(dict(request.query_params), "proba") if request.scope["query_string"] else False


def _delimiter_param(request: Request) -> str | None:
    """``?delimiter=X`` (one character; ``tab`` or ``%09`` for a tab), or None."""
    value = request.query_params.get("delimiter") if request.scope["query_string"] else None
    if value is None:
        return None
    d = {"tab": "\t", "\\t": "\t"}.get(value, value)
    if len(d) != 1 or d in "\"\r\n":
        raise RequestError(422, "bad_query", f"query parameter delimiter={value!r}: pass one character, e.g. "
                           "?delimiter=; (or ?delimiter=tab).")
    return d


class _Endpoints:
    """The app's request handlers, over the loaded model, the metrics and the log."""

    def __init__(self, model: _Model, metrics: Metrics, log: TextIO | None) -> None:
        from fastapi.responses import Response  # the `serve` extra

        self.model, self.metrics, self.log, self.response = model, metrics, log, Response

    def ok(self, body: Any) -> Response:
        return self.response(json.dumps(body).encode(), media_type="application/json")

    def refuse(self, request: Request, err: RequestError) -> Response:
        request.scope["fitloop"]["error"] = err.kind
        return self.response(json.dumps(err.body()).encode(), status_code=err.status, media_type="application/json")

    def failed(self, request: Request, e: Exception) -> Response:
        # A fitloop bug, not bad input: say so, log it, keep serving.
        request.scope["fitloop"]["error"] = "internal"
        log_line(self.log or sys.stderr, event="error", path=request.url.path, error=f"{type(e).__name__}: {e}")
        return self.refuse(request, RequestError(500, "internal", f"internal error: {type(e).__name__}: {e}"))

    async def predict(self, request: Request) -> Response:
        model = self.model
        try:
            proba = _proba_flag(request)
            numbers, codes, info = records_table(loads(await _read_body(request, model.max_body)), model.pre,
                                                 max_rows=model.max_rows)
            out, notes = model.predict_records(numbers, codes, proba)
            request.scope["fitloop"]["rows"] = info.rows
            return self.ok(_json_answer(model, out, notes, info, proba))
        except RequestError as err:
            return self.refuse(request, err)
        except Exception as e:  # noqa: BLE001 - see failed()
            return self.failed(request, e)

    async def predict_csv(self, request: Request) -> Response:
        # not at the top: `fitloop --help` imports this module
        import pyarrow as pa
        import pyarrow.csv as pcsv

        from ..tabular.errors import TableError

        model = self.model
        try:
            proba = _proba_flag(request)
            table, info = csv_table(await _read_body(request, model.max_body), model.pre, max_rows=model.max_rows,
                                    decimal=model.run.info.get("decimal"),  # the --decimal it was trained with
                                    delimiter=_delimiter_param(request) or model.run.info.get("delimiter"))
            try:
                out, notes = model.predict_table(table, proba)
            except TableError as e:  # a cell the preprocessing refuses: still the client's input
                raise RequestError(422, "bad_input", str(e)) from None
            request.scope["fitloop"]["rows"] = info.rows
            sink = pa.BufferOutputStream()
            pcsv.write_csv(out, sink)  # the bytes `fitloop predict` writes to stdout
            headers = {"x-fitloop-ignored-columns": json.dumps(info.ignored),
                       "x-fitloop-notes": json.dumps(notes)}  # ASCII (json escapes the rest)
            return self.response(sink.getvalue().to_pybytes(), media_type="text/csv", headers=headers)
        except RequestError as err:
            return self.refuse(request, err)
        except Exception as e:  # noqa: BLE001 - see failed()
            return self.failed(request, e)

    async def health(self, request: Request) -> Response:
        return self.ok({"status": "ok"})

    async def schema(self, request: Request) -> Response:
        return self.ok(self.model.schema)

    async def version(self, request: Request) -> Response:
        return self.ok(self.model.version)

    async def prometheus(self, request: Request) -> Response:
        return self.response(self.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")


# ------------------------------------------------------------------------------------------ the server


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts so a busy port is a clear error (and port 0
    picks a free one, printed in the start-up line); every worker shares it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            fix = "Pick another --port, or stop what is using it."
        elif isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            fix = "Ports below 1024 need root: pick --port 1024 or above."
        else:
            fix = "Check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0) and --port (0-65535)."
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ServeError(f"cannot listen on {host}:{port}: {msg}. {fix}") from None
    sock.listen(2048)  # uvicorn's backlog; listening now, so a client that read the start-up line connects
    sock.set_inheritable(True)
    return sock


def _freeze_heap() -> None:
    """Move everything loaded so far (torch, pyarrow, the model) out of the garbage collector's sight:
    requests allocate enough to trigger full collections, and each would otherwise walk those objects."""
    gc.collect()
    gc.freeze()


def worker_app() -> Any:
    """The app factory each `--workers N` process calls (settings come from the parent's environment)."""
    s = json.loads(os.environ[_SETTINGS_ENV])
    app = create_app(s["run_dir"], max_rows=s["max_rows"], max_body=s["max_body"],
                     api_key=os.environ.get("FITLOOP_API_KEY") if s["api_key"] else None,
                     access_log=s["access_log"])
    _freeze_heap()
    return app


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block, and the previous values put back after it."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _supervise(config: Any, sock: socket.socket, stopped: list[int]) -> None:
    """Run uvicorn's worker supervisor until SIGTERM or Ctrl-C, appending the signal that stopped it to
    `stopped`. The supervisor installs its own signal handlers (they replace `serve`'s), so the signal is
    recorded where it handles it."""
    from uvicorn.supervisors import Multiprocess  # the `serve` extra

    class Supervisor(Multiprocess):
        def handle_int(self) -> None:
            stopped.append(signal.SIGINT)
            super().handle_int()

        def handle_term(self) -> None:
            stopped.append(signal.SIGTERM)
            super().handle_term()

    Supervisor(config, sockets=[sock]).run()


def serve(run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_rows: int = DEFAULT_MAX_ROWS, max_body: int = DEFAULT_MAX_BODY, api_key: str | None = None,
          log: TextIO | None = None, access_log: bool = True) -> None:
    """Serve `run_dir` until SIGTERM or Ctrl-C, then stop gracefully (in-flight requests finish).

    Args:
        run_dir: A finished run directory.
        host: Interface to listen on; the default is loopback only.
        port: TCP port (0: any free port).
        workers: Worker processes, each with its own copy of the model; /metrics adds up all of them.
        max_rows: The most rows one request may hold, as in `create_app`.
        max_body: The largest request body in bytes, as in `create_app`.
        api_key: The bearer token every endpoint but /health needs, as in `create_app`.
        access_log: Write the per-request line, as in `create_app`.
        log: Where the start-up, shutdown and request lines go (default stderr).

    Raises:
        ImportError: the `serve` extra is missing. NotARunError, ValueError: a bad run directory.
        ServeError: a bad setting, or the port cannot be bound.
    """
    require_serve_extra()
    import tempfile

    import uvicorn  # the `serve` extra

    out = log or sys.stderr
    if workers < 1:
        raise ServeError(f"--workers must be >= 1, got {workers}.")
    app = create_app(run_dir, max_rows=max_rows, max_body=max_body, api_key=api_key, log=out,
                     access_log=access_log)  # loads and checks everything before the port opens
    _freeze_heap()
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    common: dict[str, Any] = dict(log_level="warning", access_log=False, server_header=False, lifespan="off",
                  timeout_graceful_shutdown=GRACEFUL_SECONDS)
    stopped: list[int] = []
    # uvicorn re-raises the signal that stopped it once it is done; a handler of ours makes that a no-op,
    # so a graceful stop ends `fitloop serve` with exit code 0.
    previous = {s: signal.signal(s, lambda sig, frame: stopped.append(sig)) for s in (signal.SIGINT, signal.SIGTERM)}
    log_line(out, event="start", url=f"http://{host}:{bound}", run_dir=str(run_dir), workers=workers,
              auth=api_key is not None, max_rows=max_rows, max_body=max_body, pid=os.getpid())
    try:
        if workers == 1:
            uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        else:
            with tempfile.TemporaryDirectory(prefix="fitloop-metrics-") as metrics_dir:
                settings = json.dumps({"run_dir": str(Path(run_dir).resolve()), "max_rows": max_rows,
                                       "max_body": max_body, "api_key": api_key is not None,
                                       "access_log": access_log})
                # the workers read these from the environment they inherit
                worker_env = {"PROMETHEUS_MULTIPROC_DIR": metrics_dir, _SETTINGS_ENV: settings}
                if api_key is not None:
                    worker_env["FITLOOP_API_KEY"] = api_key
                config = uvicorn.Config("fitloop.integrations.serve:worker_app", factory=True, workers=workers,
                                        **common)
                with _environment(worker_env):
                    _supervise(config, sock, stopped)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    log_line(out, event="stop", signal=signal.Signals(stopped[0]).name if stopped else None)
