"""Where a profile's runs, figures and report live: one answer for the notebooks, Colab and `mp3kit report`.

    <project>/runs/<profile>/        the runs, each notebook's <notebook>.manifest.json, figures/ (the notebooks' PNGs)
    <project>/report/                report.md (yours), report.html, figures/, results.json, report.zip

<project> is the folder holding the notebooks, or the parent of a folder called notebooks (a checkout keeps its
notebooks in notebooks/ beside report/). A notebook runs in its own folder (JupyterLab and the report's headless runs
make it the working directory; Colab runs in /content) and `mp3kit report` is given or finds that folder, so both
arrive at the same runs folder and a report never trains again what the notebooks finished. The variable behind
settings.runs_dir() replaces <project>/runs (a relative path is taken from <project>); the one behind
settings.figures_dir() replaces <runs folder>/figures with <it>/<profile>. A folder named by hand is used as it is.
"""

from __future__ import annotations

from pathlib import Path

from mp3kit import settings

NOTEBOOKS = "notebooks"


def _given(path) -> bool:
    return path is not None and str(path).strip() != ""


def project_dir(notebooks_dir=None) -> Path:
    """Return the project folder of a notebooks folder (default: the working directory, where a notebook runs)."""
    folder = Path(notebooks_dir if _given(notebooks_dir) else Path.cwd()).expanduser().absolute()
    return folder.parent if folder.name == NOTEBOOKS else folder


def runs_folder(profile: str, runs_dir=None, *, notebooks_dir=None) -> Path:
    """Return the runs folder of profile: runs_dir when given, else <settings.runs_dir() or <project>/runs>/<profile>."""
    if _given(runs_dir):
        return Path(runs_dir).expanduser()
    project = project_dir(notebooks_dir)
    base = settings.runs_dir()
    return (project / base if base else project / "runs") / str(profile).strip().lower()


def figures_folder(profile: str, runs_dir, figures_dir=None) -> Path:
    """Return where a notebook saves its figures: figures_dir when given, else <settings.figures_dir()>/<profile>,
    else <runs_dir>/figures (so a runs folder carries everything a report needs)."""
    if _given(figures_dir):
        return Path(figures_dir).expanduser()
    base = settings.figures_dir()
    if base:
        return project_dir() / base / str(profile).strip().lower()
    return Path(runs_dir) / "figures"


def report_folder(runs_dir, profile: str) -> Path:
    """Return the report folder beside a runs folder: <base>/../report for <base>/<profile>, else <runs_dir>/../report."""
    runs_dir = Path(runs_dir).expanduser().absolute()
    base = runs_dir.parent if runs_dir.name == str(profile).strip().lower() else runs_dir
    return base.parent / "report"
