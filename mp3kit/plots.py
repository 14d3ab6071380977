"""Figures made from Run records and VOC splits: training curves, per-class AP, labels, images.

Every public function draws one matplotlib figure, saves it as a PNG of a fixed pixel size
(dpi 100) when `path` is given, shows it inline in a notebook, closes it and returns None, so a
notebook cell shows the figure and no object repr.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
import warnings
from contextlib import contextmanager

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from mp3kit.data import VOC_CLASSES, open_image
from mp3kit.metrics import NoPositivesWarning, average_precision
from mp3kit.runs import load_run, load_test_scores
from mp3kit.util import UserError, atomic_write_bytes

DPI = 100
SYNTHETIC_MARK = "(synthetic data)"
# Backends that render into a notebook; anything else (Agg, a GUI in a script) is not shown.
_NOTEBOOK_BACKENDS = ("inline", "ipympl", "widget", "nbagg")
_TRUTH_COLOURS = {"yes": "#2ca02c", "no": "#d62728", "difficult": "#ff7f0e"}
# Prediction marks (mp3kit.explain.prediction_marks): colour and the word shown, so colour is never the only cue.
_MARKS = {"present": ("#2ca02c", "present"), "missed": ("#ff7f0e", "missed"), "false positive": ("#d62728", "false +"),
          "difficult": ("#8c564b", "difficult"), "absent": ("0.45", "below threshold")}
THUMBNAIL = 320  # images in the explanation figures are drawn from copies this many pixels on their longer side


def plot_history(runs, path=None, title=None) -> None:
    """Plot the Loss Plot and the mAP Plot against epoch, train solid and val dashed, for one run or several."""
    _finish(_make_history(runs, title), path)


def plot_per_class_ap(runs, path=None) -> None:
    """Plot grouped bars of test AP per VOC class for one run or several, with each run's mAP in the legend."""
    _finish(_make_per_class_ap(runs), path)


def show_images_with_boxes(split, n=6, seed=0, path=None) -> None:
    """Show n random images of split with their boxes and class names drawn (difficult objects dashed)."""
    _finish(_make_images_with_boxes(split, n, seed), path)


def plot_label_stats(split, path=None) -> None:
    """Plot positives per class and the class co-occurrence heatmap of split."""
    _finish(_make_label_stats(split), path)


def plot_pr_curves(run, classes=None, path=None) -> None:
    """Plot the test precision-recall curve of each class (default all 20) with its AP in the title."""
    _finish(_make_pr_curves(run, classes), path)


def show_top_images(run, split, cls, k=8, path=None) -> None:
    """Show the k test images the run scores highest for class cls, framed green if it is there and red if not."""
    _finish(_make_top_images(run, split, cls, k), path)


def show_predictions(split, picks, rows, path=None, title="Predictions on val images", synthetic=False) -> None:
    """Show split's rows picks, one row of panels per run: the run's classes under each image, marked.

    rows: (label, lines, views) per run; lines[j] lists (class, score, mark) for image picks[j] (marks as in
    mp3kit.explain.prediction_marks); views[j] is the square the network sees, (x0, y0, x1, y1) in the image's pixels.
    """
    _finish(_make_predictions(split, picks, rows, title, synthetic), path)


def show_context_errors(split, rows, path=None, title="Top-scoring images without the class", synthetic=False) -> None:
    """Show, one row per class, split's images without it that a run scores highest for it, with their boxes.

    rows: (class, images) with images a list of (split row, score, at or above threshold, classes the image holds).
    """
    _finish(_make_context_errors(split, rows, title, synthetic), path)


def show_grad_cam(split, picks, cls, rows, path=None, synthetic=False) -> None:
    """Show split's rows picks with the boxes of cls, then one row per run: its Grad-CAM map of cls over what it sees.

    rows: (label, found) per run, found holding "maps" (n, S, S), "views" (the square each map covers, in the
    image's pixels) and "hits" (whether the map's peak is inside a box of cls), as mp3kit.explain.cam_rows returns.
    """
    _finish(_make_grad_cam(split, picks, cls, rows, synthetic), path)


# --- figure builders (each returns the Figure, for tests and for callers that want to edit it) ---


def _thumbnail(path) -> tuple[np.ndarray, int, int]:
    """Return an image as a small RGB array and its full width and height (draw it with _show_thumbnail)."""
    image = open_image(path)
    width, height = image.size
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(image), width, height


