"""Why a network scores what it scores: its predictions on val images, the context behind its false positives, and
Grad-CAM maps of where it looks.

Everything here is computed on the val split and never on test. A multi-label network says "present" when a class's
score reaches that class's threshold, chosen on val for the best F1 (choose_thresholds). The val scores come from
the run's val_scores.npz, which train.fit writes, or, for a run finished before fit wrote them, from its checkpoint
(then recorded). Grad-CAM (Captum's LayerGradCam) needs the network itself: train.load_model rebuilds it from the run,
and a run of your own class needs the class again (model=).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mp3kit import data as voc
from mp3kit import pipeline, plots, runs, synth, train
from mp3kit.runs import Run
from mp3kit.table import Table
from mp3kit.usermodel import UserModel
from mp3kit.util import UserError, atomic_write_text, pick_device

CLASSES = voc.VOC_CLASSES
DEFAULT_THRESHOLD = 0.5  # a class with no positive val image has no F1 to choose by
MAX_LINES = 6  # classes listed under an image of the predictions figure
THRESHOLD_NOTE = ("A class counts as predicted when its score reaches its threshold, chosen per class on val for the "
                  "best F1 (never on test)")


# ---------------------------------------------------------------- val scores and thresholds


def val_split(run: Run, data_root=None) -> voc.VOCSplit:
    """Return the val split run was validated on: from data_root, else the data folder the run recorded, capped as it was."""
    root = data_root if data_root is not None else (run.config.get("data") or {}).get("root")
    if data_root is None and run.synthetic and (root is None or not Path(root).exists()):
        root = synth.ensure_synthetic()  # the embedded dataset is the same everywhere: built again where it is missing
    if root is None or not Path(root).expanduser().exists():
        raise UserError(f"The run {run.path} was trained on the data in {root}, which is not on this machine: pass the "
                        f"VOC tree it was trained on (data_root=..., or --data-root DIR).")
    split = voc.load_split(root, "val")
    cap = run.config.get("max_images")
    return split if cap is None or cap >= len(split) else split.subset(slice(0, cap))


def val_scores(run: Run, split: voc.VOCSplit | None = None, *, model=None, device: str = "auto") -> dict:
    """Return run's val ids, scores (N, 20), targets, difficult mask and held_out (False: the run trained on val).

    They are the ones fit recorded (val_scores.npz); a run finished before fit recorded them is scored on split
    (default: val_split(run)) with its checkpoint, and the scores are recorded for the next time. A run of your own
    network needs its class as model for that.
    """
    recorded = runs.load_val_scores(run)
    if recorded is not None:
        return recorded
    if not run.complete:
        raise UserError(f"The run {run.path} is {run.status}: explanations need a finished run; resume it first "
                        f"(resume=True, or mp3kit train --resume).")
    split = split if split is not None else val_split(run)
    config = train.TrainConfig.from_dict(run.config)
    device = pick_device(device)
    network = train.load_model(run, device, model=model)
    # As fit's evaluation loader (train.Session.eval_loader) makes it: in order, never augmented.
    loader = pipeline.make_loader(split, batch_size=2 * config.batch_size, image_size=config.image_size, train=False,
                                  device=device, pipeline=config.pipeline, progress=False)
    _, scores = train.evaluate(network, loader, device, None, config.tta)
    held_out = config.train_split == "train"
    try:
        runs.write_val_scores(run, split.ids, scores, split.targets, split.difficult, held_out)
    except OSError:
        pass  # a read-only runs folder (e.g. a copy): scored again next time
    return {"ids": np.asarray(split.ids, dtype=str), "scores": scores, "targets": split.targets,
            "difficult": split.difficult, "held_out": held_out}


def choose_thresholds(scores, targets, difficult) -> tuple[np.ndarray, np.ndarray]:
    """Return per class the score threshold with the best F1 on these scores, and that F1.

    An image counts as predicted when its score is at or above the threshold, which lies halfway between the lowest
    score predicted and the next one below it. Difficult-only images count neither way, as in AP. A class with no
    positive image gets DEFAULT_THRESHOLD and F1 NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)  # (N, 20)
    targets, difficult = np.asarray(targets).astype(bool), np.asarray(difficult).astype(bool)
    thresholds = np.full(scores.shape[1], DEFAULT_THRESHOLD)
    best_f1 = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        keep = ~difficult[:, c]
        y, s = targets[keep, c], scores[keep, c]
        if not y.any():
            continue
        order = np.argsort(-s, kind="stable")
        s, y = s[order], y[order]
        tp, fp = np.cumsum(y), np.cumsum(~y)  # predicting the first i + 1 images
        f1 = 2 * tp / (tp + fp + y.sum())
        cut = np.r_[s[1:] < s[:-1], True]  # a threshold cannot split images of equal score
        i = int(np.argmax(np.where(cut, f1, -1.0)))  # the first best: the highest threshold reaching the best F1
        thresholds[c] = (s[i] + s[i + 1]) / 2 if i + 1 < len(s) else s[i]
        best_f1[c] = f1[i]
    return thresholds, best_f1


