"""Tests for the embedded synthetic VOC 2007 tree (mp3kit.synth)."""

import hashlib
import itertools
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from mp3kit import synth
from mp3kit.util import UserError

SPLITS = ("train", "val", "trainval", "test")
CLASSES = synth.voc_stats()["classes"]
N_IMAGES = synth.DEFAULT_IMAGES


@pytest.fixture(scope="module")
def devkit():
    """Return the embedded tree every test session builds once (in its own cache); the tests here only read it."""
    return synth.ensure_synthetic()


@pytest.fixture(scope="module")
def learning_devkit(tmp_path_factory):
    """Build the 600-image tree the learning test was tuned on: 300 images to train on, 300 to test."""
    return synth.make_synthetic_voc(tmp_path_factory.mktemp("synth"), n_images=600, seed=0)


def read_split(voc: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Return the ids of a split and their (N, 20) flags from the per-class files, checking the line format."""
    ids = (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    row = {image_id: i for i, image_id in enumerate(ids)}
    flags = np.zeros((len(ids), len(CLASSES)), dtype=int)
    for c, name in enumerate(CLASSES):
        lines = (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").read_text().splitlines()
        assert len(lines) == len(ids)
        for line in lines:
            assert re.fullmatch(r"\d{6} (-1| 1| 0)", line), line
            flags[row[line[:6]], c] = int(line[7:])
    return ids, flags


def read_annotation(path: Path) -> dict:
    """Return size and objects of one XML annotation."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        objects.append({
            "name": obj.findtext("name"),
            "difficult": int(obj.findtext("difficult")),
            "truncated": int(obj.findtext("truncated")),
            "pose": obj.findtext("pose"),
            "bbox": [int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
        })
    return {"filename": root.findtext("filename"), "folder": root.findtext("folder"),
            "size": (int(size.findtext("width")), int(size.findtext("height")), int(size.findtext("depth"))),
            "objects": objects}


