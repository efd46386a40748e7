"""fl.size_search: the size the data supports, on data from a known network; nothing to learn on noise;
a tiny dataset gets a smaller model than a large one; factories, budgets, reproducibility, parallel trials."""

import pytest
import torch
from torch import nn

import fitloop as fl

FAST = {"epochs": 200, "batch_size": None, "lr": 1e-2}  # full batch: ~0.1 s a trial


def teacher(n, seed=0, noise=0.1):
    """y = a fixed tanh network with 8 hidden units of 5 inputs, plus noise."""
    g = torch.Generator().manual_seed(123)
    W1, W2 = torch.randn(5, 8, generator=g), torch.randn(8, 1, generator=g) / 8 ** 0.5
    gx = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gx)
    return X, (torch.tanh(X @ W1) @ W2).squeeze(1) + noise * torch.randn(n, generator=gx)


VAL = teacher(1000, seed=1)


def _params(size, n_in=5):
    widths = [n_in, *size, 1]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:]))


LADDER = {"widths": (4, 8, 16, 32, 64), "depths": (1, 2), **FAST}


@pytest.fixture(scope="module")
def large():
    return fl.size_search(teacher(2000), VAL, **LADDER)


def test_known_generator_gets_a_size_in_range_and_the_table_says_why(large):
    res = large
    assert res.chosen is not None and not res.nothing_to_learn
    # the generator has 8 tanh units; a relu MLP needs 8 to 64 of them, in one or two layers
    assert 8 <= res.chosen[0] <= 64 and len(res.chosen) <= 2, res.table()
    assert 50 <= res.chosen_trial.params <= 1500
    table = res.table()
    assert table.splitlines()[0].split() == ["size", "params", "train", "loss", "val", "loss", "gap", "time"]
    assert "<- chosen" in table and f"chosen: {res.chosen_trial.label}" in table and "reason: " in table
    assert res.baseline_val_loss > 5 * res.chosen_trial.val_loss
    model = res.model()  # the chosen trial's weights
    with torch.no_grad():
        val_mse = float(nn.functional.mse_loss(model(VAL[0]).squeeze(1), VAL[1]))
    assert val_mse == pytest.approx(
        res.chosen_trial.val_loss, rel=1e-4)


def test_pure_noise_has_nothing_to_learn():
    g = torch.Generator().manual_seed(5)
    train = (torch.randn(400, 5, generator=g), torch.randn(400, generator=g))
    val = (torch.randn(400, 5, generator=g), torch.randn(400, generator=g))
    res = fl.size_search(train, val, widths=(4, 16, 64), depths=(1,), **FAST)
    assert res.nothing_to_learn and res.chosen is None
    assert res.reason.startswith("nothing to learn: no size beat the trivial baseline (the train mean)")
    with pytest.raises(ValueError, match="no model was chosen"):
        res.model()


def test_tiny_dataset_gets_a_smaller_model_than_a_large_one(large):
    tiny = fl.size_search(teacher(60), VAL, **LADDER)
    assert tiny.chosen_trial.params < large.chosen_trial.params, tiny.table() + "\n" + large.table()


def test_factory_sizes_budgets_and_reproducibility(tmp_path):
    def make(width):
        return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 1))

    kw = {"make_model": make, "sizes": [1, 2, 4, 8, 16, 32], **FAST, "epochs": 100}
    a = fl.size_search(teacher(500), VAL, **kw, plot=tmp_path / "sizes.png")
    b = fl.size_search(teacher(500), VAL, **kw)
    assert [(t.size, t.train_loss, t.val_loss) for t in a.trials] == [(t.size, t.train_loss, t.val_loss)
                                                                      for t in b.trials]  # seeded: exact
    assert a.chosen in kw["sizes"] and (tmp_path / "sizes.png").stat().st_size > 1000
    assert isinstance(a.model(), nn.Sequential) and a.spec is None
    c = fl.size_search(teacher(500), VAL, **{**kw, "max_trials": 2})
    assert len(c.trials) == 2 and "stopped at the budget of 2 trials" in c.reason
    d = fl.size_search(teacher(500), VAL, **{**kw, "max_seconds": 0.0})
    assert len(d.trials) == 0 and d.chosen is None and "wall-time budget" in d.reason
    js = a.to_dict()
    assert js["chosen"] == a.chosen and len(js["trials"]) == len(a.trials)


