"""`fitloop tune` measured (issue 23, part 6): tuned and ensembled against the defaults and against CatBoost
tuned with the same budget; pruning's cost; `--jobs 2` against `--jobs 1`.

Run: python -m bench.tune [--tables wine,diabetes] [--seed 0] [--trials 8] [--json out.json] [--markdown out.md]

For each table of `bench/studies/tables.py` named (default: the two that fit a few minutes on 2 cores) and
the seed:

* `defaults`: `fitloop.tabular.train` with its defaults (seed S);
* `tuned`: `fitloop.tabular.tune(trials=N, pruner="asha", jobs=1)`, the best trial's run (`OUT/best`);
  `ensemble`: the ensemble of its complete trials (`OUT/ensemble`, `fitloop.tabular.ensemble`: none when fewer
  than two completed), and `ensemble+pruned`: of its complete and pruned trials (each pruned trial's run keeps
  the model of the epoch it stopped at; greedy selection only picks what lowers the validation loss);
* `tuned-nopruning`, `ensemble-nopruning`: the best trial and the ensemble of every trial of the same search
  without pruning;
* `catboost-tuned`: Optuna's TPE (seed S) over CatBoost's usual space (depth, learning_rate, l2_leaf_reg,
  random_strength, bagging_temperature; depth 4-8 and 500 iterations with early stopping on the validation
  rows, so that a multiclass search fits the machine's time) for the
  same N trials, on the train rows of fitloop's own split; the trial with the best validation loss is scored;
* pruning: the same search with `pruner="none"`: its best validation loss, its trial-epochs, and the
  trial-epochs the ASHA search had spent when its best complete trial first reached that loss (target:
  at most a third);
* parallel: the `pruner="none"` search again with `jobs=2`: trials (and trial-epochs) per hour against jobs=1.

Every arm is scored on the same test rows (the runs' `splits.json`; the tune trials share the defaults'
split seed): accuracy (classification, with the log-loss) or R² (regression). Libraries run on one thread
each (`OMP_NUM_THREADS=1`), as in `bench.studies.tables`; `jobs=2` runs two such processes.
CatBoost is a bench-only dependency (`pip install catboost`), never fitloop's.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import fitloop.tabular as ft  # noqa: E402
from bench.studies.tables import (  # noqa: E402
    Table,
    feature_frame,
    generated_tables,
    log_loss_of,
    sklearn_tables,
    text_columns,
    write_csv,
)
from fitloop.tabular.ensemble import build_ensemble  # noqa: E402

DEFAULT_TABLES = "wine,diabetes"
PRUNING_TARGET = 1 / 3  # the share of no-pruning's trial-epochs within which ASHA should reach its best


# ------------------------------------------------------------------------------------------------ scoring


def score(t: Table, y_true: np.ndarray, pred: np.ndarray, proba: np.ndarray | None = None,
          classes: Any = None) -> dict[str, float]:
    """Accuracy (and log-loss with `proba`) or R² on the test rows."""
    if t.task == "classification":
        out = {"score": float(np.mean(np.asarray(y_true).astype(str) == np.asarray(pred).astype(str)))}
        if proba is not None:
            out["logloss"] = log_loss_of(y_true, proba, classes)
        return out
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return {"score": float(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))}


def score_run(t: Table, run_dir: Path, test_rows: np.ndarray) -> dict[str, float]:
    """A run directory's predictions on the test rows, through `load_run(...).predict` (as `fitloop predict`)."""
    run = ft.load_run(run_dir)
    rows = pa.table({c: pa.array(t.columns[c][test_rows], from_pandas=True) for c in t.features()})
    cls = t.task == "classification"
    pred = run.predict(rows, proba=cls, notes=[])
    y = np.asarray(t.columns[t.target])[test_rows]
    if not cls:
        return score(t, y, pred.column("prediction").to_numpy())
    classes = run.info["classes"]
    proba = np.column_stack([pred.column(f"proba_{c}").to_numpy() for c in classes])
    return score(t, y, np.asarray(pred.column("prediction").to_pylist()), proba, classes)