def _show_thumbnail(ax, thumb) -> None:
    """Draw a _thumbnail in the image's own pixel coordinates (pixel centres at 0, 1, ...), as boxes are drawn."""
    pixels, width, height = thumb
    ax.imshow(pixels, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])


def _make_predictions(split, picks, rows, title, synthetic):
    """Return the Figure of each run's marked classes under the picked images."""
    thumbs = [_thumbnail(split.image_path(r)) for r in picks]
    ncols, nrows = len(picks), len(rows)
    lines_high = max((len(lines) for _, per_image, _ in rows for lines in per_image), default=1)
    with _figure(nrows, ncols, (2.3 * ncols, (2.1 + 0.19 * lines_high) * nrows + 0.5)) as (fig, axes):
        for i, (label, per_image, views) in enumerate(rows):
            for j, (thumb, lines) in enumerate(zip(thumbs, per_image)):
                ax = axes[i, j]
                _show_thumbnail(ax, thumb)
                x0, y0, x1, y1 = views[j]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                       linewidth=1, linestyle="--"))
                ax.set_title(split.ids[picks[j]], fontsize=8)
                for k, (name, score, mark) in enumerate(lines):
                    colour, word = _MARKS[mark]
                    # Offsets in points: the same spacing under panels of any aspect.
                    ax.annotate(f"{name} {score:.2f} {word}", xy=(0, 0), xycoords="axes fraction", xytext=(0, -3 - 10 * k),
                                textcoords="offset points", color=colour, fontsize=7.5, va="top", ha="left")
                if j == 0:
                    ax.set_ylabel(_wrap(label), fontsize=8)
        fig.suptitle(_title(f"{title} (dashed: the square the network sees)", synthetic))
        return fig


def _make_context_errors(split, rows, title, synthetic):
    """Return the Figure of each class's top-scoring images without it."""
    if not rows:
        raise UserError("No class has a val image without it to show: the val split holds too few images.")
    ncols = max(len(images) for _, images in rows)
    with _figure(len(rows), ncols, (3.2 * ncols, 3.0 * len(rows) + 0.5)) as (fig, axes):
        for i, (cls, images) in enumerate(rows):
            for j, (row, score, above, holds) in enumerate(images):
                ax = axes[i, j]
                thumb = _thumbnail(split.image_path(row))
                _show_thumbnail(ax, thumb)
                for obj in split.annotation(row):
                    _draw_box(ax, obj, thumb[2])
                colour, word = _MARKS["false positive" if above else "absent"]
                ax.set_title(f"{cls} {score:.2f} ({word})\nholds {', '.join(holds) or 'no class'}", fontsize=8,
                             color=colour)
            for ax in axes[i, len(images):]:
                ax.set_axis_off()
        fig.suptitle(_title(title, synthetic))
        return fig


