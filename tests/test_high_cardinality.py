"""Text columns with more than `max_categories` values (issue 24 part 1): a product code keeps its most frequent
values as categories (the rest share the <unknown> slot) instead of being dropped; an ID-like column (most values
seen once) is still dropped, with a note that says why; the streamed one-pass fit decides the same."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from fitloop.cli import main
from fitloop.integrations.serve_input import records_table
from fitloop.tabular import dry_run
from fitloop.tabular.preprocess import Preprocessor, categorical_spec_from_counts
from fitloop.tabular.runs import load_run
from fitloop.tabular.stream_fit import CategorySummary, RowSplit, fit_streamed, text_hashes

N_CODES = 300


def code_table(n: int = 3000, seed: int = 0) -> pa.Table:
    """A regression table whose signal is mostly a 300-value product code (Zipf-like frequencies: the 50 most
    frequent cover most rows), with a number, and an order reference unique per row (ID-like)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, N_CODES + 1) ** 1.2
    code = rng.choice(N_CODES, size=n, p=weights / weights.sum())
    effect = rng.normal(0.0, 2.0, N_CODES)
    x = rng.normal(size=n)
    y = effect[code] + 0.5 * x + rng.normal(0.0, 0.3, n)
    order = rng.permutation(n)
    return pa.table({"code": [f"P{c:03d}" for c in code], "x": x, "ref": [f"ORD-{o:06d}" for o in order], "y": y})


KINDS = {"code": "categorical", "x": "numeric", "ref": "categorical"}


def frequent(table: pa.Table, rows: np.ndarray, k: int = 50) -> list[str]:
    """The k most frequent codes of `rows` (ties by value), sorted: what the fit must keep."""
    values, counts = np.unique(np.asarray(table["code"].to_pylist(), dtype=object)[rows], return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], values[i]))[:k]
    return sorted(str(values[i]) for i in order)


def test_a_code_column_keeps_its_most_frequent_values_and_an_id_column_is_dropped():
    table = code_table()
    rows = np.arange(2000)
    pre = Preprocessor.fit(table, target="y", task="regression", kinds=KINDS, rows=rows)
    code = pre.features[0]
    assert code["name"] == "code" and code["categories"] == frequent(table, rows)
    distinct = len(set(table["code"].take(pa.array(rows)).to_pylist()))
    assert code["others"] == distinct - 50
    assert [f"code={c}" for c in code["categories"]] + ["code=<unknown>"] == pre.feature_names[:51]
    assert pre.dropped.keys() == {"ref"}
    notes = " | ".join(pre.notes)
    assert ("dropped column 'ref': ID-like text: 2,000 distinct values in 2,000 non-missing training rows (more "
            "than half as many values as rows") in notes
    assert f"column 'code': kept the 50 most frequent of {distinct} values (" in notes
    assert "the rest share one slot" in notes
    # values seen in training but not kept, and unseen ones, go to <unknown> without an "unseen" warning
    new = pa.table({"code": [code["categories"][0], "P299", "NEVER-SEEN", None], "x": [0.0] * 4, "ref": ["a"] * 4})
    notes_out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X = pre.transform(new, notes=notes_out)
    assert notes_out == []
    unknown = pre.feature_names.index("code=<unknown>")
    assert X[:, unknown].tolist() == [0.0, 1.0, 1.0, 1.0] and X[0, 0] == 1.0  # (no missing in training: <unknown>)


def test_the_decision_rule():
    # at most max_categories values: all kept, whatever their counts; ties among the most frequent: by value
    spec, why = categorical_spec_from_counts("c", ["b", "a"], [1, 1], missing=0, max_categories=2)
    assert spec == {"name": "c", "kind": "categorical", "categories": ["a", "b"], "missing": False} and why == ""
    spec, why = categorical_spec_from_counts("c", ["d", "c", "b", "a", "e"], [5, 3, 3, 3, 1], missing=2,
                                             max_categories=3)
    assert spec is not None and spec["categories"] == ["a", "b", "d"] and spec["others"] == 2 and spec["missing"]
    assert why == ("kept the 3 most frequent of 5 values (73% of the non-missing training rows; max_categories=3); "
                   "the rest share one slot")
    # more distinct values than half the non-missing rows: ID-like, dropped
    spec, why = categorical_spec_from_counts("c", list("abcdef"), [2, 1, 1, 1, 1, 1], missing=0, max_categories=3)
    assert spec is None and why.startswith("ID-like text: 6 distinct values in 7 non-missing training rows")
    assert categorical_spec_from_counts("c", ["a"], [9], missing=0, max_categories=3)[0] is None  # constant