def splits_of(run_dir: Path) -> dict[str, np.ndarray]:
    split = json.loads((run_dir / "splits.json").read_text())
    return {k: np.asarray(split[k], dtype=np.int64) for k in ("train", "val", "test") if split.get(k)}


# ------------------------------------------------------------------------------------------------ fitloop


def tune_arm(csv: Path, t: Table, out: Path, seed: int, trials: int, pruner: str, jobs: int,
             ensemble: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """One `fitloop.tabular.tune` search: wall time, each trial's state, value and epochs, in trial order."""
    extra: dict[str, Any] = {**settings, **({"task": t.task} if t.pass_task else {})}
    t0 = time.perf_counter()
    result = ft.tune(str(csv), target=t.target, out=out, trials=trials, pruner=pruner, jobs=jobs, overwrite=True,
                     quiet=True, ensemble=ensemble, seed=seed, **extra)
    wall = time.perf_counter() - t0
    history = [{"number": tr.number, "state": tr.state.name, "value": tr.value,
                "epochs": int(tr.user_attrs.get("epochs") or 0), "run_dir": tr.user_attrs.get("run_dir")}
               for tr in result.study.get_trials(deepcopy=False)]
    return {"seconds": wall, "trials": history, "best_value": result.best_trial.value if result.best_trial else None,
            "best_run": str(result.best_run_dir) if result.best_run_dir else None,
            "ensemble": str(result.extras["ensemble"]) if "ensemble" in result.extras else None,
            "ensemble_note": result.extras.get("ensemble_note"),
            "counts": dict(result.counts), "epochs": sum(h["epochs"] for h in history if h["state"] != "FAIL")}


def ensemble_arm(t: Table, work: Path, name: str, search: dict[str, Any], states: tuple[str, ...],
                 test_rows: np.ndarray) -> dict[str, Any]:
    """`build_ensemble` over the search's trials in `states`, scored on the test rows."""
    runs = [h["run_dir"] for h in search["trials"] if h["state"] in states and h["run_dir"]]
    if len(runs) < 2:
        return {"error": f"{len(runs)} trial(s) in {states}"}
    t0 = time.perf_counter()
    path = build_ensemble(runs, work / name, overwrite=True)
    seconds = time.perf_counter() - t0
    info = json.loads((path / "run.json").read_text())["ensemble"]
    return {**score_run(t, path, test_rows), "seconds": seconds, "members": len(info["members"]),
            "val_loss": info["val_loss"], "best_member_val_loss": info["best_member_val_loss"]}


def epochs_to_reach(history: list[dict[str, Any]], target: float) -> int | None:
    """The trial-epochs spent (in trial order) when a complete trial's value first reached `target`."""
    spent = 0
    for h in sorted(history, key=lambda h: h["number"]):
        spent += h["epochs"]
        if h["state"] == "COMPLETE" and h["value"] is not None and h["value"] <= target:
            return spent
    return None


# ----------------------------------------------------------------------------------------------- CatBoost


def catboost_tuned(t: Table, splits: dict[str, np.ndarray], trials: int, seed: int) -> dict[str, Any]:
    """TPE over CatBoost's usual space for `trials` trials, early stopping and selection on the val rows."""
    try:
        import catboost
        import optuna
    except ImportError as e:
        return {"error": f"not installed ({e})"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    y = np.asarray(t.columns[t.target])
    df = feature_frame(t, text_as="text")
    cls = t.task == "classification"
    kind = catboost.CatBoostClassifier if cls else catboost.CatBoostRegressor
    train, val, test = splits["train"], splits["val"], splits["test"]
    best: dict[str, Any] = {}

    def objective(trial: Any) -> float:
        params = {"depth": trial.suggest_int("depth", 4, 8),
                  "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
                  "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 10.0, log=True),
                  "random_strength": trial.suggest_float("random_strength", 1e-3, 10.0, log=True),
                  "bagging_temperature": trial.suggest_float("bagging_temperature", 0.0, 1.0)}
        model = kind(iterations=500, od_type="Iter", od_wait=50, use_best_model=True, thread_count=1, verbose=0,
                     random_seed=seed, cat_features=text_columns(t) or None, allow_writing_files=False, **params)
        model.fit(df.iloc[train], y[train], eval_set=(df.iloc[val], y[val]))
        if cls:
            loss = log_loss_of(y[val], np.asarray(model.predict_proba(df.iloc[val])), model.classes_)
        else:
            loss = float(np.mean((np.asarray(model.predict(df.iloc[val])) - y[val]) ** 2))
        if not best or loss < best["val_loss"]:
            best.update(val_loss=loss, model=model, params=params)
        return loss

    t0 = time.perf_counter()
    optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed)).optimize(objective, n_trials=trials)
    wall = time.perf_counter() - t0
    model = best["model"]
    X_test = df.iloc[test]
    proba = np.asarray(model.predict_proba(X_test)) if cls else None
    pred = np.asarray(model.predict(X_test)).reshape(-1)
    return {**score(t, y[test], pred, proba, model.classes_ if cls else None), "seconds": wall,
            "val_loss": best["val_loss"], "params": best["params"]}


