"""Tests for mp3kit.plots: PNG size, synthetic marks, None entries in history, no damage on failure."""

import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from mp3kit import plots
from mp3kit.data import VOC_CLASSES, VOCObject
from mp3kit.runs import Run, write_config, write_metrics, write_progress, write_test_scores
from mp3kit.util import UserError

N_IMAGES = 12


@dataclass
class FakeSplit:
    """A stand-in for data.VOCSplit with the attributes plots relies on."""

    name: str
    voc_dir: Path
    ids: list
    targets: np.ndarray
    difficult: np.ndarray
    synthetic: bool
    objects: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)

    def image_path(self, i):
        return self.voc_dir / "JPEGImages" / f"{self.ids[i]}.jpg"

    def annotation(self, i):
        return self.objects[self.ids[i]]


def _history(epochs=6, eval_every=5):
    rows = []
    for e in range(1, epochs + 1):
        evaluated = e == 1 or e % eval_every == 0 or e == epochs
        rows.append({
            "epoch": e, "train_loss": 0.5 / e, "val_loss": 0.55 / e if evaluated else None,
            "train_map": 0.1 * e if evaluated else None, "val_map": 0.08 * e if evaluated else None,
            "seconds": 1.0, "images_per_s": 100.0, "lr": 0.01,
        })
    return rows


def _make_run(tmp_path, name="simple", synthetic=True, history=None, ids=None):
    rng = np.random.default_rng(len(name))
    ids = ids if ids is not None else [f"{i:06d}" for i in range(N_IMAGES)]
    targets = (rng.random((len(ids), 20)) < 0.3).astype(np.uint8)
    targets[0] = 1  # every class has a positive
    difficult = np.zeros_like(targets, dtype=bool)
    difficult[1, :3] = True
    targets[1, :3] = 0
    scores = targets + rng.normal(0, 0.6, targets.shape)
    ap = [float(v) for v in rng.uniform(0.2, 0.9, 20)]
    ap[7] = None  # a class without positives
    run = Run(
        name=name, path=tmp_path / "runs" / name, config={"model": "simple", "synthetic": synthetic},
        history=_history() if history is None else history,
        metrics={"test_map": float(np.mean([a for a in ap if a is not None])), "test_loss": 0.2, "test_ap": ap,
                 "classes": list(VOC_CLASSES), "synthetic": synthetic},
        status="complete",
    )
    write_config(run)
    write_progress(run)
    write_metrics(run)
    write_test_scores(run, ids, scores, targets, difficult)
    return run


