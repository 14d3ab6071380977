"""The notebooks' Colab set-up cell, run as Colab would run it: google.colab present, pip and fetch recorded.

Nothing is installed: subprocess.run is replaced by a recorder, and google.colab by a module that records
whether the custom widget manager was turned on.
"""

from __future__ import annotations

import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def colab_cell(name: str = "01_introduction") -> str:
    """Return the source of the committed notebook's Colab cell (the one after the parameters)."""
    nb = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
    cell = nb.cells[1]
    assert "google.colab" in cell.source
    return cell.source


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """Pretend to be Colab: return the list subprocess.run calls are recorded in and the widget-manager flag."""
    state = {"calls": [], "widget_manager": False, "pip_rc": 0, "pins": None}
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: state.update(widget_manager=True)
    colab.output = output
    google.colab = colab
    for name, module in (("google", google), ("google.colab", colab), ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)

    def run(args, **kwargs):
        state["calls"].append(list(args))
        if "pip" in args:
            pins = Path(args[args.index("-c") + 1])
            state["pins"] = pins.read_text()
            return subprocess.CompletedProcess(args, state["pip_rc"], "",
                                               "ERROR: Repository not found.\n" if state["pip_rc"] else "")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    from torchvision.models import AlexNet_Weights

    monkeypatch.setattr(AlexNet_Weights, "get_state_dict", lambda self, **kw: state["calls"].append(["weights", self.url]))
    return state


def run_cell(source: str, **params) -> dict:
    namespace = {"PROFILE": "quick", "DATA_ROOT": None, "REPO_URL": "https://example.org/course/mp3kit", **params}
    exec(compile(source, "<colab cell>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", ["01_introduction", "02_scratch_vs_pretrained", "03_develop_classifier"])
def test_colab_cell_installs_mp3kit_keeping_colabs_torch_and_ipywidgets(fake_colab, name):
    run_cell(colab_cell(name))
    (pip,) = [c for c in fake_colab["calls"] if "pip" in c]
    assert pip[-1] == "git+https://example.org/course/mp3kit"
    pinned = dict(line.split("==") for line in fake_colab["pins"].split())
    assert pinned == {p: version(p) for p in ("torch", "torchvision", "ipywidgets")}
    assert fake_colab["widget_manager"]
    assert not any("fetch" in c for c in fake_colab["calls"])  # the quick profile needs no download
    # Notebook 2 puts the ImageNet AlexNet weights in torch's hub cache, where mp3kit looks for them.
    weights = [c for c in fake_colab["calls"] if c[0] == "weights"]
    assert len(weights) == (name == "02_scratch_vs_pretrained")
    assert all(c[1].endswith("alexnet-owt-7be5be79.pth") for c in weights)


def test_colab_cell_fetches_voc_for_the_full_profile(fake_colab):
    namespace = run_cell(colab_cell(), PROFILE="full")
    assert namespace["DATA_ROOT"] == "/content/voc"
    (fetch,) = [c for c in fake_colab["calls"] if "fetch" in c]
    assert fetch[-4:] == ["data", "fetch", "--root", "/content/voc"]


def test_colab_cell_takes_an_uploaded_wheel_as_is(fake_colab):
    run_cell(colab_cell(), REPO_URL="/content/mp3kit-0.1.0-py3-none-any.whl")
    (pip,) = [c for c in fake_colab["calls"] if "pip" in c]
    assert pip[-1] == "/content/mp3kit-0.1.0-py3-none-any.whl"


def test_a_failed_install_names_repo_url_in_one_sentence(fake_colab):
    fake_colab["pip_rc"] = 1
    with pytest.raises(SystemExit) as info:
        run_cell(colab_cell(), REPO_URL="https://example.org/nowhere")
    message = str(info.value)
    assert "REPO_URL = 'https://example.org/nowhere'" in message and "Repository not found" in message
    assert "\n" not in message and not fake_colab["widget_manager"]


def test_the_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    run_cell(colab_cell())
    assert calls == []
