"""Tests of the decode-once cache, the batch loaders and the on-device augmentation presets."""

from __future__ import annotations

import json
import os
import stat
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from mp3kit import data, pipeline
from mp3kit.util import UserError

# (width, height, mode) of the tiny tree's images: landscape, portrait, square, grayscale, CMYK, odd sizes.
SIZES = [(60, 45, "RGB"), (45, 60, "RGB"), (50, 50, "RGB"), (64, 40, "L"), (41, 57, "CMYK"), (70, 47, "RGB"),
         (48, 66, "RGB"), (55, 44, "RGB"), (39, 52, "L"), (62, 49, "RGB"), (44, 44, "RGB")]


def _write_voc(root, split="train", sizes=SIZES, seed=0):
    """Write a minimal VOC2007 tree (JPEGs, split file, per-class files) and return its VOC2007 folder."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    ids = [f"{i + 1:06d}" for i in range(len(sizes))]
    for image_id, (w, h, mode) in zip(ids, sizes):
        # Smooth colour ramps plus noise: content that resizing and cropping visibly change.
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], axis=-1)
        rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).convert(mode).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    labels = rng.integers(0, 2, (len(ids), len(data.VOC_CLASSES)))
    for c, name in enumerate(data.VOC_CLASSES):
        lines = [f"{i} {1 if labels[r, c] else -1:2d}\n" for r, i in enumerate(ids)]
        (main / f"{name}_{split}.txt").write_text("".join(lines))
    return voc


@pytest.fixture
def voc(tmp_path):
    _write_voc(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def split(voc):
    return data.load_split(voc, "train")


@pytest.fixture
def count_decodes(monkeypatch):
    """Count calls of data.open_image (the one decoder the cache uses)."""
    calls = []
    real = data.open_image

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data, "open_image", counting)
    return calls


def _course_transform(path, size):
    """Return the course kit's Resize + CenterCrop of one image as (size, size, 3) uint8."""
    image = Image.open(path).convert("RGB")
    image = transforms.CenterCrop(size)(transforms.Resize(size)(image))
    return np.asarray(image)


# ---------------------------------------------------------------- cache


def test_cache_is_built_once_then_reused_without_decoding(split, tmp_path, monkeypatch, count_decodes):
    images = pipeline.cache_images(split, 32, cache_dir=tmp_path / "cache", progress=False)
    assert images.shape == (len(split), 32, 32, 3) and images.dtype == np.uint8
    assert isinstance(images, np.memmap) and not images.flags.writeable
    assert len(count_decodes) == len(split)
    files = sorted(p.name for p in (tmp_path / "cache" / "images").iterdir())
    assert files == [f"{split.identity()}-32.json", f"{split.identity()}-32.u8"]  # no temporary file left

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(data, "open_image", no_decoding)
    again = pipeline.cache_images(split, 32, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again, images)


def test_cache_matches_course_resize_and_center_crop(split, tmp_path):
    for size in (32, 37):
        images = pipeline.cache_images(split, size, cache_dir=tmp_path, progress=False)
        for i in range(len(split)):
            expected = _course_transform(split.image_path(i), size)
            difference = np.abs(images[i].astype(int) - expected.astype(int))
            assert difference.max() <= 1, (i, size)


def test_cache_rebuilt_when_size_or_identity_changes(voc, split, tmp_path, count_decodes):
    cache = tmp_path / "cache"
    pipeline.cache_images(split, 32, cache_dir=cache, progress=False)
    assert len(count_decodes) == len(split)
    pipeline.cache_images(split, 40, cache_dir=cache, progress=False)  # another size: decoded again
    assert len(count_decodes) == 2 * len(split)
    pipeline.cache_images(split, 32, cache_dir=cache, progress=False)  # both sizes are kept
    assert len(count_decodes) == 2 * len(split)

    ids_file = split.voc_dir / "ImageSets" / "Main" / "train.txt"
    ids_file.write_text("".join(f"{i}\n" for i in split.ids[:5]))  # the split changed on disk
    smaller = data.load_split(voc, "train")
    assert smaller.identity() != split.identity()
    images = pipeline.cache_images(smaller, 32, cache_dir=cache, progress=False)
    assert images.shape[0] == 5 and len(count_decodes) == 2 * len(split) + 5


