"""`fitloop train` with its defaults on real and generated tables, against the baselines a user would try.

Run: python -m bench.studies.tables [--seeds 0,1,2] [--tables iris,wine] [--anchors] [--set KEY=VALUE ...]
                                     [--in-process] [--json out.json] [--markdown bench/studies/TABLES.md]

For every table and seed it runs the real command (`python -m fitloop train FILE --target T --seed S
--out RUN -q`, a subprocess, wall time measured around it), reads the run's own `splits.json` to get
the exact train/val/test rows the CLI used, and fits on the same rows:

* `linear`: LinearRegression / LogisticRegression(max_iter=5000) on standardized numbers and one-hot
  categories (median imputation), scikit-learn;
* `hgb`: HistGradientBoostingRegressor / Classifier (defaults; categories one-hot as well);
* with `--anchors`: CatBoost (defaults, `thread_count=1`, categorical columns native) and RealMLP-TD
  (pytabkit, `n_threads=1`, CPU). Both are optional benchmark dependencies, never fitloop's.

Every model is scored on the same test rows. The baselines (and the anchors) train on the run's train
rows, the rows fitloop's gradient steps see (issue 15: "on the same train and test rows"); `linear+val`
and `hgb+val` are the same two models fit on the train + val rows, everything the CLI did not hold out
for its test metric (fitloop uses its val rows only to pick the epoch): a stricter comparison, reported
next to the target. The score is test accuracy (classification) or R² (regression); the table shows the
median over the seeds, and the wall time of the whole fitloop command next to the fit time of each
baseline.

The target (issue 15): fitloop's median is within 0.01 accuracy or 0.02 R² of the better of
`linear` and `hgb`, or above it, on every table. `strict` applies the same rule to `linear+val` and
`hgb+val`.

Every process of the benchmark uses one thread per library (`OMP_NUM_THREADS=1`, ...) and runs
one command at a time: the machine is shared, and all arms are timed within the same run.
`--set train.epochs=50` (any `--set` of `fitloop train`) runs an ablation arm.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# the target: fitloop within this much of the better baseline (or above), per metric
TOLERANCE = {"accuracy": 0.01, "r2": 0.02}
_MISSING = "<missing>"  # a missing text value, for the baselines that take no None


@dataclass
class Table:
    """One benchmark table: its columns (name -> 1-d array), the target column and the task."""

    name: str
    columns: dict[str, np.ndarray]
    target: str
    task: str  # "classification" | "regression"
    note: str = ""
    pass_task: bool = False  # pass --task to fitloop (the inference would guess otherwise)

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "r2"

    @property
    def rows(self) -> int:
        return len(self.columns[self.target])

    def features(self) -> list[str]:
        return [c for c in self.columns if c != self.target]


# ------------------------------------------------------------------------------------------- tables


def _sk(name: str, loader: Callable[..., Any], task: str, target: str = "target", pick: int | None = None,
        note: str = "", pass_task: bool = False) -> Table:
    d = loader()
    X = np.asarray(d.data, dtype=np.float64)
    names = [str(n) for n in getattr(d, "feature_names", [f"x{i}" for i in range(X.shape[1])])]
    cols = {n.replace(" ", "_"): X[:, j] for j, n in enumerate(names)}
    y = np.asarray(d.target)
    if pick is not None:  # a multi-target table: one target column
        target = str(d.target_names[pick])
        y = y[:, pick]
    if task == "classification":
        y = np.asarray(d.target_names)[y] if hasattr(d, "target_names") and pick is None else y
    cols[target] = y
    return Table(name, cols, target, task, note, pass_task)


def sklearn_tables() -> list[Table]:
    from sklearn import datasets as ds

    return [
        _sk("diabetes", ds.load_diabetes, "regression"),
        _sk("breast_cancer", ds.load_breast_cancer, "classification"),
        _sk("wine", ds.load_wine, "classification"),
        _sk("iris", ds.load_iris, "classification"),
        _sk("digits", ds.load_digits, "classification"),
        _sk("linnerud", ds.load_linnerud, "regression", pick=1,
            note="20 rows; target Waist (of Weight, Waist, Pulse), features Chins, Situps, Jumps; run with "
                 "--task regression (its 9 distinct integer values would be read as classes)", pass_task=True),
    ]


def generated_tables() -> list[Table]:
    """Tables with known structure, generated with a fixed seed (the fitloop seed only moves the split)."""
    rng = np.random.default_rng(12345)
    out = []
    n, d = 400, 10
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = X @ w + 0.3 * rng.normal(size=n)
    out.append(Table("linear", {**{f"x{j}": X[:, j] for j in range(d)}, "y": y}, "y", "regression",
                     "400 rows, y = Xw + noise (R² of the truth ~0.97)"))
    n = 1000
    X = rng.uniform(-2, 2, size=(n, 6))
    y = X[:, 0] * X[:, 1] + np.sin(2 * X[:, 2]) + 0.5 * X[:, 3] ** 2 - X[:, 4] + 0.2 * rng.normal(size=n)
    out.append(Table("interactions", {**{f"x{j}": X[:, j] for j in range(6)}, "y": y}, "y", "regression",
                     "1000 rows, y = x0*x1 + sin(2 x2) + 0.5 x3^2 - x4 + noise; x5 is noise"))
    n = 800
    city = rng.integers(0, 8, n)
    grade = rng.integers(0, 4, n)
    x0 = rng.normal(size=n)
    eff_city, eff_grade = rng.normal(0, 1.5, 8), np.array([-1.5, -0.5, 0.5, 1.5])
    logit = eff_city[city] + eff_grade[grade] + 0.8 * x0
    y_cat = np.where(logit + 0.3 * rng.normal(size=n) > 0, "yes", "no")
    out.append(Table("categorical", {"city": np.array([f"c{i}" for i in city]),
                                     "grade": np.array(list("ABCD"))[grade], "x0": x0,
                                     "x1": rng.normal(size=n), "label": y_cat}, "label", "classification",
                     "800 rows, label = [city effect + grade effect + 0.8 x0 + small noise > 0]"))
    n = 60
    X = rng.normal(size=(n, 4))
    y = 2 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] + 0.5 * rng.normal(size=n)
    out.append(Table("small_n", {**{f"x{j}": X[:, j] for j in range(4)}, "y": y}, "y", "regression",
                     "60 rows, y = 2 x0 - x1 + 0.5 x2 + noise"))
    n = 300
    X = rng.normal(size=(n, 6))
    out.append(Table("noise_only", {**{f"x{j}": X[:, j] for j in range(6)}, "y": rng.normal(size=n)}, "y",
                     "regression", "300 rows, y independent of X (the best R² is ~0)"))
    return out


def write_csv(t: Table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # from_pandas: a NaN number is written as a missing value, not as the text "nan"
    pcsv.write_csv(pa.table({k: pa.array(v, from_pandas=True) for k, v in t.columns.items()}), str(path))


def robust_clip(t: Table, train_rows: np.ndarray) -> Table:
    """RealMLP-TD's numeric preprocessing (Holzmüller et al. 2024): centre at the train rows' median, divide by
    their interquartile range (the range / 2 when that is 0), then smooth-clip `x / sqrt(1 + (x / 3)^2)`.
    Columns with two values or fewer, and text, are left alone; fitloop standardises the result again."""
    cols = dict(t.columns)
    for c in t.features():
        v = cols[c]
        if v.dtype.kind not in "fi" or len(np.unique(v)) <= 2:
            continue
        v = v.astype(np.float64)
        fit = v[train_rows]
        q1, med, q3 = np.nanquantile(fit, [0.25, 0.5, 0.75])
        iqr = q3 - q1 if q3 > q1 else max(float(np.nanmax(fit) - np.nanmin(fit)) / 2, 1e-12)
        z = (v - med) / iqr
        cols[c] = z / np.sqrt(1 + (z / 3) ** 2)
    return Table(t.name, cols, t.target, t.task, t.note, t.pass_task)


# ---------------------------------------------------------------------------------------- baselines


def _design(t: Table, rows_fit: np.ndarray, rows_all: list[np.ndarray]) -> list[np.ndarray]:
    """Standardized numbers (median-imputed) and one-hot categories, fitted on `rows_fit`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    feats = t.features()
    num = [i for i, c in enumerate(feats) if t.columns[c].dtype.kind in "fiub"]
    cat = [i for i, c in enumerate(feats) if i not in num]
    X = np.empty((t.rows, len(feats)), dtype=object)
    for j, c in enumerate(feats):
        X[:, j] = t.columns[c] if j in num else [_MISSING if v is None else v for v in t.columns[c]]
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
                            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat)])
    ct.fit(X[rows_fit])
    return [np.asarray(ct.transform(X[r]), dtype=np.float64) for r in rows_all]