def thresholds(run: Run, split: voc.VOCSplit | None = None, *, model=None) -> np.ndarray:
    """Return run's (20,) per-class thresholds, chosen on its val scores for the best F1 (choose_thresholds)."""
    scores = val_scores(run, split, model=model)
    return choose_thresholds(scores["scores"], scores["targets"], scores["difficult"])[0]


def prediction_marks(scores, targets, difficult, thresholds) -> np.ndarray:
    """Return each (image, class)'s mark: present (a true positive), missed, false positive, difficult (present only as
    difficult objects: neither right nor wrong) or absent."""
    predicted = np.asarray(scores) >= np.asarray(thresholds)  # (N, 20)
    truth, difficult = np.asarray(targets).astype(bool), np.asarray(difficult).astype(bool)
    marks = np.full(predicted.shape, "absent", dtype=object)
    marks[predicted & ~truth] = "false positive"
    marks[truth & predicted] = "present"
    marks[truth & ~predicted] = "missed"
    marks[difficult] = "difficult"
    return marks


def prediction_lines(scores_row, marks_row, top: int = 3) -> list[tuple[str, float, str]]:
    """Return the (class, score, mark) lines shown under an image, highest score first: every class it holds, its false
    positives (the highest, up to MAX_LINES lines in all), then its top scores below threshold up to top lines."""
    order = np.argsort(-np.asarray(scores_row), kind="stable")
    shown = [c for c in order if marks_row[c] in ("present", "missed", "difficult")]
    shown += [c for c in order if marks_row[c] == "false positive"][:max(0, MAX_LINES - len(shown))]
    shown += [c for c in order if marks_row[c] == "absent"][:max(0, top - len(shown))]
    return [(CLASSES[c], float(scores_row[c]), marks_row[c]) for c in sorted(shown, key=lambda c: -scores_row[c])]


def pick_images(split: voc.VOCSplit, n: int, seed: int = 0) -> list[int]:
    """Return n rows of split drawn at random (seeded): the same images for every run validated on that split."""
    if n < 1:
        raise UserError(f"n={n} images asked for: ask for at least 1.")
    return sorted(np.random.default_rng(seed).permutation(len(split))[:n].tolist())


def _rows_of(ids, wanted) -> np.ndarray:
    """Return the rows of ids holding the wanted ids, or a UserError naming the first one missing."""
    where = {str(i): r for r, i in enumerate(ids)}
    missing = [i for i in wanted if str(i) not in where]
    if missing:
        raise UserError(f"Image {missing[0]} is not among the val images the run was scored on: pass the val split "
                        f"the run was trained with (the same data folder and image cap).")
    return np.array([where[str(i)] for i in wanted], dtype=int)


def _image_size(split: voc.VOCSplit, row: int) -> tuple[int, int]:
    """Return the width and height of split's image at row (read from its header, not decoded)."""
    with Image.open(split.image_path(row)) as image:
        return image.size


def _class_index(cls) -> int:
    """Return the VOC class index of cls, a class name or an index 0-19."""
    if isinstance(cls, (int, np.integer)) and 0 <= cls < len(CLASSES):
        return int(cls)
    if isinstance(cls, str) and cls.strip().lower() in CLASSES:
        return CLASSES.index(cls.strip().lower())
    raise UserError(f"Unknown class {cls!r}: use an index 0-19 or one of {', '.join(CLASSES)}.")


