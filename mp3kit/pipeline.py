"""The fast input pipeline: decode every JPEG once into a uint8 cache, then batch, move and augment on the device.

The course kit decodes each JPEG with PIL on one worker every epoch; on a GPU that, not the model,
sets the pace. Here the first use of a split at an image size stores the resized images in one
memory-mapped file; every later epoch gathers a batch with one numpy indexing call, sends uint8
(4x fewer bytes than float32) to the device and converts, normalises and augments there. A cache belongs to its
split's ids and to every image's size and modification time, and its bytes are checked against the checksum written
with it whenever it is opened; any mismatch rebuilds it, with one line saying why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sys
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from mp3kit import data, settings
from mp3kit.config import AUGMENT_PRESETS, PIPELINES
from mp3kit.util import UserError, atomic_write_json, pick_device, usual_mode

CACHE_VERSION = 2  # 2: the sidecar holds the images' stamps and the data's checksum
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# "jitter-flip-rotate", the seed report's augmentation: ColorJitter(hue=.05, saturation=.05),
# RandomHorizontalFlip, RandomRotation(20), CenterCrop(227), applied to images resized a little larger than the crop.
COLOUR_JITTER = 0.05
MAX_ROTATION_DEGREES = 20.0
# Random resized crop: area fraction and aspect ratio ranges of the "standard" preset.
STANDARD_SCALE = (0.35, 1.0)
STANDARD_RATIO = (3 / 4, 4 / 3)
# The augmenting presets crop image_size out of an image resized to image_size * 256 / 227
# (256 for 227), the ImageNet convention of resizing to 256 before a 224 crop.
_MARGIN = 256 / 227


def _check_augment(augment: str) -> None:
    if augment not in AUGMENT_PRESETS:
        raise UserError(f"Unknown augmentation preset {augment!r}: use one of {', '.join(AUGMENT_PRESETS)}.")


def cache_size_for(image_size: int, augment: str) -> int:
    """Return the side of the cached images that the augment preset needs for image_size crops."""
    _check_augment(augment)
    # A mirror needs no margin: "flip" shares the evaluation's cache.
    return int(image_size) if augment in ("none", "flip") else round(image_size * _MARGIN)


# ---------------------------------------------------------------- decode-once cache


def _cache_paths(identity: str, size: int, cache_dir) -> tuple[Path, Path]:
    folder = Path(cache_dir if cache_dir is not None else settings.cache_dir()).expanduser() / "images"
    return folder / f"{identity}-{size}.u8", folder / f"{identity}-{size}.json"


def _image_stamps(split) -> str:
    """Return a digest of the size and modification time of every image of split (one stat per file, no read)."""
    digest = hashlib.sha1()
    for i in range(len(split)):
        try:
            st = os.stat(split.image_path(i))
            digest.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(b"missing\n")  # the rebuild names the file
    return digest.hexdigest()


def _checksum(path) -> int:
    """Return the CRC-32 of a file's bytes: it catches any changed byte and is the cheapest such check to repeat."""
    crc, block = 0, bytearray(1 << 24)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(block):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _cache_problem(path: Path, meta_path: Path, expected: dict) -> str | None:
    """Return why the cache at path cannot be used ("" when there is none yet), or None when it can."""
    try:
        meta = json.loads(meta_path.read_text())
        size_on_disk = path.stat().st_size
    except FileNotFoundError:
        return ""
    except (OSError, ValueError):
        return f"its description {meta_path.name} cannot be read"
    if not isinstance(meta, dict) or meta.get("version") != expected["version"]:
        return "another version of mp3kit wrote it"
    if any(meta.get(k) != expected[k] for k in ("identity", "size", "shape")):
        return f"its description {meta_path.name} is for other images"
    if meta.get("images") != expected["images"]:
        return "an image of the split was replaced or changed (its size or modification time) since the cache was built"
    if size_on_disk != math.prod(expected["shape"]):
        return f"the file holds {size_on_disk:,} bytes instead of {math.prod(expected['shape']):,} (cut short or padded)"
    if _checksum(path) != meta.get("crc32"):
        return "its content does not match the checksum written with it (a disk error, or another program wrote there)"
    return None


