"""`fitloop serve`: the real server on a free loopback port, called over HTTP.

Two tiny runs are trained once for the module (classification with an id column, missing values, a
categorical and a boolean column; regression). The classification run is served by a real
`fitloop serve` subprocess with an API key and small limits; the regression run by uvicorn in a thread.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
from serve_support import served  # noqa: E402  (tests/serve_support.py)

from fitloop.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-secret"
MAX_ROWS, MAX_BODY = 50, 65536


def _table(n: int = 240, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n) * 3 + 10
    color = rng.choice(["red", "green", "blue"], size=n)
    flag = rng.random(n) < 0.5
    score = x1 + 0.2 * x2 + (color == "red") + 0.5 * flag
    cuts = np.quantile(score, [0.33, 0.66])
    label = np.where(score > cuts[1], "high", np.where(score > cuts[0], "mid", "low"))
    return pa.table({"row_id": [f"r{i}" for i in range(n)], "x1": [None if i % 13 == 0 else float(v)
                                                                   for i, v in enumerate(x1)],
                     "x2": x2, "color": color, "flag": flag, "label": label, "y": score * 10 + 3})


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    t = _table()
    pcsv.write_csv(t.drop(["y"]), d / "cls.csv")
    pcsv.write_csv(t.drop(["label"]), d / "reg.csv")
    for name, target in (("cls", "label"), ("reg", "y")):
        assert main(["train", str(d / f"{name}.csv"), "--target", target, "--id", "row_id", "--epochs", "2",
                     "--hidden", "16", "--out", str(d / f"run_{name}"), "-q"]) == 0
    # new rows: a gap, an unseen category, an extra column; the same rows go through the CLI and HTTP
    new = _table(20, seed=1).drop(["label", "y"])
    new = new.set_column(3, "color", pa.array(["purple"] + new.column("color").to_pylist()[1:]))
    new = new.append_column("extra", pa.array(range(20)))
    pcsv.write_csv(new, d / "new.csv")
    return d


def _wait_for_start(log: Path, proc: subprocess.Popen) -> int:
    deadline = time.time() + 60
    while time.time() < deadline:
        for line in log.read_text().splitlines():
            if '"event": "start"' in line:
                url = json.loads(line)["url"]
                assert url.startswith("http://127.0.0.1:"), url  # the default host: this machine only
                return int(url.rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise AssertionError(f"fitloop serve exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"fitloop serve did not start: {log.read_text()}")


def _start(run_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "fitloop", "serve", str(run_dir), "--port", "0", *args],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env or _env())
    try:
        return proc, _wait_for_start(log, proc)
    except BaseException:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def server(runs):
    """The classification run behind a real `fitloop serve` (API key from FITLOOP_API_KEY, small limits)."""
    log = runs / "server.log"
    proc, port = _start(runs / "run_cls", log, "--max-rows", str(MAX_ROWS), "--max-body", "64k",
                        env={**_env(), "FITLOOP_API_KEY": KEY})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30)
    yield client, port, log
    client.close()
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def reg_server(runs):
    """The regression run (a copy) served by uvicorn in a thread of this process."""
    from fitloop.integrations.serve import create_app

    run_dir = runs / "run_reg_copy"
    shutil.copytree(runs / "run_reg", run_dir)
    with served(create_app(run_dir, log=io.StringIO())) as client:
        yield client, run_dir


def test_csv_bodies_in_other_dialects_give_the_same_answers(server, runs, tmp_path):
    """A `;` or tab body is detected as `fitloop predict` detects a file; ?delimiter= settles an ambiguous one."""
    client, _, _ = server
    cli = _cli_predict(runs, "run_cls", tmp_path / "cli.csv")
    table = pcsv.read_csv(runs / "new.csv")
    for sep, query in ((";", ""), ("\t", ""), ("\t", "?delimiter=tab"), ("|", "?delimiter=%7C")):
        sink = io.BytesIO()
        pcsv.write_csv(table, sink, write_options=pcsv.WriteOptions(delimiter=sep))
        r = client.post(f"/predict_csv{query}", content=sink.getvalue())
        assert r.status_code == 200, (sep, r.text)
        assert r.content == cli, sep
    ambiguous = b"x1,x2;color\n1,2;red\n"
    _check_refusal(client.post("/predict_csv", content=ambiguous), 400, "bad_csv", None, None,
                   "cannot tell the delimiter: ',' (2 fields) and ';' (2 fields) each split every line of the "
                   "first lines into the same number of fields. Pass the right one: `?delimiter=,` or "
                   "`?delimiter=;`.")
    _check_refusal(client.post("/predict_csv?delimiter=ab", content=ambiguous), 422, "bad_query", None, None,
                   "query parameter delimiter='ab': pass one character")


def _records(path: Path) -> list[dict]:
    return pcsv.read_csv(path).to_pylist()


def _cli_predict(runs: Path, run: str, out: Path, *extra: str) -> bytes:
    assert main(["predict", str(runs / run), str(runs / "new.csv"), "-o", str(out), *extra]) == 0
    return out.read_bytes()


# ------------------------------------------------------------------------------------- same answers


def test_predict_over_http_gives_the_cli_answers(server, runs, tmp_path):
    client, _, _ = server
    cli = _cli_predict(runs, "run_cls", tmp_path / "cli.csv", "--proba")
    r = client.post("/predict_csv?proba=true", content=(runs / "new.csv").read_bytes())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content == cli  # byte for byte what `fitloop predict` writes
    assert json.loads(r.headers["x-fitloop-ignored-columns"]) == ["extra"]

    expected = pcsv.read_csv(io.BytesIO(cli))
    r = client.post("/predict?proba=true", json=_records(runs / "new.csv"))
    assert r.status_code == 200
    body = r.json()
    assert body["rows"] == 20
    assert body["predictions"] == expected.column("prediction").to_pylist()
    assert body["ids"] == expected.column("row_id").to_pylist()
    assert body["classes"] == ["high", "low", "mid"]
    want = np.column_stack([expected.column(f"proba_{c}").to_numpy() for c in body["classes"]])
    assert np.array_equal(np.array(body["probabilities"]), want)  # exactly the CLI's numbers
    assert body["ignored_columns"] == ["extra"]
    assert body["notes"] == ["unseen (or missing) categories mapped to the <unknown> slot (rows per column): "
                             "color: 1"]


def test_regression_answers_in_target_units(reg_server, runs, tmp_path):
    client, _ = reg_server
    cli = pcsv.read_csv(io.BytesIO(_cli_predict(runs, "run_reg", tmp_path / "cli.csv")))
    body = client.post("/predict", json=_records(runs / "new.csv")).json()
    assert body["predictions"] == cli.column("prediction").to_pylist()
    assert 3 < float(np.mean(body["predictions"])) < 300  # target units (y ~ 10 * score + 3), not standardized
    r = client.post("/predict?proba=true", json=_records(runs / "new.csv"))
    assert r.status_code == 422 and r.json()["error"] == "bad_query"
    assert r.json()["detail"] == "proba=true is for classification runs; this run does regression."


def test_records_encode_exactly_as_a_table_transforms():
    """JSON records skip the Arrow table: Preprocessor.encode on their values == transform on the table."""
    from fitloop.integrations.serve_input import records_table
    from fitloop.tabular import Preprocessor

    train = pa.table({"a": [1.0, None, 3.0, 4.5], "b": [True, False, True, True],
                      "c": ["x", None, "y", "x"], "d": ["p", "q", "q", "p"]})
    pre = Preprocessor.fit(train, target="d", task="classification",
                           kinds={"a": "numeric", "b": "bool", "c": "categorical"})
    new = pa.table({"a": [None, 2.0, 1e6, -3.0], "b": [False, True, None, True], "c": ["y", "zzz", None, "x"]})
    numbers, codes, info = records_table(new.to_pylist(), pre, max_rows=10)
    json_notes: list[str] = []
    with pytest.warns(UserWarning):
        want = pre.transform(new, notes=(table_notes := []))
    assert np.array_equal(pre.encode(numbers, codes, json_notes), want)
    assert json_notes == table_notes == ["unseen (or missing) categories mapped to the <unknown> slot (rows "
                                         "per column): c: 1"]


# ------------------------------------------------------------------------------------------ bad input

GOOD = {"x1": 0.5, "x2": 10.0, "color": "red", "flag": True}


def _rows(n: int = 1, **change) -> bytes:
    return json.dumps([{**GOOD, **change} for _ in range(n)]).encode()


BAD_JSON = [  # (body, status, kind, column, row, text in the detail)
    (b'[{"x1": 1,', 400, "malformed_json", None, None, "the body is not valid JSON"),
    (b"[" * 20000 + b"]" * 20000, 400, "malformed_json", None, None, "the body's JSON nests too deeply"),
    (b'[{"x1": ' + b"1" * 5000 + b"}]", 400, "malformed_json", None, None, "holds a value that cannot be read"),
    (b'{"x1": 1}', 422, "bad_shape", None, None, "the body is a JSON object; send a JSON list of records"),
    (b"[1, 2]", 422, "bad_shape", None, 0, "row 0 is a JSON number, not an object"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "x2"}]).encode(), 422, "missing_column", "x2", None,
     "missing required column(s) ['x2']"),
    (json.dumps([GOOD, {k: v for k, v in GOOD.items() if k != "color"}]).encode(), 422, "missing_column", "color",
     1, "row 1 lacks required column 'color'"),
    (json.dumps([GOOD, {**GOOD, "x2": "abc"}]).encode(), 422, "wrong_type", "x2", 1,
     "column 'x2', row 1: expected a number (or null for a missing value), got a string 'abc'."),
    (json.dumps([{**GOOD, "color": {"a": 1}}]).encode(), 422, "wrong_type", "color", 0,
     "column 'color', row 0: expected text"),
    (b'[{"x1": NaN, "x2": 1, "color": "red", "flag": true}]', 422, "non_finite", "x1", 0,
     "column 'x1', row 0: NaN is not allowed"),
    (b'[{"x1": 1, "x2": -Infinity, "color": "red", "flag": true}]', 422, "non_finite", "x2", 0,
     "column 'x2', row 0: -Infinity is not allowed"),
    (b'[{"x1": 1e999, "x2": 1, "color": "red", "flag": true}]', 422, "non_finite", "x1", 0, "Infinity is not allowed"),
    (b"[]", 422, "empty_batch", None, None, "the request has no rows; send at least one."),
    (_rows(MAX_ROWS + 1), 413, "too_many_rows", None, None, f"has {MAX_ROWS + 1} rows, more than this server's "
                                                             f"limit of {MAX_ROWS} (--max-rows)"),
]

BAD_CSV = [
    (b"x1,x2,color,flag\n1,2,red,true\n1,abc,red,true\n", 422, "wrong_type", "x2", 1,
     "column 'x2' is numeric but has 1 non-numeric value(s); first at data row 2"),
    (b"x1,x2,color,flag\n1,inf,red,true\n", 422, "non_finite", "x2", 0, "column 'x2' has inf at data row 1"),
    (b"x1,x2,flag\n1,2,true\n", 422, "missing_column", "color", None, "missing required column(s) ['color']"),
    (b"x1,x2,color,flag\n", 422, "empty_batch", None, None, "the CSV body has no rows"),
    (b"", 400, "bad_csv", None, None, "the CSV body is empty"),
]


def _check_refusal(r, status, kind, column, row, text):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == kind and text in body["detail"], body
    assert body.get("column") == column and body.get("row") == row, body


@pytest.mark.parametrize("body,status,kind,column,row,text", BAD_JSON, ids=[c[2] + str(i) for i, c in
                                                                          enumerate(BAD_JSON)])
def test_bad_json_gets_a_4xx_naming_column_and_row(server, body, status, kind, column, row, text):
    client, _, _ = server
    _check_refusal(client.post("/predict", content=body), status, kind, column, row, text)


@pytest.mark.parametrize("body,status,kind,column,row,text", BAD_CSV, ids=[c[2] + str(i) for i, c in
                                                                         enumerate(BAD_CSV)])
def test_bad_csv_gets_a_4xx(server, body, status, kind, column, row, text):
    client, _, _ = server
    _check_refusal(client.post("/predict_csv", content=body), status, kind, column, row, text)


def test_a_body_over_max_body_gets_413_declared_or_chunked(server):
    client, port, _ = server
    big = _rows(MAX_ROWS) + b" " * MAX_BODY  # valid JSON, but over the byte limit
    r = client.post("/predict", content=big)  # Content-Length: refused before reading
    _check_refusal(r, 413, "body_too_large", None, None, f"the body is {len(big)} bytes, more than this "
                                                         f"server's limit of {MAX_BODY} (--max-body)")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # chunked: no length to check up front
    chunks = [big[i:i + 8192] for i in range(0, len(big), 8192)]
    conn.request("POST", "/predict", body=iter(chunks), encode_chunked=True,
                 headers={"Authorization": f"Bearer {KEY}", "Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["detail"] == (f"the body is over this server's limit of {MAX_BODY} bytes "
                                                 f"(--max-body); send smaller batches.")
    conn.close()


def test_a_bad_query_flag_is_422_and_the_server_keeps_serving(server):
    client, _, _ = server
    r = client.post("/predict?proba=maybe", content=_rows())
    _check_refusal(r, 422, "bad_query", None, None, "query parameter proba='maybe': use true or false.")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.post("/predict", content=_rows(3)).json()["rows"] == 3  # after every refusal above


# ------------------------------------------------------------------------------------------ security


def test_every_endpoint_but_health_needs_the_key(server):
    _, port, _ = server
    bare = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    assert bare.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in [("POST", "/predict"), ("POST", "/predict_csv"), ("GET", "/schema"),
                             ("GET", "/metrics"), ("GET", "/version"), ("GET", "/anything")]:
            r = bare.request(method, path, headers=headers, content=_rows() if method == "POST" else None)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"] == "unauthorized"
    bare.close()


def test_never_loads_a_pickle(runs, monkeypatch):
    import pickle

    import torch

    from fitloop.integrations.serve import create_app

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    create_app(runs / "run_cls", log=io.StringIO())  # safetensors + JSON only


def test_serves_only_the_bundle_it_started_with(reg_server):
    client, run_dir = reg_server
    before = client.post("/predict", content=_rows(2)).json()
    shutil.rmtree(run_dir / "model")  # the files go away (or get replaced): the loaded model answers
    assert client.post("/predict", content=_rows(2)).json() == before


# ------------------------------------------------------------------------------------------ operations


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_requests_errors_rows_and_latency(server):
    client, _, _ = server
    before = _samples(client.get("/metrics").text)
    client.post("/predict", content=_rows(3))
    client.post("/predict", content=b"[]")
    client.post("/predict_csv", content=b"x1,x2,color,flag\n1,2,red,true\n")
    after = _samples(client.get("/metrics").text)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("fitloop_requests_total", endpoint="/predict", method="POST", status="200") == 1
    assert delta("fitloop_requests_total", endpoint="/predict", method="POST", status="422") == 1
    assert delta("fitloop_requests_total", endpoint="/predict_csv", method="POST", status="200") == 1
    assert delta("fitloop_errors_total", kind="empty_batch") == 1
    assert delta("fitloop_rows_predicted_total") == 4
    assert delta("fitloop_request_duration_seconds_count", endpoint="/predict") == 2
    assert delta("fitloop_request_duration_seconds_bucket", endpoint="/predict", le="+Inf") == 2


def test_one_json_log_line_per_request(server):
    client, _, log = server

    def lines():
        return [json.loads(x) for x in log.read_text().splitlines() if '"event": "request"' in x]

    n = -1
    for _ in range(100):  # let the line of an earlier test's last request land first (written after its response)
        if n == (n := len(lines())):
            break
        time.sleep(0.05)
    client.post("/predict", content=_rows(2))
    client.get("/schema")
    client.post("/predict", content=b"{")
    for _ in range(100):  # the line is written after the response is sent
        if len(lines()) >= n + 3:
            break
        time.sleep(0.02)
    new = lines()[n:]
    assert [(x["method"], x["path"], x["status"], x["rows"], x["error"]) for x in new] == [
        ("POST", "/predict", 200, 2, None), ("GET", "/schema", 200, 0, None),
        ("POST", "/predict", 400, 0, "malformed_json")]
    assert all(x["ms"] > 0 and x["client"] == "127.0.0.1" and x["ts"].endswith("Z") for x in new)


def test_schema_and_version(server, runs):
    client, _, _ = server
    s = client.get("/schema").json()
    assert (s["target"], s["task"], s["classes"], s["id"]) == ("label", "classification", ["high", "low", "mid"],
                                                              "row_id")
    assert [(c["name"], c["type"]) for c in s["columns"]] == [("x1", "number"), ("x2", "number"),
                                                              ("color", "string"), ("flag", "boolean")]
    assert s["columns"][2]["categories"] == ["blue", "green", "red"]
    assert s["columns"][0]["missing_in_training"] is True
    assert s["limits"] == {"max_rows": MAX_ROWS, "max_body_bytes": MAX_BODY}
    assert client.post("/predict", json=s["example"]).status_code == 200  # the example is a valid request
    v = client.get("/version").json()
    weights = (runs / "run_cls" / "model" / "model.safetensors").read_bytes()
    assert v["model_sha256"] == hashlib.sha256(weights).hexdigest()
    assert v["fitloop"] == v["versions"]["fitloop"] and v["torch_threads"] == 1


def test_cli_errors_exit_2(runs, monkeypatch, capsys):
    assert main(["serve", str(runs / "nope")]) == 2
    assert "is not a fitloop run directory" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    assert main(["serve", str(runs / "run_cls")]) == 2
    assert "pip install 'fitloop[serve]'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "fastapi")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    assert main(["serve", str(runs / "run_cls"), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{busy.getsockname()[1]}" in err and "Pick another --port" in err
    busy.close()
    assert main(["serve", str(runs / "run_cls"), "--api-key", " "]) == 2
    assert "--api-key is empty; pass a secret" in capsys.readouterr().err
    monkeypatch.setenv("FITLOOP_API_KEY", "")  # an unset variable expanded into it: refused, never served open
    assert main(["serve", str(runs / "run_cls")]) == 2
    assert "FITLOOP_API_KEY is empty; pass a secret (or unset it to serve without one)." in capsys.readouterr().err
    monkeypatch.delenv("FITLOOP_API_KEY")
    assert main(["serve", str(runs / "run_cls"), "--port", "70000"]) == 2  # argparse's error, naming the range
    assert "a TCP port is 0-65535" in capsys.readouterr().err
    assert main(["serve", str(runs / "run_cls"), "--host", "203.0.113.7", "--port", "0"]) == 2  # not this machine's
    err = capsys.readouterr().err
    assert "cannot listen on 203.0.113.7:0" in err and "Check --host" in err and "internal error" not in err


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(runs):
    proc, port = _start(runs / "run_reg", runs / "sigterm.log")
    try:
        body = _rows(2)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:10])
        time.sleep(0.3)  # the server has the headers: the request is in flight, waiting for its body
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting for the request to finish
        sock.sendall(body[10:])
        response = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            response += chunk
        sock.close()
        assert response.startswith(b"HTTP/1.1 200 ")
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["rows"] == 2
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert '"event": "stop", "signal": "SIGTERM"' in (runs / "sigterm.log").read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
