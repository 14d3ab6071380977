"""The course's Kaggle submission (one row of 1 - AP per class) and a per-image predictions CSV.

The AP of a Kaggle CSV follows a convention chosen explicitly: the course's kit counted an image whose class is
present only as difficult objects as a positive of that class, so classmates' leaderboard numbers do; mp3kit's
test mAP follows VOC and leaves such images out. kaggle_aps computes either from a run's recorded test scores.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mp3kit import metrics, runs
from mp3kit.util import UserError, atomic_write_text

HEADER = ("id", "category")
N_CLASSES = 20
_AP_SLACK = 1e-9  # AP sums of fractions may overshoot [0, 1] by a rounding error


def _voc_classes() -> tuple[str, ...]:
    """Return the 20 VOC class names in the standard order."""
    from mp3kit.data import VOC_CLASSES  # lazy: keeps this module importable on its own

    return tuple(VOC_CLASSES)


def _to_numpy(x) -> np.ndarray:
    """Return x (numpy, torch on any device, or a sequence) as a float64 numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def convention(count_difficult: bool) -> str:
    """Return the words naming the AP convention that count_difficult picks, for a line next to a Kaggle score."""
    if count_difficult:
        return "course convention (difficult-only labels count as positives, as in the course's kit and leaderboard)"
    return "VOC convention (difficult-only labels left out, as in mp3kit's test mAP; not the course leaderboard's)"


def kaggle_aps(run, count_difficult: bool = True) -> np.ndarray:
    """Return run's test AP per class (20,) from its recorded test scores, under the chosen convention.

    count_difficult=True is the course's convention (its kit's, hence its leaderboard's): an image whose class is
    present only as difficult objects counts as a positive of that class. False is the VOC convention of mp3kit's
    test mAP: such an image is left out of that class's AP. A class without positives gets NaN.
    """
    recorded = runs.load_test_scores(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.NoPositivesWarning)  # the NaN says it; write_kaggle_csv refuses it
        return metrics.average_precision(recorded["targets"], recorded["scores"], recorded["difficult"],
                                          count_difficult=count_difficult)


def write_kaggle_csv(path, aps) -> Path:
    """Write the Kaggle submission for 20 per-class APs (a sequence or a {class: AP} mapping) to path."""
    path = Path(path)
    if isinstance(aps, Mapping):
        classes = _voc_classes()
        unknown = sorted(set(aps) - set(classes))
        if unknown:
            raise UserError(f"Cannot write {path}: unknown class name(s) {unknown}; use the 20 VOC class names.")
        missing = [c for c in classes if c not in aps]
        if missing:
            raise UserError(f"Cannot write {path}: no AP given for {missing}; give one AP for each of the 20 classes.")
        aps = [aps[c] for c in classes]
    try:
        values = _to_numpy(aps).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise UserError(f"Cannot write {path}: the APs are not numbers ({exc}); pass 20 floats.") from exc
    if values.size != N_CLASSES:
        raise UserError(f"Cannot write {path}: got {values.size} APs, the submission needs exactly {N_CLASSES} (one per class).")
    for i, ap in enumerate(values):
        if math.isnan(ap):
            raise UserError(
                f"Cannot write {path}: the AP of class {i} is NaN (no positive example?); "
                "evaluate on the full test split so every class has positives."
            )
        if not -_AP_SLACK <= ap <= 1 + _AP_SLACK:
            raise UserError(f"Cannot write {path}: the AP of class {i} is {ap}, outside [0, 1]; pass APs, not 1 - AP "
                            f"or percentages.")
    lines = [",".join(HEADER)]
    lines += [f"{i},{float(min(max(1.0 - ap, 0.0), 1.0))!r}" for i, ap in enumerate(values)]
    text = "\n".join(lines) + "\n"
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return path  # unchanged: a notebook run again leaves the run folder as it was
    return atomic_write_text(path, text)


def check_kaggle_csv(path) -> list[str]:
    """Return the problems that would make path a bad Kaggle submission, one sentence each; empty if fine."""
    path = Path(path)
    if not path.is_file():
        return [f"{path} does not exist; write it with mp3kit.kaggle.write_kaggle_csv or `mp3kit submit`."]
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate the BOM spreadsheet programs add
    except UnicodeDecodeError:
        return [f"{path} is not UTF-8 text; save it as a plain CSV file."]
    except OSError as exc:
        return [f"{path} cannot be read ({exc.strerror}); check its permissions."]
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1) if any(cell.strip() for cell in row)]
    if not rows:
        return [f"{path} is empty; it needs the header `id,category` and 20 rows."]
    problems = []
    header_line, header = rows[0]
    body = rows[1:]
    if [cell.strip() for cell in header] != list(HEADER):
        if header[0].strip().isdigit():
            problems.append(f"{path} has no header line; add `id,category` as its first line.")
            body = rows  # the first line is a data row, so check it as one
        else:
            problems.append(f"{path} line {header_line}: the header is {','.join(header)!r}; it must be exactly `id,category`.")
    if len(body) != N_CLASSES:
        problems.append(f"{path} has {len(body)} data rows; it needs exactly {N_CLASSES} (ids 0 to 19).")
    seen: dict[int, int] = {}
    for line, row in body:
        if len(row) != 2:
            problems.append(f"{path} line {line}: has {len(row)} fields; each row must be `id,value`.")
            continue
        raw_id, raw_value = (cell.strip() for cell in row)
        try:
            row_id = int(raw_id)
        except ValueError:
            problems.append(f"{path} line {line}: id {raw_id!r} is not an integer; use 0 to 19.")
        else:
            if not 0 <= row_id < N_CLASSES:
                problems.append(f"{path} line {line}: id {row_id} is outside 0 to 19.")
            elif row_id in seen:
                problems.append(f"{path} line {line}: id {row_id} repeats line {seen[row_id]}; each id must appear once.")
            else:
                seen[row_id] = line
        try:
            value = float(raw_value)
        except ValueError:
            problems.append(f"{path} line {line}: value {raw_value!r} is not a number; write 1 - AP as a decimal.")
            continue
        if not 0.0 <= value <= 1.0:  # also false for NaN
            problems.append(f"{path} line {line}: value {raw_value} is outside [0, 1]; write 1 - AP, not AP in percent.")
    missing = [i for i in range(N_CLASSES) if i not in seen]
    if missing and len(body) > 0:
        problems.append(f"{path} has no row for id(s) {', '.join(map(str, missing))}; every id from 0 to 19 needs one row.")
    return problems


def kaggle_score(path) -> float:
    """Return the leaderboard score of a submission (the mean of its category column, i.e. 1 - mAP)."""
    problems = check_kaggle_csv(path)
    if problems:
        more = f" ({len(problems) - 1} more problem(s); run `mp3kit submit --check {path}`)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)][1:]
    return float(np.mean([float(value) for _, value in rows]))