def test_train_keeps_the_code_and_predicts_rare_and_unseen_values(tmp_path: Path, capsys):
    table = code_table(1500, seed=1)
    pcsv.write_csv(table, tmp_path / "t.csv")
    assert main(["train", str(tmp_path / "t.csv"), "--target", "y", "--epochs", "3", "--hidden", "16",
                 "--out", str(tmp_path / "run"), "-q"]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "run" / "model" / "fitloop.json").read_text())
    saved = Preprocessor.from_dict(meta["preprocessor"])
    run = load_run(tmp_path / "run")
    names = run.preprocessor.feature_names
    assert names == saved.feature_names
    assert sum(n.startswith("code=") for n in names) == 51 and "code=<unknown>" in names
    assert not any(n.startswith("ref") for n in names)  # the ID-like reference is not a feature
    kept = run.preprocessor.features[0]["categories"]
    new = pa.table({"code": [kept[0], kept[1], "P299", "NEW-CODE", None], "x": [0.0] * 5})
    notes: list[str] = []
    predicted = run.predict(new, notes=notes)["prediction"].to_pylist()
    assert len(predicted) == 5 and predicted[0] != predicted[1]  # the code moves the prediction
    assert predicted[2] == predicted[3]  # a rare and an unseen code share the <unknown> slot
    assert not any("unseen" in n for n in notes)
    # serve's JSON records take the same values, to the same matrix
    records = [{"code": c, "x": 0.0} for c in new["code"].to_pylist()]
    numbers, codes, _ = records_table(records, run.preprocessor, max_rows=10)
    np.testing.assert_array_equal(run.preprocessor.encode(numbers, codes), run.preprocessor.transform(new))
    pcsv.write_csv(new, tmp_path / "new.csv")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert "unseen" not in capsys.readouterr().err


def test_the_dry_run_says_what_happened(tmp_path: Path):
    table = code_table(1500, seed=2)
    plan = dry_run(table, "y", epochs=1)
    decided = {c["name"]: c for c in plan.columns}
    assert decided["code"]["decision"] == "one-hot (50 + <unknown>: the 50 most frequent values)"
    assert decided["code"]["reason"].startswith("categorical: kept the 50 most frequent of ")
    assert decided["code"]["reason"].endswith(" values; the rest share one slot")
    assert decided["ref"]["decision"] == "dropped" and decided["ref"]["reason"].startswith("ID-like text: ")


def as_row_groups(table: pa.Table, size: int) -> list[tuple[int, int, pa.Table]]:
    return [(0, g, table.slice(start, size)) for g, start in enumerate(range(0, table.num_rows, size))]


def test_the_streamed_fit_equals_the_in_memory_fit():
    table = code_table(4000, seed=3)
    groups = as_row_groups(table, 333)
    fit = fit_streamed(groups, target="y", task="regression", kinds=KINDS, split=RowSplit((0.7, 0.15, 0.15), 5))
    keep, at = [], 0
    for file, group, rows in groups:
        keep.append(at + np.flatnonzero(fit.masks.rows("train")(file, group, np.arange(rows.num_rows))))
        at += rows.num_rows
    rows = np.concatenate(keep)
    memory = Preprocessor.fit(table, target="y", task="regression", kinds=KINDS, rows=rows)
    streamed = fit.preprocessor
    assert streamed.dropped == memory.dropped and streamed.dropped.keys() == {"ref"}
    assert streamed.features[0] == memory.features[0] and "others" in memory.features[0]
    assert [n for n in streamed.notes if "code" in n] == [n for n in memory.notes if "code" in n]
    assert set(fit.categories["code"]) == set(memory.features[0]["categories"])


def test_a_summarised_column_keeps_the_same_frequent_values_and_estimates_its_values():
    rng = np.random.default_rng(4)
    values = np.minimum(rng.zipf(1.4, 60_000), 5000)
    column = pa.array([f"v{v}" for v in values])
    summary = CategorySummary(max_categories=10, capacity=200)  # beyond 200 values: a Misra-Gries summary
    for start in range(0, len(column), 4096):
        summary.add(column.slice(start, 4096))
    assert summary.summarised and len(summary.counts) <= 200
    exact = {v: int(c) for v, c in zip(*np.unique(values, return_counts=True))}
    assert summary.distinct == len(exact)  # under 4096 values the sketch holds every hash: exact
    spec, why = summary.spec("v")
    in_memory = Preprocessor.fit(pa.table({"v": column, "y": np.zeros(len(column))}), target="y",
                                 task="regression", kinds={"v": "categorical"}, max_categories=10).features[0]
    assert spec == in_memory  # the ten most frequent are far from the cut
    ids = pa.array([f"id-{i}" for i in range(50_000)])
    summary = CategorySummary(max_categories=10)
    for start in range(0, len(ids), 8192):
        summary.add(ids.slice(start, 8192))
    assert summary.distinct == pytest.approx(50_000, rel=0.05)  # k minimum values: ~1.6 % error
    assert summary.spec("id")[0] is None  # ID-like


def test_text_hashes_are_stable_and_distinct():
    words = pa.array(["a", "", "a\x00", "é", "x" * 64, "x" * 65, "x" * 500, "y" * 500])
    hashes = text_hashes(words)
    assert len(set(hashes.tolist())) == len(words)
    np.testing.assert_array_equal(hashes, text_hashes(pa.array(words.to_pylist())))
    assert int(text_hashes(pa.array(["a"]))[0]) == int(hashes[0])