def _make_split(tmp_path, synthetic=True):
    rng = np.random.default_rng(1)
    voc_dir = tmp_path / "VOC2007"
    (voc_dir / "JPEGImages").mkdir(parents=True)
    ids = [f"{i:06d}" for i in range(N_IMAGES)]
    targets = np.zeros((N_IMAGES, 20), dtype=np.uint8)
    difficult = np.zeros((N_IMAGES, 20), dtype=bool)
    objects = {}
    for i, image_id in enumerate(ids):
        w, h = (120, 90) if i % 2 else (90, 120)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc_dir / "JPEGImages" / f"{image_id}.jpg")
        a, b = i % 20, (i * 7 + 3) % 20
        objects[image_id] = [VOCObject(VOC_CLASSES[a], (5, 8, w // 2, h // 2), difficult=False, truncated=False),
                             VOCObject(VOC_CLASSES[b], (w // 3, h // 3, w - 2, h - 2), difficult=True, truncated=False)]
        targets[i, a] = 1
        difficult[i, b] = targets[i, b] == 0
    return FakeSplit("test", voc_dir, ids, targets, difficult, synthetic, objects)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def run(tmp_path):
    return _make_run(tmp_path)


@pytest.fixture
def split(tmp_path):
    return _make_split(tmp_path)


def _png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size


@pytest.mark.parametrize("name, call, size", [
    ("history", lambda r, s, p: plots.plot_history(r, path=p), (1200, 450)),
    ("ap", lambda r, s, p: plots.plot_per_class_ap(r, path=p), (1000, 800)),
    ("boxes", lambda r, s, p: plots.show_images_with_boxes(s, path=p), (1200, 750)),
    ("labels", lambda r, s, p: plots.plot_label_stats(s, path=p), (1500, 650)),
    ("pr", lambda r, s, p: plots.plot_pr_curves(r, path=p), (1500, 1150)),
    ("top", lambda r, s, p: plots.show_top_images(r, s, "person", path=p), (1400, 775)),
])
def test_each_plot_writes_png_of_fixed_size_and_returns_none(tmp_path, run, split, name, call, size):
    path = tmp_path / "figures" / "deep" / f"{name}.png"
    assert call(run, split, path) is None
    assert _png_size(path) == size
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert plt.get_fignums() == []


@pytest.mark.parametrize("synthetic", [True, False])
def test_synthetic_data_is_marked_in_every_suptitle(tmp_path, synthetic):
    run = _make_run(tmp_path, synthetic=synthetic)
    split = _make_split(tmp_path, synthetic=synthetic)
    figures = [
        plots._make_history(run), plots._make_history([run, run]), plots._make_per_class_ap(run),
        plots._make_images_with_boxes(split, 2), plots._make_label_stats(split),
        plots._make_pr_curves(run, ["cat", 0]), plots._make_top_images(run, split, 3, k=2),
    ]
    for fig in figures:
        assert (plots.SYNTHETIC_MARK in fig.get_suptitle()) is synthetic, fig.get_suptitle()


def test_top_images_marked_synthetic_when_only_split_is(tmp_path):
    run = _make_run(tmp_path, synthetic=False)
    fig = plots._make_top_images(run, _make_split(tmp_path, synthetic=True), "dog", k=3)
    assert plots.SYNTHETIC_MARK in fig.get_suptitle()


def test_history_plots_eval_only_entries_at_their_epochs(run):
    fig = plots._make_history(run)
    loss_ax, map_ax = fig.axes
    assert (loss_ax.get_title(), map_ax.get_title()) == ("Loss Plot", "mAP Plot")
    lines = {line.get_label(): line for line in loss_ax.get_lines() + map_ax.get_lines()}
    assert list(lines["val"].get_xdata()) == [1, 5, 6]
    assert lines["val"].get_linestyle() == "--" and lines["train"].get_linestyle() == "-"
    assert len(loss_ax.get_lines()[0].get_xdata()) == 6  # train loss every epoch


def test_history_with_no_evaluation_yet_and_several_runs(tmp_path):
    only_train = _make_run(tmp_path, "first", history=[{"epoch": 1, "train_loss": 0.6, "val_loss": None,
                                                        "train_map": None, "val_map": None}])
    other = _make_run(tmp_path, "second")
    fig = plots._make_history([only_train, other], title="Compare")
    plotted = [line.get_label() for line in fig.axes[0].get_lines()]
    assert plotted == ["first train", "second train", "second val"]
    # Several runs share one legend under the plots: a colour per run, a line style per split.
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["first", "second", "train", "val"]
    assert fig.get_suptitle().startswith("Compare")


def test_history_accepts_run_folders(run):
    fig = plots._make_history([str(run.path), run.path])
    assert len(fig.axes[0].get_lines()) == 4


def test_failed_plot_leaves_existing_png_intact(tmp_path, run):
    path = tmp_path / "history.png"
    plots.plot_history(run, path=path)
    before = path.read_bytes()
    empty = _make_run(tmp_path, "empty", history=[])
    with pytest.raises(UserError, match="no history"):
        plots.plot_history(empty, path=path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["history.png"]
    assert plt.get_fignums() == []


def test_user_errors_name_the_problem(tmp_path, run, split):
    with pytest.raises(UserError, match="Unknown class 'kitten'"):
        plots.plot_pr_curves(run, classes=["kitten"])
    with pytest.raises(UserError, match="no test AP"):
        plots.plot_per_class_ap(Run("running", tmp_path / "x", {}, _history(), {}))
    with pytest.raises(UserError, match="No runs"):
        plots.plot_history([])
    other = _make_run(tmp_path, "other", ids=[f"9{i:05d}" for i in range(N_IMAGES)])
    with pytest.raises(UserError, match="not in split 'test'"):
        plots.show_top_images(other, split, "cat")
    assert plt.get_fignums() == []


def test_top_images_titles_say_whether_class_is_present(run, split):
    fig = plots._make_top_images(run, split, "bicycle", k=5)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 5 and titles[0].startswith("#1 ")
    assert all(t.endswith(("bicycle: yes", "bicycle: no", "bicycle: difficult")) for t in titles)


def test_pr_curves_subset_grid(run):
    fig = plots._make_pr_curves(run, classes=["cat", "dog", 14])
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["cat", "dog", "person"]


def test_shows_inline_only_in_a_notebook_backend(monkeypatch, run):
    shown = []
    monkeypatch.setattr(plots.plt, "show", lambda *a, **k: shown.append(True))
    plots.plot_history(run)
    assert shown == []
    monkeypatch.setattr(plots.matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    plots.plot_history(run)
    assert shown == [True]
    assert plt.get_fignums() == []
