"""`fitloop.tune.report`: the tuning report of a study (in memory, or from a tune directory's journal), and the
page in headless Chromium: no console errors, every image decodes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("matplotlib")

from browser_support import CHROMIUM, NO_CHROMIUM, render  # noqa: E402  (tests/browser_support.py)

from fitloop.outputs import OutputPathError  # noqa: E402
from fitloop.tune.report import load_study, write_tune_report  # noqa: E402
from fitloop.tune.study import JOURNAL, STUDY_NAME, JournalLock  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    width = trial.suggest_int("width", 8, 64)
    trial.suggest_categorical("activation", ["relu", "gelu"])
    trial.set_user_attr("run_dir", f"trials/{trial.number:04d}")
    trial.set_user_attr("epochs", 3)
    for epoch in range(1, 4):
        trial.report((lr - 0.01) ** 2 + width / 1000 + 0.01 / epoch, epoch)
        if trial.number >= 4 and trial.should_prune():
            raise optuna.TrialPruned()
    return (lr - 0.01) ** 2 + width / 1000


def _study(n_trials: int, storage=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    study.optimize(_objective, n_trials=n_trials)
    return study


def _journal_study(tune_dir: Path, n_trials: int):
    """A study in a tune directory's journal, written through the lock `fitloop tune` uses."""
    tune_dir.mkdir()
    lock = JournalLock(tune_dir / f"{JOURNAL}.lock")
    backend = optuna.storages.journal.JournalFileBackend(str(tune_dir / JOURNAL), lock_obj=lock)
    return _study(n_trials, optuna.storages.JournalStorage(backend))


def _images(html: str) -> dict[str, bytes]:
    import base64

    return {m.group(1): base64.b64decode(m.group(2))
            for m in re.finditer(r'<img id="plot-(\w+)"[^>]*src="data:image/png;base64,([^"]+)"', html)}


def test_report_of_a_study_in_memory(tmp_path):
    study = _study(12)
    html_path = write_tune_report(study, tmp_path)
    assert html_path == tmp_path / "report.html"
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>fitloop report: tuning fitloop</title>" in html
    states = {t.state.name for t in study.trials}
    assert "PRUNED" in states  # the history shows pruned trials too
    counts = ", ".join(f"{sum(t.state.name == s for t in study.trials)} {s.lower()}" for s in sorted(states))
    assert f"12 trials: {counts}" in html
    images = _images(html)
    assert sorted(images) == ["tune_history", "tune_importance"]
    assert all(png.startswith(PNG) for png in images.values())
    assert (tmp_path / "plots" / "tune_history.png").read_bytes() == images["tune_history"]
    best = study.best_trial
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", html.split("Best configurations")[1]).group(1)
    assert f'<td class="num">{best.number}</td><td class="num">{best.value:.4g}</td>' in first_row
    assert f"trials/{best.number:04d}" in first_row
    for name in ("lr", "width", "activation"):
        assert f"<th>{name}</th>" in html


def test_report_from_a_tune_directory_with_few_trials_and_an_ensemble(tmp_path):
    tune_dir = tmp_path / "tune"
    _journal_study(tune_dir, 1)
    (tune_dir / "ensemble").mkdir()
    (tune_dir / "ensemble" / "run.json").write_text(json.dumps({"ensemble": {
        "metric": "val_log_loss", "val_loss": 0.25, "best_member_val_loss": 0.3,
        "members": [{"run": str(tune_dir / "trials" / "0000"), "weight": 1.0, "picks": 3, "val_loss": 0.3}]}}))
    html = write_tune_report(tune_dir).read_text()  # the journal's directory is the default out_dir
    assert '<p id="importance-note">Parameter importances need at least 2 complete trials; this study has 1, ' \
           "so they are not plotted.</p>" in html
    assert sorted(_images(html)) == ["tune_history"]
    assert "<h2>Ensemble</h2>" in html and "0.25, against 0.3 for the best trial alone" in html
    assert load_study(tune_dir / JOURNAL).study_name == STUDY_NAME  # the journal file itself works too
    assert write_tune_report(tune_dir / JOURNAL, tmp_path / "elsewhere").is_file()


def test_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Optuna journal here"):
        write_tune_report(tmp_path / "missing", tmp_path / "out")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "report.html").write_text("<html>my own page</html>")
    with pytest.raises(OutputPathError, match="report.html that fitloop did not write"):
        write_tune_report(_study(2), foreign)
    assert (foreign / "report.html").read_text() == "<html>my own page</html>"
    with pytest.raises(ValueError, match="pass the directory"):
        write_tune_report(_study(1))
    empty = optuna.create_study()
    html = write_tune_report(empty, tmp_path / "empty").read_text()
    assert "0 trials: no trials" in html and "No trial has a value yet" in html and "No complete trial yet" in html


# ----------------------------------------------------------------------------------------- Chromium



@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_renders_in_headless_chromium(tmp_path):
    html = write_tune_report(_study(8), tmp_path).read_text()
    result = render(html, tmp_path)  # load errors, decoded image sizes, console lines
    assert result["errors"] == []
    assert sorted(i[0] for i in result["images"]) == ["plot-tune_history", "plot-tune_importance"]
    assert all(w > 100 and h > 100 for _, w, h in result["images"]), result["images"]  # every image decoded
    assert result["console"] == [], result["console"]
