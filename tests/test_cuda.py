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


def _expected_dtype():
    # bfloat16 from compute capability 8.0 (A100, L4, H100), float16 below it (T4, V100), whatever
    # torch.cuda.is_bf16_supported() says (True on a T4, by emulation).
    return torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16


def test_the_precision_decision_on_this_gpu():
    cuda = torch.device("cuda")
    amp = train.amp_dtype(train.TrainConfig(), cuda)
    assert amp == _expected_dtype()
    assert (train.grad_scaler(amp) is not None) == (amp == torch.float16)
    info = train.precision_info(cuda, amp)
    assert info["capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    assert info["device_name"] == torch.cuda.get_device_name() and info["tf32"] == (amp == torch.bfloat16)


def test_training_on_cuda_with_mixed_precision_learns_and_records_the_device(voc_root, tmp_path):
    cfg = train.TrainConfig(model=TINY_NET, image_size=64, epochs=8, eval_every=1, batch_size=16,
                            optimizer="adam", lr=3e-3, augment="jitter-flip-rotate")
    run = train.fit(cfg, voc_root, name="cuda-learn", runs_dir=tmp_path, progress=False)
    data = train.load_data(voc_root)
    chance = float(data.test.targets.mean())
    assert run.metrics["device"].startswith("cuda")
    assert run.metrics["amp_dtype"] == str(_expected_dtype()).removeprefix("torch.")
    assert run.metrics["capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    assert torch.backends.cudnn.benchmark is True
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
    assert result["amp_dtype"] == str(_expected_dtype()).removeprefix("torch.")
