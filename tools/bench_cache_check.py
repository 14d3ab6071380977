"""What the decode-once cache's checks cost: today's pipeline against the one before them, side by side in one process.

Usage (from the repository root, after `make setup`; about a minute on 2 CPU cores):

    .venv/bin/python tools/bench_cache_check.py                  # mp3kit bench's split: 1,000 images, trainval, 227 px
    .venv/bin/python tools/bench_cache_check.py --images 10000   # a VOC-sized split (5,000 images, 773 MB cached)

Since the cache's sidecar holds every image's size and modification time and a CRC-32 of its bytes, opening a cache
stats each image and reads the whole file once. The baseline is mp3kit/pipeline.py as it was before that (taken from
git: the parent of the commit that made CACHE_VERSION 2), loaded next to today's. Each builds its own cache of the same
synthetic split in a temporary folder; then, in alternating rounds, each opens its warm cache (cache_images) and
drains the loader over it as `mp3kit bench` does (the fastest whole pass of at least 5 and 2 s). It prints the fastest
open, the warm pipeline's images/s (mp3kit bench's "cached" figure), and both together (one open and one pass, as an
evaluation loader of a short run sees it), with today's / baseline ratios. docs/measurements.md states the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mp3kit import bench, data, pipeline, settings, synth, train  # noqa: E402


def baseline_source(rev: str | None) -> tuple[str, str]:
    """Return the revision and the text of mp3kit/pipeline.py before the cache's checks (or at rev)."""
    if rev is None:
        found = subprocess.run(["git", "-C", str(REPO), "log", "-n1", "--format=%H", "-S", "CACHE_VERSION = 2", "--",
                                "mp3kit/pipeline.py"], capture_output=True, text=True, check=True).stdout.strip()
        if not found:
            sys.exit("no commit in this checkout's history introduces CACHE_VERSION = 2: give --baseline REV")
        rev = f"{found}^"
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:mp3kit/pipeline.py"], capture_output=True,
                          text=True, check=True).stdout
    return rev, text


def load_module(name: str, text: str):
    """Return a module made from source text (the baseline pipeline imports today's mp3kit.data, util, settings)."""
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    return module


def measure(module, split, cache_dir: Path, image_size: int, batch_size: int, device) -> dict:
    """Open module's warm cache of split, then drain a loader over it; return the seconds and images/s."""
    start = time.perf_counter()
    images = module.cache_images(split, image_size, cache_dir=cache_dir, progress=False)
    open_s = time.perf_counter() - start
    loader = module.BatchLoader(images, split.targets, batch_size, shuffle=True, seed=0, device=device,
                                image_size=image_size)
    start = time.perf_counter()
    for _ in loader:  # one pass, timed whole: what follows the open
        pass
    first_pass_s = time.perf_counter() - start
    return {"open_s": open_s, "open_and_pass_img_s": len(split) / (open_s + first_pass_s),
            "warm_img_s": bench._drain(loader, device, passes=5, min_seconds=2.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REV", help="the git revision to compare with (default: the one before "
                                                          "the checks)")
    parser.add_argument("--images", type=int, default=bench.DEFAULT_IMAGES, help="synthetic images in the tree")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rev, text = baseline_source(args.baseline)
    versions = {"baseline": load_module("mp3kit_pipeline_baseline", text), "today": pipeline}
    device, image_size, batch_size = torch.device("cpu"), 227, 50
    root = settings.cache_dir() / "bench" / f"synthetic-{args.images}"
    split = data.load_split(synth.ensure_synthetic(root, n_images=args.images), "trainval")
    print(f"{len(split)} synthetic images (trainval) at {image_size} px, batch {batch_size}, "
          f"{train.device_name(device)} ({torch.get_num_threads()} torch threads), torch {torch.__version__}; "
          f"baseline: mp3kit/pipeline.py at {rev}", flush=True)
    best: dict = {name: {} for name in versions}
    with tempfile.TemporaryDirectory(prefix="mp3kit-cache-check-") as tmp:
        folders = {name: Path(tmp) / name for name in versions}
        for name, module in versions.items():  # build each cache once (cold), untimed
            module.cache_images(split, image_size, cache_dir=folders[name], progress=False)
        for _ in range(args.rounds):  # alternating rounds, the best of each kept: a burst of load hits both alike
            for name, module in versions.items():
                got = measure(module, split, folders[name], image_size, batch_size, device)
                for key, value in got.items():
                    keep = min if key == "open_s" else max
                    best[name][key] = keep(best[name].get(key, value), value)
        cache_mb = sum(p.stat().st_size for p in folders["today"].rglob("*.u8")) / 2**20
    rows = [("open a warm cache, ms", "open_s", 1000.0), ("warm pipeline, images/s", "warm_img_s", 1.0),
            ("open + one pass, images/s", "open_and_pass_img_s", 1.0)]
    print(f"cache file {cache_mb:,.0f} MB; best of {args.rounds} alternating rounds")
    print(f"{'':<30}{'baseline':>12}{'today':>12}{'today/baseline':>16}")
    for label, key, scale in rows:
        old, new = best["baseline"][key] * scale, best["today"][key] * scale
        print(f"{label:<30}{old:>12,.1f}{new:>12,.1f}{new / old:>15.3f}x")


if __name__ == "__main__":
    main()
