"""Average precision per class and its mean over classes, computed over a whole split at once.

Inputs are targets (N, C) in {0, 1}, scores (N, C) of any real values and an optional difficult mask
(N, C), as numpy arrays or torch tensors on any device. A class's AP is scikit-learn's
average_precision_score on that column (tied scores form one threshold). Entries marked difficult are
left out of their class's AP (the VOC rule) unless count_difficult=True counts them as positives (the
course kit's rule). voc07=True gives the VOC 2007 11-point interpolated AP over the same points.
"""

from __future__ import annotations

import warnings

import numpy as np


class NoPositivesWarning(UserWarning):
    """A class has no positive example, so its AP is undefined (NaN) and left out of the mean."""


def _as_numpy(x, name: str) -> np.ndarray:
    """Return x (numpy array, torch tensor on any device, or nested lists) as a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor; duck-typed so metrics never needs torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # numpy has no bfloat16
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]  # one class: (N,) -> (N, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C) or (N,), got {arr.shape}.")
    return arr


def _class_name(c: int, n_classes: int, classes) -> str:
    """Return a readable name for class index c."""
    if classes is not None:
        return f"{c} ({classes[c]})"
    if n_classes == 20:
        try:
            from mp3kit.data import VOC_CLASSES  # lazy: only needed to word a warning
        except ImportError:
            return str(c)
        return f"{c} ({VOC_CLASSES[c]})"
    return str(c)


def _prepare(targets, scores, difficult, count_difficult):
    """Return float64 scores, {0,1} targets and {0,1} weights, all (N, C), after checking them."""
    scores = _as_numpy(scores, "scores").astype(np.float64)
    targets = _as_numpy(targets, "targets")
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must have the same shape.")
    if scores.shape[0] == 0:
        raise ValueError("AP needs at least one example; got 0 rows.")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; AP is undefined for them.")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must hold only 0 and 1 (or False and True).")
    targets = targets.astype(np.float64)
    weights = np.ones_like(targets)
    if difficult is not None:
        difficult = _as_numpy(difficult, "difficult").astype(bool)
        if difficult.shape != scores.shape:
            raise ValueError(f"difficult {difficult.shape} must have the same shape as scores {scores.shape}.")
        if count_difficult:
            targets = np.maximum(targets, difficult)  # the course kit's rule: difficult-only counts as present
        else:
            weights[difficult] = 0.0  # VOC rule: the entry takes no part in that class's AP
    return scores, targets, weights


def average_precision(targets, scores, difficult=None, count_difficult=False, voc07=False, classes=None) -> np.ndarray:
    """Return the AP of every class (C,), NaN with a warning for a class without positives.

    Each class's AP is scikit-learn's average_precision_score of its column (entries left out as weight 0);
    voc07=True interpolates the same precision-recall curve at recall 0, 0.1, ..., 1 as VOC 2007's devkit did.
    scikit-learn is slower than a vectorised hand-written AP but costs a fraction of a second per evaluation of a full
    split (docs/measurements.md), so the well-kept library is the one used.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve  # slow to import: only when needed

    scores, targets, weights = _prepare(targets, scores, difficult, count_difficult)
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        y, s, w = targets[:, c], scores[:, c], weights[:, c]
        if not (y * w).any():
            warnings.warn(
                f"Class {_class_name(c, scores.shape[1], classes)} has no positive example in these targets; "
                "its AP is NaN and it is left out of the mean.",
                NoPositivesWarning,
                stacklevel=2,
            )
            continue
        if voc07:
            precision, recall, _ = precision_recall_curve(y, s, sample_weight=w)
            precision, recall = precision[:-1], recall[:-1]  # scikit-learn appends (recall 0, precision 1)
            ap[c] = np.mean([precision[recall >= t - 1e-12].max(initial=0.0) for t in np.linspace(0.0, 1.0, 11)])
        else:
            ap[c] = average_precision_score(y, s, sample_weight=w)
    return ap


def mean_average_precision(targets, scores, difficult=None, count_difficult=False, voc07=False, classes=None) -> float:
    """Return the mean AP over the classes that have positives, warning when some are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoPositivesWarning)  # warned once below, with the count
        ap = average_precision(targets, scores, difficult, count_difficult, voc07, classes)
    missing = np.isnan(ap)
    if missing.all():
        raise ValueError("No class has a positive example, so mAP is undefined; check the targets.")
    if missing.any():
        names = ", ".join(_class_name(c, ap.size, classes) for c in np.flatnonzero(missing))
        warnings.warn(
            f"mAP is the mean over {int((~missing).sum())} of {ap.size} classes; "
            f"left out for having no positive example: {names}.",
            NoPositivesWarning,
            stacklevel=2,
        )
    return float(ap[~missing].mean())


def chance_map(targets, difficult=None, count_difficult=False) -> float:
    """Return the mAP of a classifier that has learned nothing: every image gets the same score for every class.

    That is the mean over classes of the fraction of counted images that hold the class; a random ranking
    scores about the same on average. A trained run near it has learned nothing.
    """
    targets = _as_numpy(targets, "targets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoPositivesWarning)
        return mean_average_precision(targets, np.zeros(targets.shape), difficult, count_difficult)
