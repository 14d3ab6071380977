"""Figures made from Run records and VOC splits: training curves, per-class AP, labels, images.

Every public function draws one matplotlib figure, saves it as a PNG of a fixed pixel size
(dpi 100) when `path` is given, shows it inline in a notebook, closes it and returns None, so a
notebook cell shows the figure and no object repr.
"""

from __future__ import annotations

import io
import math
import os
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


# --- figure builders (each returns the Figure, for tests and for callers that want to edit it) ---


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
