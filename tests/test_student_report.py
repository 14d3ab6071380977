"""The report is the student's, wherever they work: the notebooks and `mp3kit report` share one runs folder per
profile, any layout can be given, and a report is built from a runs folder alone by an installed wheel or by a
notebook's last cell (in Colab offered as one zip).

A student's project is made once per session: notebook 2 (the quickest) copied into <project>/notebooks with a cell
of the student's own, then executed with papermill as a student would (its folder as working directory, default
parameters, the smoke profile, no MP3KIT_RUNS_DIR). Stand-in: google.colab.files (records the file offered).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from mp3kit import layout, report, settings
from mp3kit.experiment import Experiment
from mp3kit.util import UserError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_scratch_vs_pretrained"
OWN_CELL = 'print("This is my own copy of the notebook.")'

pytestmark = pytest.mark.slow


def _student_env(**extra) -> dict:
    """Return the environment of a student's shell: the smoke profile and no runs or figures folder set."""
    env = {k: v for k, v in os.environ.items() if k not in (settings.RUNS_DIR, settings.FIGURES_DIR)}
    env.update({settings.PROFILE: "smoke", settings.QUIET: "1", "MPLBACKEND": "Agg", **extra})
    return env


def _mp3kit(*args, cwd, env=None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "mp3kit", *args], cwd=cwd, env=env or _student_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _run_files(runs_dir: Path) -> dict:
    """Return the bytes and modification time of every file of every run (a folder with config.json) in runs_dir."""
    folders = [p.parent for p in runs_dir.glob("*/config.json")]
    return {str(f.relative_to(runs_dir)): (f.read_bytes(), f.stat().st_mtime_ns)
            for folder in folders for f in folder.rglob("*") if f.is_file()}