def load_resized(path, size: int) -> np.ndarray:
    """Decode an image, resize its shorter side to size (bilinear, antialiased), center crop; return (size, size, 3) uint8."""
    image = data.open_image(path)
    image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True), size)
    return np.asarray(image, dtype=np.uint8)


def _worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _reserve(folder: Path, name: str, nbytes: int) -> str:
    """Create a temporary file of nbytes in folder and return its path; a full or read-only disk is a UserError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"Cannot write the image cache in {folder} ({exc.strerror}): "
                        f"set {settings.CACHE} (or cache_dir) to a writable folder.") from exc
    try:
        # Claim the blocks now: running out of disk while writing through a memory map would kill the process.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        else:
            os.ftruncate(fd, nbytes)
    except OSError as exc:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"Cannot reserve {nbytes / 2**20:,.0f} MB for the image cache in {folder} ({exc.strerror}): "
                        f"free disk space or set {settings.CACHE} to another folder.") from exc
    os.fchmod(fd, usual_mode())  # mkstemp makes 0600 files; a shared cache folder must be readable like its sidecars
    os.close(fd)
    return tmp


def _build_cache(split, size: int, path: Path, meta_path: Path, expected: dict, progress: bool) -> None:
    """Decode every image of split into a temporary file beside path, then rename it into place."""
    tmp = _reserve(path.parent, path.name, math.prod(expected["shape"]))
    meta_path.unlink(missing_ok=True)  # a sidecar must never describe a half-written file
    try:
        images = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=tuple(expected["shape"]))  # (N, S, S, 3)

        def decode(i: int) -> None:
            images[i] = load_resized(split.image_path(i), size)

        # PIL releases the GIL while decoding and resizing, so threads scale across cores.
        bar = tqdm(total=len(split), disable=not progress, unit="img", desc=f"caching {split.name} at {size} px")
        with ThreadPoolExecutor(max_workers=_worker_count()) as pool, bar:
            futures = [pool.submit(decode, i) for i in range(len(split))]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        images.flush()
        images = None  # release the map before the rename (the workers are done with it)
        crc = _checksum(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(meta_path, {**expected, "crc32": crc})


def cache_images(split, size: int, cache_dir=None, progress: bool = True) -> np.ndarray:
    """Return split's images at size x size as a read-only (N, size, size, 3) uint8 memmap, decoding only on first use."""
    size = int(size)
    if size < 1:
        raise UserError(f"Image size {size} is not valid: use a positive number of pixels such as 227.")
    if len(split) == 0:
        empty = np.empty((0, size, size, 3), dtype=np.uint8)
        empty.flags.writeable = False
        return empty
    identity = split.identity()
    path, meta_path = _cache_paths(identity, size, cache_dir)
    expected = {"version": CACHE_VERSION, "identity": identity, "size": size, "shape": [len(split), size, size, 3],
                "images": _image_stamps(split), "split": split.name, "voc_dir": str(split.voc_dir)}
    problem = _cache_problem(path, meta_path, expected)
    if problem is not None:
        if problem:
            print(f"Rebuilding the image cache {path}: {problem}.", file=sys.stderr, flush=True)
        _build_cache(split, size, path, meta_path, expected, progress)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=tuple(expected["shape"]))


# ---------------------------------------------------------------- batched augmentation on the device


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)  # (n,) on the CPU, so every device draws alike


def _flip_signs(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)  # (n,): -1 mirrors


