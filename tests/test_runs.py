"""A run is never lost: training a name afresh moves the old run aside, a lock keeps a second trainer out, names are checked."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mp3kit import cli, plots, runs, synth, train
from mp3kit.experiment import Experiment
from mp3kit.util import UserError
from mp3kit.widgets import runs_table_html

QUICK = dict(model="simple", image_size=32, max_images=30, epochs=1, batch_size=10)
ASIDE = r"@\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d"


@pytest.fixture(scope="module")
def voc_root():
    return synth.ensure_synthetic()


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _earlier(runs_dir: Path, name: str) -> list[Path]:
    """Return the folders holding earlier versions of run name: name@<UTC time>, oldest first."""
    return sorted(p for p in runs_dir.iterdir() if re.fullmatch(rf"{re.escape(name)}{ASIDE}(-\d+)?", p.name))


# ---------------------------------------------------------------- nothing trained is ever deleted


def test_rerunning_a_key_with_a_changed_config_keeps_the_old_run_readable_and_listed(voc_root, tmp_path, capsys):
    exp = Experiment("03_develop_classifier", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    first = exp.run("final", exp.config(**QUICK))
    before = _files(first.path)
    capsys.readouterr()

    second = exp.run("final", exp.config(**QUICK, lr=0.02))  # the student edits the network or recipe, re-runs the cell
    (aside,) = _earlier(exp.runs_dir, first.name)
    assert second.moved_aside == str(aside) and second.config["lr"] == 0.02
    assert f"moved to {aside}" in capsys.readouterr().out
    assert _files(aside) == before  # checkpoint, metrics, test scores: byte for byte
    old = runs.load_run(aside)
    assert old.name == aside.name and old.complete and old.earlier_version_of == first.name
    assert old.metrics == first.metrics and old.config["lr"] == first.config["lr"]
    assert train.load_model(old) is not None
    assert [r.name for r in runs.list_runs(exp.runs_dir)] == [aside.name, first.name]

    capsys.readouterr()
    listed = cli.main(["runs", "--runs-dir", str(exp.runs_dir)])
    out = capsys.readouterr().out
    assert listed == 0 and aside.name in out and "earlier version of" in out
    (row,) = [line for line in out.splitlines() if line.startswith(aside.name)]
    assert row.split()[-1] == first.name and "complete" in row
    # The panel's table and the plots read an earlier version like any run.
    assert aside.name in runs_table_html(runs.list_runs(exp.runs_dir), exp.runs_dir)
    plots.plot_history(old, path=tmp_path / "old.png")
    assert (tmp_path / "old.png").stat().st_size > 0


def test_retrain_in_a_notebook_keeps_the_old_run_of_an_identical_config(voc_root, tmp_path):
    def notebook(retrain):  # RETRAIN = False, then True
        return Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True,
                          retrain=retrain)

    first = notebook(False).run("x", train.TrainConfig(**QUICK))
    before = _files(first.path)
    again = notebook(True).run("x", train.TrainConfig(**QUICK))
    (aside,) = _earlier(tmp_path / "runs", first.name)
    assert again.origin == "trained" and again.moved_aside == str(aside) and _files(aside) == before


def test_fit_with_resume_false_keeps_the_old_run_of_an_identical_config(voc_root, tmp_path):
    config = train.TrainConfig(**QUICK)
    first = train.fit(config, voc_root, name="same", runs_dir=tmp_path, progress=False)
    before = _files(first.path)
    again = train.fit(config, voc_root, name="same", runs_dir=tmp_path, progress=False, resume=False)
    (aside,) = _earlier(tmp_path, "same")
    assert again.origin == "trained" and again.moved_aside == str(aside) and _files(aside) == before


def test_cli_resume_with_a_changed_config_moves_the_finished_run_aside_and_lists_both(voc_root, tmp_path, capsys):
    common = ["train", "--data-root", str(voc_root), "--name", "cli", "--runs-dir", str(tmp_path), "--epochs", "1",
              "--image-size", "32", "--max-images", "30", "--quiet"]
    assert cli.main(common) == 0
    before = _files(tmp_path / "cli")
    capsys.readouterr()
    assert cli.main([*common, "--lr", "0.02", "--resume"]) == 0
    out = capsys.readouterr().out
    (aside,) = _earlier(tmp_path, "cli")
    assert f"moved to {aside}" in out and _files(aside) == before
    assert cli.main(["runs", "--runs-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert aside.name in listed and "\ncli " in listed and "earlier version" in listed


def test_a_setting_that_cannot_train_is_refused_before_the_earlier_run_moves_aside(voc_root, tmp_path):
    first = train.fit(train.TrainConfig(**QUICK), voc_root, name="pw", runs_dir=tmp_path, progress=False)
    before = _files(first.path)
    with pytest.raises(UserError, match="pos_weight"):  # 3 weights for 20 classes
        train.fit(train.TrainConfig(**QUICK, pos_weight=[1.0, 2.0, 3.0]), voc_root, name="pw", runs_dir=tmp_path,
                  progress=False)
    assert _earlier(tmp_path, "pw") == [] and _files(first.path) == before  # the run stays where the student left it


def test_a_stopped_or_failed_run_trained_afresh_is_moved_aside_too(voc_root, tmp_path):
    config = train.TrainConfig(**{**QUICK, "epochs": 3})
    stop = threading.Event()
    stopped = train.fit(config, voc_root, name="s", runs_dir=tmp_path, progress=False, stop=stop,
                        callback=lambda run: stop.set())
    assert stopped.status == "stopped"
    before = _files(stopped.path)
    train.fit(config.replace(lr=0.05), voc_root, name="s", runs_dir=tmp_path, progress=False, resume="auto")
    (aside,) = _earlier(tmp_path, "s")
    assert _files(aside) == before and runs.load_run(aside).status == "stopped"


def test_two_moves_in_the_same_second_get_different_names(tmp_path, monkeypatch):
    moment = time.gmtime()
    monkeypatch.setattr(runs.time, "gmtime", lambda *a: moment)
    folder = tmp_path / "final"
    asides = []
    for n in range(3):
        with runs.RunLock(folder) as lock:
            (folder / "config.json").write_text(json.dumps({"n": n}))
            asides.append(lock.move_aside())
            assert lock.path.exists() and not (asides[-1] / runs.LOCK_FILE).exists()
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", moment)
    assert [a.name for a in asides] == [f"final@{stamp}", f"final@{stamp}-2", f"final@{stamp}-3"]
    assert [json.loads((a / "config.json").read_text())["n"] for a in asides] == [0, 1, 2]
    assert [runs.earlier_version_of(a.name) for a in asides] == ["final"] * 3


# ---------------------------------------------------------------- the lock


def _wait_for(path: Path, proc, timeout=120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended early: {proc.communicate()}")
        if time.monotonic() > end:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.05)


def test_a_run_trained_by_another_process_is_refused_naming_its_pid_and_its_lock_is_cleared_once_it_is_killed(
        voc_root, tmp_path, capsys):
    cmd = [sys.executable, "-m", "mp3kit", "train", "--data-root", str(voc_root), "--name", "busy", "--runs-dir",
           str(tmp_path), "--model", "simple", "--image-size", "32", "--max-images", "30", "--batch-size", "10",
           "--epochs", "100000", "--quiet"]
    other = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "busy" / runs.LOCK_FILE
        _wait_for(tmp_path / "busy" / "history.json", other)  # it has taken the lock and started training
        assert json.loads(lock.read_text())["pid"] == other.pid

        config = train.TrainConfig(**QUICK)
        with pytest.raises(runs.RunBusy) as caught:
            train.fit(config, voc_root, name="busy", runs_dir=tmp_path, progress=False)
        message = str(caught.value)
        assert f"pid {other.pid}" in message and "another process" in message and "\n" not in message
        # From the command line too: one sentence, exit status 2.
        assert cli.main([*cmd[3:-3], "--epochs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pid {other.pid}" in err
        assert other.poll() is None and not _earlier(tmp_path, "busy")  # nothing of the first run was touched
    finally:
        other.send_signal(signal.SIGKILL)  # no finally runs in it: its lock file stays behind
        other.communicate()
    assert json.loads(lock.read_text())["pid"] == other.pid
    partial = _files(tmp_path / "busy")
    partial.pop(runs.LOCK_FILE)

    run = train.fit(train.TrainConfig(**QUICK), voc_root, name="busy", runs_dir=tmp_path, progress=False)
    assert run.complete and not lock.exists()  # the stale lock was cleared, and this fit's own lock released
    (aside,) = _earlier(tmp_path, "busy")  # the killed process's unfinished run is kept
    assert _files(aside) == partial


def test_a_second_fit_of_a_run_from_another_thread_of_this_process_is_refused(voc_root, tmp_path):
    # The training panel trains in a background thread; a notebook cell that targets the same run must not join in.
    inside, release = threading.Event(), threading.Event()

    def hold(run):
        inside.set()
        release.wait(60)

    config = train.TrainConfig(**{**QUICK, "epochs": 2})
    results = {}
    worker = threading.Thread(target=lambda: results.update(
        run=train.fit(config, voc_root, name="panel-1", runs_dir=tmp_path, progress=False, callback=hold)))
    worker.start()
    try:
        assert inside.wait(60)
        with pytest.raises(runs.RunBusy, match=rf"this process \(pid {os.getpid()}\), in another thread"):
            train.fit(config, voc_root, name="panel-1", runs_dir=tmp_path, progress=False, resume="auto")
    finally:
        release.set()
        worker.join(60)
    assert results["run"].complete and not (tmp_path / "panel-1" / runs.LOCK_FILE).exists()
    # A finished run is reused without taking the lock (here one left by another machine); a run that ends in an
    # error releases its lock too.
    (tmp_path / "panel-1" / runs.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "x"}))
    assert train.fit(config, voc_root, name="panel-1", runs_dir=tmp_path, progress=False, reuse=True).origin == "reused"
    with pytest.raises(UserError, match="lower the learning rate"):
        train.fit(config.replace(lr=1e30), voc_root, name="diverge", runs_dir=tmp_path, progress=False)
    assert not (tmp_path / "diverge" / runs.LOCK_FILE).exists()


def test_a_lock_left_by_an_earlier_process_with_this_pid_is_stale(voc_root, tmp_path):
    # A restarted Colab kernel may get the pid its killed predecessor had.
    folder = tmp_path / "again"
    folder.mkdir()
    (folder / runs.LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": runs.socket.gethostname(),
                                                     "started": "earlier", "time": time.time() - 60, "token": "old"}))
    run = train.fit(train.TrainConfig(**QUICK), voc_root, name="again", runs_dir=tmp_path, progress=False)
    assert run.complete and not (folder / runs.LOCK_FILE).exists()


def test_a_lock_taken_on_another_machine_is_refused_with_how_to_clear_it(voc_root, tmp_path):
    folder = tmp_path / "drive"
    folder.mkdir()
    (folder / runs.LOCK_FILE).write_text(json.dumps({"pid": 4321, "host": "colab-vm-elsewhere",
                                                     "started": "2026-12-06 10:12:03 UTC", "time": 0, "token": "x"}))
    with pytest.raises(runs.RunBusy) as caught:
        train.fit(train.TrainConfig(**QUICK), voc_root, name="drive", runs_dir=tmp_path, progress=False)
    assert "process 4321 on another machine (colab-vm-elsewhere)" in str(caught.value)
    assert f"delete {folder / runs.LOCK_FILE}" in str(caught.value)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name, problem", [("../escape", "path separator"), ("a/b", "path separator"),
                                           ("a\\b", "path separator"), ("..", "'..'"), ("x..y", "'..'"),
                                           ("", "empty"), (".hidden", "starts with a dot")])
def test_bad_run_names_are_refused_in_one_sentence_naming_them(voc_root, tmp_path, capsys, name, problem):
    runs_dir = tmp_path / "runs"
    with pytest.raises(UserError) as caught:
        train.fit(train.TrainConfig(**QUICK), voc_root, name=name, runs_dir=runs_dir, progress=False)
    assert repr(name) in str(caught.value) and problem in str(caught.value)
    assert not any(tmp_path.rglob("config.json")), "nothing was written, inside the runs folder or out of it"

    status = cli.main(["train", "--name", name, "--runs-dir", str(runs_dir), "--epochs", "1"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and repr(name) in err and problem in err


def test_experiment_keys_with_two_dots_and_hidden_folders_are_no_runs(voc_root, tmp_path):
    exp = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    with pytest.raises(UserError, match=r"Run key 'a\.\.b' is not valid"):
        exp.run("a..b", exp.config(**QUICK))
    exp.run("ok", exp.config(**QUICK))
    hidden = exp.runs_dir / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "config.json").write_text("{}")
    assert [r.name for r in runs.list_runs(exp.runs_dir)] == [exp.run_name("ok")]


def test_mp3kit_runs_lists_every_profiles_runs_of_the_project_with_network_and_val(tmp_path, monkeypatch, capsys):
    # Run in the folder a student works in: the notebooks' runs folders are runs/<profile> there (mp3kit.layout).
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MP3KIT_RUNS_DIR", raising=False)

    class Mine(torch.nn.Module):
        def __init__(self, num_classes=20):
            super().__init__()
            self.head = torch.nn.Linear(3, num_classes)

        def forward(self, x):
            return self.head(x.mean((2, 3)))

    exp = Experiment("03_develop_classifier", "smoke", None, quiet=True)
    run = exp.run("final", exp.config(model=Mine, epochs=1, max_images=24))
    assert exp.runs_dir == tmp_path / "runs" / "smoke"
    capsys.readouterr()
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'runs' / 'smoke'}:" in out
    line = next(line for line in out.splitlines() if line.startswith(run.name))
    assert "Mine" in line and f"{run.val_map:.4f}" in line and f"{run.test_map:.4f}" in line
