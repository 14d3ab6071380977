"""Check a VOC tree by content: every official image present, and labels equal to the official VOC 2007 ones."""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mp3kit.data import VOC_CLASSES, load_split, parse_annotation
from mp3kit.util import UserError

LABELS_FILE = "voc2007_labels.txt.gz"
SPLITS = ("train", "val", "trainval", "test")
_FLAG = {"1": 1, "0": 0, "-": -1}
_WORD = {1: "present", 0: "difficult only", -1: "absent"}
_CLASS_INDEX = {name: c for c, name in enumerate(VOC_CLASSES)}
_JPEG_START = b"\xff\xd8"


@dataclass(frozen=True)
class OfficialLabels:
    """The official VOC 2007 labels: image ids per split and flags (1 present, 0 difficult only, -1 absent)."""

    splits: dict[str, tuple[str, ...]]
    flags: dict[str, np.ndarray]  # image id -> (20,) int8
    digest: str  # of the packaged table, to tell whether a tree was verified against this very table

    def split_ids(self, split: str) -> tuple[str, ...]:
        """Return the official ids of a split (trainval is train then val, sorted)."""
        if split == "trainval":
            return tuple(sorted(self.splits["train"] + self.splits["val"]))
        return self.splits[split]


@functools.cache
def official_labels() -> OfficialLabels:
    """Read the table of official labels shipped in the package (tools/compute_voc_labels.py writes it)."""
    raw = resources.files("mp3kit").joinpath("resources", LABELS_FILE).read_bytes()
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    flags = {}
    for line in gzip.decompress(raw).decode("ascii").splitlines():
        if line.startswith("#"):
            continue
        image_id, split, chars = line.split()
        splits[split].append(image_id)
        flags[image_id] = np.array([_FLAG[ch] for ch in chars], dtype=np.int8)
    return OfficialLabels({k: tuple(v) for k, v in splits.items()}, flags, hashlib.sha256(raw).hexdigest()[:16])


