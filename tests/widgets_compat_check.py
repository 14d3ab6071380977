"""Exercise TrainPanel's logic under whichever ipywidgets this interpreter has (the suite runs it under 7.7 and 8).

    python tests/widgets_compat_check.py [--data-root DIR] [--work DIR] [--expect-version 7.7.1]

Builds the panel, sets controls, clicks Train and Stop/Resume, and checks the status line, the plot output and
the runs table; prints one "widgets compat OK" line, or fails with an AssertionError naming what differed.
colab_venv() builds (once, cached) the second virtualenv with Colab's widget and kernel packages that the tests run
this script and a kernel in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DESCRIPTIONS = ("Model", "Optimizer", "Learning rate", "Epochs", "Batch size", "Augment", "Eval every")
CSS_CLASSES = ("mp3kit-panel", "mp3kit-status", "mp3kit-plot", "mp3kit-runs")
COLAB_IPYWIDGETS = "7.7.1"
COLAB_IPYKERNEL = "6.17.1"
# The versions Colab ships (pip there reports "google-colab 1.0.0 requires ipykernel==6.17.1", ipython 7.34.0).
# Only their Python sides: widgetsnbextension and jupyterlab_widgets are front-end packages and are left out, and
# everything not listed (traitlets, tornado, pyzmq, jupyter_client, ...) is the project venv's.
COLAB_PACKAGES = (f"ipywidgets=={COLAB_IPYWIDGETS}", "ipython_genutils==0.2.0", f"ipykernel=={COLAB_IPYKERNEL}",
                  "ipython==7.34.0", "decorator==4.4.2", "backcall==0.2.0", "pickleshare==0.7.5")


class VenvUnavailable(RuntimeError):
    """The second virtualenv cannot be made here (no venv module, no package index)."""


def _walk(widget):
    """Yield widget and every widget inside it."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def _wait_for(predicate, timeout: float, what: str) -> None:
    """Poll predicate until it holds, failing after timeout seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def check(data_root, work) -> str:
    """Run the panel checks with data from data_root, writing runs under work; return a summary line."""
    import ipywidgets

    from mp3kit.train import TrainConfig
    from mp3kit.widgets import TrainPanel

    base = TrainConfig(image_size=32, max_images=20, epochs=2, eval_every=1, batch_size=10)
    runs_dir = Path(work) / "runs"
    panel = TrainPanel(data_root=data_root, runs_dir=runs_dir, base_config=base)

    tree = list(_walk(panel.widget))
    found = {w.description: w for w in tree if isinstance(getattr(w, "description", None), str)}
    for name in (*DESCRIPTIONS, "Train", "Stop", "Resume"):
        assert name in found, f"no widget described {name!r}"
    assert isinstance(found["Learning rate"], ipywidgets.FloatLogSlider)
    classes = {c for w in tree for c in w._dom_classes}
    assert set(CSS_CLASSES) <= classes, f"CSS classes missing: {set(CSS_CLASSES) - classes}"
    for w in tree:  # every state must serialise, or the front end cannot render the panel
        json.dumps(w.get_state(), default=str)
    assert panel.status_text.startswith("idle"), panel.status_text
    assert not found["Train"].disabled and found["Stop"].disabled

    found["Learning rate"].value = 0.003
    found["Epochs"].value = 3
    found["Optimizer"].value = "adam"
    config = panel.config()
    assert (config.lr, config.epochs, config.optimizer, config.image_size) == (0.003, 3, "adam", 32), config

    found["Train"].click()
    assert found["Train"].disabled and not found["Stop"].disabled, "buttons not switched while training"
    assert panel.wait(120), "training did not end"
    assert panel.status_text.startswith("done: test mAP"), panel.status_text
    run = panel.last_run
    assert run.status == "complete" and len(run.history) == 3, run
    assert run.name in panel.runs_table.value and f"{run.test_map:.3f}" in panel.runs_table.value
    assert any("image/png" in o["data"] for o in panel.plot.outputs), "the plot output holds no image"
    assert not found["Train"].disabled and found["Stop"].disabled

    found["Epochs"].value = 4
    found["Eval every"].value = 10
    found["Train"].click()
    _wait_for(lambda: panel.status_text.startswith("training epoch 2/"), 120, "the end of epoch 1")
    found["Stop"].click()
    assert panel.wait(120), "Stop did not end training"
    assert panel.status_text.startswith("stopped at epoch"), panel.status_text
    stopped = panel.last_run
    assert stopped.status == "stopped" and stopped.checkpoint_path.exists(), stopped
    assert not found["Resume"].disabled, "Resume not offered after Stop"
    found["Resume"].click()
    assert panel.wait(120), "the resumed run did not end"
    assert panel.last_run.name == stopped.name and panel.last_run.status == "complete", panel.last_run
    assert len(panel.last_run.history) == 4, panel.last_run
    return f"widgets compat OK: ipywidgets {ipywidgets.__version__}, runs {run.name} and {stopped.name} (stopped, resumed)"


def colab_venv() -> Path:
    """Return a cached virtualenv whose widget and kernel packages are Colab's and whose others are this venv's."""
    key = hashlib.sha1(f"{sys.prefix}|{sys.version}|{COLAB_PACKAGES}".encode()).hexdigest()[:10]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mp3kit-tests"
    venv = cache / f"venv-colab-{key}"
    python = venv / "bin" / "python"
    if python.exists() and _colab_versions(python) == (COLAB_IPYWIDGETS, COLAB_IPYKERNEL):
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".venv-build-", dir=cache))
    try:
        made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(build)], capture_output=True, text=True)
        if made.returncode != 0:
            raise VenvUnavailable(f"cannot make a second virtualenv with {sys.executable} -m venv "
                                  f"({_last_line(made.stderr)})")
        packages = build / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--timeout", "20",
                              "--retries", "1", "--target", str(packages), *COLAB_PACKAGES],
                             capture_output=True, text=True, timeout=300)
        if pip.returncode != 0:
            raise VenvUnavailable(f"cannot install {' '.join(COLAB_PACKAGES)} into a second virtualenv "
                                  f"({_last_line(pip.stderr)}); connect to a package index to run the Colab checks")
        # Appended after the venv's own site-packages, so Colab's versions win and everything else is this venv's.
        lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages())
        (packages / "zz_project_venv.pth").write_text(lines)
        shutil.rmtree(venv, ignore_errors=True)
        try:
            build.rename(venv)
        except OSError:  # another test session finished the same venv first
            if _colab_versions(python) != (COLAB_IPYWIDGETS, COLAB_IPYKERNEL):
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return venv


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1]


def _colab_versions(python) -> tuple | None:
    probe = subprocess.run([str(python), "-c", "import ipywidgets, ipykernel; print(ipywidgets.__version__, "
                            "ipykernel.__version__)"], capture_output=True, text=True)
    return tuple(probe.stdout.split()) if probe.returncode == 0 else None


def main(argv=None) -> int:
    """Parse arguments, run the checks and print the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="a VOC tree (default: a small synthetic one made in --work)")
    parser.add_argument("--work", help="folder for runs and caches (default: a temporary folder)")
    parser.add_argument("--expect-version", help="fail unless ipywidgets has this version")
    args = parser.parse_args(argv)
    import ipywidgets

    if args.expect_version and ipywidgets.__version__ != args.expect_version:
        raise SystemExit(f"ipywidgets {ipywidgets.__version__} imported from {ipywidgets.__file__}, "
                         f"expected {args.expect_version}")
    work = Path(args.work or tempfile.mkdtemp(prefix="mp3kit-widgets-compat-"))
    os.environ.setdefault("MP3KIT_CACHE", str(work / "cache"))
    data_root = args.data_root
    if data_root is None:
        from mp3kit import synth

        data_root = synth.make_synthetic_voc(work / "data", n_images=60, seed=0)
    print(check(data_root, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