def test_classification_baseline_is_the_class_prior():
    X, y = teacher(600)
    labels = (y > y.median()).long() + (y > y.quantile(0.9)).long()  # 3 classes
    Xv, yv = VAL
    lv = (yv > y.median()).long() + (yv > y.quantile(0.9)).long()
    res = fl.size_search((X, labels), (Xv, lv), widths=(4, 16), depths=(1,), **FAST)
    prior = torch.bincount(labels, minlength=3).double() / len(labels)
    expected = float(nn.functional.cross_entropy(torch.log(prior + 1e-3 / 600).float().expand(len(lv), -1), lv))
    assert res.baseline_val_loss == pytest.approx(expected, rel=1e-3)
    assert res.spec["out_features"] == 3 and not res.nothing_to_learn


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="pass sizes="):
        fl.size_search(teacher(50), VAL, make_model=lambda s: nn.Linear(5, 1))
    with pytest.raises(ValueError, match="cannot be pickled"):
        fl.size_search(teacher(50), VAL, make_model=lambda s: nn.Linear(5, 1), sizes=[1, 2], jobs=2)
    with pytest.raises(TypeError, match="train must be"):
        fl.size_search(torch.zeros(3), VAL)


def test_arguments_are_checked_naming_the_argument_and_the_fix():
    train, X = teacher(50), teacher(50)[0]
    for kw, msg in [({"max_seconds": -1}, r"max_seconds must be a number >= 0 \(or None for no limit\), got -1"),
                    ({"gap_tolerance": -0.1}, r"gap_tolerance must be a number >= 0 \(e\.g\. 0\.1 for 10%\), "
                                              r"got -0\.1"),
                    ({"val_margin": -1}, r"val_margin must be a number >= 0"),
                    ({"improve_margin": float("nan")}, r"improve_margin must be a number >= 0 .*got nan"),
                    ({"widths": (16, 8)}, r"widths must be whole numbers >= 1 in increasing order \(smallest first\)"),
                    ({"widths": (0, 8)}, r"widths must be whole numbers >= 1 .*got \(0, 8\)"),
                    ({"sizes": [8, 16]}, r"sizes= is the ladder of a make_model factory, and none was given; pass "
                                         r"make_model=")]:
        with pytest.raises(ValueError, match=msg):
            fl.size_search(train, VAL, **kw)
    with pytest.raises(ValueError, match=r"train X and val X have 5 and 3 features \(train X \(50, 5\), val X "
                                         r"\(1000, 3\)\); they must have the same columns"):
        fl.size_search((X, train[1]), (VAL[0][:, :3], VAL[1]))


def test_no_trial_within_the_budget_says_so_and_plots_nothing(tmp_path):
    res = fl.size_search(teacher(50), VAL, max_seconds=0, plot=tmp_path / "s.png")
    assert res.chosen is None and not res.trials and not res.nothing_to_learn
    assert res.reason == ("no size was tried: the wall-time budget of 0s was spent before the first trial. "
                          "Raise max_seconds (or drop it) to run trials.")
    assert "chosen: nothing (no trial ran)" in res.table() and "nothing to learn" not in res.table()
    assert not (tmp_path / "s.png").exists()
    with pytest.raises(ValueError, match=r"size_search plot: no trial to plot \(no size was tried"):
        res.plot(tmp_path / "t.png")


@pytest.mark.slow
def test_jobs_in_an_unguarded_script_says_to_add_the_main_guard(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "top.py"
    script.write_text("import torch\nimport fitloop as fl\nX = torch.randn(40, 3)\ny = X[:, 0]\n"
                      "fl.size_search((X[:30], y[:30]), (X[30:], y[30:]), widths=(2, 4), depths=(1,), epochs=1, "
                      "jobs=2)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                       cwd=tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("RuntimeError: size_search: jobs=2 runs trials in spawned worker")
    assert "Put the call under `if __name__ == \"__main__\":`" in last and "or use jobs=1" in last
    assert "BrokenProcessPool" not in r.stderr.replace("(BrokenProcessPool:", "")


def _module_level_factory(width):
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 1))