@dataclass
class Verification:
    """What verify_tree found: problems (each one sentence), whether the tree is mp3kit's synthetic set, sizes."""

    root: str
    splits: tuple[str, ...]
    problems: list[str] = field(default_factory=list)
    synthetic: bool = False
    images: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Return True when the tree holds exactly the official data of the checked splits."""
        return not self.problems and not self.synthetic


def _flags(targets: np.ndarray, difficult: np.ndarray) -> np.ndarray:
    return np.where(targets == 1, 1, np.where(difficult, 0, -1)).astype(np.int8)  # (N, 20)


def _label_file(voc_dir: Path, split: str | None, image_id: str, cls: str) -> str:
    """Name the file a label was read from: the split's per-class file, or (split None) the image's annotation."""
    if split is None:
        return f"{voc_dir}/Annotations/{image_id}.xml"
    return f"{voc_dir}/ImageSets/Main/{cls}_{split}.txt"


def _first_difference(ids, flags: np.ndarray, official: OfficialLabels, where) -> str | None:
    """Name the first image and class whose flag differs from the official one, and how many differ."""
    expected = np.stack([official.flags[i] for i in ids]) if ids else flags
    rows, cols = np.nonzero(flags != expected)
    if not rows.size:
        return None
    r, c = rows[0], cols[0]
    more = f" (and {rows.size - 1} more image/class labels differ)" if rows.size > 1 else ""
    return (f"image {ids[r]}, class {VOC_CLASSES[c]}: {where(ids[r], VOC_CLASSES[c])} says "
            f"{_WORD[int(flags[r, c])]}, the official VOC 2007 label is {_WORD[int(expected[r, c])]}{more}")


def _annotation_flags(voc_dir: Path, ids, problems: list[str], progress: bool) -> np.ndarray | None:
    """Return the flags the annotations give (as the data layer reads them), or None after noting a bad file."""
    flags = np.full((len(ids), len(VOC_CLASSES)), -1, dtype=np.int8)  # (N, 20)
    for r, image_id in enumerate(tqdm(ids, desc="check annotations", unit="file", disable=not progress, leave=False)):
        try:
            objects = parse_annotation(voc_dir / "Annotations" / f"{image_id}.xml")
        except UserError as exc:
            problems.append(f"image {image_id}: {exc}")
            return None
        for obj in objects:
            c = _CLASS_INDEX[obj.name]
            flags[r, c] = 1 if not obj.difficult else max(flags[r, c], 0)
    return flags


def _missing_files(voc_dir: Path, ids) -> tuple[list[str], set[str]]:
    """Say which images lack a JPEG or an annotation (first example and count of each); return those without XML."""
    no_jpeg, no_xml = [], []
    for image_id in ids:
        jpeg = voc_dir / "JPEGImages" / f"{image_id}.jpg"
        try:
            with open(jpeg, "rb") as f:
                if f.read(2) != _JPEG_START:
                    no_jpeg.append(image_id)
        except OSError:
            no_jpeg.append(image_id)
        if not (voc_dir / "Annotations" / f"{image_id}.xml").is_file():
            no_xml.append(image_id)
    problems = []
    for bad, what in ((no_jpeg, "JPEGImages/{}.jpg is missing, empty or not a JPEG"),
                      (no_xml, "Annotations/{}.xml is missing")):
        if bad:
            more = f" (and {len(bad) - 1} more images like it)" if len(bad) > 1 else ""
            problems.append(f"image {bad[0]}: {voc_dir}/{what.format(bad[0])}{more}")
    return problems, set(no_xml)


def verify_tree(root, splits=SPLITS, progress: bool = False) -> Verification:
    """Compare the VOC tree under root with the official VOC 2007: ids, JPEGs, annotations and every label."""
    official = official_labels()
    result = Verification(str(root), tuple(splits))
    checked: set[tuple[Path, str]] = set()  # (folder, id) already checked for files and annotation labels
    for name in splits:
        try:
            split = load_split(root, name)
        except UserError as exc:
            result.problems.append(f"{name}: {exc}")
            continue
        if split.synthetic:
            result.synthetic = True
            return result
        result.images[name] = len(split)
        want = official.split_ids(name)
        listed, wanted = set(split.ids), set(want)
        ids_file = f"ImageSets/Main/{name}.txt"
        if wanted - listed:
            result.problems.append(f"{name}: {ids_file} lacks {len(wanted - listed)} of the official {len(want)} "
                                   f"images (e.g. {min(wanted - listed)})")
        if listed - wanted:
            result.problems.append(f"{name}: {ids_file} lists {len(listed - wanted)} images that are not in the "
                                   f"official split (e.g. {min(listed - wanted)})")
        rows = [r for r, image_id in enumerate(split.ids) if image_id in wanted]
        ids = [split.ids[r] for r in rows]
        per_class = all((split.voc_dir / "ImageSets" / "Main" / f"{cls}_{name}.txt").is_file() for cls in VOC_CLASSES)
        where = functools.partial(_label_file, split.voc_dir, name if per_class else None)
        difference = _first_difference(ids, _flags(split.targets[rows], split.difficult[rows]), official, where)
        if difference:
            result.problems.append(difference)
        fresh = [image_id for image_id in ids if (split.voc_dir, image_id) not in checked]
        checked.update((split.voc_dir, image_id) for image_id in fresh)
        missing, no_xml = _missing_files(split.voc_dir, fresh)
        result.problems.extend(missing)
        fresh = [image_id for image_id in fresh if image_id not in no_xml]
        # The per-class files are what training reads; the annotations, what boxes and a tree without them use.
        flags = _annotation_flags(split.voc_dir, fresh, result.problems, progress)
        if flags is not None:
            where = functools.partial(_label_file, split.voc_dir, None)
            difference = _first_difference(fresh, flags, official, where)
            if difference:
                result.problems.append(difference)
    return result


def format_verification(result: Verification) -> str:
    """Return a verify_tree result as readable text."""
    if result.synthetic:
        return ("This is mp3kit's embedded synthetic dataset, not PASCAL VOC 2007, so it is not compared with the "
                "official labels (for real VOC: `mp3kit data fetch --root DIR`).")
    if result.ok:
        sizes = ", ".join(f"{name} {result.images[name]:,}" for name in result.splits)
        return (f"Verified: this is exactly PASCAL VOC 2007 ({sizes} images): every image has its JPEG and "
                f"annotation, and every label equals the official one.")
    count = len(result.problems)
    lines = [f"Not PASCAL VOC 2007 as published ({count} problem{'s' if count > 1 else ''}):"]
    lines += [f"  - {problem}" for problem in result.problems]
    lines.append(f"Fix: `mp3kit data fetch --root {result.root}` fetches a verified copy (the tree is replaced "
                 f"only once the new one is verified).")
    return "\n".join(lines)
