"""Tests for mp3kit.widgets.TrainPanel: controls -> TrainConfig, Train/Stop/Resume, status, plot, runs table.

The panel is driven the way a click drives it (Button.click() runs the on_click handlers); the same checks
run in a second virtualenv with Colab's ipywidgets 7.7.1 and ipykernel 6.17.1 (tests/widgets_compat_check.py).
"""

import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import ipywidgets
import pytest
import torch

from mp3kit import runs, synth, train
from mp3kit.train import TrainConfig
from mp3kit.widgets import TrainPanel

ROOT = Path(__file__).resolve().parents[1]
COMPAT_SCRIPT = ROOT / "tests" / "widgets_compat_check.py"
SMOKE = TrainConfig(image_size=32, max_images=20, epochs=2, eval_every=1, batch_size=10)


class FakeExperiment:
    """The part of mp3kit.experiment.Experiment the panel uses."""

    def __init__(self, data, runs_dir, base):
        self.data, self.runs_dir, self._base = data, runs_dir, base

    def config(self, **changes):
        return self._base.replace(**changes)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one thread: smoke-sized batches gain nothing from more, and on shared cores they get much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return synth.make_synthetic_voc(tmp_path_factory.mktemp("voc"), n_images=60, seed=0)


@pytest.fixture(scope="module")
def data(voc_root):
    return train.load_data(voc_root, SMOKE.max_images)


def _wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def test_controls_fill_the_config_from_the_experiments_base(tmp_path, data):
    spec = {"name": "tiny", "blocks": [{"conv": 8}]}
    exp = FakeExperiment(data, tmp_path / "runs", SMOKE.replace(image_size=96, model=spec))
    panel = TrainPanel(exp)
    c = panel.controls
    assert panel.config() == exp.config(), "untouched controls must give the experiment's base config"
    assert c["model"].value == spec and "tiny" in c["model"].label
    assert panel.status_text.startswith("idle") and "mp3kit-status" in panel.status._dom_classes
    assert panel.stop_button.disabled and panel.resume_button.disabled and not panel.train_button.disabled
    assert (panel.train_button.button_style, panel.stop_button.button_style) == ("success", ""), "only Train is coloured"

    c["model"].value = "alexnet"
    c["optimizer"].value = "adamw"
    c["lr"].value = 10**-2.3  # where the log slider lands; the config keeps 3 significant digits
    c["epochs"].value = 7
    c["batch_size"].value = 16
    c["augment"].value = "standard"
    c["eval_every"].value = 3
    config = panel.config()
    assert isinstance(config, TrainConfig)
    assert (config.model, config.optimizer, config.lr, config.epochs, config.batch_size, config.augment,
            config.eval_every) == ("alexnet", "adamw", 0.00501, 7, 16, "standard", 3)
    assert (config.image_size, config.max_images) == (96, SMOKE.max_images), "the rest comes from the experiment"
    assert "No runs" in panel.runs_table.value


def test_train_click_records_a_run_and_shows_it(tmp_path, data):
    exp = FakeExperiment(data, tmp_path / "runs", SMOKE)
    panel = TrainPanel(exp)
    panel.controls["lr"].value = 0.003
    panel.train_button.click()
    assert panel.train_button.disabled and not panel.stop_button.disabled
    assert (panel.train_button.button_style, panel.stop_button.button_style) == ("", "danger")
    assert all(w.disabled for w in panel.controls.values()), "controls stay locked while a run trains"
    assert panel.wait(120)

    run = panel.last_run
    assert panel.status_text.startswith("done: test mAP"), panel.status_text
    assert run.name == "panel-1-simple" and run.status == "complete" and len(run.history) == 2
    on_disk = runs.load_run(tmp_path / "runs" / run.name)
    assert on_disk.config["lr"] == 0.003 and on_disk.test_map == pytest.approx(run.test_map)
    assert run.name in panel.runs_table.value and f"{run.test_map:.3f}" in panel.runs_table.value
    assert [set(o["data"]) for o in panel.plot.outputs] == [{"image/png", "text/plain"}]
    assert not panel.train_button.disabled and panel.stop_button.disabled and panel.resume_button.disabled

    # A second panel on the same folder lists the earlier run and numbers its own after it.
    again = TrainPanel(FakeExperiment(data, tmp_path / "runs", SMOKE))
    assert run.name in again.runs_table.value
    assert again._next_name(again.config()) == "panel-2-simple"


