"""The environment variables mp3kit reads, each named once here with the accessor every module reads it through.

A leading ~ in a path setting means the home folder (set from Python or %env, no shell expands it); it is expanded
here, once, and nothing else in the value is.

    MP3KIT_ALEXNET_WEIGHTS  the ImageNet AlexNet weights file (else torch's hub cache).
    MP3KIT_ALLOW_DOWNLOAD   1: the ImageNet AlexNet weights may be downloaded when missing.
    MP3KIT_CACHE            the cache folder (decoded images, the synthetic dataset); default ~/.cache/mp3kit.
    MP3KIT_PROFILE          the notebooks' default PROFILE (the notebook tests run them with smoke); default quick.
    MP3KIT_QUIET            1 hides progress bars, 0 shows them; unset: the front end decides.
    MP3KIT_RUNS_DIR         the folder of the per-profile runs folders (mp3kit.layout); default <project>/runs.
    MP3KIT_FIGURES_DIR      the folder of the per-profile figures folders; default each runs folder's figures/.
    MP3KIT_REPORT_RUNNING   1 while `mp3kit report` executes the notebooks (their report cell then leaves it to it).
"""

from __future__ import annotations

import os
from pathlib import Path

ALEXNET_WEIGHTS = "MP3KIT_ALEXNET_WEIGHTS"
ALLOW_DOWNLOAD = "MP3KIT_ALLOW_DOWNLOAD"
CACHE = "MP3KIT_CACHE"
PROFILE = "MP3KIT_PROFILE"
QUIET = "MP3KIT_QUIET"
RUNS_DIR = "MP3KIT_RUNS_DIR"
FIGURES_DIR = "MP3KIT_FIGURES_DIR"
REPORT_RUNNING = "MP3KIT_REPORT_RUNNING"
ALL = (ALEXNET_WEIGHTS, ALLOW_DOWNLOAD, CACHE, PROFILE, QUIET, RUNS_DIR, FIGURES_DIR, REPORT_RUNNING)

_NO = ("0", "false", "no", "off")


def _get(name: str) -> str | None:
    """Return the variable's value without surrounding spaces, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def _path(name: str) -> str | None:
    """Return a path variable's value with a leading ~ expanded to the home folder, or None when unset."""
    value = _get(name)
    return os.path.expanduser(value) if value else None


def alexnet_weights() -> Path | None:
    """Return the AlexNet weights file $MP3KIT_ALEXNET_WEIGHTS names, or None."""
    value = _path(ALEXNET_WEIGHTS)
    return Path(value) if value else None


def allow_download() -> bool:
    """Return True when $MP3KIT_ALLOW_DOWNLOAD is 1: the ImageNet AlexNet weights may be downloaded."""
    return _get(ALLOW_DOWNLOAD) == "1"


def cache_dir() -> Path:
    """Return mp3kit's cache folder: $MP3KIT_CACHE, else ~/.cache/mp3kit."""
    value = _path(CACHE)
    return Path(value) if value else Path.home() / ".cache" / "mp3kit"


def profile(default: str = "quick") -> str:
    """Return the profile $MP3KIT_PROFILE names, else default."""
    return _get(PROFILE) or default


def quiet() -> bool | None:
    """Return True when $MP3KIT_QUIET hides progress bars (1), False when it shows them (0), None when unset."""
    value = (_get(QUIET) or "").lower()
    if not value:
        return None
    return value not in _NO


def runs_dir() -> Path | None:
    """Return the folder $MP3KIT_RUNS_DIR names for the per-profile runs folders, or None."""
    value = _path(RUNS_DIR)
    return Path(value) if value else None


def figures_dir() -> Path | None:
    """Return the folder $MP3KIT_FIGURES_DIR names for the per-profile figures folders, or None."""
    value = _path(FIGURES_DIR)
    return Path(value) if value else None


def report_running() -> bool:
    """Return True while `mp3kit report` executes the notebooks ($MP3KIT_REPORT_RUNNING is 1)."""
    return _get(REPORT_RUNNING) == "1"
