"""The command line's error contract: whatever a user's file causes ends in one line and a non-zero exit, never a
traceback (unless --debug asks for it), and nothing on disk is lost; a failed write's advice fits its cause."""

import errno
import json
import os
import pickle
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from mp3kit import cli, runs, synth
from mp3kit.util import WriteFailed, write_failure

TINY_NET = {"name": "tiny", "blocks": [{"conv": 16, "s": 2, "bn": True}], "pool": "global", "head": []}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mp3kit", *args], capture_output=True, text=True)


def _one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def _complete_run(runs_dir: Path, name: str = "done") -> Path:
    """Record a complete run (config, metrics, test scores, status) with mp3kit.runs' own writers."""
    run = runs.Run(name=name, path=runs_dir / name, config={"model": "simple", "epochs": 1},
                   metrics={"test_map": 0.25, "test_loss": 0.5, "test_ap": [0.25] * 20}, status="complete")
    runs.write_config(run)
    runs.write_progress(run)
    runs.write_metrics(run)
    rng = np.random.default_rng(0)
    targets = np.eye(20, dtype=np.uint8)[np.arange(40) % 20]  # (40, 20): every class present
    runs.write_test_scores(run, [f"{i:06d}" for i in range(40)], rng.random((40, 20)), targets, np.zeros((40, 20), bool))
    return run.path


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- files a student edited in another encoding


def test_a_run_file_saved_as_windows_1252_is_named_in_one_line_by_mp3kit_runs(tmp_path):
    folder = _complete_run(tmp_path)
    status = folder / "status.json"
    status.write_bytes(b'{"status": "complete", "reason": "Adam\x92s run"}')  # edited in Notepad, saved as "ANSI"
    before = _snapshot(tmp_path)
    out = _cli("runs", "--runs-dir", str(tmp_path))
    assert out.returncode == 2
    assert _one_line(out.stderr) == (f"mp3kit: {status} is not valid JSON (not UTF-8 text): delete the run folder "
                                     f"{folder} and train it again.")
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_model_spec_file_saved_as_windows_1252_is_named_in_one_line_by_mp3kit_train(tmp_path):
    spec = tmp_path / "my net.json"
    spec.write_bytes(json.dumps({**TINY_NET, "name": "caf\u00e9"}, ensure_ascii=False).encode("cp1252"))
    before = spec.read_bytes()
    out = _cli("train", "--model", str(spec), "--runs-dir", str(tmp_path / "runs"), "--epochs", "1")
    assert out.returncode == 2
    assert _one_line(out.stderr).startswith(f"mp3kit: Model spec file {spec} is not UTF-8 text (invalid ")
    assert spec.read_bytes() == before and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- a failed write's advice fits its errno


def test_writing_over_a_folder_names_that_folder_not_the_free_space(tmp_path, capsys):
    run = _complete_run(tmp_path / "runs")
    out = tmp_path / "kaggle.csv"
    out.mkdir()  # a folder where the CSV should go
    (out / "keep.txt").write_text("mine")
    before = _snapshot(tmp_path)
    status = cli.main(["submit", "--run", str(run), "--out", str(out)])
    err = _one_line(capsys.readouterr().err)
    assert status == 2 and "free" not in err
    assert err.endswith(f"(Is a directory): move the folder {out} out of the way or choose another folder.")
    assert _snapshot(tmp_path) == before and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_a_runs_folder_that_is_a_file_names_that_file_not_the_free_space(tmp_path):
    voc_root = synth.ensure_synthetic()
    blocker = tmp_path / "runs.txt"
    blocker.write_text("a file, given as --runs-dir by mistake")
    out = _cli("train", "--data-root", str(voc_root), "--runs-dir", str(blocker), "--name", "r", "--epochs", "1",
               "--model", json.dumps(TINY_NET), "--image-size", "64", "--max-images", "20", "--quiet")
    assert out.returncode == 2
    err = _one_line(out.stderr)
    assert "free" not in err and "(Not a directory)" in err
    assert f"move the file {blocker} out of the way (a folder belongs there) or choose another RUNS_DIR" in err
    assert blocker.read_text() == "a file, given as --runs-dir by mistake"


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "free that much space there."),
    (errno.EDQUOT, "free that much space there."),
    (errno.EACCES, "make that folder writable or choose another folder."),
    (errno.EROFS, "make that folder writable or choose another folder."),
    (errno.EISDIR, "move the folder {path} out of the way or choose another folder."),
    (errno.ENOTDIR, "move the file {file} out of the way (a folder belongs there) or choose another folder."),
    (errno.ENOENT, "create the folder {missing} (it was missing, or vanished during the write) or choose another folder."),
])
def test_the_advice_of_a_failed_write_follows_its_errno(tmp_path, code, fix):
    (tmp_path / "file").write_text("in the way")
    where = {errno.ENOTDIR: tmp_path / "file" / "sub", errno.ENOENT: tmp_path / "missing" / "sub"}.get(code, tmp_path)
    path = where / "out.json"
    failure = write_failure(OSError(code, os.strerror(code)), path, 10)
    assert isinstance(failure, WriteFailed)
    assert str(failure) == (f"Could not write out.json (under 0.1 MB) in {where} ({os.strerror(code)}): "
                            + fix.format(path=path, file=tmp_path / "file", missing=tmp_path / "missing"))


# ---------------------------------------------------------------- what no check anticipated still ends in one line


FILE_ERRORS = [
    UnicodeDecodeError("utf-8", b"\x92", 0, 1, "invalid start byte"),
    json.JSONDecodeError("Expecting value", "{", 1),
    zipfile.BadZipFile("File is not a zip file"),
    tarfile.ReadError("truncated header"),
    EOFError("Compressed file ended before the end-of-stream marker was reached"),
    zlib.error("Error -3 while decompressing data: invalid stored block lengths"),
    pickle.UnpicklingError("invalid load key, '<'."),
    ET.ParseError("not well-formed (invalid token): line 1, column 2"),
    Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit"),
    UnidentifiedImageError("cannot identify image file 'x.jpg'"),
]


@pytest.mark.parametrize("error", FILE_ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_a_file_causes_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, tmp_path, error):
    # A stand-in for a reader that no check covers: `mp3kit runs` meets the error while reading the runs folder.
    def reading_fails(runs_dir):
        raise error

    monkeypatch.setattr(runs, "list_runs", reading_fails)
    status = cli.main(["runs", "--runs-dir", str(tmp_path)])
    err = _one_line(capsys.readouterr().err)
    assert status == 2 and err.startswith(f"mp3kit: a file could not be read ({type(error).__name__}: ")
    assert f"`mp3kit --debug runs --runs-dir {tmp_path}` shows which file" in err
    with pytest.raises(type(error)):
        cli.main(["--debug", "runs", "--runs-dir", str(tmp_path)])
    monkeypatch.setattr(runs, "list_runs", lambda runs_dir: {}["no such key"])  # a bug is not dressed up as a bad file
    with pytest.raises(KeyError):
        cli.main(["runs", "--runs-dir", str(tmp_path)])
