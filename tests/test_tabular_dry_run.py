"""`fitloop train DATA --target COL --dry-run`: every decision printed and written as a commented config.toml,
nothing trained; `fitloop train --config config.toml` then trains exactly the run a direct command would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tablefiles import write_rows

from fitloop.cli import main
from fitloop.tabular import decisions as decisions_module


def _table(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(240):
        a = rng.normal(10, 3)
        city = str(rng.choice(["north", "south", "east", "west", "up", "down", "centre"]))
        label = "yes" if a + (city in ("north", "up")) * 3 > 11 else "no"
        rows.append([i, "" if i % 11 == 0 else round(a, 3), city, f"note {i}", "", 7, str(i % 3 == 0).lower(), label])
    return write_rows(tmp / "t.csv", ["row", "a", "city", "comment", "blank", "const", "flag", "label"], rows)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])  # (COLUMNS is wide: rich would wrap the table cells)
    out, err = capsys.readouterr()
    return code, out, err


FLAGS = ["--target", "label", "--id", "row", "--epochs", "3", "--hidden", "16", "--seed", "3"]


def test_dry_run_prints_every_decision_and_trains_nothing(tmp_path, capsys, monkeypatch):
    data = _table(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    calls = []
    real = decisions_module.plan_run
    monkeypatch.setattr(decisions_module, "plan_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, out, err = _cli(capsys, "train", data, *FLAGS, "--dry-run", "--out", "runs/t")
    assert code == 0, err
    assert calls == [1]  # the dry run decides with the real run's function, not a copy
    flat = " ".join(out.replace("│", " ").split())
    assert "classification: inferred from 'label': string, 2 distinct values" in flat
    assert "train 168, val 36, test 36" in flat and "stratified by class" in flat
    assert "categorical: 7 distinct strings in the training rows" in flat
    assert "one-hot (7 + <unknown>)" in flat
    assert "dropped ID-like text: 168 distinct values in 168 non-missing training rows" in flat  # comment
    assert "dropped all values missing" in flat  # blank
    assert "dropped constant (7) in the training rows" in flat  # const
    assert "bool: true/false as 1/0" in flat and "a__missing indicator" in flat
    assert "TabM, 8 members: 11 inputs (" in flat and "-> 16 -> 2 (relu, dropout 0.1)" in flat
    assert "batch 42 (4 steps/epoch)" in flat and "loss cross_entropy" in flat  # a quarter of 168 rows
    assert "fitloop train --config config.toml --out runs/t" in flat
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory
    text = (tmp_path / "config.toml").read_text()
    assert "# -> 'classification', inferred from 'label'" in text and '# task = "classification"' in text
    assert "#   city     one-hot (7 + <unknown>)  [categorical: 7 distinct strings in the training rows]" in text
    assert "# epochs: number of passes over the training data." in text and "\nepochs = 3\n" in text
    assert '# loss = "cross_entropy"   # the default for classification' in text

    # never overwrite without --overwrite; --config-out writes elsewhere; --quiet prints only the path
    before = text
    code, _, err = _cli(capsys, "train", data, *FLAGS, "--dry-run", "--epochs", "9")
    assert code == 2 and "--config-out config.toml: already exists; pass --overwrite" in err
    assert (tmp_path / "config.toml").read_text() == before
    code, out, _ = _cli(capsys, "train", data, *FLAGS, "--dry-run", "--config-out", "plan.toml", "--quiet")
    assert code == 0 and out.strip() == "plan.toml" and (tmp_path / "plan.toml").is_file()


def test_dry_run_config_trains_exactly_the_direct_run(tmp_path, capsys, monkeypatch):
    data = _table(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _cli(capsys, "train", data, *FLAGS, "--dry-run")[0] == 0
    assert _cli(capsys, "train", "--config", "config.toml", "--out", "via-config", "--quiet")[0] == 0
    assert _cli(capsys, "train", data, *FLAGS, "--out", "direct", "--quiet")[0] == 0
    a, b = tmp_path / "via-config", tmp_path / "direct"
    assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
    keep = ("data", "target", "task", "rows", "inputs", "features", "parameters", "epochs", "best_epoch", "notes")
    ja, jb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert {k: ja[k] for k in keep} == {k: jb[k] for k in keep}
    fa, fb = (json.loads((d / "config.json").read_text()) for d in (a, b))  # the Trainer's settings
    assert fa["fingerprint"] == fb["fingerprint"]
    assert (a / "splits.json").read_bytes() == (b / "splits.json").read_bytes()
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_edited_config_and_errors(tmp_path, capsys, monkeypatch):
    data = _table(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _cli(capsys, "train", data, *FLAGS, "--dry-run")[0] == 0
    cfg = tmp_path / "config.toml"
    cfg.write_text(cfg.read_text().replace("hidden = [16]", "hidden = [4, 4]").replace(
        '# task = "classification"', 'task = "classification"'))
    assert _cli(capsys, "train", "--config", cfg, "--dry-run", "--config-out", "again.toml")[0] == 0
    assert "hidden = [4, 4]" in (tmp_path / "again.toml").read_text()
    # the real run's errors, before anything is written
    code, _, err = _cli(capsys, "train", data, "--target", "lable", "--dry-run", "--config-out", "bad.toml")
    assert code == 2 and "target column 'lable' not found" in err and "Did you mean 'label'" in err
    assert not (tmp_path / "bad.toml").exists()
    code, _, err = _cli(capsys, "train", data, "--target", "label", "--dry-run", "--config-out", "no/dir.toml")
    assert code == 2 and "the directory no does not exist" in err


@pytest.mark.parametrize("split", ["0.8,0.2"])
def test_dry_run_without_validation_says_early_stopping_is_off(tmp_path, capsys, monkeypatch, split):
    data = _table(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = _cli(capsys, "train", data, "--target", "label", "--split", split, "--dry-run")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    assert "early stopping off" in flat and "note: early stopping is off: there is no validation split" in flat
    assert "# -> off for this run: there is no validation split" in (tmp_path / "config.toml").read_text()


def test_bracketed_names_print_as_written_and_the_launch_flags_are_kept(tmp_path, capsys, monkeypatch):
    """Column names and classes are data, not rich markup: `x[/b]` once crashed the dry run, `price[usd]`
    printed as `price`. A --nproc plan's next command launches the same way."""
    rows = [[round(0.1 * i, 2), round(0.3 * i % 7, 2), "[up]" if i % 2 else "down"] for i in range(60)]
    data = write_rows(tmp_path / "b.csv", ["price[usd]", "x[/b]", "dir"], rows)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, err = _cli(capsys, "train", data, "--target", "dir", "--dry-run", "--nproc", "2")
    assert code == 0, err
    assert "price[usd]" in out and "x[/b]" in out and "'[up]'" in out
    assert "fitloop train --config " in out and out.rstrip().endswith("--nproc 2")
