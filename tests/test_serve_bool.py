"""`fitloop serve` and true/false columns: /schema says "boolean", a numeric column refuses JSON true/false.

The training side reads a true/false column as the numbers 1/0 (`Preprocessor.fit`, kind ``bool``); the fitted
feature remembers that it was true/false, and the server checks JSON values against it.
"""

from __future__ import annotations

import io

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


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A run with a numeric, a true/false and a text column, served by uvicorn in a thread of this process."""
    from fitloop.integrations.serve import create_app

    d = tmp_path_factory.mktemp("serve_bool")
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=n)
    flag = rng.random(n) < 0.5
    color = rng.choice(["red", "blue"], size=n)
    pcsv.write_csv(pa.table({"x": x, "flag": flag, "color": color, "y": x + flag}), d / "t.csv")
    assert main(["train", str(d / "t.csv"), "--target", "y", "--epochs", "1", "--hidden", "4",
                 "--out", str(d / "run"), "-q"]) == 0
    with served(create_app(d / "run", log=io.StringIO())) as http:
        yield http


def test_schema_calls_a_true_false_column_boolean(client):
    schema = client.get("/schema").json()
    assert [(c["name"], c["type"]) for c in schema["columns"]] == [("x", "number"), ("flag", "boolean"),
                                                                   ("color", "string")]
    assert type(schema["example"][0]["flag"]) is bool
    assert client.post("/predict", json=schema["example"]).status_code == 200  # the example is a valid request


def test_a_boolean_column_takes_true_false_and_null(client):
    rows = [{"x": 0.5, "flag": True, "color": "red"}, {"x": 0.5, "flag": False, "color": "red"},
            {"x": 0.5, "flag": None, "color": "red"}, {"x": 0.5, "flag": 1, "color": "red"}]
    r = client.post("/predict", json=rows)
    assert r.status_code == 200, r.text
    p = r.json()["predictions"]
    assert p[0] == p[3] and p[0] != p[1]  # true is 1, as the file's true is; false is 0
    csv = b"x,flag,color\n0.5,true,red\n0.5,false,red\n"
    answer = pcsv.read_csv(io.BytesIO(client.post("/predict_csv", content=csv).content))
    assert answer.column("prediction").to_pylist() == p[:2]  # the same numbers as a CSV body's


@pytest.mark.parametrize("row,column,index,detail", [
    ({"x": True, "flag": True, "color": "red"}, "x", 1,
     "column 'x', row 1: expected a number (or null for a missing value), got a boolean true; the column held "
     "numbers in training (see GET /schema)."),
    ({"x": 0.5, "flag": "yes", "color": "red"}, "flag", 1,
     "column 'flag', row 1: expected true or false (or null for a missing value), got a string 'yes'."),
    ({"x": 0.5, "flag": 2, "color": "red"}, "flag", 1,
     "column 'flag', row 1: expected true or false (or null for a missing value), got a number 2."),
])
def test_a_wrong_json_type_is_422_naming_column_and_row(client, row, column, index, detail):
    good = {"x": 0.5, "flag": False, "color": "red"}
    r = client.post("/predict", json=[good, row])
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "wrong_type", "detail": detail, "column": column, "row": index}


def test_a_bundle_from_before_the_values_were_recorded_takes_true_and_numbers_as_it_did():
    from fitloop.integrations.serve_input import records_table
    from fitloop.tabular import Preprocessor

    train = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "flag": [True, False, True, False], "y": [1, 2, 3, 4]})
    pre = Preprocessor.fit(train, target="y", task="regression", kinds={"x": "numeric", "flag": "bool"})
    for feature in pre.features:
        feature.pop("values", None)  # as an older bundle's preprocessor reads back
    numbers, _, _ = records_table([{"x": True, "flag": 1}, {"x": 2.5, "flag": False}], pre, max_rows=10)
    assert numbers.tolist() == [[1.0, 1.0], [2.5, 0.0]]
