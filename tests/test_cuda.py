"""The CUDA paths: device choice, mixed precision, checkpoints across devices, the GPU bench rows.

Skipped where torch sees no CUDA device (as on the 2-core CI machines); `tools/gpu_check.sh` runs them
on a machine with a GPU, together with the bench.
"""

import math
import threading

import numpy as np
import pytest
import torch

from mp3kit import bench, synth, train
from mp3kit.util import pick_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY_NET = {"name": "tiny", "blocks": [{"conv": 16, "s": 2, "bn": True}, {"conv": 32, "s": 2, "bn": True},
                                        {"conv": 64, "s": 2, "bn": True}], "pool": "global", "head": []}


@pytest.fixture(scope="module")
def voc_root():
    return synth.ensure_synthetic()


def test_auto_picks_cuda():
    assert pick_device("auto").type == "cuda"


def test_training_on_cuda_with_mixed_precision_learns_and_records_the_device(voc_root, tmp_path):
    cfg = train.TrainConfig(model=TINY_NET, image_size=64, epochs=8, eval_every=1, batch_size=16,
                            optimizer="adam", lr=3e-3, augment="seed")
    assert train.amp_dtype(cfg, torch.device("cuda")) in (torch.bfloat16, torch.float16)
    run = train.fit(cfg, voc_root, name="cuda-learn", runs_dir=tmp_path, progress=False)
    data = train.load_data(voc_root)
    chance = float(data.test.targets.mean())
    assert run.metrics["device"].startswith("cuda")
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert run.history[-1]["train_loss"] < 0.6 * run.history[0]["train_loss"]
    assert run.test_map > chance + 0.12, (run.test_map, chance)


def test_a_cuda_run_stops_resumes_and_its_weights_load_on_the_cpu(voc_root, tmp_path):
    cfg = train.TrainConfig(model="simple", image_size=64, epochs=3, eval_every=1, batch_size=20, max_images=60)
    stop = threading.Event()
    first = train.fit(cfg, voc_root, name="s", runs_dir=tmp_path, progress=False,
                      callback=lambda run: stop.set(), stop=stop)  # Stop pressed after the first epoch
    assert first.status == "stopped" and len(first.history) == 1
    resumed = train.fit(cfg, voc_root, name="s", runs_dir=tmp_path, progress=False, resume=True)
    assert resumed.status == "complete" and len(resumed.history) == 3
    model = train.load_model(resumed, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert np.isfinite(model(torch.zeros(2, 3, 64, 64)).detach().numpy()).all()


def test_bench_measures_alexnet_fed_by_the_pipeline_against_tensors_on_the_gpu(tmp_path):
    result = bench.run_bench(root=tmp_path / "voc", quick=True, device="cuda", log=lambda message: None)
    for key in ("per_item_img_s", "cached_img_s", "pipeline_ratio", "alexnet_on_device_img_s",
                "alexnet_pipeline_img_s", "alexnet_pipeline_fraction", "alexnet_standard_augment_img_s"):
        assert result[key] > 0, key
    assert result["device"].startswith("cuda")
