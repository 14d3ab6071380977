"""The VOC 2007 data layer: real label files, small built trees, and every kind of bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mp3kit.data import SPLITS, VOC_CLASSES, VOCDataset, VOCObject, check_tree, find_voc_dir, format_check, load_split, open_image
from mp3kit.util import UserError

IMAGESETS_ARCHIVE = Path(__file__).parent / "data" / "voc2007_imagesets.tar.xz"
SPLIT_SIZES = {"train": 2501, "val": 2510, "trainval": 5011, "test": 4952}
# Official per-class image counts (flag 1): trainval, test.
POSITIVES = {"aeroplane": (238, 204), "car": (713, 721), "person": (2008, 2007), "sheep": (96, 97)}
DIFFICULT_ONLY_TRAINVAL = {"aeroplane": 2, "car": 48, "person": 87, "sheep": 1}

# A small tree: image id -> objects (class, difficult). 000003 has a car seen only as difficult,
# 000002 a person seen both ways (so present, not difficult).
SMALL_IMAGES = {
    "000001": [("aeroplane", False), ("person", False)],
    "000002": [("person", True), ("person", False), ("dog", False)],
    "000003": [("car", True), ("cat", False)],
    "000004": [("sheep", False)],
    "000005": [("tvmonitor", False), ("chair", True), ("chair", True)],
    "000006": [("bus", False), ("car", False)],
}
SMALL_SPLITS = {"train": ["000001", "000002", "000003"], "val": ["000004", "000005", "000006"],
                "trainval": list(SMALL_IMAGES), "test": ["000002", "000005"]}


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **options)


@pytest.fixture(scope="module")
def real_devkit(tmp_path_factory) -> Path:
    """A labels-only VOCdevkit holding the real ImageSets/Main of VOC 2007 (no images, no XML)."""
    devkit = tmp_path_factory.mktemp("real") / "VOCdevkit"
    _extract(IMAGESETS_ARCHIVE, devkit / "VOC2007")
    return devkit


def write_image(path: Path, mode: str = "RGB", size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (200, 30, 60), "L": 128, "CMYK": (0, 128, 255, 0)}[mode]
    Image.new(mode, size, colour).save(path, "JPEG")


def write_xml(path: Path, objects) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{k % 2}</truncated>"
        f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{1 + k}</xmin><ymin>2</ymin>"
        f"<xmax>{20 + k}</xmax><ymax>25</ymax></bndbox></object>"
        for k, (name, difficult) in enumerate(objects))
    path.write_text(f"<annotation><folder>VOC2007</folder><filename>{path.stem}.jpg</filename>"
                    f"<size><width>40</width><height>30</height><depth>3</depth></size>{body}</annotation>")


def flag(objects, cls: str) -> int:
    flags = [difficult for name, difficult in objects if name == cls]
    return -1 if not flags else 0 if all(flags) else 1


def make_tree(root: Path, per_class: bool = True, images: bool = True, xml: bool = True,
              splits=SMALL_SPLITS) -> Path:
    """Write a small VOCdevkit/VOC2007 tree under root and return the VOC2007 folder."""
    voc = root / "VOCdevkit" / "VOC2007"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for image_id, objects in SMALL_IMAGES.items():
        if images:
            write_image(voc / "JPEGImages" / f"{image_id}.jpg")
        if xml:
            write_xml(voc / "Annotations" / f"{image_id}.xml", objects)
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        if per_class:
            for cls in VOC_CLASSES:
                (main / f"{cls}_{split}.txt").write_text(
                    "".join(f"{i} {flag(SMALL_IMAGES[i], cls):>2}\n" for i in ids))
    return voc


@pytest.fixture
def small_voc(tmp_path) -> Path:
    return make_tree(tmp_path)


def expected_labels(ids):
    targets = np.array([[flag(SMALL_IMAGES[i], c) == 1 for c in VOC_CLASSES] for i in ids], dtype=np.uint8)
    difficult = np.array([[flag(SMALL_IMAGES[i], c) == 0 for c in VOC_CLASSES] for i in ids])
    return targets, difficult


# --- the real VOC 2007 label files -----------------------------------------------------------

def test_voc_classes_are_the_twenty_in_standard_order():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert VOC_CLASSES.index("person") == 14 and SPLITS == ("train", "val", "trainval", "test")


@pytest.mark.parametrize("split", SPLITS)
def test_real_split_sizes_match_official(real_devkit, split):
    data = load_split(real_devkit, split)
    assert len(data) == len(data.ids) == SPLIT_SIZES[split]
    assert data.targets.shape == data.difficult.shape == (SPLIT_SIZES[split], 20)
    assert data.targets.dtype == np.uint8 and data.difficult.dtype == bool
    assert not (data.targets.astype(bool) & data.difficult).any()
    assert all(len(i) == 6 and i.isdigit() for i in data.ids) and not data.synthetic


def test_real_positive_and_difficult_counts_match_official(real_devkit):
    trainval, test = load_split(real_devkit, "trainval"), load_split(real_devkit, "test")
    for cls, (n_trainval, n_test) in POSITIVES.items():
        c = VOC_CLASSES.index(cls)
        assert trainval.targets[:, c].sum() == n_trainval, cls
        assert test.targets[:, c].sum() == n_test, cls
        assert trainval.difficult[:, c].sum() == DIFFICULT_ONLY_TRAINVAL[cls], cls


def test_real_train_and_val_partition_trainval(real_devkit):
    train, val, trainval = (load_split(real_devkit, s) for s in ("train", "val", "trainval"))
    assert sorted(train.ids + val.ids) == sorted(trainval.ids)
    row = {image_id: r for r, image_id in enumerate(trainval.ids)}
    for part in (train, val):
        rows = [row[i] for i in part.ids]
        np.testing.assert_array_equal(part.targets, trainval.targets[rows])
        np.testing.assert_array_equal(part.difficult, trainval.difficult[rows])


def test_real_files_parse_the_same_with_lf_and_single_spaces(real_devkit, tmp_path):
    shutil.copytree(real_devkit, tmp_path / "VOCdevkit")
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    assert b"\r\n" in (main / "car_val.txt").read_bytes()  # the archive keeps the devkit's CRLF
    for path in main.glob("*_val.txt"):
        path.write_text("\n".join(" ".join(line.split()) for line in path.read_text().splitlines()) + "\n")
    crlf, lf = load_split(real_devkit, "val"), load_split(tmp_path, "val")
    assert crlf.ids == lf.ids
    np.testing.assert_array_equal(crlf.targets, lf.targets)
    np.testing.assert_array_equal(crlf.difficult, lf.difficult)


def test_real_labels_parse_fast(real_devkit):
    for split in ("trainval", "test"):
        start = time.perf_counter()
        load_split(real_devkit, split)
        assert time.perf_counter() - start < 0.5, split


@pytest.mark.parametrize("where", ["devkit", "voc2007", "parent"])
def test_root_may_be_devkit_voc2007_or_parent(real_devkit, where):
    root = {"devkit": real_devkit, "voc2007": real_devkit / "VOC2007", "parent": real_devkit.parent}[where]
    data = load_split(root, "test")
    assert data.voc_dir.resolve() == (real_devkit / "VOC2007").resolve()
    assert len(data) == 4952


@pytest.mark.parametrize("trainval_home", ["VOCtrainval/VOCdevkit/VOC2007", "VOCdevkit/VOC2007"])
def test_course_kit_separate_trainval_and_test_trees(real_devkit, tmp_path, trainval_home):
    source = real_devkit / "VOC2007" / "ImageSets" / "Main"
    for home, split in ((trainval_home, "trainval"), ("VOCtest/VOCdevkit/VOC2007", "test")):
        main = tmp_path / home / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for path in source.glob(f"*{split}.txt"):
            shutil.copy(path, main / path.name)
    assert load_split(tmp_path, "trainval").voc_dir == tmp_path / trainval_home
    test = load_split(tmp_path, "test")
    assert test.voc_dir == tmp_path / "VOCtest/VOCdevkit/VOC2007" and len(test) == 4952
    assert find_voc_dir(tmp_path, "test") == test.voc_dir


def test_check_tree_reports_labels_only_tree(real_devkit):
    report = check_tree(real_devkit)
    assert not report["ok"] and not report["synthetic"]
    for split, size in SPLIT_SIZES.items():
        entry = report["splits"][split]
        assert entry["found"] and entry["images"] == size and len(entry["missing_images"]) == size
    assert report["splits"]["trainval"]["positives"]["car"] == 713
    assert report["splits"]["test"]["difficult_only"]["person"] == 90
    assert any("JPEGImages does not exist" in problem for problem in report["problems"])
    text = format_check(report)
    assert "sheep" in text and "2008" in text and "4952" in text and "mp3kit data fetch" in text


# --- a small complete tree (JPEGs + XML) ------------------------------------------------------

def test_small_tree_labels_from_class_files(small_voc):
    data = load_split(small_voc.parent, "trainval")
    targets, difficult = expected_labels(data.ids)
    np.testing.assert_array_equal(data.targets, targets)
    np.testing.assert_array_equal(data.difficult, difficult)


def test_labels_from_xml_when_no_class_files(tmp_path):
    voc = make_tree(tmp_path, per_class=False)
    data = load_split(voc, "trainval")
    car, chair, person = (VOC_CLASSES.index(c) for c in ("car", "chair", "person"))
    row = {i: r for r, i in enumerate(data.ids)}
    assert data.targets[row["000003"], car] == 0 and data.difficult[row["000003"], car]
    assert data.targets[row["000005"], chair] == 0 and data.difficult[row["000005"], chair]
    assert data.targets[row["000002"], person] == 1 and not data.difficult[row["000002"], person]
    targets, difficult = expected_labels(data.ids)
    np.testing.assert_array_equal(data.targets, targets)
    np.testing.assert_array_equal(data.difficult, difficult)


def test_annotation_gives_objects_with_boxes(small_voc):
    data = load_split(small_voc, "train")
    objects = data.annotation(data.ids.index("000002"))
    assert [o.name for o in objects] == ["person", "person", "dog"]
    assert objects[0] == VOCObject("person", (1, 2, 20, 25), difficult=True, truncated=False)
    assert objects[1].truncated and not objects[1].difficult
    assert data.annotation_path(0).name == "000001.xml" and data.image_path(0).name == "000001.jpg"


def test_synthetic_flag_follows_marker(small_voc):
    assert not load_split(small_voc, "val").synthetic
    (small_voc / "MP3KIT_SYNTHETIC.json").write_text('{"version": 1}')
    assert load_split(small_voc, "val").synthetic
    assert "synthetic" in repr(load_split(small_voc, "val"))


def test_identity_is_stable_and_tells_splits_apart(small_voc):
    train = load_split(small_voc, "train")
    assert train.identity() == load_split(small_voc.parent, "train").identity()
    assert train.identity() != load_split(small_voc, "val").identity()
    assert train.identity() != train.subset([0, 1]).identity()
    assert len(train.identity()) == 16


def test_subset_keeps_rows_in_order(small_voc):
    data = load_split(small_voc, "trainval")
    part = data.subset([4, 1])
    assert part.ids == [data.ids[4], data.ids[1]] and len(part) == 2
    np.testing.assert_array_equal(part.targets, data.targets[[4, 1]])
    assert part.annotation(1) == data.annotation(1)


def test_dataset_returns_rgb_image_and_float_target(small_voc):
    data = load_split(small_voc, "train")
    image, target = VOCDataset(data)[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (40, 30)
    assert target.dtype == torch.float32 and target.shape == (20,)
    assert target.tolist() == data.targets[1].astype(float).tolist()


def test_dataset_batches_with_default_collate_and_keeps_boxes_apart(small_voc):
    def to_tensor(image):
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W)

    dataset = VOCDataset(load_split(small_voc, "trainval"), transform=to_tensor)
    images, targets = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 30, 40) and targets.shape == (4, 20)
    assert dataset.annotation(0)[0].name == "aeroplane"


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_open_as_rgb(tmp_path, mode):
    path = tmp_path / f"{mode}.jpg"
    write_image(path, mode)
    assert Image.open(path).mode == mode
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_check_tree_on_complete_tree(small_voc):
    report = check_tree(small_voc.parent.parent, decode=True)
    assert report["ok"] and report["problems"] == []
    assert [report["splits"][s]["images"] for s in SPLITS] == [3, 3, 6, 2]
    assert report["splits"]["trainval"]["positives"]["person"] == 2
    assert report["splits"]["trainval"]["difficult_only"]["car"] == 1  # 000003; 000006 has a plain car
    assert "Everything is in place" in format_check(report)


def test_check_tree_reports_missing_test_split(tmp_path):
    make_tree(tmp_path, splits={k: v for k, v in SMALL_SPLITS.items() if k != "test"})
    report = check_tree(tmp_path)
    assert not report["splits"]["test"]["found"] and "test.txt" in report["splits"]["test"]["error"]
    assert "missing or unreadable" in format_check(report)


# --- bad input: each one a clear UserError naming the file or value and the fix ------------------

def test_missing_root_says_fetch_or_synth(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist") as info:
        load_split(missing, "train")
    message = str(info.value)
    assert str(missing) in message and "mp3kit data fetch" in message and "mp3kit data synth" in message
    with pytest.raises(UserError, match="mp3kit data fetch"):
        check_tree(missing)


def test_root_without_voc_tree_says_fetch_or_synth(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(UserError, match="No VOC2007 folder") as info:
        load_split(tmp_path, "train")
    assert "mp3kit data fetch" in str(info.value) and "mp3kit data synth" in str(info.value)


def test_missing_split_file_names_it_and_the_tar(small_voc):
    (small_voc / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(UserError, match=r"test\.txt is missing.*VOCtest_06-Nov-2007\.tar"):
        load_split(small_voc, "test")


def test_unknown_split_name_lists_valid_ones(small_voc):
    with pytest.raises(UserError, match="minival.txt is missing: use one of train, val, trainval, test"):
        load_split(small_voc, "minival")
    with pytest.raises(UserError, match="not valid"):
        load_split(small_voc, "../train")


def test_missing_jpeg_names_file_when_item_is_read_and_in_check(small_voc):
    (small_voc / "JPEGImages" / "000002.jpg").unlink()
    dataset = VOCDataset(load_split(small_voc, "train"))
    dataset[0]
    with pytest.raises(UserError, match=r"000002\.jpg is missing.*mp3kit data fetch"):
        dataset[1]
    report = check_tree(small_voc)
    assert report["splits"]["train"]["missing_images"] == ["000002"]
    assert report["splits"]["val"]["missing_images"] == []
    assert "000002.jpg" in format_check(report)


def test_corrupt_jpeg_names_file(small_voc):
    path = small_voc / "JPEGImages" / "000001.jpg"
    path.write_bytes(b"this is not a JPEG at all")
    with pytest.raises(UserError, match=r"000001\.jpg is corrupt or truncated"):
        VOCDataset(load_split(small_voc, "train"))[0]
    report = check_tree(small_voc, decode=True)
    assert report["splits"]["train"]["corrupt_images"] == ["000001"] and not report["ok"]


def test_an_image_too_large_to_decode_safely_names_the_file(tmp_path, monkeypatch, capsys):
    from mp3kit import cli

    voc = make_tree(tmp_path)
    # PIL refuses images of more than twice MAX_IMAGE_PIXELS (a decompression bomb, or a 30000 px scan); lowering the
    # limit makes this tree's 40 x 30 px images that size.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    path = voc / "JPEGImages" / "000001.jpg"
    with pytest.raises(UserError, match=rf"Image {re.escape(str(path))} is too large to decode safely \(.*\): replace "):
        open_image(path)
    status = cli.main(["train", "--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--epochs", "1",
                       "--image-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("mp3kit: Image ") and "is too large to decode safely" in err
    assert err.count("\n") == 1 and not list((tmp_path / "runs").rglob("*.json"))  # no run recorded


def test_truncated_jpeg_names_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.effect_noise((64, 48), 60).convert("RGB").save(path, "JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.jpg is corrupt or truncated"):
        open_image(path)


def test_malformed_xml_names_file(tmp_path):
    voc = make_tree(tmp_path, per_class=False)
    (voc / "Annotations" / "000004.xml").write_text("<annotation><object><name>sheep</name></annotation")
    with pytest.raises(UserError, match=r"000004\.xml is not valid XML"):
        load_split(voc, "val")


def test_malformed_xml_names_file_when_boxes_are_read(small_voc):
    (small_voc / "Annotations" / "000004.xml").write_text("<annotation>")
    data = load_split(small_voc, "val")  # labels come from the per-class files
    with pytest.raises(UserError, match=r"000004\.xml is not valid XML"):
        data.annotation(0)


def test_unknown_class_in_annotation_names_file_and_class(tmp_path):
    voc = make_tree(tmp_path, per_class=False)
    write_xml(voc / "Annotations" / "000005.xml", [("tvmonitor", False), ("unicorn", False)])
    with pytest.raises(UserError, match=r"000005\.xml names an unknown class 'unicorn'.*aeroplane"):
        load_split(voc, "val")


def test_missing_annotation_names_file(tmp_path):
    voc = make_tree(tmp_path, per_class=False)
    (voc / "Annotations" / "000006.xml").unlink()
    with pytest.raises(UserError, match=r"000006\.xml is missing"):
        load_split(voc, "val")


def test_empty_split_names_file(small_voc):
    (small_voc / "ImageSets" / "Main" / "val.txt").write_text("\r\n\n")
    with pytest.raises(UserError, match=r"val\.txt lists no image ids"):
        load_split(small_voc, "val")


def test_bad_flag_in_class_file_names_file_and_value(small_voc):
    path = small_voc / "ImageSets" / "Main" / "dog_train.txt"
    path.write_text(path.read_text().replace("000002  1", "000002  2"))
    with pytest.raises(UserError, match=r"dog_train\.txt has the flag 2"):
        load_split(small_voc, "train")


def test_class_file_missing_an_id_names_file_and_id(small_voc):
    path = small_voc / "ImageSets" / "Main" / "cat_train.txt"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith("000003")))
    with pytest.raises(UserError, match=r"cat_train\.txt has no line for image 000003"):
        load_split(small_voc, "train")


def test_class_files_in_another_order_are_fine(small_voc):
    path = small_voc / "ImageSets" / "Main" / "person_trainval.txt"
    path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
    data = load_split(small_voc, "trainval")
    np.testing.assert_array_equal(data.targets, expected_labels(data.ids)[0])


def test_no_class_files_and_no_annotations_names_what_is_missing(tmp_path):
    voc = make_tree(tmp_path, per_class=False, xml=False)
    with pytest.raises(UserError, match=r"aeroplane_train\.txt is missing.*Annotations"):
        load_split(voc, "train")


def _as_notepad_saves(path: Path) -> None:
    """Rewrite a text file the way Windows Notepad saves it as UTF-8: a byte-order mark, then CRLF lines."""
    path.write_bytes("\ufeff".encode() + "\r\n".join(path.read_text().splitlines()).encode() + b"\r\n")


def test_split_and_label_files_saved_by_notepad_read_as_before(small_voc, tmp_path):
    plain = load_split(small_voc, "train")
    main = small_voc / "ImageSets" / "Main"
    for name in ("train.txt", "aeroplane_train.txt", "person_train.txt"):
        _as_notepad_saves(main / name)
    edited = load_split(small_voc, "train")
    assert edited.ids == plain.ids == SMALL_SPLITS["train"]
    np.testing.assert_array_equal(edited.targets, plain.targets)
    np.testing.assert_array_equal(edited.difficult, plain.difficult)
    assert check_tree(small_voc)["ok"]


def _list_twice(split_file: Path, image_id: str) -> bytes:
    split_file.write_text(split_file.read_text() + f"{image_id}\n")
    return split_file.read_bytes()


def test_a_split_listing_an_image_twice_is_refused_in_training_naming_the_file_and_the_id(small_voc, tmp_path, capsys):
    from mp3kit import cli

    split_file = small_voc / "ImageSets" / "Main" / "test.txt"
    before = _list_twice(split_file, "000002")
    with pytest.raises(UserError) as caught:
        load_split(small_voc, "test")
    assert str(caught.value) == (f"Split file {split_file} lists image 000002 more than once: delete the repeated "
                                 f"lines, so that each image appears once.")
    status = cli.main(["train", "--data-root", str(small_voc), "--runs-dir", str(tmp_path / "runs"), "--name", "twice",
                       "--epochs", "1", "--image-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err == f"mp3kit: {caught.value}\n"
    assert split_file.read_bytes() == before and not (tmp_path / "runs").exists()


def test_data_check_refuses_a_split_listing_an_image_twice_on_the_synthetic_set_too(tmp_path):
    from mp3kit import synth

    devkit = synth.ensure_synthetic(tmp_path, n_images=8)
    split_file = devkit / "VOC2007" / "ImageSets" / "Main" / "val.txt"
    image_id = split_file.read_text().split()[0]
    before = _list_twice(split_file, image_id)
    out = subprocess.run([sys.executable, "-m", "mp3kit", "data", "check", "--root", str(tmp_path), "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"val: Split file {split_file} lists image {image_id} more than once" in out.stdout
    assert split_file.read_bytes() == before