@pytest.mark.slow
def test_parallel_trials_give_the_same_numbers_and_choice():
    kw = {"make_model": _module_level_factory, "sizes": [2, 4, 8, 16], **FAST, "epochs": 60}
    serial = fl.size_search(teacher(300), VAL, **kw)
    parallel = fl.size_search(teacher(300), VAL, **kw, jobs=2)
    s = {t.size: (t.train_loss, t.val_loss) for t in serial.trials}
    assert all(s[t.size] == (t.train_loss, t.val_loss) for t in parallel.trials if t.size in s)
    assert parallel.chosen == serial.chosen


# ------------------------------------------------------------------------------------------- the CLI


def _csv(path, n=300, noise=0.1, seed=0):
    X, y = teacher(n, seed=seed, noise=noise)
    lines = ["a,b,c,d,e,y"] + [",".join(f"{v:.6g}" for v in [*x.tolist(), t]) for x, t in zip(X, y.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_cli_searches_trains_the_chosen_size_and_predict_uses_the_bundle(tmp_path, capsys):
    import json

    from fitloop.cli import main

    data, out = _csv(tmp_path / "t.csv"), tmp_path / "run"
    code = main(["size-search", str(data), "--target", "y", "--widths", "4,16", "--depths", "1",
                 "--trial-epochs", "20", "--lr", "0.01", "--epochs", "3", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    search = json.loads((out / "size_search.json").read_text())
    run = json.loads((out / "run.json").read_text())
    bundle = json.loads((out / "model" / "fitloop.json").read_text())
    assert run["size_search"]["chosen"] == search["chosen"] and search["chosen"] in ([4], [16])
    assert [t["label"] for t in search["trials"]][:2] == ["4", "16"]
    assert json.dumps(search["chosen"]) in json.dumps(bundle)  # the bundle's spec has the chosen hidden layers
    # the trials are the model `train` trains (the MLP and its linear path, started at the ridge fit)
    chosen = next(t for t in search["trials"] if t["size"] == search["chosen"])
    assert chosen["params"] == run["parameters"] and bundle["spec"]["skip"] is True
    assert (out / "size_search.png").is_file() and "reason:" in (out / "size_search.txt").read_text()
    capsys.readouterr()
    assert main(["predict", str(out), str(data), "-o", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 301


def test_cli_refuses_hidden_and_a_split_without_val(tmp_path, capsys):
    from fitloop.cli import main

    data = _csv(tmp_path / "t.csv", n=40)
    assert main(["size-search", str(data), "--target", "y", "--hidden", "8", "--out", str(tmp_path / "a")]) == 2
    assert "size-search chooses the hidden layers itself" in capsys.readouterr().err
    assert main(["size-search", str(data), "--target", "y", "--split", "0.8,0.2", "--out", str(tmp_path / "b")]) == 2
    assert "validation split" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("flag", ["--max-trials", "--jobs", "--trial-epochs"])
def test_cli_names_a_count_below_one_by_its_flag(tmp_path, capsys, flag):
    from fitloop.cli import main

    data = _csv(tmp_path / "t.csv", n=40)
    assert main(["size-search", str(data), "--target", "y", flag, "0", "--out", str(tmp_path / "a")]) == 2
    assert f"{flag}: got 0; pass a whole number >= 1." in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_cli_with_nothing_to_learn_trains_nothing_and_says_so(tmp_path, capsys):
    import json

    from fitloop.cli import main

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(300, 3, generator=g), torch.randn(300, generator=g)
    rows = ["a,b,c,y"] + [",".join(f"{v:.6g}" for v in [*x.tolist(), t]) for x, t in zip(X, y.tolist())]
    (tmp_path / "noise.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["size-search", str(tmp_path / "noise.csv"), "--target", "y", "--widths", "4,16", "--depths", "1",
                 "--trial-epochs", "20", "--lr", "0.01", "--out", str(out), "--quiet"]) == 0
    assert "nothing to learn" in capsys.readouterr().out
    assert json.loads((out / "size_search.json").read_text())["nothing_to_learn"] is True
    assert not (out / "model").exists() and not (out / "run.json").exists()


def test_cli_with_no_trial_in_the_budget_says_why_and_draws_no_plot(tmp_path, capsys):
    from fitloop.cli import main

    out = tmp_path / "run"
    assert main(["size-search", str(_csv(tmp_path / "t.csv", n=80)), "--target", "y", "--max-seconds", "0",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "size-search: no size was tried: the wall-time budget of 0s was spent before the first trial" in printed
    assert (out / "size_search.json").exists() and not (out / "size_search.png").exists()