def _make_grad_cam(split, picks, cls, rows, synthetic):
    """Return the Figure of the picked images and each run's Grad-CAM map of cls over them."""
    thumbs = [_thumbnail(split.image_path(r)) for r in picks]
    ncols = len(picks)
    with _figure(1 + len(rows), ncols, (2.4 * ncols, 2.5 * (1 + len(rows)) + 0.5)) as (fig, axes):
        for j, (r, thumb) in enumerate(zip(picks, thumbs)):
            _show_thumbnail(axes[0, j], thumb)
            for obj in split.annotation(r):
                if obj.name == cls:
                    _draw_box(axes[0, j], obj, thumb[2])
            axes[0, j].set_title(split.ids[r], fontsize=8)
        axes[0, 0].set_ylabel("image", fontsize=8)
        for i, (label, found) in enumerate(rows, start=1):
            for j, (thumb, cam, view, hit) in enumerate(zip(thumbs, found["maps"], found["views"], found["hits"])):
                ax = axes[i, j]
                _show_thumbnail(ax, thumb)
                x0, y0, x1, y1 = (v - 0.5 for v in view)
                ax.imshow(cam, extent=(x0, x1, y1, y0), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                for obj in split.annotation(picks[j]):
                    if obj.name == cls:
                        xmin, ymin, xmax, ymax = obj.bbox
                        ax.add_patch(Rectangle((xmin - 1.5, ymin - 1.5), xmax - xmin + 1, ymax - ymin + 1, fill=False,
                                               edgecolor="white", linewidth=1.5))
                flat = not np.any(cam > 0)  # the class's score does not depend on the image: nothing to point at
                if not flat:
                    py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
                    size = cam.shape[-1]
                    ax.plot(x0 + (px + 0.5) * (x1 - x0) / size, y0 + (py + 0.5) * (y1 - y0) / size, marker="+",
                            color="white", markersize=12, markeredgewidth=2)
                ax.set_xlim(x0, x1)
                ax.set_ylim(y1, y0)
                ax.set_title("flat map: no peak" if flat else "peak in a box" if hit else "peak outside the boxes",
                             fontsize=8, color="0.45" if flat else _TRUTH_COLOURS["yes" if hit else "no"])
                if j == 0:
                    ax.set_ylabel(_wrap(label), fontsize=8)
        fig.suptitle(_title(f"Grad-CAM for {cls!r}: where each network looks (red: most; +: the peak; white: the {cls} "
                            f"boxes)", synthetic))
        return fig



def history_png(runs, title=None, size=(12, 4.5)) -> bytes:
    """Return the Loss Plot and mAP Plot of runs as PNG bytes, without pyplot (safe from a background thread)."""
    return _png_bytes(_make_history(runs, title, size, pyplot=False))


def plot_lr_find(found: dict, path=None, title="Learning-rate range test", synthetic: bool = False) -> None:
    """Plot an lr range test (train.lr_range_test): loss against a rising lr, with the suggested lr and range marked."""
    _finish(_make_lr_find(found, title, synthetic), path)


def _make_lr_find(found: dict, title, synthetic):
    with _figure(1, 1, (7, 4)) as (fig, axes):
        ax = axes[0][0]
        ax.plot(found["lr"], found["loss"], color="0.75", linewidth=0.8, label="loss per batch")
        ax.plot(found["lr"], found["smoothed"], color="C0", label="smoothed")
        if found.get("range"):
            ax.axvspan(*found["range"], color="C2", alpha=0.15, label="falls at least half as fast")
            ax.axvline(found["suggested_lr"], color="C2", linestyle="--",
                       label=f"falls fastest: lr {found['suggested_lr']:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss")
        ax.set_ylim(top=min(max(found["smoothed"]) * 1.2, max(found["loss"])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.suptitle(_title(title, synthetic))
        return fig


def _make_history(runs, title=None, size=(12, 4.5), pyplot=True):
    """Return the Figure of loss and mAP against epoch for runs (x axis: every planned epoch)."""
    runs = _as_runs(runs)
    for run in runs:
        if not run.history:
            raise UserError(f"Run {run.name!r} ({run.path}) has no history yet: plot it after at least one epoch has finished.")
    with _figure(1, 2, size, pyplot=pyplot) as (fig, axes):
        loss_ax, map_ax = axes[0]
        several = len(runs) > 1
        for i, run in enumerate(runs):
            colour = f"C{i % 10}"
            prefix = f"{run.name} " if several else ""
            for ax, key in ((loss_ax, "loss"), (map_ax, "map")):
                _plot_series(ax, run.history, f"train_{key}", colour, "-", f"{prefix}train")
                _plot_series(ax, run.history, f"val_{key}", colour, "--", f"{prefix}val")
        loss_ax.set(title="Loss Plot", xlabel="epoch", ylabel="loss")
        map_ax.set(title="mAP Plot", xlabel="epoch", ylabel="mAP")
        # From 0, with room above the highest point so that neither its marker nor the legend hides it.
        highest = max((h.get(k) or 0.0 for run in runs for h in run.history for k in ("train_map", "val_map")), default=0.0)
        map_ax.set_ylim(0, min(1.0, max(0.1, highest * 1.25)))
        # A stopped or running run shows the epochs still to come as empty space.
        planned = max(max(int(run.config.get("epochs") or 0), len(run.history)) for run in runs)
        for ax in (loss_ax, map_ax):
            ax.set_xlim(0.5, planned + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.has_data() and not several:
                ax.legend(fontsize="small")
        if several:
            # One legend under both plots, a colour per run and a line style per split, so that no curve is hidden.
            handles = [Line2D([], [], color=f"C{i % 10}", label=run.name) for i, run in enumerate(runs)]
            handles += [Line2D([], [], color="0.3", linestyle="-", label="train"),
                        Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=4, label="val")]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize="small",
                       frameon=False)
        default = runs[0].name if not several else "Training history"
        fig.suptitle(_title(title or default, any(r.synthetic for r in runs)))
        return fig


def _make_per_class_ap(runs):
    """Return the Figure of grouped per-class test AP bars for runs."""
    runs = _as_runs(runs)
    aps = [_test_ap(run) for run in runs]
    with _figure(1, 1, (10, 8)) as (fig, axes):
        ax = axes[0, 0]
        rows = np.arange(len(VOC_CLASSES))
        height = 0.8 / len(runs)
        for i, (run, ap) in enumerate(zip(runs, aps)):
            offset = (i - (len(runs) - 1) / 2) * height
            mean = run.test_map if run.test_map is not None else float(np.nanmean(ap))
            bars = ax.barh(rows + offset, np.nan_to_num(ap), height=height, color=f"C{i % 10}",
                           label=f"{run.name} (mAP {mean:.3f})")
            if len(runs) == 1:
                ax.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.2f}" for v in ap], padding=2, fontsize=8)
        ax.set_yticks(rows, VOC_CLASSES)
        ax.invert_yaxis()  # aeroplane at the top, as in the VOC tables
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("test AP")
        ax.grid(axis="x", alpha=0.3)
        # Below the axes, where no bar can hide under it.
        fig.legend(loc="outside lower center", ncols=min(len(runs), 3), fontsize="small")
        fig.suptitle(_title("Test AP per class", any(r.synthetic for r in runs)))
        return fig


def _make_images_with_boxes(split, n=6, seed=0):
    """Return the Figure of n random images of split with their boxes drawn."""
    if len(split) == 0:
        raise UserError(f"Split {split.name!r} has no images: check the data folder with `mp3kit data check`.")
    if n < 1:
        raise UserError(f"n={n} images asked for: ask for at least 1.")
    n = min(n, len(split))
    picks = np.random.default_rng(seed).choice(len(split), size=n, replace=False)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    with _figure(nrows, ncols, (4 * ncols, 3.5 * nrows + 0.5)) as (fig, axes):
        for ax, i in zip(axes.flat, picks):
            i = int(i)
            image = open_image(split.image_path(i))
            ax.imshow(image)
            for obj in split.annotation(i):
                _draw_box(ax, obj, image.height)
            ax.set_title(split.ids[i], fontsize=9)
            ax.set_axis_off()
        for ax in axes.flat[n:]:
            ax.set_axis_off()
        fig.suptitle(_title(f"{split.name}: {n} random images with their boxes (dashed = difficult)", split.synthetic))
        return fig


def _make_label_stats(split):
    """Return the Figure of positives per class and class co-occurrence for split."""
    targets = np.asarray(split.targets, dtype=np.int64)  # (N, 20)
    if targets.shape[0] == 0:
        raise UserError(f"Split {split.name!r} has no images: check the data folder with `mp3kit data check`.")
    difficult_only = np.asarray(split.difficult, dtype=bool).sum(axis=0)  # (20,)
    positives = targets.sum(axis=0)  # (20,)
    together = targets.T @ targets  # (20, 20): images holding both classes
    with _figure(1, 2, (15, 6.5), width_ratios=(1, 1.15)) as (fig, axes):
        bar_ax, heat_ax = axes[0]
        rows = np.arange(len(VOC_CLASSES))
        bar_ax.barh(rows, positives, color="C0", label="present")
        stacked = bar_ax.barh(rows, difficult_only, left=positives, color="C0", alpha=0.35, label="difficult only")
        bar_ax.bar_label(stacked, labels=[f"{p}" + (f" +{d}" if d else "") for p, d in zip(positives, difficult_only)],
                         padding=2, fontsize=8)
        bar_ax.margins(x=0.15)  # room for the count labels
        bar_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        bar_ax.set_yticks(rows, VOC_CLASSES)
        bar_ax.invert_yaxis()
        bar_ax.set(xlabel="images", title="Images per class")
        bar_ax.grid(axis="x", alpha=0.3)
        bar_ax.legend(loc="lower right", fontsize="small")
        # The diagonal repeats the bar chart and would swamp the colour scale, so it is masked.
        sns.heatmap(together, mask=np.eye(len(VOC_CLASSES), dtype=bool), ax=heat_ax, cmap="rocket_r", vmin=0,
                    annot=True, fmt="d", annot_kws={"fontsize": 6}, square=True,
                    xticklabels=VOC_CLASSES, yticklabels=VOC_CLASSES, cbar_kws={"label": "images with both"})
        heat_ax.set_title("Class co-occurrence")
        heat_ax.tick_params(labelsize=8)
        fig.suptitle(_title(f"{split.name}: labels of {targets.shape[0]} images", split.synthetic))
        return fig


def _make_pr_curves(run, classes=None):
    """Return the Figure of per-class precision-recall curves from run's test scores."""
    from sklearn.metrics import precision_recall_curve  # here: scikit-learn is slow to import and only this figure needs it

    run = _one_run(run)
    picked = list(range(len(VOC_CLASSES))) if classes is None else [_class_index(c) for c in _as_list(classes)]
    if not picked:
        raise UserError("classes=[] names no class: pass class names, indices, or None for all 20.")
    test = load_test_scores(run)
    scores, targets, difficult = test["scores"], test["targets"].astype(bool), test["difficult"].astype(bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoPositivesWarning)  # a class with no positives is shown as such in its panel
        aps = average_precision(targets, scores, difficult)
    ncols = min(len(picked), 5)
    nrows = math.ceil(len(picked) / ncols)
    with _figure(nrows, ncols, (3 * ncols, 2.75 * nrows + 0.5), sharex=True, sharey=True) as (fig, axes):
        for ax, c in zip(axes.flat, picked):
            keep = ~difficult[:, c]  # difficult-only images count neither way, as in VOC AP
            y, s = targets[keep, c], scores[keep, c]
            if y.any():
                precision, recall, _ = precision_recall_curve(y, s)
                ax.plot(recall, precision, color="C0")
                ax.axhline(y.mean(), color="0.5", linestyle=":", linewidth=1)  # a random ranking's precision
                ax.set_title(f"{VOC_CLASSES[c]}  AP {aps[c]:.3f}", fontsize=10)
            else:
                ax.text(0.5, 0.5, "no positives", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(VOC_CLASSES[c], fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("recall")
        for ax in axes[:, 0]:
            ax.set_ylabel("precision")
        for ax in axes.flat[len(picked):]:
            ax.set_axis_off()
        fig.suptitle(_title(f"Test precision-recall: {run.name} (dotted = positive rate)", run.synthetic))
        return fig


def _make_top_images(run, split, cls, k=8):
    """Return the Figure of the k test images run scores highest for cls."""
    run = _one_run(run)
    c = _class_index(cls)
    if k < 1:
        raise UserError(f"k={k} images asked for: ask for at least 1.")
    test = load_test_scores(run)
    ids = [str(image_id) for image_id in test["ids"]]
    order = np.argsort(-test["scores"][:, c], kind="stable")[:k]
    k = len(order)
    where = {image_id: i for i, image_id in enumerate(split.ids)}
    missing = [ids[j] for j in order if ids[j] not in where]
    if missing:
        raise UserError(f"Image {missing[0]} of run {run.name!r} is not in split {split.name!r}: "
                        f"pass the split the run was tested on (usually load_split(root, 'test')).")
    truths = ["difficult" if test["difficult"][j, c] else "yes" if test["targets"][j, c] else "no" for j in order]
    ncols = min(k, 4)
    nrows = math.ceil(k / ncols)
    with _figure(nrows, ncols, (3.5 * ncols, 3.5 * nrows + 0.75)) as (fig, axes):
        for rank, (ax, j, truth) in enumerate(zip(axes.flat, order, truths), start=1):
            ax.imshow(open_image(split.image_path(where[ids[j]])))
            colour = _TRUTH_COLOURS[truth]
            ax.set_title(f"#{rank} {ids[j]}\nscore {test['scores'][j, c]:.3f} · {VOC_CLASSES[c]}: {truth}",
                         fontsize=9, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(5)
        for ax in axes.flat[k:]:
            ax.set_axis_off()
        hits = truths.count("yes")
        fig.suptitle(_title(f"Top {k} test images for {VOC_CLASSES[c]!r}: {run.name} "
                            f"(precision@{k} = {hits}/{k}; green = present, red = absent, orange = difficult)",
                            run.synthetic or split.synthetic))
        return fig


# --- helpers ---


@contextmanager
def _figure(nrows, ncols, figsize, pyplot=True, **subplots_kw):
    """Yield a new figure and its 2-D axes grid, closing a pyplot figure if drawing fails.

    pyplot=False makes a bare Figure that pyplot does not track: it can be drawn from any thread.
    """
    # A constrained layout keeps labels inside a fixed canvas, so every PNG has a known pixel size.
    if pyplot:
        fig = plt.figure(figsize=figsize, dpi=DPI, layout="constrained")
    else:
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    try:
        axes = fig.subplots(nrows, ncols, squeeze=False, **subplots_kw)  # e.g. width_ratios, sharex
        yield fig, axes
    except BaseException:
        if pyplot:
            plt.close(fig)
        raise


def _finish(fig, path) -> None:
    """Save fig to path (if given) atomically, show it when in a notebook, and close it."""
    try:
        if path is not None:
            atomic_write_bytes(path, _png_bytes(fig))
        if _in_notebook():
            plt.show()
    finally:
        plt.close(fig)


def _png_bytes(fig) -> bytes:
    """Return fig drawn as a PNG at the figures' fixed dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _in_notebook() -> bool:
    """Return True when matplotlib draws into a notebook (inline or widget backend)."""
    backend = matplotlib.get_backend().lower()
    return any(name in backend for name in _NOTEBOOK_BACKENDS)


def _title(text, synthetic) -> str:
    """Return text with the synthetic-data mark appended when synthetic."""
    return f"{text} {SYNTHETIC_MARK}" if synthetic else text


def _wrap(label: str, width: int = 30) -> str:
    """Return a run's label broken into lines of at most width characters, to fit beside a row of panels."""
    return "\n".join(textwrap.wrap(label, width)) or label


def _as_list(value) -> list:
    """Return value as a list, treating a string or a single non-iterable as one item."""
    if isinstance(value, (str, bytes, os.PathLike)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _as_runs(runs) -> list:
    """Return runs (a Run, a run folder, or a list of either) as a non-empty list of Runs."""
    items = [runs] if hasattr(runs, "history") else _as_list(runs)
    if not items:
        raise UserError("No runs given: pass a Run, a run folder such as runs/simple, or a list of them.")
    return [load_run(r) if isinstance(r, (str, os.PathLike)) else r for r in items]


def _one_run(run):
    """Return run (a Run or a run folder) as a Run, refusing a list of several."""
    runs = _as_runs(run)
    if len(runs) > 1:
        raise UserError(f"{len(runs)} runs given where one is plotted: pass a single Run or run folder.")
    return runs[0]


def _plot_series(ax, history, key, colour, linestyle, label) -> None:
    """Plot history[key] against epoch on ax, skipping epochs where it is None."""
    points = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(history) if h.get(key) is not None]
    if not points:
        return
    epochs, values = zip(*points)
    # Train loss comes every epoch; the rest only at evaluation epochs, where markers show the samples.
    marker = None if key == "train_loss" and len(points) > 1 else "o"
    ax.plot(epochs, values, color=colour, linestyle=linestyle, marker=marker, markersize=4, label=label)


def _test_ap(run) -> np.ndarray:
    """Return run's test AP per class as a (20,) float array, NaN where a class had no positives."""
    ap = run.test_ap
    if ap is None:
        raise UserError(f"Run {run.name!r} ({run.path}) has no test AP yet: let it finish, or resume it with resume=True.")
    ap = np.array([np.nan if v is None else v for v in ap], dtype=float)
    if ap.shape != (len(VOC_CLASSES),):
        raise UserError(f"Run {run.name!r} has {ap.size} test APs in {run.path / 'metrics.json'}, "
                        f"not {len(VOC_CLASSES)}: evaluate it again with the current mp3kit.")
    return ap


def _class_index(cls) -> int:
    """Return the VOC class index of cls, a class name or an index 0-19."""
    if isinstance(cls, (int, np.integer)) and 0 <= cls < len(VOC_CLASSES):
        return int(cls)
    if isinstance(cls, str) and cls.lower() in VOC_CLASSES:
        return VOC_CLASSES.index(cls.lower())
    raise UserError(f"Unknown class {cls!r}: use an index 0-19 or one of {', '.join(VOC_CLASSES)}.")


def _draw_box(ax, obj, image_height) -> None:
    """Draw one VOC object's box and class name on ax (dashed when difficult)."""
    xmin, ymin, xmax, ymax = obj.bbox
    colour = plt.get_cmap("tab20")(VOC_CLASSES.index(obj.name) if obj.name in VOC_CLASSES else 0)
    # VOC boxes are 1-based inclusive pixel indices; imshow puts pixel centres at 0-based integers.
    x0, y0 = xmin - 1.5, ymin - 1.5
    ax.add_patch(Rectangle((x0, y0), xmax - xmin + 1, ymax - ymin + 1, fill=False, edgecolor=colour,
                           linewidth=2, linestyle="--" if obj.difficult else "-"))
    # The name sits above the box so it hides nothing, unless the box touches the top of the image.
    above = y0 > 0.06 * image_height
    ax.text(x0, y0 if above else y0 + 2, obj.name, color="white", fontsize=7, va="bottom" if above else "top",
            ha="left", clip_on=True, bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