def _outputs(path: Path) -> str:
    """Return every text an executed notebook printed."""
    nb = nbformat.read(str(path), as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.fixture(scope="session")
def student(tmp_path_factory) -> Path:
    """A student's project whose notebook 2 (with a cell of their own) was executed as a student would; its folder."""
    project = tmp_path_factory.mktemp("student")
    notebooks = project / "notebooks"
    notebooks.mkdir()
    nb = nbformat.read(str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb"), as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell(OWN_CELL))
    nbformat.write(nb, str(notebooks / f"{NOTEBOOK}.ipynb"))
    out = subprocess.run([sys.executable, "-m", "papermill", f"{NOTEBOOK}.ipynb", str(project / "by-the-student.ipynb"),
                          "--cwd", str(notebooks), "-k", "python3", "--no-progress-bar"],
                         cwd=notebooks, env=_student_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return project


def test_the_notebooks_and_the_report_find_one_runs_folder_per_profile(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), str(project / "notebooks" / "01_introduction.ipynb"))
    monkeypatch.delenv(settings.RUNS_DIR), monkeypatch.delenv(settings.FIGURES_DIR)
    monkeypatch.chdir(project / "notebooks")  # where JupyterLab and papermill run a notebook
    in_notebook = layout.runs_folder("smoke")
    monkeypatch.chdir(project)  # where the student types mp3kit report
    assert in_notebook == layout.runs_folder("smoke", notebooks_dir=report.find_notebooks()) == project / "runs" / "smoke"
    assert layout.report_folder(in_notebook, "smoke") == project / "report"
    assert layout.figures_folder("smoke", in_notebook) == project / "runs" / "smoke" / "figures"
    # $MP3KIT_RUNS_DIR replaces runs/ for both, a relative one taken from the project; profiles stay apart.
    monkeypatch.setenv(settings.RUNS_DIR, "shared")
    assert layout.runs_folder("full", notebooks_dir=report.find_notebooks()) == project / "shared" / "full"
    monkeypatch.chdir(project / "notebooks")
    assert layout.runs_folder("full") == project / "shared" / "full"
    # Notebooks kept in a folder of another name: the runs go beside them.
    assert layout.runs_folder("quick", notebooks_dir=tmp_path / "my-work") == tmp_path / "my-work" / "shared" / "quick"


def test_mp3kit_report_after_the_notebooks_trains_nothing_and_runs_the_students_own_notebook(student):
    runs_dir = student / "runs" / "smoke"
    by_student = _outputs(student / "by-the-student.ipynb")
    assert "trained in" in by_student  # the student's session trained the runs, into the profile's folder
    before = _run_files(runs_dir)
    assert len({k.split("/")[0] for k in before}) >= 3

    _mp3kit("report", "--profile", "smoke", cwd=student)  # what `make report` does, in the student's project

    assert _run_files(runs_dir) == before  # no run's file was rewritten, touched or added
    executed = _outputs(student / "report" / "executed" / f"{NOTEBOOK}.ipynb")
    assert "This is my own copy of the notebook." in executed  # the student's notebook, not the kit's
    assert "trained in" not in executed and executed.count("reused from disk") >= 3
    assert "builds the report after it: nothing to do here" in executed
    results = json.loads((student / "report" / "results.json").read_text())
    assert results["runs_dir"] == str(runs_dir)
    # The notebook's own last cell had built the same report folder and said where the zip is.
    assert f"All of it in one file: {student / 'report' / 'report.zip'}" in by_student


def _manifest_runs(runs_dir: Path) -> list[dict]:
    manifest = json.loads((runs_dir / f"{NOTEBOOK}.manifest.json").read_text())
    metrics = [json.loads((runs_dir / e["run"] / "metrics.json").read_text()) for e in manifest["runs"].values()]
    figures = [i["file"] for i in manifest["report"] if i["kind"] == "figure"]
    return metrics, figures


def test_a_report_is_built_from_a_runs_folder_alone_by_an_installed_wheel(student, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT / "mp3kit", source / "mp3kit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(source)],
                   check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("mp3kit-*.whl")
    target = tmp_path / "installed"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    # A runs folder downloaded from Colab: the manifests name figure folders on a Drive this machine does not have.
    runs_dir = tmp_path / "downloaded" / "runs-from-colab"
    shutil.copytree(student / "runs" / "smoke", runs_dir)
    for path in runs_dir.glob("*.manifest.json"):
        manifest = json.loads(path.read_text())
        manifest["figures_dir"] = "/content/drive/MyDrive/mp3kit/runs/smoke/figures"
        path.write_text(json.dumps(manifest))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _student_env(PYTHONPATH=str(target))  # only the wheel: the checkout cannot be imported

    where = subprocess.run([sys.executable, "-c", "import mp3kit; print(mp3kit.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(target)
    _mp3kit("report", "--profile", "smoke", "--runs-dir", str(runs_dir), "--no-execute", "--report-dir",
            str(tmp_path / "out"), cwd=elsewhere, env=env)

    text = (tmp_path / "out" / "report.md").read_text()
    assert text.startswith("# MP3 Part 1") and "Not built yet" not in report.generated_text(text)["scratch-results"]
    metrics, figures = _manifest_runs(runs_dir)
    assert all(f"{m['test_map']:.4f}" in text for m in metrics)
    assert figures and all((tmp_path / "out" / "figures" / f).stat().st_size > 0 for f in figures)
    assert all(f"](figures/{f})" in text for f in figures) and "missing from figures/" not in text
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == text.count("](figures/") and "not found)" not in html


def test_any_layout_runs_the_notebooks_given_against_the_runs_given(student, tmp_path):
    notebooks = tmp_path / "course" / "my work"  # not called notebooks, with a space
    shutil.copytree(student / "notebooks", notebooks)
    runs_dir = tmp_path / "storage" / "smoke-runs"
    shutil.copytree(student / "runs" / "smoke", runs_dir)
    before = _run_files(runs_dir)

    _mp3kit("report", "--profile", "smoke", "--notebooks-dir", str(notebooks), "--runs-dir", str(runs_dir),
            cwd=tmp_path)

    assert _run_files(runs_dir) == before
    out = tmp_path / "storage" / "report"  # beside the runs folder
    executed = _outputs(out / "executed" / f"{NOTEBOOK}.ipynb")
    assert "This is my own copy of the notebook." in executed and "trained in" not in executed
    metrics, figures = _manifest_runs(runs_dir)
    assert json.loads((runs_dir / f"{NOTEBOOK}.manifest.json").read_text())["figures_dir"] == str(runs_dir / "figures")
    assert all((out / "figures" / f).is_file() for f in figures)
    assert all(f"{m['test_map']:.4f}" in (out / "report.md").read_text() for m in metrics)


def test_build_report_in_colab_offers_one_zip_and_leaves_the_report_to_mp3kit_report(student, tmp_path, monkeypatch):
    offered = []
    google, colab, files = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.files"))
    files.download = offered.append
    colab.files, google.colab = files, colab
    for name, module in (("google", google), ("google.colab", colab), ("google.colab.files", files)):
        monkeypatch.setitem(sys.modules, name, module)
    content = tmp_path / "content"  # Colab's working directory: no notebooks, no checkout
    runs_dir = content / "runs" / "smoke"
    shutil.copytree(student / "runs" / "smoke", runs_dir)
    monkeypatch.chdir(content)
    exp = Experiment("04_my_colab_notebook", "smoke", None, str(runs_dir), quiet=True)
    run = exp.run("tiny", {"epochs": 1}, label="a run made in Colab")
    exp.result("tiny", "My run", "final-results")
    Image.new("RGB", (8, 6), (30, 30, 200)).save(exp.figure("my-figure", "My figure", "diagnostics"))

    archive = exp.build_report()

    assert offered == [str(content / "report" / "report.zip")] and archive == content / "report" / "report.zip"
    _, figures = _manifest_runs(runs_dir)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        text = z.read("report/report.md").decode()
    assert {"report/report.md", "report/report.html", "report/results.json", "report/figures/my-figure.png"} <= names
    assert {f"report/figures/{f}" for f in figures} <= names  # notebook 2's figures, from the runs folder
    assert f"{run.test_map:.4f}" in report.generated_text(text)["final-results"]
    assert "![My figure](figures/my-figure.png)" in text

    # While mp3kit report executes the notebook, the cell leaves the report alone.
    stamp = archive.stat().st_mtime_ns
    monkeypatch.setenv(settings.REPORT_RUNNING, "1")
    assert exp.build_report() is None
    assert archive.stat().st_mtime_ns == stamp and len(offered) == 1


def test_a_full_drive_while_zipping_is_one_sentence_and_keeps_the_last_zip(student, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs" / "smoke"
    shutil.copytree(student / "runs" / "smoke", runs_dir)
    monkeypatch.chdir(tmp_path)
    exp = Experiment("04_my_notebook", "smoke", None, str(runs_dir), quiet=True)
    archive = exp.build_report(download=False)
    before = archive.read_bytes()

    def drive_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(zipfile.ZipFile, "write", drive_full)  # the disk fills up while the zip is written
    with pytest.raises(UserError) as info:
        exp.build_report(download=False)
    message = str(info.value)
    assert message.startswith(f"Could not write the report in {tmp_path / 'report'} (No space left on device)")
    assert "\n" not in message
    assert archive.read_bytes() == before and [p.name for p in archive.parent.glob("*.zip*")] == ["report.zip"]