# ---------------------------------------------------------------------------------------------- one table


def bench_table(t: Table, seed: int, trials: int, work: Path, settings: dict[str, Any]) -> dict[str, Any]:
    csv = work / f"{t.name}.csv"
    write_csv(t, csv)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {**settings, **({"task": t.task} if t.pass_task else {})}
    ft.train(str(csv), target=t.target, out=work / "defaults", overwrite=True, seed=seed, quiet=True, **extra)
    defaults_seconds = time.perf_counter() - t0
    splits = splits_of(work / "defaults")
    asha = tune_arm(csv, t, work / "asha", seed, trials, "asha", 1, True, settings)
    none = tune_arm(csv, t, work / "none", seed, trials, "none", 1, False, settings)
    jobs2 = tune_arm(csv, t, work / "none-jobs2", seed, trials, "none", 2, False, settings)
    best_run = Path(asha["best_run"])
    assert np.array_equal(splits_of(best_run)["test"], splits["test"]), "the tune trials must share the split"
    scores = {"defaults": {**score_run(t, work / "defaults", splits["test"]), "seconds": defaults_seconds},
              "tuned": {**score_run(t, best_run, splits["test"]), "seconds": asha["seconds"]}}
    if asha["ensemble"]:
        scores["ensemble"] = score_run(t, Path(asha["ensemble"]), splits["test"])
    scores["tuned-nopruning"] = score_run(t, Path(none["best_run"]), splits["test"])
    for arm, search, states in (("ensemble+pruned", asha, ("COMPLETE", "PRUNED")),
                                ("ensemble-nopruning", none, ("COMPLETE",))):
        scores[arm] = ensemble_arm(t, work, arm, search, states, splits["test"])
    scores["catboost-tuned"] = catboost_tuned(t, splits, trials, seed)
    reach = epochs_to_reach(asha["trials"], none["best_value"]) if none["best_value"] is not None else None
    return {"table": t.name, "task": t.task, "metric": "accuracy" if t.task == "classification" else "r2",
            "rows": t.rows, "seed": seed, "trials": trials, "scores": scores, "asha": asha, "none": none,
            "jobs2": jobs2, "pruning": {"none_best": none["best_value"], "none_epochs": none["epochs"],
                                        "asha_best": asha["best_value"], "asha_epochs": asha["epochs"],
                                        "asha_epochs_to_reach": reach,
                                        "share": None if reach is None else reach / max(1, none["epochs"])},
            "parallel": {"jobs1_trials_per_hour": 3600 * trials / none["seconds"],
                         "jobs2_trials_per_hour": 3600 * trials / jobs2["seconds"],
                         "jobs1_epochs_per_hour": 3600 * none["epochs"] / none["seconds"],
                         "jobs2_epochs_per_hour": 3600 * jobs2["epochs"] / jobs2["seconds"]}}


# ------------------------------------------------------------------------------------------------- report


