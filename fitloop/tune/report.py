"""The tuning report: `report.html` of a study, with the optimisation history, the parameter importances and
the best configurations, in the page style of `fitloop report` (`fitloop.report.html`).

    write_tune_report("tune/wine")                  # the tune directory (its study.journal), or the journal file
    write_tune_report(result.study, "tune/wine")    # an Optuna study in memory

One self-contained page (inline CSS, images as base64 PNG, no script): the trial counts by state, the
history (each trial's value, pruned trials at their last reported value, the best so far), the parameter
importances (Optuna's `get_param_importances`; fewer than two complete trials get a line of text instead), the
best complete trials as a table, and the ensemble of the best trials when the tune directory has one
(`ensemble/run.json`, written by `fitloop.tabular.ensemble`). The plots go to `plots/tune_*.png` too.
Optuna (the `tune` extra) and matplotlib (the `plot` extra) are imported where they are used.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from html import escape
from pathlib import Path
from typing import Any

from ..extras import require
from ..files import atomic_write_bytes
from ..outputs import check_report_dir
from ..report.html import CSS
from ..report.plots import require_matplotlib
from .study import JOURNAL, STUDY_NAME, JournalLock, repair_journal

__all__ = ["write_tune_report", "load_study", "PLOT_TITLES", "BEST_SHOWN"]

PLOT_TITLES = {"tune_history": "Optimisation history: each trial's value and the best so far",
               "tune_importance": "Parameter importances"}
BEST_SHOWN = 10  # rows of the best-configurations table
COMPLETE, PRUNED = "COMPLETE", "PRUNED"
TRIAL, PRUNED_COLOUR, BEST = "#1f77b4", "#ff7f0e", "#2ca02c"  # the colours of fitloop report's plots


def load_study(source: Any) -> Any:
    """An Optuna study from a tune directory (its `study.journal`), a journal file, or a study itself.

    Raises:
        FileNotFoundError: the path is neither a journal file nor a directory holding one.
        ValueError: the journal holds no study.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source  # a study already
    optuna = require("optuna", "tune", "the tuning report")
    path = Path(source)
    if path.is_dir():
        path = path / JOURNAL
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no Optuna journal here (expected a tune directory with {JOURNAL}, or "
                                f"the journal file itself, as `fitloop tune` writes).")
    lock = JournalLock(f"{path}.lock")  # the lock `fitloop tune` takes: a live search may be writing
    with lock.held():
        repair_journal(path)  # a killed writer's unfinished last line
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path),
                                                                                            lock_obj=lock))
        names = optuna.study.get_all_study_names(storage)
        if not names:
            raise ValueError(f"{path}: the journal holds no study yet.")
        name = STUDY_NAME if STUDY_NAME in names else names[0]
        return optuna.load_study(study_name=name, storage=storage)


# ------------------------------------------------------------------------------------------------ data


def _value(trial: Any) -> float | None:
    """A trial's value; a pruned trial's is its last reported value (the epoch it stopped at)."""
    if trial.value is not None:
        return float(trial.value)
    if trial.state.name == PRUNED and trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def _counts(trials: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _importances(study: Any, complete: list[Any]) -> tuple[dict[str, float], str | None]:
    """The parameter importances, or a line saying why there are none."""
    if len(complete) < 2:
        return {}, (f"Parameter importances need at least 2 complete trials; this study has {len(complete)}, "
                    f"so they are not plotted.")
    optuna = require("optuna", "tune", "the tuning report")
    try:
        return dict(optuna.importance.get_param_importances(study)), None
    except ImportError:  # the default evaluator (fANOVA) needs scikit-learn: PED-ANOVA does not
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        try:
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), None
        except (RuntimeError, ValueError) as e:
            return {}, f"Parameter importances could not be computed ({e})."
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial has the same parameters
        return {}, f"Parameter importances could not be computed ({e})."


# ----------------------------------------------------------------------------------------------- plots