def _as_runs(items) -> list[Run]:
    """Return a Run, a run folder or a list of them as a non-empty list of Runs."""
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    if not items:
        raise UserError("No runs given: pass a Run, a run folder such as runs/quick/01-quick-simple-default, or a list.")
    return [item if isinstance(item, Run) else runs.load_run(item) for item in items]


def show_predictions(runs_, split: voc.VOCSplit | None = None, *, n: int = 6, seed: int = 0, models=None, path=None,
                     title: str | None = None) -> None:
    """Draw n val images with their true classes and each run's top scores, one row per run on the same images, each
    class marked present, missed or false positive by thresholds chosen on val (choose_thresholds; prediction_note
    says so).

    models maps a run's folder name to its network's class, for runs of your own network finished before fit recorded
    val scores.
    """
    runs_ = _as_runs(runs_)
    split = split if split is not None else val_split(runs_[0])
    picks = pick_images(split, n, seed)
    ids = [split.ids[r] for r in picks]
    rows = []
    for run in runs_:
        scores = val_scores(run, split, model=(models or {}).get(run.path.name))
        chosen = choose_thresholds(scores["scores"], scores["targets"], scores["difficult"])[0]
        at = _rows_of(scores["ids"], ids)
        marks = prediction_marks(scores["scores"][at], scores["targets"][at], scores["difficult"][at], chosen)
        lines = [prediction_lines(scores["scores"][j], m) for j, m in zip(at, marks)]
        config = train.TrainConfig.from_dict(run.config)
        rows.append((run.name, lines, [network_view(*_image_size(split, r), config.image_size) for r in picks]))
    plots.show_predictions(split, picks, rows, path=path, synthetic=any(r.synthetic for r in runs_) or split.synthetic,
                           title=title or f"Predictions on {len(picks)} val images")


def prediction_note(runs_) -> str:
    """Return what the predictions figure of runs needs said: how "present" is decided, and which run trained on val."""
    notes = [f"{THRESHOLD_NOTE}; a class with no positive val image uses {DEFAULT_THRESHOLD}."]
    notes += [f"{run.name} trained on val too (trainval), so its thresholds and marks are optimistic."
              for run in _as_runs(runs_) if run.config.get("train_split", "train") != "train"]
    return " ".join(notes)


# ---------------------------------------------------------------- errors that come from context


@dataclass
class ContextErrors:
    """Per class, the val images without it that a run scores highest for it, and the classes those images hold."""

    label: str
    k: int
    # Per class: its name, false positives on val, the top images without it (rows, ids, scores, whether each reaches
    # the threshold, the classes each holds), the class they hold most often ("with", "count"), how often val images
    # without the class hold each class ("base" for that one, "base_all" for all 20), and the classes they hold beyond
    # chance ("beyond": (name, count, base), most often first).
    rows: list
    held_out: bool = True  # False: the run trained on val too

    def beyond_chance(self) -> list[dict]:
        """Return the rows whose top images hold some class beyond chance (row["beyond"]), the most often first."""
        chosen = [r for r in self.rows if r["beyond"]]
        return sorted(chosen, key=lambda r: (-r["beyond"][0][1] / len(r["top"]), r["beyond"][0][2]))

    def table(self, limit: int = 8) -> Table:
        """Return the short table of the classes whose false positives come with another class beyond chance."""
        held = f"its top {self.k} images without it hold (share of all val images without it)"
        rows = [{"class": r["class"], "false positives on val": r["false_positives"],
                 held: ", ".join(f"{name} {count} of {len(r['top'])} ({base:.0%})" for name, count, base in r["beyond"])}
                for r in self.beyond_chance()[:limit]]
        note = (f"{self.label}: for each class, the {self.k} val images without it that the network scores highest for "
                f"it (its false positives first: those at or above the class's threshold, chosen on val for the best "
                f"F1), and the classes they hold at least twice and more than twice as often as val images without the "
                f"class do: classes that come with it (context) or look like it (a confusion); the figure shows which.")
        if not rows:
            note = f"No class's top-scoring val images without it hold another class beyond chance. {note}"
        if not self.held_out:
            note += " This run trained on val too (trainval): these are errors on images it learned from."
        return Table(rows, ["class", "false positives on val", held], note)

    def statement(self, cls: str, context: str) -> str:
        """Return the measured sentence on whether the network sees cls where there is only context (another class)."""
        row, b = self.rows[_class_index(cls)], _class_index(context)
        cls, context = row["class"], CLASSES[b]
        if not row["top"]:
            return f"{self.label}: every val image holds a {cls}, so there is no false positive of it to look at."
        k, holding = len(row["top"]), int(sum(CLASSES[b] in held for held in row["holds"]))
        above = int(sum(row["above"]))
        share = row["base_all"][b]
        lean = holding >= 2 and holding / k > 2 * share
        verdict = (f"more than twice as often as by chance: the network leans on the {context} as context for a {cls}"
                   if lean else f"no more than twice as often as by chance: no sign in these images that it leans on the "
                                f"{context}")
        return (f"Measured on val ({self.label}): of the {k} val images without a {cls} that the network scores highest "
                f"for {cls}, {holding} {'holds' if holding == 1 else 'hold'} a {context} ({above} of the {k} reach the "
                f"{cls} threshold, so they are false positives), while {share:.0%} of all {row['negatives']} val images "
                f"without a {cls} hold a {context}: {verdict}.")


