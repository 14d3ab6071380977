"""PASCAL VOC 2007 on disk: find the tree, read split labels once, open images, check what is there."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from mp3kit.util import SYNTHETIC_MARKER, UserError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")

_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
# Folders a VOC2007 tree is made of: finding any one of them is enough to recognise it.
_VOC_PARTS = ("ImageSets", "JPEGImages", "Annotations")
# The tar that ships each split's files, for the fix in a "missing split" message.
_SPLIT_TAR = {"train": "VOCtrainval_06-Nov-2007.tar", "val": "VOCtrainval_06-Nov-2007.tar",
              "trainval": "VOCtrainval_06-Nov-2007.tar", "test": "VOCtest_06-Nov-2007.tar"}


def _data_hint(root) -> str:
    return (f"download VOC 2007 with `mp3kit data fetch --root {root}` "
            f"or build the synthetic set with `mp3kit data synth --root {root}`")


@dataclass(frozen=True)
class VOCObject:
    """One annotated object: class name, box (xmin, ymin, xmax, ymax) in pixels, VOC flags."""

    name: str
    bbox: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


@dataclass(repr=False)
class VOCSplit:
    """The image ids and labels of one split of a VOC2007 tree."""

    name: str
    voc_dir: Path
    ids: list[str]
    targets: np.ndarray  # (N, 20) uint8: 1 when the class has a non-difficult object
    difficult: np.ndarray  # (N, 20) bool: the class is present only as difficult objects
    synthetic: bool = False
    # Parsed annotations keyed by image id (not by row) so that subsets can share it safely.
    _objects: dict = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        kind = ", synthetic" if self.synthetic else ""
        return f"VOCSplit({self.name!r}, {len(self)} images, {str(self.voc_dir)!r}{kind})"

    def identity(self) -> str:
        """Return a short hash of this split's folder, name, ids and ids-file stamp, for cache keys."""
        ids_file = self.voc_dir / "ImageSets" / "Main" / f"{self.name}.txt"
        stamp = [0, 0]
        if ids_file.exists():
            st = ids_file.stat()
            stamp = [st.st_mtime_ns, st.st_size]
        digest = hashlib.sha1(json.dumps([str(self.voc_dir.resolve()), self.name, stamp]).encode())
        digest.update("\n".join(self.ids).encode())
        return digest.hexdigest()[:16]

    def image_path(self, i: int) -> Path:
        """Return the JPEG path of row i."""
        return self.voc_dir / "JPEGImages" / f"{self.ids[i]}.jpg"

    def annotation_path(self, i: int) -> Path:
        """Return the XML annotation path of row i."""
        return self.voc_dir / "Annotations" / f"{self.ids[i]}.xml"

    def annotation(self, i: int) -> list[VOCObject]:
        """Return the objects annotated in row i's image (parsed on first use)."""
        image_id = self.ids[i]
        if image_id not in self._objects:
            self._objects[image_id] = parse_annotation(self.annotation_path(i))
        return self._objects[image_id]

    def subset(self, indices) -> VOCSplit:
        """Return a new split holding only the given rows, in that order."""
        rows = np.arange(len(self))[indices]  # accepts index lists, boolean masks and slices
        return VOCSplit(self.name, self.voc_dir, [self.ids[r] for r in rows], self.targets[rows],
                        self.difficult[rows], self.synthetic, self._objects)


def concat_splits(name: str, *splits: VOCSplit) -> VOCSplit:
    """Return one split holding the rows of splits in order (train and val as trainval); they share one VOC tree."""
    first = splits[0]
    if any(s.voc_dir != first.voc_dir for s in splits):
        raise UserError(f"The splits {', '.join(s.name for s in splits)} come from different VOC trees: join splits of one tree.")
    objects = {}
    for s in splits:
        objects.update(s._objects)
    return VOCSplit(name, first.voc_dir, [i for s in splits for i in s.ids], np.concatenate([s.targets for s in splits]),
                    np.concatenate([s.difficult for s in splits]), first.synthetic, objects)


def _looks_like_voc(folder: Path) -> bool:
    return folder.is_dir() and any((folder / part).is_dir() for part in _VOC_PARTS)


