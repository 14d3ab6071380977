"""Compute the VOC 2007 label statistics that mp3kit.synth embeds, from an ImageSets/Main folder.

Usage: python tools/compute_voc_stats.py VOC2007/ImageSets/Main [mp3kit/resources/voc2007_stats.json]

The output is a table of facts about the dataset (counts only, no code): per-class image counts,
pairwise co-occurrence, the number of classes per image and the observed label sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# The standard VOC order; kept here so the tool runs without the package installed.
CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
SPLITS = ("train", "val", "trainval", "test")


def read_ids(path: Path) -> list[str]:
    """Return the image ids listed in a split file (CRLF or LF)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_flags(main: Path, split: str, ids: list[str]) -> list[list[int]]:
    """Return an (N, 20) list of flags (1 present, 0 difficult-only, -1 absent) for a split."""
    row = {image_id: i for i, image_id in enumerate(ids)}
    flags = [[-1] * len(CLASSES) for _ in ids]
    for c, name in enumerate(CLASSES):
        for line in (main / f"{name}_{split}.txt").read_text().splitlines():
            parts = line.split()
            if parts:
                flags[row[parts[0]]][c] = int(parts[1])
    return flags


def split_stats(main: Path, split: str, with_sets: bool) -> dict:
    """Return per-class counts (and, for with_sets, co-occurrence and label sets) of a split."""
    ids = read_ids(main / f"{split}.txt")
    flags = read_flags(main, split, ids)
    n_classes = len(CLASSES)
    stats = {
        "n_images": len(ids),
        "positives": [sum(f[c] == 1 for f in flags) for c in range(n_classes)],
        "difficult_only": [sum(f[c] == 0 for f in flags) for c in range(n_classes)],
    }
    if not with_sets:
        return stats
    # Presence counts difficult-only classes too: the objects are in the image either way.
    present = [tuple(c for c in range(n_classes) if f[c] != -1) for f in flags]
    co = [[0] * n_classes for _ in range(n_classes)]
    for labels in present:
        for a in labels:
            for b in labels:
                co[a][b] += 1
    per_image = Counter(len(labels) for labels in present)
    sets = Counter(present)
    stats["cooccurrence"] = co
    stats["classes_per_image"] = {str(k): per_image[k] for k in sorted(per_image)}
    stats["label_sets"] = [[list(s), n] for s, n in sorted(sets.items(), key=lambda kv: (-kv[1], kv[0]))]
    return stats


def compute_stats(main) -> dict:
    """Return the statistics table for the ImageSets/Main folder `main`."""
    main = Path(main)
    return {
        "source": "PASCAL VOC 2007 ImageSets/Main; presence = flag 1 or 0, difficult_only = flag 0",
        "classes": list(CLASSES),
        "split_sizes": {s: len(read_ids(main / f"{s}.txt")) for s in SPLITS},
        "trainval": split_stats(main, "trainval", with_sets=True),
        "test": split_stats(main, "test", with_sets=False),
    }


def to_json(obj, indent: int = 0) -> str:
    """Format obj as JSON with short lists kept on one line, so the table stays readable."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    flat = json.dumps(obj, separators=(", ", ": "))
    nested = isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj)
    if nested and len(flat) > 80:
        items = [f"{pad}{to_json(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return flat


def main(argv=None) -> int:
    """Compute the table and write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("main", help="a VOC2007/ImageSets/Main folder")
    parser.add_argument("out", nargs="?", default="mp3kit/resources/voc2007_stats.json")
    args = parser.parse_args(argv)
    text = to_json(compute_stats(args.main)) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
