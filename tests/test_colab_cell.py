"""The notebooks' Colab set-up cell, run as Colab would run it, with stand-ins for what only Colab has.

Stand-ins: google.colab (output.enable_custom_widget_manager and drive.mount record their calls; mount makes a
MyDrive folder), a `pip` executable first on PATH (the cell's shell line really runs, pipe and grep included; the
stand-in prints Colab's published package list and records what it is asked to install and keep), torch.hub's
download (writes a file where torch would), fetch_voc (records its root and sources; fetching is tested in
test_fetch.py), and Colab's /content paths moved into a temporary folder.

The last tests resolve the cell's install for real: a throwaway virtualenv (Python 3.13, as Colab, when this machine
has one; and the current Python) in which every package of Colab's published list is marked installed
(tools/colab_env.py stub), then the cell's own shell line with `pip install --dry-run --report` against the package
index. They need the index and skip, saying so, where it cannot be reached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import nbformat
import pytest

import mp3kit.colab
from mp3kit.models import alexnet_cache_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_introduction", "02_scratch_vs_pretrained", "03_develop_classifier"]


def _colab_env():
    spec = importlib.util.spec_from_file_location("colab_env", ROOT / "tools" / "colab_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab_env = _colab_env()
# What `pip list --format=freeze` prints in Colab: its published packages (tests/data/colab), and an mp3kit
# installed by an earlier run of the cell.
COLAB_LIST = [f"{name}=={version}" for name, version, _ in colab_env.read_freeze() if version]
COLAB_PACKAGES = "\n".join([*COLAB_LIST, "mp3kit==0.1.0"]) + "\n"
FAKE_PIP = """#!/bin/sh
echo "$@" >> "$FAKE_PIP_LOG"
case "$1" in
  list) printf '%s' "$FAKE_PIP_PACKAGES" ;;
  install) cp "$4" "$FAKE_PIP_KEPT"
           if [ -n "$FAKE_PIP_FAIL" ]; then echo "ERROR: Repository not found." >&2; exit 1; fi ;;
esac
"""


def cells(name: str) -> tuple[str, str]:
    """Return the committed notebook's parameters cell and its Colab set-up cell (the one after it)."""
    nb = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
    assert "parameters" in nb.cells[0].metadata.get("tags", [])
    assert "google.colab" in nb.cells[1].source
    return nb.cells[0].source, nb.cells[1].source


