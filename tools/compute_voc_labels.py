"""Write the official VOC 2007 image labels that mp3kit checks a fetched tree against, from an ImageSets/Main folder.

Usage: python tools/compute_voc_labels.py VOC2007/ImageSets/Main [mp3kit/resources/voc2007_labels.txt.gz]

The table has one line per image of train, val and test (9,963 in all): the id, its split and 20 flags in the
standard class order, one character each: 1 present, 0 present only as difficult objects, - absent. These are the
values of the devkit's per-class files (<class>_<split>.txt), which are what mp3kit's data layer reads.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

# The standard VOC order; kept here so the tool runs without the package installed.
CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
SPLITS = ("train", "val", "test")
FLAG_CHARS = {"1": "1", "0": "0", "-1": "-"}


def read_ids(path: Path) -> list[str]:
    """Return the image ids listed in a split file (CRLF or LF)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_flags(main: Path, split: str, ids: list[str]) -> dict[str, str]:
    """Return {image id: 20 flag characters} for a split, from its per-class files."""
    flags = {image_id: [""] * len(CLASSES) for image_id in ids}
    for c, name in enumerate(CLASSES):
        for line in (main / f"{name}_{split}.txt").read_text().splitlines():
            if line.split():
                image_id, value = line.split()
                flags[image_id][c] = FLAG_CHARS[value]
    unset = [image_id for image_id, row in flags.items() if "" in row]
    if unset:
        raise SystemExit(f"{main}: image {unset[0]} of {split} lacks a line in some <class>_{split}.txt")
    return {image_id: "".join(row) for image_id, row in flags.items()}


def label_table(main) -> str:
    """Return the table's text for the ImageSets/Main folder `main`, after checking trainval against train + val."""
    main = Path(main)
    rows = {}
    for split in SPLITS:
        for image_id, flags in read_flags(main, split, read_ids(main / f"{split}.txt")).items():
            if image_id in rows:
                raise SystemExit(f"{main}: image {image_id} is in two splits")
            rows[image_id] = (split, flags)
    trainval = read_flags(main, "trainval", read_ids(main / "trainval.txt"))
    if trainval != {i: f for i, (s, f) in rows.items() if s != "test"}:
        raise SystemExit(f"{main}: trainval's files disagree with train's and val's")
    header = [
        "# PASCAL VOC 2007 image labels, written by tools/compute_voc_labels.py from the devkit's ImageSets/Main.",
        "# id split flags: one flag per class in the order below; 1 present, 0 difficult only, - absent.",
        "# classes: " + " ".join(CLASSES),
    ]
    return "\n".join(header + [f"{i} {s} {f}" for i, (s, f) in sorted(rows.items())]) + "\n"


def main(argv=None) -> int:
    """Compute the table and write it gzip-compressed (reproducibly: no timestamp in the gzip header)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("main", help="a VOC2007/ImageSets/Main folder")
    parser.add_argument("out", nargs="?", default="mp3kit/resources/voc2007_labels.txt.gz")
    args = parser.parse_args(argv)
    text = label_table(args.main)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0))
    print(f"wrote {args.out} ({text.count(chr(10)) - 3} images, {Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
