"""Why the quick profile's ablation does not show the seed report's first BatchNorm step: controls, side by side.

Usage (from the repository root, after `make setup`; about 70 s per seed on 2 CPU cores):

    .venv/bin/python tools/bn_first_step.py                 # seeds 0 and 1
    .venv/bin/python tools/bn_first_step.py --seeds 0 1 2

Every run is notebook 3's ablation row 3 (BaseNet, Adam 1e-4, jitter-flip-rotate augmentation) with the quick
profile's notebook-3 settings (128 px, batch 10, 20 epochs, width 1/8), on the embedded synthetic dataset, changed
in one place only:

  row 3              no BatchNorm (the row before the step)
  row 4              + BatchNorm after conv 1, before its ReLU (the seed report's step, notebook 3's row 4)
  BN after ReLU      conv 1 -> ReLU -> BatchNorm: the same normalisation, after the ReLU instead of before it
  frozen conv 1      row 3 with conv 1 kept at its random initial filters
  frozen + BN        row 4 with conv 1 kept at its random initial filters

It prints each run's test mAP and, per seed, the difference to row 3. Nothing is written outside a temporary
folder. docs/design-notes.md ("The seed report's findings") states what these runs showed on the
development VM and what it means for finding 9.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torch import nn  # noqa: E402

from mp3kit import models, train  # noqa: E402
from mp3kit.config import PROFILES  # noqa: E402

VARIANTS = ("row 3", "row 4", "BN after ReLU", "frozen conv 1", "frozen + BN")


def variant_config(variant: str, seed: int) -> train.TrainConfig:
    """Return the TrainConfig of a variant: notebook 3's row 3 or row 4 at the quick profile's notebook-3 settings."""
    settings = PROFILES["quick"].for_notebook("03").train
    bn_first = variant in ("row 4", "BN after ReLU", "frozen + BN")
    spec = models.SEED_ABLATION[1][1] if bn_first else models.BASENET
    return train.TrainConfig(**{**settings, "model": spec, "optimizer": "adam", "lr": 1e-4,
                                "augment": "jitter-flip-rotate", "seed": seed})


def adjust(model: nn.Module, variant: str) -> nn.Module:
    """Apply the variant's one change to a built BaseNet (features: conv 1, [BatchNorm], ReLU, pool, ...)."""
    layers = list(model.features)
    if variant == "BN after ReLU":
        assert isinstance(layers[1], nn.BatchNorm2d) and isinstance(layers[2], nn.ReLU)
        layers[1], layers[2] = nn.ReLU(), layers[1]
        model.features = nn.Sequential(*layers)
    if variant.startswith("frozen"):
        layers[0].requires_grad_(False)  # the optimizer only gets trainable parameters
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    data = train.load_data(None)
    build = train.build_model
    results: dict = {}
    with tempfile.TemporaryDirectory() as runs_dir:
        for seed in args.seeds:
            for variant in VARIANTS:
                train.build_model = lambda config, v=variant: adjust(build(config), v)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t = time.perf_counter()
                        run = train.fit(variant_config(variant, seed), name=f"s{seed}-{variant.replace(' ', '-')}",
                                        runs_dir=runs_dir, progress=False, data=data)
                finally:
                    train.build_model = build
                results[seed, variant] = run.test_map
                print(f"seed {seed}  {variant:14s} test mAP {run.test_map:.4f}  ({time.perf_counter() - t:.0f} s)",
                      flush=True)
    print("\ntest mAP (difference to row 3 of the same seed)")
    print("variant         " + "".join(f"   seed {s:<10d}" for s in args.seeds))
    for variant in VARIANTS:
        cells = [f"{results[s, variant]:.4f} ({results[s, variant] - results[s, 'row 3']:+.3f})" for s in args.seeds]
        print(f"{variant:14s}  " + "".join(f"  {c:>15s}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
