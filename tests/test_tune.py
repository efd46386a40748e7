"""fitloop tune (issue 23): the space as data, the pruning callback, the study's journal, the Python API and
the command line on tiny tables. The kill, parallel and torchrun tests are in tests/test_tune_workers.py."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.cli.app import main
from fitloop.cli.tune import parse_duration
from fitloop.tabular import demo_data_path, load_run
from fitloop.tabular.tuning import table_space, trial_config
from fitloop.tune import DEFAULT_TABLE_SPACE, SpaceError, TrialCallback, check_space, load_space, tune
from fitloop.tune.space import space_toml, suggest
from fitloop.tune.study import JournalLock, claim_trial, open_study, repair_journal, requeue_stale

WINE = demo_data_path()


# ------------------------------------------------------------------------------------------ the space


def test_default_space_is_valid_data_and_round_trips_through_toml(tmp_path):
    assert check_space(DEFAULT_TABLE_SPACE) == DEFAULT_TABLE_SPACE
    path = tmp_path / "space.toml"
    path.write_text(space_toml(DEFAULT_TABLE_SPACE))
    assert load_space(path) == DEFAULT_TABLE_SPACE
    params = suggest(optuna.trial.FixedTrial({"lr": 1e-3, "weight_decay": 0.0, "width": 32, "depth": 2,
                                              "dropout": 0.1, "batch_size": 64}), DEFAULT_TABLE_SPACE)
    assert params["width"] == 32 and params["weight_decay"] == 0.0


@pytest.mark.parametrize("text, message", [
    ('[lr]\ntype = "float"\nlow = 0.1\nhigh = 0.01\n', "[lr]: low must not be above high (got low = 0.1, high = 0.01)"),
    ('[lr]\ntype = "float"\nlow = 0\nhigh = 0.1\nlog = true\n', "[lr]: log = true needs low > 0"),
    ('[lr]\ntype = "real"\nlow = 0\nhigh = 1\n', "[lr]: type must be \"float\", \"int\" or \"categorical\""),
    ('[lr]\ntype = "float"\nhigh = 1\n', "[lr]: low is missing"),
    ('[depth]\ntype = "int"\nlow = 1.5\nhigh = 3\n', "[depth]: low must be a whole number, got 1.5"),
    ('[lr]\ntype = "float"\nlow = 0.1\nhigh = 1\nsteps = 2\n', "[lr]: unknown key 'steps' for a float"),
    ('[batch_size]\ntype = "categorical"\nchoices = []\n', "[batch_size]: choices must be a non-empty list"),
    ("lr = 3\n", "[lr]: expected a table"),
    ("", "no parameters"),
    ("[lr\n", "not valid TOML"),
])
def test_a_bad_space_file_names_the_file_the_parameter_and_the_key(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(SpaceError) as e:
        load_space(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_a_table_space_names_are_run_settings(tmp_path):
    with pytest.raises(SpaceError, match=r"space: \[lrr\]: unknown setting 'lrr'. Did you mean 'lr'\?"):
        table_space({"lrr": {"type": "float", "low": 0.1, "high": 1.0}})
    with pytest.raises(SpaceError, match=r"\[split\]: data.split cannot be tuned"):
        table_space({"split": {"type": "categorical", "choices": [0.5]}})


def test_trial_config_makes_hidden_from_width_and_depth_and_keeps_the_users_settings():
    base, _ = fl.tabular.run_config(WINE, "cultivar", epochs=3, lr=0.5)
    cfg = trial_config(base, {"width": 24, "depth": 3, "dropout": 0.2})
    assert cfg.model.hidden == [24, 24, 24] and cfg.model.dropout == 0.2
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.5 and cfg.train.quiet


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("600", 600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["3x", "", "-5m", "0", "m"])
def test_a_bad_duration_is_a_usage_error_that_says_what_to_pass(text, capsys):
    assert main(["tune", WINE, "--target", "cultivar", f"--time={text}"]) == 2
    assert "is not a duration; pass e.g. 90s, 30m, 2h or 600 (seconds)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ pruning


def test_a_pruned_trial_stops_at_the_epoch_boundary_through_the_stop_flag():
    seen = []

    def decide(epoch, value):
        seen.append((epoch, value))
        return epoch == 2

    callback = TrialCallback(decide)
    X, y = torch.randn(64, 3), torch.randn(64, 1)
    trainer = fl.Trainer(nn.Linear(3, 1), epochs=6, quiet=True, callbacks=[callback], guards=False)
    history = trainer.fit((X, y), (X, y))
    assert len(history) == 2 and [e for e, _ in seen] == [1, 2]
    assert callback.pruned_at == 2 and callback.epochs == 2
    assert trainer.stop_reason == "pruned by the tuner at epoch 2"
    assert callback.best == min(h["val_loss"] for h in history)


def test_a_trials_value_is_the_kept_models_validation_loss():
    """The study ranks the models the trials keep: early stopping's restored best (its starting model when no
    epoch beat that by its margin), else the last epoch's weights, not an epoch the trial dropped."""
    X, y = torch.randn(64, 3), torch.randn(64, 1)
    Xv, yv = torch.randn(32, 3), torch.randn(32, 1)
    plain = TrialCallback(lambda epoch, value: False)
    history = fl.Trainer(nn.Linear(3, 1), epochs=5, lr=0.3, quiet=True, callbacks=[plain], guards=False,
                         seed=0).fit((X, y), (Xv, yv))
    assert plain.kept == history[-1]["val_loss"]  # no early stopping: the model ends at the last epoch

    stopper = fl.EarlyStopping(patience=10, min_delta=1e9)  # no epoch beats the start by this margin
    tracked = TrialCallback(lambda epoch, value: False)
    trainer = fl.Trainer(nn.Linear(3, 1), epochs=4, lr=0.3, quiet=True, callbacks=[stopper, tracked],
                         guards=False, seed=0)
    start = float(trainer.evaluate((Xv, yv))["loss"])
    stopper.start_from(start, trainer.model)
    history = trainer.fit((X, y), (Xv, yv))
    assert stopper.best_epoch == 0 and tracked.kept == pytest.approx(start)
    assert tracked.best == min(h["val_loss"] for h in history) != tracked.kept
    assert float(trainer.evaluate((Xv, yv))["loss"]) == pytest.approx(tracked.kept)  # the weights it kept