def test_cache_with_mismatched_sidecar_is_rebuilt(split, tmp_path, count_decodes):
    pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    sidecar = tmp_path / "images" / f"{split.identity()}-32.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "identity": "someone-else"}))
    pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    assert len(count_decodes) == 2 * len(split)
    sidecar.write_text("{not json")
    pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    assert len(count_decodes) == 3 * len(split)


def test_truncated_cache_file_is_detected_and_rebuilt(split, tmp_path, count_decodes):
    good = np.array(pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False))
    path = tmp_path / "images" / f"{split.identity()}-32.u8"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rebuilt = pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    assert len(count_decodes) == 2 * len(split)
    np.testing.assert_array_equal(rebuilt, good)
    path.unlink()
    np.testing.assert_array_equal(pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False), good)


def _rebuild_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("Rebuilding the image cache")]


def _tree_bytes(split) -> dict:
    return {p.name: p.read_bytes() for p in sorted((split.voc_dir / "JPEGImages").iterdir())}


@pytest.mark.parametrize("damage", ["bytes rewritten", "cut and padded"])
def test_a_cache_file_changed_in_place_is_rebuilt_with_one_line_saying_why(split, tmp_path, capsys, count_decodes, damage):
    good = np.array(pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False))
    images_before = _tree_bytes(split)
    path = tmp_path / "images" / f"{split.identity()}-32.u8"
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the right length, the wrong content: what a disk error or another tool leaves
        if damage == "bytes rewritten":
            f.seek(size // 3)
            f.write(bytes(255 - b for b in good.reshape(-1)[size // 3: size // 3 + 64]))
        else:
            f.seek(size // 2)
            f.write(bytes(size - size // 2))
    assert path.stat().st_size == size
    capsys.readouterr()

    rebuilt = pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(rebuilt, good)
    assert len(count_decodes) == 2 * len(split)
    assert _rebuild_lines(capsys) == [f"Rebuilding the image cache {path}: its content does not match the checksum "
                                      f"written with it (a disk error, or another program wrote there)."]
    pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)  # good again: neither decoded nor said
    assert len(count_decodes) == 2 * len(split) and not _rebuild_lines(capsys)
    assert _tree_bytes(split) == images_before


def test_an_image_replaced_after_the_cache_was_built_is_seen(split, tmp_path, capsys, count_decodes):
    before = np.array(pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False))
    replaced = split.image_path(4)
    Image.new("RGB", (50, 40), (10, 200, 30)).save(replaced, quality=95)  # the student swaps in another picture
    capsys.readouterr()

    after = pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    assert len(count_decodes) == 2 * len(split)
    np.testing.assert_array_equal(after[4], pipeline.load_resized(replaced, 32))
    assert np.abs(after[4].astype(int) - before[4].astype(int)).max() > 50
    np.testing.assert_array_equal(np.delete(after, 4, axis=0), np.delete(before, 4, axis=0))
    assert _rebuild_lines(capsys) == [f"Rebuilding the image cache {tmp_path / 'images' / f'{split.identity()}-32.u8'}: "
                                      f"an image of the split was replaced or changed (its size or modification time) "
                                      f"since the cache was built."]


def test_cache_files_get_the_mode_the_umask_gives_like_every_other_file(split, tmp_path):
    old = os.umask(0o002)  # an instructor's cache folder shared with a group
    try:
        pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    finally:
        os.umask(old)
    modes = {p.suffix: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "images").iterdir()}
    assert modes == {".u8": 0o664, ".json": 0o664}


def test_corrupt_image_names_the_file_and_leaves_no_cache(split, tmp_path):
    bad = split.image_path(3)
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated JPEG
    with pytest.raises(UserError, match=bad.name):
        pipeline.cache_images(split, 32, cache_dir=tmp_path, progress=False)
    assert not any((tmp_path / "images").iterdir())


def test_cache_size_for_presets():
    assert pipeline.cache_size_for(227, "none") == 227
    assert pipeline.cache_size_for(227, "jitter-flip-rotate") == 256
    assert pipeline.cache_size_for(227, "standard") == 256
    assert pipeline.cache_size_for(227, "flip") == 227  # a mirror needs no margin: it shares the evaluation's cache
    with pytest.raises(UserError, match="mirror"):
        pipeline.cache_size_for(227, "mirror")


# ---------------------------------------------------------------- BatchLoader


def _indexed_images(n, size=8):
    """Return images whose pixels all equal their row index, and targets that spell the index in bits."""
    images = np.repeat(np.arange(n, dtype=np.uint8), size * size * 3).reshape(n, size, size, 3)
    targets = (np.arange(n)[:, None] >> np.arange(20)) & 1  # (N, 20)
    return images, targets.astype(np.uint8)


def _rows(x, y):
    """Return the row index encoded in each (image, target) pair, checking that the two agree."""
    std = torch.tensor(pipeline.IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(pipeline.IMAGENET_MEAN).view(1, 3, 1, 1)
    pixels = ((x * std + mean) * 255).round().long()  # (B, 3, S, S)
    from_images = pixels[:, 0, 0, 0]
    assert (pixels == from_images.view(-1, 1, 1, 1)).all()
    from_targets = (y.long() << torch.arange(20)).sum(dim=1)
    assert torch.equal(from_images, from_targets)
    return from_images.tolist()


def _epoch_rows(loader):
    return [row for x, y in loader for row in _rows(x, y)]


@pytest.mark.parametrize("prefetch", [True, False])
def test_batch_loader_covers_every_index_once_per_epoch(prefetch):
    images, targets = _indexed_images(23)
    loader = pipeline.BatchLoader(images, targets, 5, shuffle=True, seed=3, device="cpu", image_size=8,
                                  prefetch=prefetch)
    assert len(loader) == 5
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 3]
    x, y = batches[0]
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (5, 20) and y.dtype == torch.float32
    rows = [row for x, y in batches for row in _rows(x, y)]
    assert sorted(rows) == list(range(23))
    assert rows != list(range(23))

    dropping = pipeline.BatchLoader(images, targets, 5, shuffle=True, seed=3, device="cpu", image_size=8,
                                    drop_last=True)
    assert len(dropping) == 4
    rows = _epoch_rows(dropping)
    assert len(rows) == 20 == len(set(rows))


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    images, targets = _indexed_images(40)

    def order(seed, epoch):
        loader = pipeline.BatchLoader(images, targets, 8, shuffle=True, seed=seed, device="cpu", image_size=8)
        loader.set_epoch(epoch)
        return _epoch_rows(loader)

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)

    loader = pipeline.BatchLoader(images, targets, 8, shuffle=True, seed=0, device="cpu", image_size=8)
    first, second = _epoch_rows(loader), _epoch_rows(loader)  # each full pass moves to the next epoch
    assert first == order(0, 0) and second == order(0, 1)
    loader.set_epoch(0)  # a resumed run replays epoch 0's order
    assert _epoch_rows(loader) == first


def test_eval_loaders_are_not_shuffled(split, tmp_path):
    for pipeline_name in ("cached", "per-item"):
        loader = pipeline.make_loader(split, batch_size=4, image_size=32, train=False, seed=5, device="cpu",
                                      pipeline=pipeline_name, cache_dir=tmp_path, progress=False)
        y = torch.cat([y for _, y in loader])
        assert torch.equal(y, torch.from_numpy(split.targets.astype(np.float32)))


def test_abandoned_iteration_stops_the_prefetch_thread():
    images, targets = _indexed_images(60)
    loader = pipeline.BatchLoader(images, targets, 4, shuffle=True, seed=0, device="cpu", image_size=8)

    def prefetching():
        return any(t.name == "mp3kit-prefetch" for t in threading.enumerate())

    for i, _ in enumerate(loader):
        assert prefetching()
        if i == 2:
            break
    assert not prefetching()
    assert loader.epoch == 0  # an unfinished pass does not count as an epoch


def test_prefetch_errors_reach_the_consumer():
    images, targets = _indexed_images(10)
    loader = pipeline.BatchLoader(images, targets, 4, shuffle=False, seed=0, device="cpu", image_size=8)

    def broken(rows):
        raise OSError("disk went away")

    loader._gather = broken
    with pytest.raises(OSError, match="disk went away"):
        list(loader)


def test_loader_rejects_images_smaller_than_the_crop():
    images, targets = _indexed_images(4, size=8)
    with pytest.raises(UserError, match="smaller than the image size"):
        pipeline.BatchLoader(images, targets, 2, shuffle=False, seed=0, device="cpu", image_size=16)


# ---------------------------------------------------------------- augmentation


def _photo_like(n=6, size=40, seed=0):
    """Return n distinct colourful (size, size, 3) uint8 images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 6, yy * 6, (xx * yy) % 256], axis=-1)
    return np.stack([np.clip(base + rng.integers(-40, 40, base.shape), 0, 255) for _ in range(n)]).astype(np.uint8)


def _one_batch(images, augment, train, seed=0, image_size=32):
    targets = np.zeros((len(images), 20), np.uint8)
    loader = pipeline.BatchLoader(images, targets, len(images), shuffle=False, seed=seed, device="cpu",
                                  augment=augment, image_size=image_size, train=train)
    (x, _), = list(loader)
    return x


@pytest.mark.parametrize("augment", pipeline.AUGMENT_PRESETS)
def test_augment_presets_shape_determinism_and_effect(augment):
    images = _photo_like()
    x = _one_batch(images, augment, train=True)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, _one_batch(images, augment, train=True))  # the same seed, the same batch
    evaluated = _one_batch(images, augment, train=False)
    assert torch.equal(evaluated, _one_batch(images, augment, train=False, seed=9))  # no randomness in eval
    # Eval is the plain center crop, normalised.
    crop = torch.from_numpy(images).permute(0, 3, 1, 2)[:, :, 4:36, 4:36].float() / 255
    expected = TF.normalize(crop, pipeline.IMAGENET_MEAN, pipeline.IMAGENET_STD)
    torch.testing.assert_close(evaluated, expected, atol=1e-5, rtol=0)
    if augment == "none":
        assert torch.equal(x, evaluated)
    else:
        other_seed = _one_batch(images, augment, train=True, seed=1)
        assert not torch.allclose(x, other_seed)
        assert not torch.allclose(x, evaluated)
        # Per-sample randomness: the images of one batch are not all transformed alike.
        same = np.repeat(images[:1], 6, axis=0)
        y = _one_batch(same, augment, train=True)
        if augment == "flip":  # two outcomes only: mirrored or not
            assert any(not torch.allclose(y[0], y[i]) for i in range(1, 6))
        else:
            assert all(not torch.allclose(y[0], y[i]) for i in range(1, 6))


@pytest.mark.parametrize("augment", ["jitter-flip-rotate", "standard", "flip"])
def test_augment_presets_flip_about_half_the_images(augment):
    # Brightness grows from left to right: a mirrored image's columns get darker instead.
    ramp = np.broadcast_to(np.linspace(0, 255, 40).astype(np.uint8)[None, :, None], (40, 40, 3))
    images = np.ascontiguousarray(np.repeat(ramp[None], 64, axis=0))
    x = _one_batch(images, augment, train=True)  # (64, 3, 32, 32)
    columns = x.mean(dim=(1, 2))  # (64, 32)
    slope = columns[:, -8:].mean(dim=1) - columns[:, :8].mean(dim=1)
    flipped = (slope < 0).float().mean().item()
    assert (slope.abs() > 0.1).all()
    assert 0.25 < flipped < 0.75
    assert (_one_batch(images, "none", train=True).mean(dim=(1, 2)).diff(dim=1) >= 0).all()


def test_the_flip_preset_mirrors_the_crop_and_changes_nothing_else():
    images = _photo_like(n=16, size=32)
    x = _one_batch(images, "flip", train=True)
    plain = _one_batch(images, "none", train=True)
    mirrored = [torch.allclose(x[i], plain[i].flip(-1), atol=1e-6) for i in range(16)]
    kept = [torch.allclose(x[i], plain[i], atol=1e-6) for i in range(16)]
    assert all(m != k for m, k in zip(mirrored, kept))  # every image is exactly one of the two
    assert 0 < sum(mirrored) < 16


def test_jitter_flip_rotate_preset_rotates_and_jitters_colour():
    images = _photo_like(n=16, size=36)  # the crop keeps 32 / 36 of the side, as 227 / 256 does
    x = _one_batch(images, "jitter-flip-rotate", train=True)
    std = torch.tensor(pipeline.IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(pipeline.IMAGENET_MEAN).view(1, 3, 1, 1)
    pixels = x * std + mean  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # Rotations beyond about 10 degrees bring the black fill into the crop's corners.
    corners = pixels[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].sum(dim=1)  # (16, 4)
    assert (corners < 0.05).any()


def test_hue_and_saturation_match_torchvision_per_image():
    x = torch.from_numpy(_photo_like(n=4)).permute(0, 3, 1, 2).float() / 255
    shifts = torch.tensor([-0.05, 0.0, 0.02, 0.3])
    factors = torch.tensor([0.95, 1.0, 1.05, 0.5])
    hue = pipeline.adjust_hue(x, shifts)
    saturation = pipeline.adjust_saturation(x, factors)
    for i in range(4):
        torch.testing.assert_close(hue[i], TF.adjust_hue(x[i], shifts[i].item()), atol=2e-3, rtol=0)
        torch.testing.assert_close(saturation[i], TF.adjust_saturation(x[i], factors[i].item()), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- per-item (course kit) loader


def test_per_item_and_cached_loaders_give_the_same_batches(split, tmp_path):
    options = dict(batch_size=4, image_size=32, seed=2, device="cpu", cache_dir=tmp_path, progress=False)
    for augment, train in (("none", True), ("standard", True), ("flip", True), ("jitter-flip-rotate", False)):
        cached = list(pipeline.make_loader(split, augment=augment, train=train, pipeline="cached", **options))
        per_item = list(pipeline.make_loader(split, augment=augment, train=train, pipeline="per-item", **options))
        assert len(cached) == len(per_item) == 3
        for (xc, yc), (xp, yp) in zip(cached, per_item):
            assert xp.shape == xc.shape == (len(yc), 3, 32, 32) and xp.dtype == torch.float32
            torch.testing.assert_close(xp, xc, atol=1e-4, rtol=0)
            assert torch.equal(yp, yc)


def test_make_loader_rejects_unknown_names(split, tmp_path):
    options = dict(batch_size=4, image_size=32, train=True, device="cpu", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="augmentation preset"):
        pipeline.make_loader(split, augment="mixup", **options)
    with pytest.raises(UserError, match="pipeline"):
        pipeline.make_loader(split, pipeline="dali", **options)
    with pytest.raises(UserError, match="Batch size"):
        pipeline.make_loader(split, **{**options, "batch_size": 0})


def test_make_loader_uses_given_targets(split, tmp_path):
    targets = np.ones((len(split), 20), np.uint8)
    for name in ("cached", "per-item"):
        loader = pipeline.make_loader(split, batch_size=6, image_size=32, train=True, device="cpu", pipeline=name,
                                      cache_dir=tmp_path, progress=False, targets=targets)
        assert all(bool((y == 1).all()) for _, y in loader)


def test_unwritable_cache_folder_is_a_user_error(split, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match="MP3KIT_CACHE"):
        pipeline.cache_images(split, 32, cache_dir=blocker, progress=False)


def test_bench_reports_both_pipelines_and_ends_with_a_json_line(tmp_path, capsys, monkeypatch):
    from mp3kit import bench

    monkeypatch.setenv("MP3KIT_CACHE", str(tmp_path / "cache"))
    result = bench.main(images=8, device="cpu", quick=True, root=tmp_path / "voc", image_size=64, batch_size=2)
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    for key in ("per_item_img_s", "cached_img_s", "pipeline_ratio", "simple_epoch_ratio", "device_name",
                "torch_version", "cpu_count"):
        assert key in figures and key in result
    assert figures["pipeline_ratio"] == pytest.approx(figures["cached_img_s"] / figures["per_item_img_s"], rel=1e-3)
    assert any(line.startswith("input pipeline") for line in lines)
    assert not (tmp_path / "cache" / "images").exists()  # the bench's image cache is temporary

