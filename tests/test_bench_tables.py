"""The arithmetic of the 24+-table benchmark (bench/studies/tables24.py) on hand-made numbers: ranks, normalized
scores, win/tie/loss, the per-table medians and the part-3 target lines; and the selection rule's task and
response parsing on small inputs. No model runs here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repository root, beside tests/
with mock.patch.dict(os.environ):  # the module pins BLAS threads to 1 for its own runs; not for this test process
    from bench.studies import tables24 as bench24


def test_ranks_share_ties_and_count_from_the_best():
    ranks = bench24.method_ranks({"a": 0.9, "b": 0.8, "c": 0.9, "d": 0.5})
    assert ranks == {"a": 1.5, "c": 1.5, "b": 3.0, "d": 4.0}


def test_normalized_scores_span_worst_to_best():
    assert bench24.normalized_scores({"a": 1.0, "b": 0.5, "c": 0.0}) == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert bench24.normalized_scores({"a": 0.25, "b": 0.75}) == {"a": 0.0, "b": 1.0}
    assert bench24.normalized_scores({"a": 0.3, "b": 0.3}) == {"a": 1.0, "b": 1.0}


def test_win_tie_loss_uses_the_tolerance_and_a_tie_counts_half():
    pairs = [(0.95, 0.93, 0.01),  # win: 0.02 above
             (0.95, 0.955, 0.01),  # tie: 0.005 below
             (0.80, 0.90, 0.02),  # loss: 0.10 below
             (0.50, 0.52, 0.02)]  # tie: exactly the tolerance below
    assert bench24.win_tie_loss(pairs) == (1, 2, 1)
    assert bench24.win_rate(1, 2, 1) == pytest.approx(0.5)
    assert bench24.win_rate(3, 0, 1) == pytest.approx(0.75)


def _run(table: str, seed: int, metric: str, scores: dict[str, float], logloss: dict[str, float] | None = None,
         seconds: float = 1.0, train_seconds: float = 2.0) -> dict:
    arms = {name: {"score": s, "seconds": seconds} for name, s in scores.items()}
    arms["fitloop"]["train_seconds"] = train_seconds
    for name, value in (logloss or {}).items():
        arms[name]["logloss"] = value
    task = "classification" if metric == "accuracy" else "regression"
    return {"table": table, "seed": seed, "metric": metric, "task": task, "rows": 100, "arms": arms}


def _hand_made() -> list[dict]:
    cls = [_run("c", seed, "accuracy", {"fitloop": f, "linear": 0.80, "hgb": 0.85, "catboost": 0.90},
                {"fitloop": 0.30, "catboost": 0.35}, seconds=1.0, train_seconds=3.0)
           for seed, f in enumerate([0.91, 0.95, 0.93])]  # fitloop's median 0.93: a win over CatBoost by 0.03
    reg = [_run("r", seed, "r2", {"fitloop": 0.50, "linear": 0.60, "hgb": 0.40, "catboost": 0.51}, seconds=2.0,
                train_seconds=4.0) for seed in range(3)]  # a tie with CatBoost, 0.10 below linear
    return cls + reg


def test_summary_takes_medians_over_seeds_then_ranks_and_normalizes():
    rows = bench24.summarize_tables(_hand_made())
    c, r = rows
    assert c["score"]["fitloop"] == pytest.approx(0.93)
    assert c["rank"] == {"fitloop": 1.0, "catboost": 2.0, "hgb": 3.0, "linear": 4.0}
    assert c["normalized"]["fitloop"] == 1.0 and c["normalized"]["linear"] == 0.0
    assert c["normalized"]["catboost"] == pytest.approx((0.90 - 0.80) / (0.93 - 0.80))
    assert r["rank"] == {"linear": 1.0, "catboost": 2.0, "fitloop": 3.0, "hgb": 4.0}
    assert r["normalized"]["fitloop"] == pytest.approx(0.5)


def test_aggregate_and_targets():
    rows = bench24.summarize_tables(_hand_made())
    agg = bench24.aggregate(rows)
    assert agg["wtl"]["catboost"] == {"wins": 1, "ties": 1, "losses": 0, "win_rate": 0.75}
    assert agg["wtl"]["linear"] == {"wins": 1, "ties": 0, "losses": 1, "win_rate": 0.5}
    assert agg["means"]["fitloop"]["rank"] == pytest.approx(2.0)
    assert agg["means"]["fitloop"]["normalized"] == pytest.approx(0.75)
    checks = {name.split(" ")[0] + " " + name.split(" ")[1]: (ok, detail)
              for name, ok, detail in bench24.target_checks(rows, agg)}
    assert checks["win rate"][0] is True
    assert checks["mean normalized"][0] is True  # 0.75 against CatBoost's (0.769 + 0.55) / 2 = 0.66
    assert checks["no table"] == (False, "1 of 2 below: r -0.100")
    assert checks["classification log-loss"][0] is True  # 0.30 against 0.35
    assert checks["fitloop train"][0] is True and "median ratio 2.5x" in checks["fitloop train"][1]  # 3/1, 4/2


def test_task_rule():
    assert bench24.task_of(np.arange(20, dtype=float))[0] == "regression"
    assert bench24.task_of(np.array([0.0, 1.0] * 10))[0] == "binary"
    assert bench24.task_of(np.array(["a", "b", "c"] * 10, dtype=object))[0] == "multiclass"
    assert bench24.task_of(np.array([1.0, 2.0, 3.0, 4.0] * 5))[0] is None  # 4 distinct numbers: ambiguous
    assert bench24.task_of(np.array(["a"] * 99 + ["b"], dtype=object))[0] is None  # 1% minority class


def test_response_from_the_first_model_formula():
    doc = "### Examples\n\n    data(x)\n    summary(x)\n    fm <- glm(log(price) ~ size + rooms, data = x)\n"
    assert bench24.response_from_examples(doc)[0] == "price"
    assert bench24.response_from_examples("### Examples\n    lm(cbind(a, b) ~ c)\n")[0] is None
    assert bench24.response_from_examples("### Examples\n    glm(y ~ x, weights = n)\n")[0] is None
    assert bench24.response_from_examples("### Description\n no examples\n")[0] is None


def test_the_ablation_scores_each_arm_against_the_main_runs_anchors():
    from bench.studies import ablation24

    main = _hand_made()
    arm = [{**r, "arms": {"fitloop": {**r["arms"]["fitloop"], "score": 0.70, "best_epoch": 0}}}
           for r in main if r["table"] == "r"]  # the regression table only, now above linear
    swapped = ablation24.swap_arm(main, arm)
    assert [r["table"] for r in swapped] == ["r"] * 3 and swapped[0]["arms"]["catboost"]["score"] == 0.51
    assert main[-1]["arms"]["fitloop"]["score"] == 0.50  # the main run is left as it was
    summary = ablation24.arm_summary(swapped)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (1, 0, 0)
    assert summary["floor"] == "0 of 1 below" and summary["kept_start"] == 3 and summary["scores"] == {"r": 0.70}