def _figure(width: float = 6.4, height: float = 3.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the `plot` extra
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # its own canvas: pyplot's global backend is never touched
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def history_plot(trials: list[Any], direction: str) -> bytes | None:
    """Each trial's value against its number (complete and pruned apart), and the best complete so far."""
    points: list[tuple[int, float, str]] = []
    for trial in trials:
        value = _value(trial)
        if value is not None and math.isfinite(value):
            points.append((trial.number, value, trial.state.name))
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for state, colour, marker in ((COMPLETE, TRIAL, "o"), (PRUNED, PRUNED_COLOUR, "x")):
        shown = [(n, v) for n, v, s in points if s == state]
        if shown:
            ax.scatter(*zip(*shown), color=colour, marker=marker, label=f"{state.lower()} ({len(shown)})")
    best_x, best_y, best = [], [], math.nan
    better = min if direction == "minimize" else max
    for n, v, s in points:
        if s == COMPLETE:
            best = v if math.isnan(best) else better(best, v)
        if not math.isnan(best):
            best_x.append(n)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color=BEST, label="best so far")
    values = [v for _, v, _ in points]
    if min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective value")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def importance_plot(importances: dict[str, float]) -> bytes | None:
    """Horizontal bars, the most important parameter on top."""
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = _figure(6.4, max(2.4, 0.5 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=TRIAL)
    ax.set_xlabel("importance (share of the objective's variance)")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


# ------------------------------------------------------------------------------------------------ page


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _best_table(complete: list[Any], direction: str) -> str:
    if not complete:
        return '<div class="card">No complete trial yet.</div>'
    ranked = sorted(complete, key=lambda t: (t.value if direction == "minimize" else -t.value, t.number))
    params = list(dict.fromkeys(name for t in ranked for name in t.params))
    rows = [[t.number, float(t.value), *[t.params.get(p) for p in params], t.user_attrs.get("epochs"),
             t.user_attrs.get("run_dir")] for t in ranked[:BEST_SHOWN]]
    shown = f"the best {len(rows)} of {len(complete)}" if len(complete) > len(rows) else f"all {len(rows)}"
    return (f"<p>Complete trials, best first ({shown}; {direction} the value).</p>"
            + _table(["trial", "value", *params, "epochs", "run"], rows))


def _ensemble_section(out_dir: Path) -> str:
    """The ensemble of the best trials, when the tune directory has one."""
    try:
        info = json.loads((out_dir / "ensemble" / "run.json").read_text(encoding="utf-8"))["ensemble"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    rows = [[Path(m["run"]).name, m["weight"], m["picks"], m["val_loss"]] for m in info.get("members", [])]
    return (f"<h2>Ensemble</h2><p>Greedy ensemble selection on the validation rows ({escape(info['metric'])}): "
            f"{info['val_loss']:.4g}, against {info['best_member_val_loss']:.4g} for the best trial alone "
            f"({escape(str(out_dir / 'ensemble'))}).</p>" + _table(["trial run", "weight", "picks", "val loss"], rows))


def _plots(images: dict[str, bytes]) -> str:
    figures = []
    for name, png in images.items():
        title = escape(PLOT_TITLES[name])
        data = base64.b64encode(png).decode("ascii")
        figures.append(f'<figure class="full"><img id="plot-{name}" alt="{title}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{title}</figcaption></figure>")
    if not figures:
        return '<div class="card">No trial has a value yet, so nothing is plotted.</div>'
    return f'<div class="plots">{"".join(figures)}</div>'


def render_tune_html(study: Any, images: dict[str, bytes], importance_note: str | None, out_dir: Path) -> str:
    """The whole page as one string."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == COMPLETE and t.value is not None]
    direction = study.direction.name.lower()
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(_counts(trials).items())) or "no trials"
    values = [float(t.value) for t in complete]
    best = f"best value {(min if direction == 'minimize' else max)(values):.4g}" if values else "no complete trial"
    note = f'<p id="importance-note">{escape(importance_note)}</p>' if importance_note else ""
    title = escape(f"tuning {study.study_name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fitloop report: {title}</title><style>{CSS}</style></head>
<body><main>
<h1>fitloop report: {title}</h1>
<p class="sub">{escape(str(out_dir))} · {len(trials)} trials: {escape(counts)} · {best}</p>
<h2>Plots</h2>{_plots(images)}{note}
<h2>Best configurations</h2>{_best_table(complete, direction)}
{_ensemble_section(out_dir)}
</main></body></html>
"""


def write_tune_report(study_or_journal_path: Any, out_dir: str | os.PathLike | None = None) -> Path:
    """Write `report.html` and `plots/tune_*.png` for a study.

    Args:
        study_or_journal_path: an Optuna study, a tune directory (holding `study.journal`) or the journal file.
        out_dir: where to write; default the tune directory (the journal's folder).

    Returns:
        The path of `report.html`.

    Raises:
        MissingExtraError: matplotlib (`pip install 'fitloop[plot]'`) or Optuna (`fitloop[tune]`) is missing.
        OutputPathError: `out_dir` holds a report.html or plots/ that fitloop did not write.
        ValueError: a study with several objectives (the report plots one).
    """
    require_matplotlib()  # before any work: a missing extra is the first thing the user hears
    source = study_or_journal_path
    if out_dir is None:
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("write_tune_report(study, out_dir): pass the directory to write report.html into.")
        out_dir = source if Path(source).is_dir() else Path(source).parent
    out = check_report_dir(out_dir)
    study = load_study(source)
    if len(study.directions) != 1:
        raise ValueError(f"study {study.study_name!r} has {len(study.directions)} objectives; the report plots one.")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == COMPLETE and t.value is not None]
    importances, note = _importances(study, complete)
    made = {"tune_history": history_plot(trials, study.direction.name.lower()),
            "tune_importance": importance_plot(importances)}
    images = {name: png for name, png in made.items() if png is not None}
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", png)
    html = out / "report.html"
    atomic_write_bytes(html, render_tune_html(study, images, note, out).encode("utf-8"))
    return html
