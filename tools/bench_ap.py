"""What scikit-learn's AP costs at evaluation time: mp3kit.metrics today against its earlier hand-written AP.

Usage (from the repository root, after `make setup`; seconds):

    .venv/bin/python tools/bench_ap.py            # a VOC 2007 test split's size: 4,952 images x 20 classes
    .venv/bin/python tools/bench_ap.py --rev REV  # the baseline mp3kit/metrics.py at another git revision

mp3kit.metrics computes each class's AP with scikit-learn's average_precision_score. The baseline is the vectorised
NumPy AP mp3kit used before (taken from git: the last revision of mp3kit/metrics.py that defined _ranked_curves),
loaded next to today's. Both score the same random scores and VOC-like labels (class frequencies of 1% to 40%, some
difficult-only entries) in alternating rounds; the script prints the fastest of at least 10 calls of each, their ratio,
and the largest difference between their APs. docs/measurements.md states the figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mp3kit import metrics  # noqa: E402


def baseline(rev: str | None) -> tuple[str, types.ModuleType]:
    """Return the revision and module of mp3kit/metrics.py with the hand-written AP (or at rev)."""
    if rev is None:
        rev = subprocess.run(["git", "-C", str(REPO), "log", "-n1", "--format=%H", "-S", "def _ranked_curves", "--",
                              "mp3kit/metrics.py"], capture_output=True, text=True, check=True).stdout.strip() + "^"
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:mp3kit/metrics.py"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType("metrics_baseline")
    exec(compile(source, f"{rev}:mp3kit/metrics.py", "exec"), module.__dict__)
    return rev, module


def fastest(call, rounds: int) -> float:
    """Return the fastest of rounds calls, in ms."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=None, help="git revision of the baseline metrics.py")
    parser.add_argument("--images", type=int, default=4952)
    args = parser.parse_args(argv)
    rev, old = baseline(args.rev)
    rng = np.random.default_rng(0)
    frequency = np.linspace(0.01, 0.4, 20)
    targets = (rng.random((args.images, 20)) < frequency).astype(np.uint8)
    difficult = (rng.random((args.images, 20)) < 0.01) & (targets == 0)
    scores = rng.random((args.images, 20)) + targets  # a network that learned something
    calls = {"scikit-learn (today)": lambda: metrics.average_precision(targets, scores, difficult),
             f"hand-written ({rev[:8]})": lambda: old.average_precision(targets, scores, difficult)}
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(5):  # alternating rounds, so both see the same load
        for name, call in calls.items():
            best[name] = min(best[name], fastest(call, 2))
    difference = np.abs(metrics.average_precision(targets, scores, difficult) -
                        old.average_precision(targets, scores, difficult)).max()
    for name, ms in best.items():
        print(f"{name:<28}{ms:>8.1f} ms for {args.images:,} x 20")
    today, before = best.values()
    print(f"ratio today / hand-written: {today / before:.2f}x; largest AP difference {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