def tree_digest(devkit: Path) -> str:
    """Return a hash over every file's relative path and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in devkit.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(devkit)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_is_complete(devkit):
    voc = devkit / "VOC2007"
    main = voc / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == sorted(
        [f"{s}.txt" for s in SPLITS] + [f"{c}_{s}.txt" for c in CLASSES for s in SPLITS])
    ids = {s: read_split(voc, s)[0] for s in SPLITS}
    assert len(ids["test"]) == N_IMAGES // 2 and len(ids["train"]) == len(ids["val"]) == N_IMAGES // 4
    assert sorted(ids["train"] + ids["val"]) == ids["trainval"]
    assert not set(ids["trainval"]) & set(ids["test"])
    everything = sorted(ids["trainval"] + ids["test"])
    assert everything == [f"{i:06d}" for i in range(1, N_IMAGES + 1)]
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == everything
    assert sorted(p.stem for p in (voc / "Annotations").glob("*.xml")) == everything
    marker = synth.read_marker(devkit)
    assert marker == {"version": synth.SYNTH_VERSION, "seed": 0, "n_images": N_IMAGES, "note": synth.NOTE}
    assert not [p for p in devkit.parent.iterdir() if p.name.startswith(".")]  # no leftover build folder


def test_class_files_agree_with_annotations(devkit):
    voc = devkit / "VOC2007"
    annotations = {p.stem: read_annotation(p) for p in (voc / "Annotations").glob("*.xml")}
    for image_id, ann in itertools.islice(sorted(annotations.items()), 60):
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", ann["size"][:2])
    for split in SPLITS:
        ids, flags = read_split(voc, split)
        for image_id, row in zip(ids, flags):
            ann = annotations[image_id]
            assert ann["filename"] == f"{image_id}.jpg" and ann["folder"] == "VOC2007"
            w, h, depth = ann["size"]
            assert depth == 3 and 1 <= len(ann["objects"]) <= synth.MAX_OBJECTS
            expected = np.full(len(CLASSES), -1)
            for obj in ann["objects"]:
                xmin, ymin, xmax, ymax = obj["bbox"]
                assert 1 <= xmin <= xmax <= w and 1 <= ymin <= ymax <= h
                assert obj["pose"] == "Unspecified" and obj["truncated"] in (0, 1)
                c = CLASSES.index(obj["name"])
                expected[c] = max(expected[c], 0 if obj["difficult"] else 1)
            assert (row == expected).all(), image_id


def test_image_sizes_are_voc_like(devkit):
    sizes = [read_annotation(p)["size"][:2] for p in (devkit / "VOC2007" / "Annotations").glob("*.xml")]
    longs = np.array([max(s) for s in sizes])
    shorts = np.array([min(s) for s in sizes])
    landscape = np.mean([w > h for w, h in sizes])
    assert ((400 <= longs) & (longs <= 500)).all() and ((280 <= shorts) & (shorts < 400)).all()
    assert np.mean(longs == 500) > 0.8 and np.mean([s == (500, 375) for s in sizes]) > 0.2
    assert 0.55 < landscape < 0.85  # both orientations, landscape more often, as in VOC


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = synth.make_synthetic_voc(tmp_path / "a", n_images=40, seed=3)
    b = synth.make_synthetic_voc(tmp_path / "b", n_images=40, seed=3)
    c = synth.make_synthetic_voc(tmp_path / "c", n_images=40, seed=4)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    assert (a / "VOC2007/JPEGImages/000001.jpg").read_bytes() != (c / "VOC2007/JPEGImages/000001.jpg").read_bytes()


def test_labels_follow_voc_statistics(devkit):
    voc = devkit / "VOC2007"
    _, flags = read_split(voc, "trainval")
    _, test_flags = read_split(voc, "test")
    present = np.concatenate([flags, test_flags]) != -1  # (N, 20)
    real = np.array(synth.voc_stats()["trainval"]["cooccurrence"])
    counts = present.sum(axis=0)
    assert CLASSES[counts.argmax()] == "person"
    assert np.corrcoef(counts, real.diagonal())[0, 1] > 0.9
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 - Spearman = Pearson on ranks
    assert np.corrcoef(ranks(counts), ranks(real.diagonal()))[0, 1] > 0.8
    co = present.T.astype(int) @ present.astype(int)
    pairs = np.triu_indices(len(CLASSES), 1)
    assert np.corrcoef(co[pairs], real[pairs])[0, 1] > 0.8
    single = np.mean(present.sum(axis=1) == 1)
    assert abs(single - 2808 / 5011) < 0.08  # VOC 2007 trainval: 56% of images hold one class
    difficult_only = np.mean((np.concatenate([flags, test_flags]) == 0)[present])
    assert 0.02 < difficult_only < 0.15


def test_classes_have_distinct_looks():
    assert set(synth.LOOKS) == set(CLASSES)
    for a, b in itertools.combinations(CLASSES, 2):
        shared = sum(x == y for x, y in zip(synth.LOOKS[a], synth.LOOKS[b]))
        assert shared <= 1, (a, b)


def load_images(voc: Path, ids: list[str], size: int) -> torch.Tensor:
    """Return images resized (shorter side) and centre-cropped to size, as a (N, 3, size, size) float tensor."""
    out = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    for i, image_id in enumerate(ids):
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as image:
            image.draft("RGB", (size * 2, size * 2))  # decode at reduced scale: same result after resizing, faster
            w, h = image.size
            scale = size / min(w, h)
            image = image.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                                Image.BILINEAR)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            out[i] = np.asarray(image.crop((left, top, left + size, top + size)))
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255  # (N, 3, S, S)
    return (x - 0.5) / 0.25


@pytest.mark.slow
def test_tiny_cnn_learns_well_above_chance(learning_devkit):
    torch.manual_seed(0)
    voc = learning_devkit / "VOC2007"
    train_ids, train_flags = read_split(voc, "trainval")
    test_ids, test_flags = read_split(voc, "test")
    x_train, x_test = load_images(voc, train_ids, 64), load_images(voc, test_ids, 64)
    y_train = torch.from_numpy((train_flags != -1).astype(np.float32))  # (N, 20)
    layers, channels = [], [3, 16, 32, 64]
    for a, b in zip(channels, channels[1:]):
        layers += [torch.nn.Conv2d(a, b, 3, stride=2, padding=1), torch.nn.BatchNorm2d(b), torch.nn.ReLU()]
    features = torch.nn.Sequential(*layers)
    head = torch.nn.Linear(channels[-1], len(CLASSES))
    model = torch.nn.Sequential(features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for batch in torch.randperm(len(x_train)).split(32):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model(x_test).numpy()  # (N, 20)
    aps, prevalences = [], []
    for c in range(len(CLASSES)):
        keep = test_flags[:, c] != 0  # difficult-only images count neither way (VOC convention)
        positive = test_flags[keep, c] == 1
        if positive.any():
            aps.append(average_precision_score(positive, scores[keep, c]))
            prevalences.append(positive.mean())
    mean_ap, chance = float(np.mean(aps)), float(np.mean(prevalences))
    assert mean_ap > chance + 0.12 and mean_ap > 2.5 * chance, (mean_ap, chance)
    assert mean_ap < 0.95, mean_ap  # learnable, not trivial


def test_ensure_synthetic_builds_once_and_rebuilds_an_interrupted_tree(tmp_path, monkeypatch):
    devkit = synth.ensure_synthetic(tmp_path, n_images=8, seed=1)
    assert devkit == tmp_path / "VOCdevkit" and synth.read_marker(devkit)["n_images"] == 8
    calls = []
    build = synth.make_synthetic_voc
    monkeypatch.setattr(synth, "make_synthetic_voc", lambda *a, **k: calls.append(k) or build(*a, **k))
    assert synth.ensure_synthetic(tmp_path, n_images=8, seed=1) == devkit
    assert calls == []
    (devkit / "VOC2007" / synth.MARKER).unlink()  # what an interrupted build looks like
    synth.ensure_synthetic(tmp_path, n_images=8, seed=1)
    assert len(calls) == 1 and synth.read_marker(devkit)["seed"] == 1
    synth.ensure_synthetic(tmp_path, n_images=8, seed=2)
    assert len(calls) == 2 and synth.read_marker(devkit)["seed"] == 2
    assert len(list((devkit / "VOC2007" / "JPEGImages").iterdir())) == 8


def test_ensure_synthetic_defaults_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MP3KIT_CACHE", str(tmp_path))
    assert synth.ensure_synthetic(n_images=4) == tmp_path / "synthetic-voc" / "VOCdevkit"


def test_the_tree_gets_the_mode_the_umask_gives_so_a_shared_cache_folder_serves_everyone(tmp_path):
    old = os.umask(0o002)  # an instructor's cache folder shared with a group
    try:
        devkit = synth.ensure_synthetic(tmp_path, n_images=4)
    finally:
        os.umask(old)
    folders = [devkit, *(p for p in devkit.rglob("*") if p.is_dir())]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {oct(0o775)}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in devkit.rglob("*") if p.is_file()} == {oct(0o664)}


def test_failed_build_leaves_the_previous_tree_untouched(tmp_path, monkeypatch):
    devkit = synth.make_synthetic_voc(tmp_path, n_images=6, seed=0)
    before = tree_digest(devkit)

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_image_sets", fail)
    with pytest.raises(RuntimeError):
        synth.make_synthetic_voc(tmp_path, n_images=10, seed=5)
    assert tree_digest(devkit) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit"]
    with pytest.raises(RuntimeError):
        synth.make_synthetic_voc(tmp_path / "fresh", n_images=10, seed=5)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_refuses_to_replace_a_tree_it_did_not_write(tmp_path):
    annotations = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations"
    annotations.mkdir(parents=True)
    (annotations / "000005.xml").write_text("<annotation><source><database>The VOC2007 Database</database>"
                                            "</source></annotation>")
    with pytest.raises(UserError, match="did not write"):
        synth.make_synthetic_voc(tmp_path, n_images=4)
    assert (annotations / "000005.xml").exists()


@pytest.mark.parametrize("kwargs", [{"n_images": 3}, {"n_images": 1_000_000}, {"seed": -1}])
def test_bad_arguments_are_user_errors(tmp_path, kwargs):
    with pytest.raises(UserError):
        synth.make_synthetic_voc(tmp_path, **kwargs)
    assert not (tmp_path / "VOCdevkit").exists()


def test_data_layer_reads_the_tree(devkit):
    data = pytest.importorskip("mp3kit.data")
    split = data.load_split(devkit, "test")
    ids, flags = read_split(devkit / "VOC2007", "test")
    assert split.synthetic and list(split.ids) == ids
    assert (np.asarray(split.targets) == (flags == 1)).all()
    assert (np.asarray(split.difficult) == (flags == 0)).all()


@pytest.mark.slow
def test_images_rendered_on_every_core_are_the_ones_rendered_in_order(tmp_path, monkeypatch):
    n = 200  # the smallest tree built in parallel
    monkeypatch.setattr(synth.os, "cpu_count", lambda: 2)
    parallel = synth.make_synthetic_voc(tmp_path / "parallel", n_images=n, seed=5)
    monkeypatch.setattr(synth.os, "cpu_count", lambda: 1)
    serial = synth.make_synthetic_voc(tmp_path / "serial", n_images=n, seed=5)
    assert tree_digest(parallel) == tree_digest(serial)


def test_without_worker_processes_the_tree_is_rendered_in_this_process(tmp_path, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError(38, "Function not implemented")  # what a sandbox that forbids new processes raises

    monkeypatch.setattr(synth.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(synth.subprocess, "Popen", no_processes)
    built = synth.make_synthetic_voc(tmp_path / "a", n_images=200, seed=5)
    assert len(list((built / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 200


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the tree is rendered in worker processes only with 2+ cores")
def test_a_script_without_a_main_guard_builds_the_tree_once(tmp_path):
    # The README's Python example, saved as a script: rendering workers must not run the user's script again.
    log, root = tmp_path / "ran.txt", tmp_path / "voc"
    script = tmp_path / "my_script.py"
    script.write_text(
        "import sys\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write('ran\\n')\n"
        "from mp3kit import synth\n"
        "synth.make_synthetic_voc(sys.argv[2], n_images=200, seed=5)\n"
    )
    done = subprocess.run([sys.executable, str(script), str(log), str(root)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert log.read_text() == "ran\n"
    assert len(list((root / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 200