def context_errors(run: Run, split: voc.VOCSplit | None = None, *, k: int = 5, model=None) -> ContextErrors:
    """Return, for each class, run's k highest-scoring val images without it and the classes present in them."""
    if k < 1:
        raise UserError(f"k={k} images asked for: ask for at least 1.")
    scores = val_scores(run, split, model=model)
    s, targets, difficult = scores["scores"], scores["targets"].astype(bool), scores["difficult"].astype(bool)
    chosen = choose_thresholds(s, targets, difficult)[0]
    rows = []
    for c, name in enumerate(CLASSES):
        negatives = np.flatnonzero(~targets[:, c] & ~difficult[:, c])
        top = negatives[np.argsort(-s[negatives, c], kind="stable")[:k]]
        held = targets[top]  # (k, 20)
        counts = held.sum(axis=0)
        counts[c] = 0
        base = targets[negatives].mean(axis=0) if len(negatives) else np.zeros(len(CLASSES))  # (20,)
        best = max(range(len(CLASSES)), key=lambda j: (counts[j], -base[j])) if counts.any() else None
        beyond = sorted(((CLASSES[j], int(counts[j]), float(base[j])) for j in range(len(CLASSES))
                         if counts[j] >= 2 and counts[j] / len(top) > 2 * base[j]), key=lambda b: (-b[1], b[2]))
        rows.append({"class": name, "false_positives": int((s[negatives, c] >= chosen[c]).sum()), "top": top.tolist(),
                     "ids": [str(scores["ids"][i]) for i in top], "scores": s[top, c].tolist(),
                     "above": (s[top, c] >= chosen[c]).tolist(),
                     "holds": [[CLASSES[j] for j in np.flatnonzero(h)] for h in held],
                     "with": CLASSES[best] if best is not None else None, "count": int(counts[best]) if best is not None else 0,
                     "base": float(base[best]) if best is not None else 0.0, "base_all": base, "beyond": beyond,
                     "negatives": len(negatives)})
    return ContextErrors(run.name, k, rows, scores["held_out"])


def show_context_errors(errors: ContextErrors, split: voc.VOCSplit, *, classes: int = 4, images: int = 3, path=None,
                        synthetic: bool = False) -> None:
    """Draw, for the classes whose false positives most often come with another class, their top images without it."""
    chosen = errors.beyond_chance()[:classes] or sorted(errors.rows, key=lambda r: -r["false_positives"])[:classes]
    rows = []
    for r in chosen:
        at = _rows_of(split.ids, r["ids"][:images])
        rows.append((r["class"], [(int(i), score, above, holds) for i, score, above, holds
                                  in zip(at, r["scores"], r["above"], r["holds"])]))
    plots.show_context_errors(split, rows, path=path, synthetic=synthetic or split.synthetic,
                              title=f"Top-scoring val images without the class: {errors.label}")


# ---------------------------------------------------------------- where the network looks


