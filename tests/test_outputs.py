"""Nothing a user types destroys their files: `--overwrite`, `--config-out` and `report --out` replace only
what fitloop wrote (fitloop.outputs). Every case runs the real CLI in a temporary folder of real files and
checks them byte for byte afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fitloop.cli import demo_data_path, main
from fitloop.outputs import (
    OutputPathError,
    check_out_dir,
    check_out_file,
    check_report_dir,
    clear_run_dir,
    foreign_entries,
    is_run_dir,
)
from fitloop.tabular.config import resolve_run_config
from fitloop.tabular.pipeline import train_table

FAST = ["--target", "cultivar", "--epochs", "2", "--quiet"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `root`."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A user's folder: the data, a note and a subfolder; the working directory for the test."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(demo_data_path(), folder / "data.csv")
    (folder / "important.txt").write_bytes(b"do not lose me\n\x00\xff")
    (folder / "notes").mkdir()
    (folder / "notes" / "a.md").write_text("# mine\n")
    monkeypatch.chdir(folder)
    return folder


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("out, message", [
    (".", "--out .: is the current directory; fitloop writes the run into a directory of its own"),
    ("", "--out is empty: name a directory of its own for the run"),
    ("./", "--out ./: is the current directory"),
    ("..", "--out ..: is a directory that contains the current directory"),
    ("/", "--out /: is the root of the file system"),
    ("notes", "--out notes: is not a fitloop run directory: it holds 1 file or folder that fitloop did not "
              "write, e.g. a.md, so fitloop will not replace it. Choose another --out (a new or empty "
              "directory), or move those files yourself."),
])
def test_overwrite_never_replaces_the_users_folder(capsys, user_folder, out, message):
    before = snapshot(user_folder.parent)
    code, err = cli(capsys, "train", "data.csv", *FAST, "--out", out, "--overwrite")
    assert code == 2 and message in err, err
    assert snapshot(user_folder.parent) == before


def test_home_directory_and_a_folder_with_the_data(capsys, user_folder, monkeypatch):
    monkeypatch.setenv("HOME", str(user_folder / "notes"))
    before = snapshot(user_folder)
    code, err = cli(capsys, "train", "data.csv", *FAST, "--out", "notes", "--overwrite")
    assert code == 2 and "--out notes: is your home directory" in err
    (user_folder / "inside").mkdir()
    shutil.copy(user_folder / "data.csv", user_folder / "inside" / "data.csv")
    before = snapshot(user_folder)
    code, err = cli(capsys, "train", "inside/data.csv", *FAST, "--out", "inside", "--overwrite")
    assert code == 2 and ("--out inside: contains the input file inside/data.csv; replacing it would delete "
                          "your data. Choose an --out outside it") in err
    assert snapshot(user_folder) == before


def test_a_folder_of_many_foreign_files_is_named_with_a_count(capsys, user_folder):
    folder = user_folder / "results"
    folder.mkdir()
    for name in ("b.txt", "a.txt", "c.txt", "d.txt"):
        (folder / name).write_text(name)
    before = snapshot(user_folder)
    code, err = cli(capsys, "train", "data.csv", *FAST, "--out", "results", "--overwrite")
    assert code == 2 and "holds 4 files or folders that fitloop did not write, e.g. a.txt, b.txt, c.txt, ..." in err
    assert snapshot(user_folder) == before


def test_a_run_directory_is_replaced_and_only_fitloops_entries_go(capsys, user_folder):
    assert cli(capsys, "train", "data.csv", *FAST, "--out", "runs/wine")[0] == 0
    run = user_folder / "runs" / "wine"
    assert is_run_dir(run) and foreign_entries(run) == []
    code, err = cli(capsys, "train", "data.csv", *FAST, "--out", "runs/wine")
    assert code == 2 and "--out runs/wine: holds a fitloop run; pass --overwrite to replace it" in err
    first = json.loads((run / "run.json").read_text())["created"]
    outside = snapshot(user_folder / "notes"), (user_folder / "data.csv").read_bytes()
    assert cli(capsys, "train", "data.csv", *FAST, "--out", "runs/wine", "--overwrite")[0] == 0
    assert (run / "model" / "model.safetensors").is_file() and json.loads((run / "run.json").read_text())["created"]
    assert (snapshot(user_folder / "notes"), (user_folder / "data.csv").read_bytes()) == outside
    assert first  # the run was replaced, not merged: one session
    assert json.loads((run / "run.json").read_text())["sessions"] == 1

    # a file of the user's inside a run directory: the directory is not replaced, and nothing is lost
    (run / "my_notes.txt").write_text("keep")
    before = snapshot(user_folder)
    code, err = cli(capsys, "train", "data.csv", *FAST, "--out", "runs/wine", "--overwrite")
    assert code == 2 and ("--out runs/wine: is a fitloop run directory but also holds 1 file or folder that "
                          "fitloop did not write, e.g. my_notes.txt") in err
    assert snapshot(user_folder) == before


def test_clear_run_dir_deletes_only_fitloops_names(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "fitloop.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"format": "fitloop-run"}))
    (run / ".run.json.abc123.tmp").write_text("half")  # an atomic write a crash left behind
    (run / "mine.txt").write_text("keep")
    (run / "mine").mkdir()
    assert foreign_entries(run) == ["mine/", "mine.txt"]
    clear_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["mine", "mine.txt"]
    assert (run / "mine.txt").read_text() == "keep"


def test_a_run_killed_before_its_run_json_is_a_run_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("# fitloop run configuration (resolved: ...)\n\n[data]\n")
    (run / "splits.json").write_text("{}")
    assert is_run_dir(run) and foreign_entries(run) == []
    (run / "config.toml").write_text("[data]\n")  # a user's own TOML: not fitloop's
    assert not is_run_dir(run)
    (run / "run.json").write_text(json.dumps({"format": "something-else"}))
    assert not is_run_dir(run)


def test_a_tune_directory_is_a_run_directory_and_only_its_entries_go(tmp_path):
    """`fitloop tune --out DIR --overwrite` replaces a search (tune.json's marker; a Python-API search has no
    config.toml), deleting only the names a search writes."""
    out = tmp_path / "search"
    (out / "trials" / "0000").mkdir(parents=True)
    (out / "best").mkdir()
    (out / "tune.json").write_text(json.dumps({"format": "fitloop-tune/1"}))
    for name in ("study.journal", "study.journal.lock", "space.toml", "report.html"):
        (out / name).write_text("x")
    assert is_run_dir(out) and foreign_entries(out) == []
    (out / "notes.md").write_text("mine")
    assert foreign_entries(out) == ["notes.md"]
    clear_run_dir(out)
    assert [p.name for p in out.iterdir()] == ["notes.md"]
    (out / "tune.json").write_text(json.dumps({"format": "fitloop-tune/0"}))  # not the marker
    assert not is_run_dir(out)


def test_the_python_api_refuses_the_same(user_folder):
    cfg = resolve_run_config({"data.path": "data.csv", "data.target": "cultivar", "train.epochs": 1})
    before = snapshot(user_folder)
    with pytest.raises(OutputPathError, match=r"^--out \.: is the current directory"):
        train_table(cfg, out=".", overwrite=True)
    with pytest.raises(OutputPathError, match=r"^--out notes: is not a fitloop run directory"):
        train_table(cfg, out="notes", overwrite=True)
    assert snapshot(user_folder) == before
    with pytest.raises(OutputPathError, match="^--out data.csv: exists and is not a directory"):
        check_out_dir("data.csv", overwrite=True)


def test_size_search_and_demo_check_out_first(capsys, user_folder):
    before = snapshot(user_folder)
    code, err = cli(capsys, "size-search", "data.csv", "--target", "cultivar", "--out", ".", "--overwrite")
    assert code == 2 and "--out .: is the current directory" in err
    code, err = cli(capsys, "demo", "--out", ".", "--quiet")
    assert code == 2 and "--out .: is the current directory" in err
    assert snapshot(user_folder) == before


def test_config_out_replaces_only_a_config_fitloop_wrote(capsys, user_folder):
    before = snapshot(user_folder)
    for target, message in [
        ("data.csv", "--config-out data.csv: is the input file data.csv; writing there would replace your data"),
        ("important.txt", "--config-out important.txt: exists and fitloop did not write it, so it is never "
                          "replaced"),
        ("notes", "--config-out notes: is a directory; name a file"),
        ("", "--config-out is empty: name the file to write"),
    ]:
        code, err = cli(capsys, "train", "data.csv", "--target", "cultivar", "--dry-run", "--config-out", target,
                        "--overwrite")
        assert code == 2 and message in err, (target, err)
    assert snapshot(user_folder) == before
    args = ["train", "data.csv", "--target", "cultivar", "--dry-run", "--config-out", "plan.toml", "--quiet"]
    assert cli(capsys, *args)[0] == 0
    code, err = cli(capsys, *args)
    assert code == 2 and "--config-out plan.toml: already exists; pass --overwrite to replace it" in err
    assert cli(capsys, *args, "--epochs", "7", "--overwrite")[0] == 0
    assert "\nepochs = 7\n" in (user_folder / "plan.toml").read_text()
    with pytest.raises(OutputPathError, match="exists and fitloop did not write it"):
        check_out_file("important.txt", overwrite=True, option="--config-out", header="# fitloop run configuration")


def test_report_out_writes_beside_nothing_it_did_not_write(capsys, user_folder):
    pytest.importorskip("matplotlib", reason="the report needs matplotlib (not installed)")
    assert cli(capsys, "train", "data.csv", *FAST, "--out", "runs/wine")[0] == 0
    (user_folder / "mine").mkdir()
    (user_folder / "mine" / "report.html").write_text("<html>my own report</html>")
    (user_folder / "pics").mkdir()
    (user_folder / "pics" / "plots").mkdir()
    (user_folder / "pics" / "plots" / "loss.png").write_bytes(b"my picture")
    before = snapshot(user_folder)
    code, err = cli(capsys, "report", "runs/wine", "--out", "mine")
    assert code == 2 and "--out mine: holds a report.html that fitloop did not write; it is never replaced" in err
    code, err = cli(capsys, "report", "runs/wine", "--out", "pics")
    assert code == 2 and "--out pics: holds a plots/ that fitloop did not write" in err
    code, err = cli(capsys, "report", "runs/wine", "--out", "")
    assert code == 2 and "--out is empty" in err
    assert snapshot(user_folder) == before
    assert cli(capsys, "report", "runs/wine", "--out", "reports/wine")[0] == 0
    assert cli(capsys, "report", "runs/wine", "--out", "reports/wine")[0] == 0  # its own report: rewritten
    assert check_report_dir(user_folder / "reports" / "wine") == user_folder / "reports" / "wine"