def _fmt(arm: dict[str, Any]) -> str:
    if "error" in arm:
        return "-"
    text = f"{arm['score']:.3f}"
    return text + (f" ({arm['logloss']:.3f})" if "logloss" in arm else "")


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    arms = ["defaults", "tuned", "ensemble", "ensemble+pruned", "tuned-nopruning", "ensemble-nopruning",
            "catboost-tuned"]
    lines = [f"### Tuning: `fitloop tune` ({meta['when']})\n",
             f"`python -m bench.tune {meta['args']}`: {meta['trials']} trials per search, seed {meta['seed']}, one "
             f"thread per process, {meta['cpus']} cores (shared). Test accuracy (log-loss) or R² on the defaults' test "
             f"rows; tuned = the best trial of TPE + ASHA; ensemble = greedy selection over its complete trials "
             f"(+pruned: and its pruned ones); -nopruning: the same search without pruning; "
             f"CatBoost tuned by TPE for the same number of trials. Total {meta['elapsed']:.0f} s.\n",
             "| table | rows | metric | " + " | ".join(arms) + " | time defaults / tuned / catboost (s) |",
             "|---|---|---|" + "---|" * len(arms) + "---|"]
    for r in results:
        s = r["scores"]
        times = " / ".join(f"{s[a]['seconds']:.0f}" if "seconds" in s.get(a, {}) else "-"
                           for a in ("defaults", "tuned", "catboost-tuned"))
        lines.append(f"| {r['table']} | {r['rows']} | {r['metric']} | "
                     + " | ".join(_fmt(s[a]) if a in s else "-" for a in arms) + f" | {times} |")
    lines += ["\nPruning (ASHA against no pruning, same trials): the best validation loss of the search without "
              "pruning, and the trial-epochs ASHA had spent when a complete trial first reached it "
              f"(target: at most {PRUNING_TARGET:.2f} of no-pruning's).\n",
              "| table | no pruning: best val loss | its trial-epochs | ASHA: best val loss | ASHA trial-epochs "
              "(all) | ASHA trial-epochs to reach | share | target |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["pruning"]
        share = "not reached" if p["share"] is None else f"{p['share']:.2f}"
        ok = "-" if p["share"] is None else ("PASS" if p["share"] <= PRUNING_TARGET else "FAIL")
        lines.append(f"| {r['table']} | {p['none_best']:.4g} | {p['none_epochs']} | {p['asha_best']:.4g} | "
                     f"{p['asha_epochs']} | {p['asha_epochs_to_reach'] or '-'} | {share} | {ok} |")
    lines += ["\nParallel (no pruning, the same number of trials): trials and trial-epochs per hour.\n",
              "| table | jobs 1: trials/h | jobs 2: trials/h | speed-up | jobs 1: epochs/h | jobs 2: epochs/h |",
              "|---|---|---|---|---|---|"]
    for r in results:
        q = r["parallel"]
        lines.append(f"| {r['table']} | {q['jobs1_trials_per_hour']:.0f} | {q['jobs2_trials_per_hour']:.0f} | "
                     f"{q['jobs2_trials_per_hour'] / q['jobs1_trials_per_hour']:.2f}x | "
                     f"{q['jobs1_epochs_per_hour']:.0f} | {q['jobs2_epochs_per_hour']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default=DEFAULT_TABLES, help="comma-separated names from bench.studies.tables")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=8, help="trials per search (fitloop and CatBoost alike)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run setting for the defaults and every trial, e.g. train.early_stopping_se=false")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    args = ap.parse_args()
    every = {t.name: t for t in sklearn_tables() + generated_tables()}
    names = args.tables.split(",")
    unknown = [n for n in names if n not in every]
    if unknown:
        ap.error(f"--tables: unknown {unknown}; choose from {sorted(every)}")
    settings = {key: json.loads(value) if value in ("true", "false") or value[:1].isdigit() else value
                for key, value in (item.split("=", 1) for item in args.set)}
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="fitloop-bench-tune-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            results.append(bench_table(every[name], args.seed, args.trials, work, settings))
            print(json.dumps({k: results[-1][k] for k in ("table", "scores", "pruning", "parallel")}, default=str),
                  flush=True)
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seed": args.seed, "trials": args.trials,
            "cpus": os.cpu_count(), "elapsed": time.perf_counter() - t0,
            "args": f"--tables {args.tables} --seed {args.seed} --trials {args.trials}"
                    + "".join(f" --set {item}" for item in args.set)}
    text = markdown(results, meta)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