# ------------------------------------------------------------------------------------------ the journal


def test_a_kill_mid_write_leaves_a_line_the_next_open_cuts(tmp_path):
    path = tmp_path / "study.journal"
    path.write_bytes(b'{"op_code": 0}\n{"op_code": 1, "trunc')
    assert repair_journal(path) and path.read_bytes() == b'{"op_code": 0}\n'
    assert not repair_journal(path)


def test_a_stale_running_trial_fails_and_its_params_are_enqueued_exactly_once(tmp_path):
    lock = JournalLock(tmp_path / "study.journal.lock")
    study = open_study(tmp_path, lock, seed=0, pruner="none")
    trial = claim_trial(study, lock, n_trials=3)
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("run_dir", str(tmp_path / "trials" / "0000"))
    assert requeue_stale(study, lock) == [0]
    assert requeue_stale(open_study(tmp_path, lock, seed=0, pruner="none"), lock) == []  # a second resume
    trials = open_study(tmp_path, lock, seed=0, pruner="none").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].system_attrs["fixed_params"] == trials[0].params and trials[1].user_attrs["retry_of"] == 0
    assert trials[1].user_attrs["resume_dir"] == str(tmp_path / "trials" / "0000")
    retry = claim_trial(study, lock, n_trials=3)  # the retry is the next trial asked for, with the same lr
    assert retry.number == 1 and retry.suggest_float("lr", 1e-4, 1e-1, log=True) == trials[0].params["lr"]


def test_the_budget_counts_finished_and_running_trials(tmp_path):
    lock = JournalLock(tmp_path / "study.journal.lock")
    study = open_study(tmp_path, lock, seed=0, pruner="none")
    first = claim_trial(study, lock, n_trials=2)
    second = claim_trial(study, lock, n_trials=2)
    assert claim_trial(study, lock, n_trials=2) is None  # two running: the budget is taken
    study.tell(first, 1.0)
    study.tell(second, state=optuna.trial.TrialState.PRUNED)
    assert claim_trial(study, lock, n_trials=2) is None and claim_trial(study, lock, n_trials=3) is not None


# ------------------------------------------------------------------------------------------ the Python API


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(256, 1, generator=g)
    return (X[:192], y[:192]), (X[192:], y[192:])