def _warp(x: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Resample x (B, 3, H, W) through per-sample affine maps theta (B, 2, 3) into (B, 3, size, size)."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)  # (B, S, S, 2)
    # Outside the source reads as 0 (black), like torchvision's rotation fill.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image of x (B, 3, H, W) in [0, 1] with its grayscale by its own factor (B,)."""
    # gray + f * (x - gray) is linear in x: one (3, 3) colour matrix per image, applied in one batched product.
    weights = torch.tensor([0.2989, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 1, 3)
    factor = factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    matrix = factor * eye + (1.0 - factor) * weights  # (B, 3, 3): row c = f * e_c + (1 - f) * weights
    return torch.bmm(matrix, x.flatten(2)).view_as(x).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image of x (B, 3, H, W) in [0, 1] by its own shift (B,), in turns."""
    r, g, b = x.unbind(dim=1)  # (B, H, W) each
    # Elementwise maximum and minimum: on the CPU a max or min over the 3-long channel dimension is far slower.
    value = torch.maximum(torch.maximum(r, g), b)
    delta = value - torch.minimum(torch.minimum(r, g), b)  # chroma, value * saturation
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    sector = torch.where(value == r, (g - b) / safe_delta,
                         torch.where(value == g, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta))
    sector = sector + 6.0 * shift.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)  # hue in sixths of a turn, shifted
    # HSV to RGB without branches: channel n (5 red, 3 green, 1 blue) is v - c * clamp(min(k, 4 - k), 0, 1)
    # with k = (n + 6h) mod 6.
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + sector.unsqueeze(1), 6.0)  # (B, 3, H, W)
    return value.unsqueeze(1) - delta.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _jitter_flip_rotate(x: torch.Tensor, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Apply the seed report's jitter, flip, rotation and center crop to x (B, 3, H, H)."""
    n, size = x.shape[0], x.shape[-1]
    angle = torch.deg2rad(_uniform(generator, n, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    flip = _flip_signs(generator, n)
    hue = _uniform(generator, n, -COLOUR_JITTER, COLOUR_JITTER)
    saturation = _uniform(generator, n, 1 - COLOUR_JITTER, 1 + COLOUR_JITTER)
    # Output pixel -> source pixel: scale to the crop (image_size of size pixels), rotate, then mirror.
    k = image_size / size
    cos, sin, zero = k * torch.cos(angle), k * torch.sin(angle), torch.zeros(n)
    theta = torch.stack([torch.stack([flip * cos, -flip * sin, zero], dim=1),
                         torch.stack([sin, cos, zero], dim=1)], dim=1)  # (B, 2, 3)
    x = _warp(x, theta, image_size)
    # Colour after geometry: per-pixel, so the order does not matter, and it runs on fewer pixels.
    return adjust_hue(adjust_saturation(x, saturation), hue)


def _standard_augment(x: torch.Tensor, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Apply a random resized crop and a horizontal flip to each image of x (B, 3, H, H)."""
    n = x.shape[0]
    area = _uniform(generator, n, *STANDARD_SCALE)
    ratio = torch.exp(_uniform(generator, n, math.log(STANDARD_RATIO[0]), math.log(STANDARD_RATIO[1])))
    # Crop width and height as fractions of the (square) image; a crop that would not fit is clamped to it.
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = _uniform(generator, n, -1.0, 1.0) * (1.0 - width)
    cy = _uniform(generator, n, -1.0, 1.0) * (1.0 - height)
    flip = _flip_signs(generator, n)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([flip * width, zero, cx], dim=1),
                         torch.stack([zero, height, cy], dim=1)], dim=1)  # (B, 2, 3)
    return _warp(x, theta, image_size)


def _flip(x: torch.Tensor, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of x (B, 3, H, H) left to right with probability 1/2, after the center crop."""
    x = center_crop_batch(x, image_size)  # (B, 3, S, S)
    mirrored = (_flip_signs(generator, x.shape[0]) < 0).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mirrored, x.flip(-1), x)


def center_crop_batch(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Return the central image_size x image_size window of x (B, C, H, W), as torchvision's CenterCrop picks it."""
    height, width = x.shape[-2:]
    top, left = int(round((height - image_size) / 2.0)), int(round((width - image_size) / 2.0))
    return x[..., top:top + image_size, left:left + image_size]


def augment_batch(x: torch.Tensor, augment: str, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Augment x (B, 3, H, H) float in [0, 1] with a preset, drawing from generator; return (B, 3, S, S) in [0, 1]."""
    _check_augment(augment)
    if augment == "jitter-flip-rotate":
        return _jitter_flip_rotate(x, image_size, generator)
    if augment == "standard":
        return _standard_augment(x, image_size, generator)
    if augment == "flip":
        return _flip(x, image_size, generator)
    return center_crop_batch(x, image_size)


class _Normalizer:
    """Turn uint8 batches (B, 3, H, W) into float32 model inputs on a device: crop or augment, then normalise."""

    def __init__(self, device: torch.device, augment: str, image_size: int, train: bool):
        self.augment, self.image_size, self.train = augment, int(image_size), bool(train)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.mean, self.std = mean, std
        # (x / 255 - mean) / std as one multiply-add on the uint8 pixels.
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.train and self.augment != "none":
            x = augment_batch(x.float().div_(255.0), self.augment, self.image_size, generator)  # (B, 3, S, S)
            return x.sub_(self.mean).div_(self.std)
        x = center_crop_batch(x, self.image_size)  # (B, 3, S, S) uint8, a strided view
        if x.device.type != "cpu":
            x = x.float()  # accelerators have bandwidth to spare; not every backend mixes dtypes in one kernel
        # On the CPU, one pass from the strided uint8 view to a contiguous float32 batch, with no intermediate copies.
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        return torch.addcmul(self.shift, x, self.scale, out=out)


# ---------------------------------------------------------------- loaders


def _stream_seed(seed: int, epoch: int, stream: int) -> int:
    """Return a 63-bit seed for one random stream (0 order, 1 augmentation) of one epoch."""
    words = [int(v) % 2**64 for v in (seed, epoch, stream)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _epoch_batches(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_last: bool) -> list[np.ndarray]:
    """Return the index batches of one epoch: a permutation fixed by (seed, epoch) when shuffling, else in order."""
    if shuffle:
        generator = torch.Generator().manual_seed(_stream_seed(seed, epoch, 0))
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    # Sorted within a batch: the same set of images, read in file order from the memmap.
    return [np.sort(order[i:i + batch_size]) for i in range(0, stop, batch_size)]


def _prefetch(items, depth: int = 2):
    """Yield the items of an iterator that a background thread produces up to depth ahead."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((None, exc))
            return
        put((end, None))

    thread = threading.Thread(target=produce, name="mp3kit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _check_batch_size(batch_size) -> int:
    if int(batch_size) < 1:
        raise UserError(f"Batch size {batch_size} is not valid: use a positive number such as 50.")
    return int(batch_size)


class BatchLoader:
    """Iterate (x, y) device batches from cached uint8 images: gather on the host, normalise and augment on the device."""

    def __init__(self, images_u8, targets, batch_size: int, *, shuffle: bool, seed: int, device, augment: str = "none",
                 image_size: int = 227, drop_last: bool = False, train: bool = True, prefetch: bool = True):
        _check_augment(augment)
        images_u8 = np.asanyarray(images_u8)  # a memmap stays a memmap
        if images_u8.ndim != 4 or images_u8.shape[3] != 3 or images_u8.shape[1] != images_u8.shape[2] \
                or images_u8.dtype != np.uint8:
            raise ValueError(f"images_u8 must be (N, H, H, 3) uint8, got {images_u8.shape} {images_u8.dtype}")
        if images_u8.shape[1] < image_size:
            raise UserError(f"Cached images are {images_u8.shape[1]} px, smaller than the image size {image_size}: "
                            f"cache them at cache_size_for({image_size}, {augment!r}) px or more.")
        self.images = images_u8  # (N, H, H, 3) uint8, usually a memmap
        self.targets = np.ascontiguousarray(targets, dtype=np.float32)  # (N, 20)
        if len(self.targets) != len(images_u8):
            raise ValueError(f"{len(images_u8)} images but {len(self.targets)} targets")
        self.batch_size = _check_batch_size(batch_size)
        self.shuffle, self.seed, self.drop_last, self.train = bool(shuffle), int(seed), bool(drop_last), bool(train)
        self.augment, self.image_size = augment, int(image_size)
        self.device = pick_device(device)
        self.prefetch = prefetch
        self.epoch = 0
        # Page-locked host memory lets the copy to a CUDA device run asynchronously.
        self._pin = self.device.type == "cuda"
        self._normalize = _Normalizer(self.device, augment, image_size, train)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the shuffle and augmentation of the next pass to those of epoch (each full pass advances it by one)."""
        self.epoch = int(epoch)

    def batches(self) -> list[np.ndarray]:
        """Return the index batches of the current epoch."""
        return _epoch_batches(len(self.images), self.batch_size, self.shuffle, self.seed, self.epoch, self.drop_last)

    def _gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.empty((len(rows),) + self.images.shape[1:], dtype=torch.uint8, pin_memory=self._pin)  # (B, H, H, 3)
        np.take(self.images, rows, axis=0, out=x.numpy(), mode="clip")  # "clip" writes straight into x
        y = torch.from_numpy(self.targets[rows])  # (B, 20)
        return x, (y.pin_memory() if self._pin else y)

    def __iter__(self):
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.epoch, 1))
        host = map(self._gather, self.batches())
        if self.prefetch:
            host = _prefetch(host)
        try:
            for x, y in host:
                x = x.to(self.device, non_blocking=self._pin).permute(0, 3, 1, 2)  # (B, 3, H, H) uint8
                yield self._normalize(x, generator), y.to(self.device, non_blocking=self._pin)
        finally:
            if self.prefetch:
                host.close()
        self.epoch += 1


class _Relabelled(torch.utils.data.Dataset):
    """A dataset whose targets are replaced (e.g. with another treatment of difficult objects)."""

    def __init__(self, dataset, targets: np.ndarray):
        self.dataset = dataset
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))  # (N, 20)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i][0], self.targets[i]


class PerItemLoader:
    """Iterate (x, y) device batches the course kit's way: a DataLoader decoding each JPEG with PIL every epoch."""

    def __init__(self, split, batch_size: int, *, shuffle: bool, seed: int, device, augment: str = "none",
                 image_size: int = 227, drop_last: bool = False, train: bool = True, num_workers: int = 1,
                 targets=None):
        _check_augment(augment)
        self.split = split
        self.batch_size = _check_batch_size(batch_size)
        self.shuffle, self.seed, self.drop_last, self.train = bool(shuffle), int(seed), bool(drop_last), bool(train)
        self.augment, self.image_size, self.num_workers = augment, int(image_size), int(num_workers)
        self.device = pick_device(device)
        self.epoch = 0
        self._pin = self.device.type == "cuda"
        if augment == "none":
            # The course kit's transform, normalised on the host.
            transform = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        else:
            # The same uint8 pixels the cache holds, augmented on the device like the cached path.
            size = cache_size_for(image_size, augment)
            transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                            transforms.PILToTensor()])
            self._normalize = _Normalizer(self.device, augment, image_size, train)
        dataset = data.VOCDataset(split, transform=transform)
        self.dataset = dataset if targets is None else _Relabelled(dataset, targets)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the shuffle and augmentation of the next pass to those of epoch (each full pass advances it by one)."""
        self.epoch = int(epoch)

    def batches(self) -> list[np.ndarray]:
        """Return the index batches of the current epoch (the same as BatchLoader's)."""
        return _epoch_batches(len(self.split), self.batch_size, self.shuffle, self.seed, self.epoch, self.drop_last)

    def __iter__(self):
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.epoch, 1))
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[b.tolist() for b in self.batches()],
                                             num_workers=self.num_workers, pin_memory=self._pin)
        for x, y in loader:
            x = x.to(self.device, non_blocking=self._pin)  # (B, 3, S, S)
            if self.augment != "none":
                x = self._normalize(x, generator)
            yield x, y.to(self.device, non_blocking=self._pin)
        self.epoch += 1


def make_loader(split, *, batch_size: int, image_size: int, augment: str = "none", train: bool, seed: int = 0, device,
                pipeline: str = "cached", cache_dir=None, progress: bool = True, targets=None):
    """Return a loader of (x, y) device batches over split: shuffled and augmented to train, else in order and unaugmented."""
    _check_augment(augment)
    if pipeline not in PIPELINES:
        raise UserError(f"Unknown pipeline {pipeline!r}: use one of {', '.join(PIPELINES)}.")
    if int(image_size) < 1:
        raise UserError(f"Image size {image_size} is not valid: use a positive number of pixels such as 227.")
    device = pick_device(device)
    targets = split.targets if targets is None else targets
    options = dict(shuffle=train, seed=seed, device=device, augment=augment, image_size=image_size, train=train)
    if pipeline == "per-item":
        return PerItemLoader(split, batch_size, targets=targets, **options)
    images = cache_images(split, cache_size_for(image_size, augment), cache_dir=cache_dir, progress=progress)
    return BatchLoader(images, targets, batch_size, **options)