def test_the_panel_says_how_long_a_run_will_take_and_then_how_long_is_left(tmp_path, data, monkeypatch):
    shown = []
    monkeypatch.setattr(TrainPanel, "_set_status", lambda self, text, kind: (shown.append(text),
                                                                               setattr(self, "status_text", text)))
    panel = TrainPanel(FakeExperiment(data, tmp_path / "runs", SMOKE.replace(epochs=3)))
    panel.train_button.click()
    assert panel.wait(120)
    assert panel.estimate.epochs == 3 and panel.estimate.timing.device == "the CPU"
    assert any(text.startswith("starting panel-1-simple: about ") and "on the CPU" in text for text in shown), shown
    assert any(re.search(r"training epoch 3/3 .*, about \d+ s left$", text) for text in shown), shown


def test_stop_ends_as_stopped_and_resume_completes(tmp_path, voc_root):
    panel = TrainPanel(data_root=voc_root, runs_dir=tmp_path / "runs", base_config=SMOKE.replace(epochs=5, eval_every=10))
    panel.train()
    _wait_for(lambda: panel.status_text.startswith("training epoch 2/5"), 120, "the end of epoch 1")
    assert any("image/png" in o["data"] for o in panel.plot.outputs), "no live plot after epoch 1"
    panel.stop_button.click()
    assert panel.wait(120)

    stopped = panel.last_run
    assert stopped.status == "stopped" and 1 <= len(stopped.history) < 5, stopped
    assert panel.status_text.startswith(f"stopped at epoch {len(stopped.history)} (resume available)")
    assert runs.load_run(stopped.path).status == "stopped" and stopped.checkpoint_path.exists()
    assert "stopped" in panel.runs_table.value
    assert not panel.resume_button.disabled and not panel.train_button.disabled

    panel.resume_button.click()
    assert panel.wait(120)
    done = panel.last_run
    assert (done.name, done.status, len(done.history)) == (stopped.name, "complete", 5), done
    assert [h["epoch"] for h in done.history] == list(range(1, 6))
    assert panel.status_text.startswith("done: test mAP") and panel.resume_button.disabled


def test_a_bad_setting_shows_one_sentence_in_the_status(tmp_path, voc_root, monkeypatch):
    monkeypatch.setenv("MP3KIT_ALEXNET_WEIGHTS", str(tmp_path / "missing-alexnet.pth"))
    panel = TrainPanel(data_root=voc_root, runs_dir=tmp_path / "runs", base_config=SMOKE.replace(image_size=64))
    panel.controls["model"].value = "alexnet-pretrained"
    panel.train_button.click()
    assert panel.wait(60)
    status = panel.status_text
    assert status.startswith("error: ") and "missing-alexnet.pth" in status, status
    assert "\n" not in status and "Traceback" not in status
    assert "mp3kit-status" in panel.status._dom_classes and "missing-alexnet.pth" in panel.status.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_the_model_list_offers_only_networks_that_take_the_image_size(tmp_path, voc_root):
    # Notebook 1's panel trains at 32 px, where AlexNet's layers refuse the image; it must not offer them there.
    small = TrainPanel(data_root=voc_root, runs_dir=tmp_path / "runs", base_config=SMOKE)
    assert [value for _, value in small.controls["model"].options] == ["simple"]
    large = TrainPanel(data_root=voc_root, runs_dir=tmp_path / "runs", base_config=SMOKE.replace(image_size=64))
    assert {"alexnet", "alexnet-pretrained", "alexnet-bn"} <= {v for _, v in large.controls["model"].options}


def _load_compat_script():
    spec = importlib.util.spec_from_file_location("widgets_compat_check", COMPAT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compat_check_passes_under_this_ipywidgets(tmp_path, voc_root):
    line = _load_compat_script().check(voc_root, tmp_path)
    assert line.startswith(f"widgets compat OK: ipywidgets {ipywidgets.__version__}")


def colab_venv() -> Path:
    """Return the cached virtualenv with Colab's ipywidgets and ipykernel (skip the test when it cannot be made)."""
    compat = _load_compat_script()
    try:
        return compat.colab_venv()
    except compat.VenvUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_compat_check_passes_under_colabs_ipywidgets_7(tmp_path, voc_root):
    venv = colab_venv()
    expected = _load_compat_script().COLAB_IPYWIDGETS
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}  # one thread, as one_torch_thread does here
    result = subprocess.run([str(venv / "bin" / "python"), str(COMPAT_SCRIPT), "--data-root", str(voc_root),
                             "--work", str(tmp_path), "--expect-version", expected],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"widgets compat OK: ipywidgets {expected}" in result.stdout