def _score(t: Table, y_true: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, r2_score

    if t.task == "classification":
        return float(accuracy_score(np.asarray(y_true).astype(str), np.asarray(pred).astype(str)))
    return float(r2_score(y_true, pred))


def baselines(t: Table, fit_rows: np.ndarray, test_rows: np.ndarray, anchors: bool, seed: int) -> dict[str, Any]:
    """Score and fit time of each baseline on the given rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression

    y = np.asarray(t.columns[t.target])
    Xf, Xt = _design(t, fit_rows, [fit_rows, test_rows])
    cls = t.task == "classification"
    models: dict[str, Any] = {
        "linear": LogisticRegression(max_iter=5000) if cls else LinearRegression(),
        "hgb": (HistGradientBoostingClassifier(random_state=seed) if cls
                else HistGradientBoostingRegressor(random_state=seed)),
    }
    out: dict[str, Any] = {name: fit_and_score(t, m, Xf, y[fit_rows], Xt, y[test_rows]) for name, m in models.items()}
    if anchors:
        out.update(_anchors(t, fit_rows, test_rows, seed, Xf, Xt))
    return out


def _anchors(t: Table, fit_rows, test_rows, seed: int, Xf, Xt) -> dict[str, Any]:
    """CatBoost and RealMLP-TD on the train rows (RealMLP-TD early-stops on its own 20% of them)."""
    return {"catboost": catboost_anchor(t, fit_rows, test_rows, seed),
            "realmlp_td": realmlp_anchor(t, fit_rows, test_rows, seed)}


def log_loss_of(y_true: np.ndarray, proba: np.ndarray, classes: Any) -> float:
    """Mean negative log-probability of the true class (natural log; a class the model never saw counts 1e-15)."""
    column = {str(c): j for j, c in enumerate(np.asarray(classes).reshape(-1))}
    p = np.array([proba[i, column[str(y)]] if str(y) in column else 0.0 for i, y in enumerate(y_true)])
    return float(-np.mean(np.log(np.clip(p, 1e-15, 1.0))))


def fit_and_score(t: Table, model: Any, X_fit: Any, y_fit: np.ndarray, X_test: Any, y_test: np.ndarray,
                  **fit_kwargs: Any) -> dict[str, Any]:
    """Fit, predict and score one model; `seconds` is fit + predict, `logloss` (classification) from
    `predict_proba` after the clock stops."""
    t0 = time.perf_counter()
    model.fit(X_fit, y_fit, **fit_kwargs)
    pred = model.predict(X_test)
    out: dict[str, Any] = {"score": _score(t, y_test, np.asarray(pred).reshape(-1)),
                           "seconds": time.perf_counter() - t0}
    if t.task == "classification" and hasattr(model, "predict_proba"):
        out["logloss"] = log_loss_of(y_test, np.asarray(model.predict_proba(X_test)), model.classes_)
    return out


def feature_frame(t: Table, text_as: str = "category") -> Any:
    """The features as a pandas frame: text columns as pandas categories (LightGBM, pytabkit) or as text with
    missing values spelled "<missing>" (CatBoost's categorical columns take no NaN)."""
    import pandas as pd

    df = pd.DataFrame({c: t.columns[c] for c in t.features()})
    for c in text_columns(t):
        if text_as == "category":
            df[c] = df[c].astype("category")
        else:
            df[c] = [_MISSING if v is None else str(v) for v in t.columns[c]]
    return df


def text_columns(t: Table) -> list[str]:
    return [c for c in t.features() if t.columns[c].dtype.kind not in "fiub"]


def catboost_anchor(t: Table, fit_rows: np.ndarray, test_rows: np.ndarray, seed: int) -> dict[str, Any]:
    """CatBoost's defaults on one thread, categorical columns native."""
    try:
        import catboost
    except ImportError as e:
        return {"error": f"not installed ({e})"}
    y = np.asarray(t.columns[t.target])
    df = feature_frame(t, text_as="text")
    kind = catboost.CatBoostClassifier if t.task == "classification" else catboost.CatBoostRegressor
    m = kind(thread_count=1, verbose=0, random_seed=seed, cat_features=text_columns(t) or None,
             allow_writing_files=False)
    return fit_and_score(t, m, df.iloc[fit_rows], y[fit_rows], df.iloc[test_rows], y[test_rows])


def lightgbm_anchor(t: Table, fit_rows: np.ndarray, test_rows: np.ndarray, seed: int) -> dict[str, Any]:
    """LightGBM's defaults on one thread, pandas categories native."""
    try:
        import lightgbm
    except ImportError as e:
        return {"error": f"not installed ({e})"}
    y = np.asarray(t.columns[t.target])
    df = feature_frame(t)
    kind = lightgbm.LGBMClassifier if t.task == "classification" else lightgbm.LGBMRegressor
    m = kind(n_jobs=1, random_state=seed, verbose=-1)
    return fit_and_score(t, m, df.iloc[fit_rows], y[fit_rows], df.iloc[test_rows], y[test_rows])


def realmlp_anchor(t: Table, fit_rows: np.ndarray, test_rows: np.ndarray, seed: int,
                   val_rows: np.ndarray | None = None) -> dict[str, Any]:
    """RealMLP-TD (pytabkit, CPU, one thread); with `val_rows` it early-stops on those rows (fitloop's own
    validation rows) instead of holding out 20% of the train rows."""
    try:
        from pytabkit import RealMLP_TD_Classifier, RealMLP_TD_Regressor
    except ImportError as e:
        return {"error": f"not installed ({e})"}
    kind = RealMLP_TD_Classifier if t.task == "classification" else RealMLP_TD_Regressor
    return _pytabkit_fit(t, kind(device="cpu", n_threads=1, random_state=seed, verbosity=0), fit_rows, test_rows,
                         val_rows)


def tabm_anchor(t: Table, fit_rows: np.ndarray, test_rows: np.ndarray, seed: int,
                val_rows: np.ndarray | None = None) -> dict[str, Any]:
    """TabM's reference defaults (pytabkit's TabM_D: k = 32, width 512, AdamW, batch 256, patience 16), CPU,
    one thread; early stopping on `val_rows` when given."""
    try:
        from pytabkit import TabM_D_Classifier, TabM_D_Regressor
    except ImportError as e:
        return {"error": f"not installed ({e})"}
    kind = TabM_D_Classifier if t.task == "classification" else TabM_D_Regressor
    return _pytabkit_fit(t, kind(device="cpu", n_threads=1, random_state=seed, verbosity=0), fit_rows, test_rows,
                         val_rows)


def _pytabkit_fit(t: Table, model: Any, fit_rows: np.ndarray, test_rows: np.ndarray,
                  val_rows: np.ndarray | None) -> dict[str, Any]:
    y = np.asarray(t.columns[t.target])
    df = feature_frame(t)
    for c in df.columns:  # pytabkit takes no NaN in a numeric column: the fit rows' median, as `linear` does
        if c not in text_columns(t) and df[c].isna().any():
            df[c] = df[c].fillna(float(df[c].iloc[fit_rows].median()))
    val = {} if val_rows is None else {"X_val": df.iloc[val_rows], "y_val": y[val_rows]}
    return fit_and_score(t, model, df.iloc[fit_rows], y[fit_rows], df.iloc[test_rows], y[test_rows], **val)


# ------------------------------------------------------------------------------------------ fitloop


def run_fitloop(csv: Path, t: Table, seed: int, out: Path, extra: list[str], in_process: bool,
                checkout: Path = ROOT) -> dict[str, Any]:
    """The real `fitloop train` with its defaults (of `checkout`); its test score and the rows of each split."""
    argv = ["train", str(csv), "--target", t.target, "--seed", str(seed), "--out", str(out), "--overwrite", "-q",
            *(["--task", t.task] if t.pass_task else []), *extra]
    t0 = time.perf_counter()
    if in_process:
        from fitloop.cli.app import main

        rc = main(argv)
        err = ""
    else:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        r = subprocess.run([sys.executable, "-m", "fitloop", *argv], capture_output=True, text=True, env=env,
                           cwd=tempfile.gettempdir())  # not the cwd's fitloop: the checkout's
        rc, err = r.returncode, r.stderr
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"fitloop train failed on {t.name} (seed {seed}, exit {rc}): {err[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert metrics["split"] == "test" and metrics["rows"] == len(splits["test"]), "the test rows must match"
    return {"score": float(metrics["metrics"][t.metric]), "seconds": wall, "splits": splits,
            "loss": metrics["metrics"].get("loss"),
            "epochs": run.get("epochs"), "best_epoch": run.get("best_epoch"), "steps": run.get("step"),
            "timings": run.get("timings", {}), "still_improving": run.get("still_improving")}


# -------------------------------------------------------------------------------------------- report


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r["table"] for r in results):
        rs = [r for r in results if r["table"] == name]
        arms = [a for a in rs[0]["scores"]]
        med = {a: statistics.median(r["scores"][a] for r in rs if a in r["scores"]) for a in arms}
        sec = {a: statistics.median(r["seconds"][a] for r in rs if a in r["seconds"]) for a in arms}
        metric = rs[0]["metric"]
        best = max(med["linear"], med["hgb"])
        gap = med["fitloop"] - best
        gap_strict = med["fitloop"] - max(med["linear+val"], med["hgb+val"])
        rows.append({"table": name, "metric": metric, "rows": rs[0]["rows"], "median": med, "seconds": sec,
                     "best_baseline": best, "gap": gap, "pass": gap >= -TOLERANCE[metric] - 1e-12,
                     "gap_strict": gap_strict, "pass_strict": gap_strict >= -TOLERANCE[metric] - 1e-12,
                     "epochs": [r["fitloop_epochs"] for r in rs], "note": rs[0]["note"],
                     "best_epochs": [r["fitloop_best_epoch"] for r in rs],
                     "seeds": [r["seed"] for r in rs], "per_seed": [r["scores"]["fitloop"] for r in rs]})
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    anchor_arms = [a for a in ("before", "catboost", "realmlp_td") if any(a in r["median"] for r in rows)]
    arms = ["fitloop", "linear", "hgb", "linear+val", "hgb+val", *anchor_arms]
    L = [f"### Tables: `fitloop train` defaults vs baselines ({meta['when']})\n",
         f"`python -m bench.studies.tables {meta['args']}`: seeds {meta['seeds']}, median over seeds; test accuracy "
         "(classification) or R² (regression) on the exact test rows of each run (its `splits.json`); "
         "baselines and anchors fit on the run's train rows, `+val` on its train + val rows. Time: the "
         "whole `fitloop train` command (start-up, reading, training, evaluation, writing the run) vs each "
         "baseline's fit alone, median seconds, 1 thread each. Target: fitloop >= better of linear/hgb - "
         f"0.01 accuracy or 0.02 R²; strict: the same against linear+val/hgb+val. Total {meta['elapsed']:.0f} s.\n",
         "| table | rows | metric | " + " | ".join(arms) + " | gap to best of linear/hgb | target | gap (strict) "
         "| strict | epochs run (best) | time " + " / ".join(arms) + " (s) |",
         "|---|---|---|" + "---|" * len(arms) + "---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['table']} | {r['rows']} | {r['metric']} | "
                 + " | ".join(f"{r['median'][a]:.3f}" if a in r["median"] else "-" for a in arms)
                 + f" | {r['gap']:+.3f} | {'PASS' if r['pass'] else 'FAIL'} | {r['gap_strict']:+.3f} | "
                 + f"{'PASS' if r['pass_strict'] else 'FAIL'} | "
                 + ",".join(f"{e} ({b})" for e, b in zip(r["epochs"], r["best_epochs"], strict=True)) + " | "
                 + " / ".join(f"{r['seconds'][a]:.2f}" if a in r["seconds"] else "-" for a in arms) + " |")
    n_pass = sum(r["pass"] for r in rows)
    n_strict = sum(r["pass_strict"] for r in rows)
    L.append(f"\n{n_pass} of {len(rows)} tables meet the target; {n_strict} of {len(rows)} the strict one.")
    notes = [f"{r['table']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        L.append("\nTables: " + "; ".join(notes) + ".")
    for k, v in meta.get("anchor_notes", {}).items():
        L.append(f"\n{k}: {v}")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tables", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--anchors", action="store_true", help="also CatBoost and RealMLP-TD (optional deps)")
    ap.add_argument("--set", action="append", default=[], help="passed to fitloop train as --set (an ablation arm)")
    ap.add_argument("--flag", action="append", default=[], help="a raw fitloop train flag, e.g. --flag=--epochs=50")
    ap.add_argument("--robust-clip", action="store_true", help="ablation: RealMLP-TD's robust scaling and smooth "
                    "clipping of the numeric features (fitted on each run's train rows) applied to the file first")
    ap.add_argument("--in-process", action="store_true", help="run fitloop in this process (no start-up in the time)")
    ap.add_argument("--before", default=None, help="also run fitloop train from this checkout (e.g. the main "
                    "branch), interleaved, as the column `before`")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--markdown", default=None, help="write the table here (e.g. bench/studies/TABLES.md)")
    args = ap.parse_args()
    if args.in_process:
        sys.path.insert(0, str(ROOT))
    seeds = [int(s) for s in args.seeds.split(",")]
    tables = sklearn_tables() + generated_tables()
    if args.tables:
        wanted = args.tables.split(",")
        tables = [t for t in tables if t.name in wanted]
    extra = [f for s in args.set for f in ("--set", s)] + args.flag
    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in tables:
            csv = Path(tmp) / f"{t.name}.csv"
            write_csv(t, csv)
            for seed in seeds:
                fl = run_fitloop(csv, t, seed, Path(tmp) / f"run-{t.name}-{seed}", extra, args.in_process)
                if args.robust_clip:  # the same rows (the split depends on the seed only), transformed inputs
                    t_rc = robust_clip(t, np.asarray(fl["splits"]["train"]))
                    write_csv(t_rc, Path(tmp) / f"{t.name}-rc.csv")
                    rc = run_fitloop(Path(tmp) / f"{t.name}-rc.csv", t_rc, seed, Path(tmp) / f"rc-{t.name}-{seed}",
                                     extra, args.in_process)
                    assert rc["splits"] == fl["splits"], "the transformed file split differently"
                    fl = rc
                test = np.asarray(fl["splits"]["test"])
                train = np.sort(np.asarray(fl["splits"]["train"]))
                train_val = np.sort(np.concatenate([np.asarray(fl["splits"][k]) for k in ("train", "val")
                                                    if k in fl["splits"]]))
                base = baselines(t, train, test, args.anchors, seed)
                strict = baselines(t, train_val, test, False, seed)
                base.update({f"{k}+val": v for k, v in strict.items()})
                if args.before:
                    try:
                        old = run_fitloop(csv, t, seed, Path(tmp) / f"before-{t.name}-{seed}", [], False,
                                          Path(args.before).resolve())
                    except RuntimeError as e:
                        old = {"error": str(e)[:300]}
                    else:
                        assert old["splits"]["test"] == fl["splits"]["test"], "before and after split differently"
                    base = {"before": old, **base}
                scores = {"fitloop": fl["score"], **{k: v["score"] for k, v in base.items() if "score" in v}}
                secs = {"fitloop": fl["seconds"], **{k: v["seconds"] for k, v in base.items() if "seconds" in v}}
                results.append({"table": t.name, "seed": seed, "metric": t.metric, "rows": t.rows, "note": t.note,
                                "scores": scores, "seconds": secs, "fitloop_epochs": fl["epochs"],
                                "fitloop_best_epoch": fl["best_epoch"], "fitloop_steps": fl["steps"],
                                "fitloop_timings": fl["timings"], "still_improving": fl["still_improving"],
                                "errors": {k: v["error"] for k, v in base.items() if "error" in v},
                                "before_epochs": base.get("before", {}).get("epochs")})
                print(f"{t.name:14s} seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
                      + f"  | fitloop {fl['seconds']:.1f}s, epochs {fl['epochs']} (best {fl['best_epoch']}), "
                        f"steps {fl['steps']}", flush=True)
    rows = summarize(results)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seeds": seeds,
            "args": " ".join(sys.argv[1:]), "elapsed": time.perf_counter() - t_all}
    errors = {e for r in results for e in r["errors"].items()}
    if errors:
        meta["anchor_notes"] = dict(errors)
    text = markdown(rows, meta)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "summary": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
