"""`report.html`: one self-contained page (inline CSS, images as base64 PNG, no script, no network).

Sections: the verdict, test metrics next to the trivial baseline, the plots (a constant learning rate as a
line of text instead of a plot), the data summary, the model summary, timings, the config, and what the
run does not have (`absent`).
"""

from __future__ import annotations

import base64
import json
from html import escape
from typing import TYPE_CHECKING, Any

from .plots import PLOT_TITLES, constant_lr

if TYPE_CHECKING:
    from .data import ReportData

__all__ = ["render_html"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 10px;border-bottom:1px solid #dde1e6;
padding-bottom:4px}.sub{color:#5b6675;margin:0 0 16px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 18px;margin:10px 0}
.verdict{border-left:6px solid #888}.healthy{border-left-color:#2ca02c}.overfitting{border-left-color:#ff7f0e}
.underfitting{border-left-color:#9467bd}.diverged{border-left-color:#d62728}.inconclusive{border-left-color:#888}.plateau{border-left-color:#17becf}
.kind{font-size:1.3em;font-weight:600;text-transform:capitalize}
table{border-collapse:collapse;font-size:.92em}td,th{padding:4px 10px;border-bottom:1px solid #eceff2;
text-align:left}th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;background:#fff;border:1px solid #dde1e6;
border-radius:8px;padding:8px;box-sizing:border-box}.plots figure.half{width:calc(50% - 6px)}
.plots figure.full{width:100%}.plots img{max-width:100%;height:auto;display:block;margin:0 auto}
@media (max-width:700px){.plots figure.half{width:100%}}
figcaption{font-size:.9em;color:#5b6675;margin-top:4px}pre{background:#fff;border:1px solid #dde1e6;
border-radius:8px;padding:12px;overflow:auto;font-size:.85em}.absent li{color:#8a5a00}
.better{color:#1a7f37;font-weight:600}.worse{color:#b42318;font-weight:600}
"""

HIGHER_IS_BETTER = {"accuracy", "f1", "precision", "recall", "r2"}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}"


def _table(head: list[str], rows: list[list[Any]], num_from: int = 1) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if i >= num_from else f"<td>{_fmt(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _verdict(d: ReportData) -> str:
    v = d.verdict
    if not v:
        return '<div class="card">No verdict: no epoch finished.</div>'
    kind = escape(str(v.get("kind", "?")))
    out = [f'<div class="card verdict {kind}"><div class="kind">{kind}</div>',
           f"<p>{escape(_cap(str(v.get('reason', ''))))}</p>",
           *([f"<p><b>Suggestion:</b> {escape(str(v['suggestion']))}</p>"] if v.get("suggestion") else [])]
    for n in v.get("not_judged") or []:
        out.append(f"<p><b>Not judged:</b> {escape(str(n))}</p>")
    return "".join(out) + "</div>"


def _metrics(d: ReportData) -> str:
    if not d.metrics:
        return '<div class="card">No test metrics (see "Not in this run" below).</div>'
    rows = []
    for k, v in d.metrics.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        b = d.baseline.get(k)
        mark = ""
        if isinstance(b, (int, float)):
            better = v > b if k in HIGHER_IS_BETTER else v < b
            mark = '<span class="better">better</span>' if better else '<span class="worse">not better</span>'
        rows.append(f'<tr><td>{escape(k)}</td><td class="num">{_fmt(v)}</td><td class="num">'
                    f'{_fmt(b) if b is not None else ""}</td><td>{mark}</td></tr>')
    kind = escape(d.baseline_kind or "trivial baseline")
    return (f"<p>On the {escape(d.split or 'test')} split, next to the trivial baseline ({kind}).</p>"
            f"<table><thead><tr><th>metric</th><th>model</th><th>baseline ({kind})</th><th></th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _lr_line(d: ReportData) -> str:
    """The learning rate in words when it did not change (it gets no plot then), else nothing."""
    lr = constant_lr(d.history)
    if lr is None:
        return ""
    return f'<p id="lr-constant">Learning rate: {lr:g} in every epoch (constant, so not plotted).</p>'


def _plots(images: dict[str, bytes]) -> str:
    if not images:
        return '<div class="card">No plots.</div>'
    figs = []
    for name, png in images.items():
        b64 = base64.b64encode(png).decode("ascii")
        title = escape(PLOT_TITLES.get(name, name))
        size = "full" if name == "metrics" else "half"
        figs.append(f'<figure class="{size}"><img id="plot-{escape(name)}" alt="{title}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{title}</figcaption></figure>')
    return f'<div class="plots">{"".join(figs)}</div>'


def _data(d: ReportData) -> str:
    data = d.data
    parts = []
    rows = data.get("rows") or {}
    facts = [["rows", ", ".join(f"{k} {v:,}" for k, v in rows.items()) or "-"]]
    if data.get("features") is not None:
        feats = f"{data['features']}"
        if data.get("inputs") is not None:
            feats = f"{data['inputs']} columns -> {data['features']} encoded"
        facts.append(["features", feats])
    for key in ("data", "target"):
        if data.get(key):
            facts.append([key, data[key]])
    if d.task:
        facts.append(["task", d.task])
    parts.append(_table(["", ""], facts, num_from=9))
    names = data.get("feature_names")
    if names:
        shown = ", ".join(map(str, names[:40])) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
        parts.append(f"<p><b>Encoded features:</b> {escape(shown)}</p>")
    dist = data.get("target_distribution") or {}
    if dist:
        parts.append("<p><b>Target distribution</b></p>" + _distribution(dist))
    return "".join(parts)


def _distribution(dist: dict[str, Any]) -> str:
    first = next(iter(dist.values()))
    if isinstance(first, dict) and ("counts" in first or "share" in first):
        key = "counts" if "counts" in first else "share"
        labels: list[str] = []
        for v in dist.values():
            labels += [c for c in v.get(key, {}) if c not in labels]
        rows = [[c, *[v.get(key, {}).get(c, 0) for v in dist.values()]] for c in labels]
        return _table(["class", *[f"{s} ({key})" for s in dist]], rows)
    stats = ["mean", "std", "min", "p25", "median", "p75", "max"]
    rows = [[s, *[v.get(stat, "") for stat in stats]] for s, v in dist.items()]
    return _table(["split", *stats], rows)


def _model(d: ReportData) -> str:
    m = d.model
    if m is None:
        return '<div class="card">No model summary (see "Not in this run" below).</div>'
    rows = [list(r) for r in m.table()]
    return (f"<p>{escape(m.model)}: input [N, {escape(', '.join(map(str, m.input_shape)))}] -> output "
            f"{escape(m.output_shape)}. Parameters: {m.total:,} total, {m.trainable:,} trainable, "
            f"{m.frozen:,} frozen.</p>" + _table(["layer", "type", "output shape", "parameters"], rows, num_from=3))


# What each timing counts from: `total` and `to_first_step` from the command's start, the `launch_` ones from
# the process's launch (the interpreter's start-up too), so those may exceed the total
TIME_LABELS = {"to_first_step": "to first step (from the command's start)",
               "total": "total (from the command's start)",
               "launch_to_first_step": "to first step from the process's launch (imports included)",
               "launch_to_first_step_cpu": "CPU time to first step from the process's launch"}


def _timings(d: ReportData) -> str:
    rows = [[TIME_LABELS.get(k, k.replace("_", " ")), f"{v:.2f} s"] for k, v in d.timings.items()]
    epochs = [float(h["time"]) for h in d.history if isinstance(h.get("time"), (int, float))]
    if epochs:
        rows.append(["epochs", f"{len(epochs)}, {sum(epochs) / len(epochs):.3f} s each on average"])
    return _table(["", "seconds"], rows) if rows else "<p>No timings recorded.</p>"


def _config(d: ReportData) -> str:
    if d.config is None:
        return "<p>No config recorded.</p>"
    text = d.config if isinstance(d.config, str) else json.dumps(d.config, indent=2, default=str)
    return f"<pre>{escape(text)}</pre>"


def render_html(d: ReportData, images: dict[str, bytes]) -> str:
    """The whole page as one string."""
    status = f"status {d.status}" if d.status else ""
    sub = " · ".join(x for x in (escape(d.source), escape(d.task or ""), escape(status),
                                 f"{len(d.history)} epochs",
                                 "kept the initial model (epoch 0)" if d.best_epoch == 0 else
                                 f"best epoch {d.best_epoch}" if d.best_epoch else "")
                     if x)
    message = f'<div class="card">{escape(str(d.message))}</div>' if d.message and d.status != "finished" else ""
    absent = "".join(f"<li>{escape(a)}</li>" for a in d.absent)
    notes = "".join(f"<li>{escape(n)}</li>" for n in d.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fitloop report: {escape(d.title)}</title><style>{CSS}</style></head>
<body><main>
<h1>fitloop report: {escape(d.title)}</h1><p class="sub">{sub}</p>{message}
<h2>Verdict</h2>{_verdict(d)}
<h2>Test metrics</h2>{_metrics(d)}
<h2>Plots</h2>{_plots(images)}{_lr_line(d)}
<h2>Data</h2>{_data(d)}
<h2>Model</h2>{_model(d)}
<h2>Timings</h2>{_timings(d)}
<h2>Config</h2>{_config(d)}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<h2>Not in this run</h2>{f'<ul class="absent">{absent}</ul>' if absent else '<p>Nothing is missing.</p>'}
</main></body></html>
"""
