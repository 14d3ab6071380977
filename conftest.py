"""Keep the test session hermetic: caches, runs and figures go to a temporary folder."""

import os
import shutil
import tempfile
from pathlib import Path

_session_dir = Path(tempfile.mkdtemp(prefix="mp3kit-tests-"))
os.environ.setdefault("MP3KIT_CACHE", str(_session_dir / "cache"))
os.environ.setdefault("MP3KIT_RUNS_DIR", str(_session_dir / "runs"))
os.environ.setdefault("MP3KIT_FIGURES_DIR", str(_session_dir / "figures"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MP3KIT_QUIET", "1")
# One torch thread here and in every process a test starts (CLI, trainer, kernel): the tests train tiny networks that
# gain little from a second thread, and on cores shared with other work torch's spinning threads slow them down
# severalfold (test_train.py's quick tests, one thread against torch's default on this VM: 31-55 s against 88-126 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_unconfigure(config):
    """Remove the session's temporary folder (synthetic data, caches, runs) when the test session ends."""
    shutil.rmtree(_session_dir, ignore_errors=True)