def build(trial):
    """A define-by-run build at module level (a spawned worker can import it)."""
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    width = trial.suggest_int("width", 4, 16)
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))
    train, val = _data()
    trainer = fl.Trainer(model, loss="mse", lr=lr, epochs=4, batch_size=32, quiet=True, seed=0,
                         run_dir=trial.user_attrs["run_dir"])
    return trainer, train, val


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_tune_a_define_by_run_function_returns_the_study_and_the_best_model(tmp_path, pruner):
    result = tune(build, n_trials=4, out=tmp_path / "t", seed=0, pruner=pruner)
    states = [t.state.name for t in result.study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    best = result.best_trial
    assert best.value == min(t.value for t in result.study.trials if t.state.name == "COMPLETE")
    assert result.trainer is not None and result.model is result.trainer.model
    assert best.value == pytest.approx(min(h["val_loss"] for h in result.trainer.history))
    for trial in result.study.trials:
        assert trial.user_attrs["epochs"] == (trial.user_attrs.get("pruned_at") or 4)
    assert (result.best_run_dir / "model").is_dir() and not (result.best_run_dir / "checkpoints").exists()
    loaded = fl.load(result.best_run_dir / "model", nn.Sequential(nn.Linear(4, best.params["width"]), nn.ReLU(),
                                                                  nn.Linear(best.params["width"], 1)))
    X = _data()[1][0]
    assert torch.equal(loaded(X), result.trainer.model.cpu()(X))
    info = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert info["status"] == "finished" and info["best"]["number"] == best.number


def test_a_time_budget_starts_no_trial_after_it_and_resume_extends_the_budget(tmp_path):
    result = tune(build, timeout=2.0, out=tmp_path / "t", pruner="none")
    started = [t.datetime_start.timestamp() for t in result.study.trials]
    assert len(started) >= 1 and max(started) - started[0] < 2.0  # no trial started after the 2 s
    done = result.counts["COMPLETE"]
    again = tune(build, n_trials=done + 2, out=tmp_path / "t", resume=True)  # the budget counts every trial
    assert again.counts == {"COMPLETE": done + 2}
    assert again.best_trial.value == min(t.value for t in again.study.trials)


def test_tune_refuses_a_missing_budget_and_a_bad_pruner(tmp_path):
    with pytest.raises(ValueError, match="give a budget"):
        tune(build, out=tmp_path / "a")
    with pytest.raises(ValueError, match="pruner must be one of asha, hyperband, none, got 'median'"):
        tune(build, n_trials=2, pruner="median", out=tmp_path / "b")


# ------------------------------------------------------------------------------------------ the table and the CLI


def test_cli_tune_writes_trial_runs_and_the_best_run_predicts(tmp_path, capsys):
    out = tmp_path / "tuned"
    assert main(["tune", WINE, "--target", "cultivar", "--trials", "3", "--epochs", "2", "--out", str(out),
                 "--no-ensemble"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("trial ") >= 3 and "trials: " in printed and f"best run: {out / 'best'}" in printed
    study = optuna.load_study(study_name="fitloop", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3
    for trial in study.trials:  # every trial is a normal run directory with its own model
        assert json.loads((Path(trial.user_attrs["run_dir"]) / "run.json").read_text())["status"] == "finished"
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out / "best"), WINE, "-o", str(preds)]) == 0
    assert len(preds.read_text().splitlines()) == 179
    assert load_run(out / "best").info["target"] == "cultivar"
    capsys.readouterr()
    assert main(["tune", WINE, "--target", "cultivar", "--out", str(out)]) == 2  # a second search: refused
    assert f"continue it with `fitloop tune --resume {out}`" in capsys.readouterr().err


def test_cli_tune_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "space.toml"
    bad.write_text('[lr]\ntype = "float"\nlow = 1\nhigh = 0.1\n')
    assert main(["tune", WINE, "--target", "cultivar", "--space", str(bad), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err == f"fitloop: error: {bad}: [lr]: low must not be above high (got low = 1, high = 0.1).\n"
    assert main(["tune", "--resume", str(tmp_path)]) == 2
    assert "not a tune directory" in capsys.readouterr().err
    assert main(["tune", WINE, "--target", "nope", "--trials", "1", "--out", str(tmp_path / "b")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_tabular_tune_from_python_with_a_space_dict(tmp_path):
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}, "width": {"type": "int", "low": 8,
                                                                                          "high": 16}}
    result = fl.tabular.tune(WINE, target="cultivar", out=tmp_path / "t", trials=2, epochs=2, space=space,
                             pruner="none", ensemble=False)
    assert result.counts == {"COMPLETE": 2}
    assert set(result.best_trial.params) == {"lr", "width"}
    assert load_space(tmp_path / "t" / "space.toml") == space
    assert load_run(result.best_run_dir).info["task"] == "classification"