def _voc_candidates(root: Path) -> list[Path]:
    # The official tars merged (root/VOCdevkit/VOC2007), root being either of the two inner
    # folders, and one level of wrapping for the course kit's separate trainval and test trees
    # (root/VOCtrainval/VOCdevkit/VOC2007, root/VOCtest/VOCdevkit/VOC2007, root/test/VOC2007, ...).
    shapes = [root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"]
    shapes += sorted(root.glob("*/VOC2007")) + sorted(root.glob("*/VOCdevkit/VOC2007"))
    found, seen = [], set()
    for folder in shapes:
        if _looks_like_voc(folder) and folder.resolve() not in seen:
            seen.add(folder.resolve())
            found.append(folder)
    return found


def find_voc_dir(root, split: str | None = None) -> Path:
    """Return the VOC2007 folder under root that holds split (any VOC2007 folder when split is None)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"Data folder {root} does not exist: {_data_hint(root)}.")
    if not root.is_dir():
        raise UserError(f"Data folder {root} is a file, not a folder: pass the folder that holds VOCdevkit, "
                        f"or {_data_hint('DIR')}.")
    candidates = _voc_candidates(root)
    if not candidates:
        raise UserError(f"No VOC2007 folder (with ImageSets, JPEGImages or Annotations) found in {root}: "
                        f"{_data_hint(root)}.")
    if split is None:
        return candidates[0]
    if not split or any(sep in split for sep in "/\\") or split.startswith("."):
        raise UserError(f"Split name {split!r} is not valid: use one of {', '.join(SPLITS)}.")
    for folder in candidates:
        if (folder / "ImageSets" / "Main" / f"{split}.txt").is_file():
            return folder
    expected = candidates[0] / "ImageSets" / "Main" / f"{split}.txt"
    if split in _SPLIT_TAR:
        fix = (f"extract {_SPLIT_TAR[split]} into the same folder (`mp3kit data fetch --root {root}` "
               f"fetches both tars) or build the synthetic set with `mp3kit data synth --root {root}`")
    else:
        fix = f"use one of {', '.join(SPLITS)} or write that file (one image id per line)"
    raise UserError(f"Split file {expected} is missing: {fix}.")


def _read_ids(path: Path) -> list[str]:
    try:
        # utf-8-sig: Windows Notepad starts the file with a byte-order mark, which would stick to the first id.
        lines = path.read_text(encoding="utf-8-sig", errors="strict").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"Split file {path} is not UTF-8 text: rewrite it with one image id per line.") from exc
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise UserError(f"Split file {path} lists no image ids: write one image id per line, "
                        f"or rebuild the tree with `mp3kit data fetch` or `mp3kit data synth`.")
    seen = set()
    for image_id in ids:  # an image listed twice would be trained on, and scored, twice
        if image_id in seen:
            raise UserError(f"Split file {path} lists image {image_id} more than once: delete the repeated lines, so "
                            f"that each image appears once.")
        seen.add(image_id)
    return ids


def _labels_from_class_files(files: list[Path], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    flags = np.empty((len(ids), len(VOC_CLASSES)), dtype=np.int8)  # (N, 20) in {-1, 0, 1}
    wanted = [image_id.encode() for image_id in ids]
    for c, path in enumerate(files):
        # CRLF, LF and any alignment are all just whitespace; a byte-order mark (Notepad) is no part of the first id.
        tokens = path.read_bytes().removeprefix(codecs.BOM_UTF8).split()
        if len(tokens) % 2:
            raise UserError(f"Label file {path} is malformed (a line without its flag): "
                            f"each line must read `<image id> <1|-1|0>`.")
        try:
            column = np.array(tokens[1::2]).astype(np.int64)
        except (ValueError, OverflowError) as exc:
            raise UserError(f"Label file {path} has a flag that is not a number: "
                            f"each line must read `<image id> <1|-1|0>`.") from exc
        if column.size and (column.min() < -1 or column.max() > 1):
            bad = int(column[(column < -1) | (column > 1)][0])
            raise UserError(f"Label file {path} has the flag {bad}: flags must be 1 (present), "
                            f"-1 (absent) or 0 (difficult only).")
        listed = tokens[0::2]
        if listed != wanted:
            # Same images in another order is fine; a missing image is not.
            row = {image_id: r for r, image_id in enumerate(listed)}
            missing = [image_id for image_id in wanted if image_id not in row]
            if missing:
                raise UserError(f"Label file {path} has no line for image {missing[0].decode()} of the split: "
                                f"regenerate the label files so that they cover every id of the split.")
            column = column[[row[image_id] for image_id in wanted]]
        flags[:, c] = column
    return (flags == 1).astype(np.uint8), flags == 0


def _xml_int(element, tag: str, default: int, path: Path) -> int:
    text = element.findtext(tag)
    if text is None or not text.strip():
        return default
    try:
        return int(float(text))
    except ValueError as exc:
        raise UserError(f"Annotation {path} has <{tag}>{text.strip()}</{tag}>, not a number: "
                        f"fix or regenerate that file.") from exc


def parse_annotation(path) -> list[VOCObject]:
    """Return the objects of one VOC XML annotation file."""
    path = Path(path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError as exc:
        raise UserError(f"Annotation {path} is missing: re-extract the VOC tars (`mp3kit data fetch`) or "
                        f"rebuild the synthetic set (`mp3kit data synth`), then run `mp3kit data check`.") from exc
    except ET.ParseError as exc:
        raise UserError(f"Annotation {path} is not valid XML ({exc}): replace it with a good copy "
                        f"(`mp3kit data fetch` or `mp3kit data synth`).") from exc
    objects = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _CLASS_INDEX:
            raise UserError(f"Annotation {path} names an unknown class {name!r}: use one of the 20 VOC classes "
                            f"({', '.join(VOC_CLASSES)}).")
        box = obj.find("bndbox")
        bbox = (0, 0, 0, 0) if box is None else tuple(
            _xml_int(box, tag, 0, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VOCObject(name, bbox, bool(_xml_int(obj, "difficult", 0, path)),
                                 bool(_xml_int(obj, "truncated", 0, path))))
    return objects


def _labels_from_annotations(voc_dir: Path, ids: list[str], cache: dict) -> tuple[np.ndarray, np.ndarray]:
    any_object = np.zeros((len(ids), len(VOC_CLASSES)), dtype=bool)  # (N, 20)
    easy_object = np.zeros_like(any_object)
    for r, image_id in enumerate(ids):
        objects = parse_annotation(voc_dir / "Annotations" / f"{image_id}.xml")
        cache[image_id] = objects
        for obj in objects:
            c = _CLASS_INDEX[obj.name]
            any_object[r, c] = True
            easy_object[r, c] |= not obj.difficult
    return easy_object.astype(np.uint8), any_object & ~easy_object


def _class_files(voc_dir: Path, split: str) -> list[Path]:
    return [voc_dir / "ImageSets" / "Main" / f"{name}_{split}.txt" for name in VOC_CLASSES]


def load_split(root, split: str) -> VOCSplit:
    """Read a split's ids and labels once: per-class ImageSets/Main files when present, else the XML annotations."""
    voc_dir = find_voc_dir(root, split)
    main = voc_dir / "ImageSets" / "Main"
    ids = _read_ids(main / f"{split}.txt")
    class_files = _class_files(voc_dir, split)
    cache: dict = {}
    if all(path.is_file() for path in class_files):
        targets, difficult = _labels_from_class_files(class_files, ids)
    elif (voc_dir / "Annotations").is_dir():
        targets, difficult = _labels_from_annotations(voc_dir, ids, cache)
    else:
        missing = next(path for path in class_files if not path.is_file())
        raise UserError(f"Label file {missing} is missing and {voc_dir / 'Annotations'} does not exist either: "
                        f"{_data_hint(root)}.")
    return VOCSplit(split, voc_dir, ids, targets, difficult,
                    (voc_dir / SYNTHETIC_MARKER).is_file(), cache)


def open_image(path) -> Image.Image:
    """Open an image file and return it as an RGB PIL image."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise UserError(f"Image {path} is missing: re-extract the VOC tars (`mp3kit data fetch`) or rebuild "
                        f"the synthetic set (`mp3kit data synth`); `mp3kit data check` lists what else is "
                        f"missing.") from exc
    except Image.DecompressionBombError as exc:
        raise UserError(f"Image {path} is too large to decode safely ({exc}): replace it with a smaller copy.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Image {path} is corrupt or truncated ({exc}): delete it and re-extract the VOC tars "
                        f"(`mp3kit data fetch`) or rebuild the synthetic set (`mp3kit data synth`).") from exc


class VOCDataset(torch.utils.data.Dataset):
    """A split as a torch Dataset of (image, target) pairs; boxes stay out of batches (see annotation)."""

    def __init__(self, split: VOCSplit, transform=None):
        self.split = split
        self.transform = transform
        self._targets = torch.from_numpy(split.targets.astype(np.float32))  # (N, 20)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        image = open_image(self.split.image_path(i))
        if self.transform is not None:
            image = self.transform(image)
        return image, self._targets[i].clone()

    def annotation(self, i: int) -> list[VOCObject]:
        """Return the objects annotated in item i (for drawing boxes; never part of a batch)."""
        return self.split.annotation(i)


def _listing(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {name[: -len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)}


def check_tree(root, decode: bool = False, progress: bool = False) -> dict:
    """Report a VOC tree's splits, sizes, positives per class and what is missing (decode=True opens every JPEG)."""
    root = Path(root).expanduser()
    find_voc_dir(root)  # no VOC tree at all is an error, not a report
    report = {"root": str(root), "classes": list(VOC_CLASSES), "synthetic": False,
              "splits": {}, "problems": [], "ok": True}
    listings: dict = {}
    for name in SPLITS:
        entry = {"found": False, "voc_dir": None, "images": 0, "label_source": None,
                 "positives": {}, "difficult_only": {}, "missing_images": [], "missing_annotations": [],
                 "corrupt_images": [], "error": None}
        report["splits"][name] = entry
        try:
            split = load_split(root, name)
        except UserError as exc:
            entry["error"] = str(exc)
            report["problems"].append(f"{name}: {exc}")
            continue
        voc_dir = split.voc_dir
        if voc_dir not in listings:
            listings[voc_dir] = (_listing(voc_dir / "JPEGImages", ".jpg"), _listing(voc_dir / "Annotations", ".xml"))
        jpegs, xmls = listings[voc_dir]
        per_class = all(path.is_file() for path in _class_files(voc_dir, name))
        entry.update(
            found=True, voc_dir=str(voc_dir), images=len(split),
            label_source="ImageSets/Main per-class files" if per_class else "Annotations XML",
            positives=dict(zip(VOC_CLASSES, split.targets.sum(axis=0).tolist())),
            difficult_only=dict(zip(VOC_CLASSES, split.difficult.sum(axis=0).tolist())),
            missing_images=[i for i in split.ids if i not in jpegs],
            missing_annotations=[i for i in split.ids if i not in xmls],
        )
        report["synthetic"] |= split.synthetic
        for key, folder, suffix, what in (("missing_images", "JPEGImages", ".jpg", "JPEGs"),
                                          ("missing_annotations", "Annotations", ".xml", "XML annotations")):
            missing = entry[key]
            if not (voc_dir / folder).is_dir():
                report["problems"].append(f"{name}: folder {voc_dir / folder} does not exist, "
                                          f"so all {len(split)} {what} are missing")
            elif missing:
                example = ", ".join(image_id + suffix for image_id in missing[:3])
                report["problems"].append(f"{name}: {len(missing)} of {len(split)} {what} missing from "
                                          f"{voc_dir / folder} (e.g. {example})")
        if decode:
            present = [r for r, image_id in enumerate(split.ids) if image_id in jpegs]
            for r in tqdm(present, desc=f"decode {name}", disable=not progress):
                try:
                    open_image(split.image_path(r))
                except UserError:
                    entry["corrupt_images"].append(split.ids[r])
            if entry["corrupt_images"]:
                example = ", ".join(image_id + ".jpg" for image_id in entry["corrupt_images"][:3])
                report["problems"].append(f"{name}: {len(entry['corrupt_images'])} JPEGs in {voc_dir / 'JPEGImages'} "
                                          f"are corrupt or truncated (e.g. {example})")
    report["ok"] = not report["problems"]
    return report


def format_check(report: dict) -> str:
    """Return a check_tree report as readable text."""
    splits = report["splits"]
    found = [name for name in SPLITS if splits[name]["found"]]
    lines = [f"VOC tree under {report['root']}" + ("  (synthetic data)" if report["synthetic"] else "")]
    lines.append(f"{'split':<9} {'images':>7} {'no JPEG':>8} {'no XML':>7}  labels from / folder")
    for name in SPLITS:
        entry = splits[name]
        if entry["found"]:
            lines.append(f"{name:<9} {entry['images']:>7} {len(entry['missing_images']):>8} "
                         f"{len(entry['missing_annotations']):>7}  {entry['label_source']} in {entry['voc_dir']}")
        else:
            lines.append(f"{name:<9} {'-':>7} {'-':>8} {'-':>7}  missing or unreadable (see Problems)")
    if found:
        lines.append("")
        lines.append("Positive images per class (difficult-only in brackets):")
        lines.append(f"{'class':<12}" + "".join(f"{name:>15}" for name in found))
        for cls in report["classes"]:
            cells = "".join(f"{splits[n]['positives'][cls]:>9} ({splits[n]['difficult_only'][cls]:>3})" for n in found)
            lines.append(f"{cls:<12}{cells}")
    lines.append("")
    if report["problems"]:
        lines.append(f"Problems ({len(report['problems'])}):")
        lines.extend(f"  - {problem}" for problem in report["problems"])
        lines.append(f"Fix: `mp3kit data fetch --root {report['root']}` downloads and extracts what is missing "
                     f"(or `mp3kit data synth --root DIR` builds the synthetic set).")
    else:
        lines.append("Everything is in place: all four splits, their labels, JPEGs and annotations.")
    return "\n".join(lines)