def network_view(width: int, height: int, image_size: int) -> tuple[float, float, float, float]:
    """Return the part of a width x height image a network sees at evaluation, (x0, y0, x1, y1) in the image's pixel
    coordinates: the central square that the evaluation loader's resize (shorter side) and centre crop keep."""
    # torchvision's resize: the shorter side becomes image_size, the longer one is scaled and truncated.
    if width <= height:
        resized_w, resized_h = image_size, int(image_size * height / width)
    else:
        resized_w, resized_h = int(image_size * width / height), image_size
    left, top = int(round((resized_w - image_size) / 2.0)), int(round((resized_h - image_size) / 2.0))
    sx, sy = width / resized_w, height / resized_h
    return left * sx, top * sy, (left + image_size) * sx, (top + image_size) * sy


def network_inputs(split: voc.VOCSplit, rows, image_size: int) -> torch.Tensor:
    """Return the (B, 3, S, S) normalised inputs of split's rows as the evaluation loader makes them (never augmented)."""
    u8 = torch.from_numpy(np.stack([pipeline.load_resized(split.image_path(r), image_size) for r in rows]))  # (B, S, S, 3)
    x = u8.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    mean = torch.tensor(pipeline.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(pipeline.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def last_conv_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Return the name of the last nn.Conv2d a forward pass of x runs through (in the order it runs, not the order the
    layers are defined)."""
    ran = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if not ran:
        raise UserError(f"{type(model).__name__} runs no nn.Conv2d layer for Grad-CAM to explain: name the layer with "
                        f"layer=\"...\" (one of the names model.named_modules() lists).")
    return ran[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, cls, layer: str | None = None) -> np.ndarray:
    """Return Grad-CAM maps (B, H, W) in [0, 1] of class cls on images x (B, 3, H, W): Captum's LayerGradCam on layer
    (a name in model.named_modules(); default: the last convolution a forward pass runs), upsampled to the input."""
    from captum.attr import LayerAttribution, LayerGradCam  # here: only Grad-CAM needs it

    c = _class_index(cls)
    name = layer or last_conv_layer(model, x)
    modules = dict(model.named_modules())
    if name not in modules:
        raise UserError(f"layer={name!r} is not a layer of {type(model).__name__}: use one of the names "
                        f"model.named_modules() lists, e.g. {last_conv_layer(model, x)!r} (its last convolution).")
    model.eval()
    cam = LayerGradCam(model, modules[name]).attribute(x, target=c, relu_attributions=True)  # (B, 1, h, w)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach().float()
    peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (cam / peak).clamp(0, 1).cpu().numpy()  # (B, H, W)


def peak_in_box(cam: np.ndarray, view, boxes) -> tuple[bool, float]:
    """Return whether a (S, S) map's highest point falls inside one of boxes (VOC boxes in the image's pixels, 1-based
    and inclusive; a map of zeros has no highest point) and the share of the view the boxes cover: the chance that a
    point drawn at random does."""
    size = cam.shape[-1]
    x0, y0, x1, y1 = view
    centres_x = x0 + (np.arange(size) + 0.5) * (x1 - x0) / size  # continuous coordinates: pixel i spans [i, i + 1)
    centres_y = y0 + (np.arange(size) + 0.5) * (y1 - y0) / size
    inside = np.zeros((size, size), dtype=bool)
    for xmin, ymin, xmax, ymax in boxes:
        inside |= ((centres_y >= ymin - 1) & (centres_y < ymax))[:, None] & ((centres_x >= xmin - 1) & (centres_x < xmax))
    if not np.any(cam > 0):
        return False, float(inside.mean())  # a flat map (the class's score does not depend on the image) points nowhere
    py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(inside[py, px]), float(inside.mean())


def class_images(split: voc.VOCSplit, cls, n: int, seed: int = 0) -> list[int]:
    """Return up to n rows of split (seeded draw) that hold cls as a non-difficult object."""
    c = _class_index(cls)
    holding = np.flatnonzero(split.targets[:, c])
    return sorted(np.random.default_rng(seed).permutation(holding)[:n].tolist())


def class_to_explain(split: voc.VOCSplit, cls=None) -> tuple[str, str]:
    """Return the class Grad-CAM explains on split (cls, or the class most val images hold when cls is None or no val
    image holds it) and a sentence when it is not the one asked for ("" otherwise)."""
    counts = split.targets.sum(axis=0)  # (20,)
    most = CLASSES[int(np.argmax(counts))]
    if cls is None:
        return most, ""
    name = CLASSES[_class_index(cls)]
    if counts[CLASSES.index(name)]:
        return name, ""
    return most, f"No val image holds a {name}, so Grad-CAM shows {most}, the class most val images hold."


def cam_rows(run: Run, split: voc.VOCSplit, rows, cls, *, model=None, layer: str | None = None) -> dict:
    """Return run's Grad-CAM of cls on split's rows: the maps, the part of each image the network sees, and per map
    whether its peak falls inside a box of cls and the chance of that."""
    config = train.TrainConfig.from_dict(run.config)
    network = train.load_model(run, "cpu", model=model)
    maps = grad_cam(network, network_inputs(split, rows, config.image_size), cls, layer)
    c = _class_index(cls)
    views, hits, chances = [], [], []
    for cam, r in zip(maps, rows):
        views.append(network_view(*_image_size(split, r), config.image_size))
        boxes = [o.bbox for o in split.annotation(r) if o.name == CLASSES[c]]
        hit, chance = peak_in_box(cam, views[-1], boxes)
        hits.append(hit)
        chances.append(chance)
    return {"maps": maps, "views": views, "hits": hits, "chances": chances}


def show_grad_cam(runs_, cls, split: voc.VOCSplit | None = None, *, n: int = 4, seed: int = 0, layer: str | None = None,
                  models=None, path=None) -> str:
    """Draw Grad-CAM maps of class cls on n val images holding it, one row per run, with the class's boxes; return the
    sentence saying how often each map's peak falls inside a box of the class, against chance.

    models maps a run's folder name to its network's class (a run of your own network needs it to be rebuilt).
    """
    runs_ = _as_runs(runs_)
    split = split if split is not None else val_split(runs_[0])
    name = CLASSES[_class_index(cls)]
    picks = class_images(split, name, n, seed)
    if not picks:
        raise UserError(f"No val image holds a {name}: choose another class (the data table counts each class's images).")
    rows = [(run.name, cam_rows(run, split, picks, name, model=(models or {}).get(run.path.name), layer=layer))
            for run in runs_]
    chance = float(np.mean(rows[0][1]["chances"]))
    plots.show_grad_cam(split, picks, name, rows, path=path, synthetic=any(r.synthetic for r in runs_) or split.synthetic)
    counts = "; ".join(f"{sum(found['hits'])} of {len(picks)} ({label})" for label, found in rows)
    return (f"Grad-CAM for {name} on {len(picks)} val images holding one: the map's peak falls inside a {name} box in "
            f"{counts}; a point drawn at random in what the network sees would fall inside one {chance:.0%} of the time.")


# ---------------------------------------------------------------- mp3kit explain


def write_explanations(run_dir, out=None, data_root=None, *, cls=None, n: int = 6, layer: str | None = None) -> list[str]:
    """Write a run's predictions figure, context table and figure and Grad-CAM figure into out (default
    RUN_DIR/explain); return the lines that say what was written, and, for a run of your own network, why Grad-CAM
    was not (it needs your class: exp.grad_cam in the notebook that defines it)."""
    run = runs.load_run(run_dir)
    if not run.complete:
        raise UserError(f"The run {run.path} is {run.status}: explanations need a finished run; resume it first "
                        f"(mp3kit train --resume).")
    out = Path(out) if out is not None else run.path / "explain"
    split = val_split(run, data_root)
    name, why = class_to_explain(split, cls)  # a wrong class is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    show_predictions(run, split, n=n, path=out / "predictions.png")
    said = [f"{out / 'predictions.png'}: {n} val images, each class marked present, missed or false positive. "
            f"{prediction_note(run)}"]
    errors = context_errors(run, split)
    show_context_errors(errors, split, path=out / "context.png", synthetic=run.synthetic)
    atomic_write_text(out / "context.md", errors.table().to_markdown())
    said.append(f"{out / 'context.md'} and {out / 'context.png'}: the classes held by each class's top-scoring val "
                f"images without it.")
    if why:
        said.append(why)
    try:
        said.append(f"{out / 'grad-cam.png'}: " + show_grad_cam(run, name, split, n=min(n, 4), layer=layer,
                                                                 path=out / "grad-cam.png"))
    except UserError as exc:
        if not isinstance(train.TrainConfig.from_dict(run.config).model, UserModel):
            raise
        said.append(f"No Grad-CAM: {exc} From the notebook that defines the class: exp.grad_cam([run], \"{name}\").")
    return said