class Colab:
    """What the stand-ins saw."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.widget_manager = False
        self.mounted: list[str] = []
        self.mount_error: Exception | None = None
        self.downloads: list[tuple[str, str, str]] = []
        self.download_error: Exception | None = None
        self.fetches: list[tuple[str, list]] = []

    def pip_calls(self) -> list[str]:
        log = self.tmp / "pip.log"
        return log.read_text().splitlines() if log.exists() else []

    def kept(self) -> str:
        return (self.tmp / "kept.txt").read_text()


@pytest.fixture
def colab(monkeypatch, tmp_path) -> Colab:
    """Pretend to be Colab; return the record of what happened."""
    state = Colab(tmp_path)
    google = types.ModuleType("google")
    package = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    drive = types.ModuleType("google.colab.drive")
    output.enable_custom_widget_manager = lambda: setattr(state, "widget_manager", True)

    def mount(mountpoint, **kwargs):
        if state.mount_error:
            raise state.mount_error
        state.mounted.append(mountpoint)
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)

    drive.mount = mount
    package.output, package.drive, google.colab = output, drive, package
    for name, module in (("google", google), ("google.colab", package), ("google.colab.output", output),
                         ("google.colab.drive", drive)):
        monkeypatch.setitem(sys.modules, name, module)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text(FAKE_PIP)
    (bin_dir / "pip").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PIP_LOG", str(tmp_path / "pip.log"))
    monkeypatch.setenv("FAKE_PIP_KEPT", str(tmp_path / "kept.txt"))
    monkeypatch.setenv("FAKE_PIP_PACKAGES", COLAB_PACKAGES)
    monkeypatch.delenv("FAKE_PIP_FAIL", raising=False)
    monkeypatch.delenv("MP3KIT_RUNS_DIR", raising=False)  # the parameters cell's default, as in a student's Colab
    monkeypatch.delenv("MP3KIT_FIGURES_DIR", raising=False)

    content = tmp_path / "content"
    monkeypatch.setattr(mp3kit.colab, "DRIVE", content / "drive")
    monkeypatch.setattr(mp3kit.colab, "DRIVE_RUNS", content / "drive" / "MyDrive" / "mp3kit")
    monkeypatch.setattr(mp3kit.colab, "DATA_ROOT", str(content / "data" / "voc"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def download_url_to_file(url, dst, hash_prefix=None, progress=True):
        if state.download_error:
            raise state.download_error
        state.downloads.append((url, dst, hash_prefix))
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr("torch.hub.download_url_to_file", download_url_to_file)

    def fetch_voc(root, sources=()):
        state.fetches.append((str(root), list(sources)))
        return Path(root) / "VOCdevkit"

    monkeypatch.setattr(mp3kit.colab, "fetch_voc", fetch_voc)
    monkeypatch.chdir(tmp_path)
    return state


def run(name: str, **params) -> dict:
    """Run the notebook's parameters cell, apply params as papermill would, then run its set-up cell."""
    parameters, setup = cells(name)
    namespace: dict = {}
    exec(compile(parameters, "<parameters>", "exec"), namespace)
    namespace.update(params)
    exec(compile(setup, "<colab cell>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_cell_is_at_most_six_lines(name):
    assert len(cells(name)[1].splitlines()) <= 6


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_cell_installs_mp3kit_keeping_colabs_builds_and_turns_on_widgets(colab, name):
    ns = run(name, PROFILE="quick")
    install = [call for call in colab.pip_calls() if call.startswith("install")]
    assert install == ["install -q -c /tmp/colab-keep.txt git+https://github.com/mp3kit/mp3kit"]
    # Every package Colab has is kept at its version; mp3kit itself is not, so a newer mp3kit can replace it.
    assert colab.kept().splitlines() == COLAB_LIST
    assert {"ipykernel==6.17.1", "jupyter_client==7.4.9", "torch==2.11.0+cu128"} <= set(COLAB_LIST)
    assert colab.widget_manager and colab.fetches == [] and colab.mounted == []  # quick: no VOC, no Drive
    # The profile's runs folder in the working directory (Colab's /content), where the report cell looks.
    assert ns["DATA_ROOT"] is None and ns["RUNS_DIR"] == str(colab.tmp / "runs" / "quick")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_2_puts_the_alexnet_weights_where_mp3kit_looks(colab, name):
    run(name, PROFILE="quick")
    if name == "02_scratch_vs_pretrained":
        assert alexnet_cache_path().is_relative_to(colab.tmp / "torch")  # torch's hub cache, under TORCH_HOME
        assert alexnet_cache_path().read_bytes() == b"weights"
        ((url, dst, prefix),) = colab.downloads
        assert url.endswith("/alexnet-owt-7be5be79.pth") and dst == str(alexnet_cache_path()) and prefix == "7be5be79"
        run(name, PROFILE="quick")
        assert len(colab.downloads) == 1  # already cached: not downloaded again
    else:
        assert colab.downloads == [] and not alexnet_cache_path().exists()


def test_a_failed_weights_download_is_one_line_and_the_cell_goes_on(colab, capsys):
    colab.download_error = OSError("Network is unreachable")
    ns = run("02_scratch_vs_pretrained", PROFILE="quick")
    err = capsys.readouterr().err.strip()
    assert "could not be downloaded" in err and "Network is unreachable" in err and "\n" not in err
    assert ns["RUNS_DIR"] == str(colab.tmp / "runs" / "quick") and colab.widget_manager


def test_the_full_profile_fetches_voc_to_the_vm_disk_with_the_given_sources_first(colab):
    ns = run("01_introduction", PROFILE="full", VOC_SOURCES=["https://example.org/course/voc/"])
    assert colab.fetches == [(mp3kit.colab.DATA_ROOT, ["https://example.org/course/voc/"])]
    assert ns["DATA_ROOT"] == mp3kit.colab.DATA_ROOT and not Path(ns["DATA_ROOT"]).is_relative_to(mp3kit.colab.DRIVE)


def test_a_drive_folder_as_source_mounts_drive_but_voc_still_goes_to_the_vm_disk(colab):
    folder = str(mp3kit.colab.DRIVE / "MyDrive" / "voc")
    ns = run("03_develop_classifier", PROFILE="full", VOC_SOURCES=[folder])
    assert colab.mounted == [str(mp3kit.colab.DRIVE)]
    assert colab.fetches == [(mp3kit.colab.DATA_ROOT, [folder])] and ns["RUNS_DIR"] == str(colab.tmp / "runs" / "full")


def test_data_root_on_drive_is_refused_in_one_sentence(colab):
    drive_root = str(mp3kit.colab.DRIVE / "MyDrive" / "voc")
    with pytest.raises(SystemExit) as info:
        run("01_introduction", PROFILE="full", DATA_ROOT=drive_root)
    message = str(info.value)
    assert f"DATA_ROOT = {drive_root!r} is on Google Drive" in message and "\n" not in message
    assert colab.fetches == []


def test_runs_on_drive_mounts_drive_and_puts_runs_dir_there(colab):
    ns = run("01_introduction", PROFILE="quick", RUNS_ON_DRIVE=True)
    assert colab.mounted == [str(mp3kit.colab.DRIVE)]
    # One runs folder per profile on Drive too, so the report cell puts report/ beside runs/ there (MyDrive/mp3kit/report).
    assert ns["RUNS_DIR"] == str(mp3kit.colab.DRIVE / "MyDrive" / "mp3kit" / "runs" / "quick") and Path(ns["RUNS_DIR"]).is_dir()
    named = run("02_scratch_vs_pretrained", PROFILE="quick", RUNS_ON_DRIVE=True, RUNS_DIR="my-runs")
    assert named["RUNS_DIR"] == str(mp3kit.colab.DRIVE / "MyDrive" / "mp3kit" / "my-runs")  # a folder named by hand


def test_a_drive_that_will_not_mount_ends_the_cell_in_one_sentence(colab):
    colab.mount_error = ValueError("mount failed")
    with pytest.raises(SystemExit) as info:
        run("02_scratch_vs_pretrained", PROFILE="quick", RUNS_ON_DRIVE=True)
    message = str(info.value)
    assert "Google Drive could not be mounted" in message and "RUNS_ON_DRIVE = False" in message
    assert "\n" not in message and colab.downloads == []


def test_an_uploaded_wheel_is_installed_as_it_is(colab):
    run("01_introduction", REPO_URL="/content/mp3kit-0.1.0-py3-none-any.whl")
    assert [c for c in colab.pip_calls() if c.startswith("install")] == [
        "install -q -c /tmp/colab-keep.txt /content/mp3kit-0.1.0-py3-none-any.whl"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_failed_install_ends_the_cell_in_one_sentence_naming_repo_url(colab, monkeypatch, name, capfd):
    monkeypatch.setenv("FAKE_PIP_FAIL", "1")
    with pytest.raises(SystemExit) as info:
        run(name, REPO_URL="git+https://example.org/nowhere")
    message = str(info.value)
    assert message.startswith("Installing mp3kit from REPO_URL = 'git+https://example.org/nowhere' failed")
    assert "set REPO_URL in the first cell" in message and "\n" not in message
    assert "Repository not found" in capfd.readouterr().err  # pip's own reason stays visible above
    assert not colab.widget_manager and colab.fetches == [] and colab.downloads == []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_outside_colab_the_cell_does_nothing(colab, monkeypatch, name):
    monkeypatch.delitem(sys.modules, "google.colab")
    ns = run(name, PROFILE="full", RUNS_ON_DRIVE=True, DATA_ROOT="data/voc")
    assert colab.pip_calls() == [] and not colab.widget_manager
    assert colab.mounted == [] and colab.downloads == [] and colab.fetches == []
    assert ns["DATA_ROOT"] == "data/voc" and ns["RUNS_DIR"] == str(colab.tmp / "runs" / "full")


# ---------------------------------------------------------------- the cell's install, resolved for real

INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")


def _python_313() -> str | None:
    """Return a Python 3.13 interpreter on this machine (on PATH, or one of pyenv's), or None."""
    import glob
    import shutil

    candidates = [shutil.which("python3.13"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")))]
    for python in filter(None, candidates):
        out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.strip() == "True":
            return python
    return None


def _index_unreachable() -> str | None:
    """Return why the package index cannot be reached, or None when it can."""
    try:
        with urllib.request.urlopen(INDEX.rstrip("/") + "/pip/", timeout=15) as response:
            response.read(1)
    except OSError as exc:
        return f"the package index {INDEX} cannot be reached ({exc}): these tests resolve the Colab cell against it"
    return None


def _pip_env(venv: Path) -> dict:
    """Return the environment pip runs in, as in Colab: the stand-in's pip first, this machine's pip config ignored."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_NO_INDEX",
                                                              "PIP_EXTRA_INDEX_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CONFIG_FILE"] = os.devnull  # here it caps torch and adds local wheel folders, which Colab does not have
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture(scope="module", params=["3.13", "current"])
def colab_venv(request, tmp_path_factory) -> Path:
    """A virtualenv standing in for Colab's Python: every package of Colab's list marked installed at its version."""
    reason = _index_unreachable()
    if reason:
        pytest.skip(reason)
    base = _python_313() if request.param == "3.13" else getattr(sys, "_base_executable", sys.executable)
    if base is None:
        pytest.skip("no Python 3.13 on this machine (Colab runs 3.13); the resolution is checked with the current Python")
    venv = tmp_path_factory.mktemp(f"colab-{request.param}") / "venv"
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
    assert colab_env.stub(venv / "bin" / "python") > 600
    return venv


def _dry_run(command: str, venv: Path, report: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell line whose one `pip install` becomes a metadata-only resolution reported to report (and whose
    keep-list goes to cwd, so that tests running at once do not share /tmp/colab-keep.txt)."""
    assert command.count("pip install ") == 1, command
    command = command.replace("pip install ", f"pip install --dry-run --report {report} ")
    command = command.replace("/tmp/colab-keep.txt", str(cwd / "colab-keep.txt"))
    return subprocess.run(command, shell=True, cwd=cwd, env=_pip_env(venv), capture_output=True, text=True)


def _installs(report: Path) -> dict[str, str]:
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_installing_mp3kit_changes_no_package_colab_ships(colab_venv, tmp_path):
    # As pip resolves `pip install mp3kit` in Colab with nothing kept: each package it would install beside Colab's
    # must be one Colab lacks. (pyproject.toml asking for ipykernel>=6.20 made pip replace Colab's 6.17.1 by 7.x.)
    out = _dry_run(f"pip install -q '{ROOT}'", colab_venv, tmp_path / "report.json", tmp_path)
    assert out.returncode == 0, out.stderr
    colab = {colab_env.canonical(name): version for name, version, _ in colab_env.read_freeze()}
    changed = [f"{name} {colab[colab_env.canonical(name)]} -> {version}"
               for name, version in _installs(tmp_path / "report.json").items() if colab_env.canonical(name) in colab]
    assert not changed, f"installing mp3kit in Colab would change {', '.join(changed)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_set_up_cell_resolves_beside_colabs_packages_keeping_all_of_them(colab_venv, tmp_path, monkeypatch, name):
    # The cell's own shell line, captured as it would run in Colab, then run against the stand-in with the real pip.
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    fake = types.ModuleType("google.colab")
    fake.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: None)
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    monkeypatch.setitem(sys.modules, "google.colab.output", fake.output)
    monkeypatch.chdir(tmp_path)
    run(name, PROFILE="quick", REPO_URL=str(ROOT))
    monkeypatch.undo()
    (command,) = commands

    out = _dry_run(command, colab_venv, tmp_path / "report.json", tmp_path)
    assert out.returncode == 0, f"the set-up cell's pip cannot install mp3kit beside Colab's packages:\n{out.stderr}"
    kept = (tmp_path / "colab-keep.txt").read_text().splitlines()
    listed = colab_env.installed(colab_venv / "bin" / "python")
    assert len(kept) == len(listed) and all(line.split("==")[1] == listed[colab_env.canonical(line.split("==")[0])]
                                            for line in kept)
    installs = _installs(tmp_path / "report.json")
    assert "mp3kit" in installs and not any(colab_env.canonical(n) in listed for n in installs)
