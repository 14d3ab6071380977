#!/usr/bin/env bash
# The device check, prepared to run in one call on a machine with a CUDA GPU (the `device` tool of this
# workplace, or any GPU box with torch, torchvision, numpy, pillow, tqdm and scikit-learn installed):
#
#     bash tools/gpu_check.sh            # logs and the bench's JSON go to $OUT (else ./gpu-check)
#
# It prints the mixed-precision decision for this GPU (float16 + GradScaler below compute capability 8.0,
# bfloat16 from 8.0), then runs tests/test_cuda.py (device choice, that decision, mixed-precision training
# that learns, stop/resume, weights loaded back on the CPU) and `mp3kit bench` on the GPU, whose JSON line
# holds the precision and alexnet_pipeline_fraction: AlexNet training fed by the real cached pipeline over
# the same model fed from tensors already on the GPU (target: at least 0.80). mp3kit is used from this
# checkout (PYTHONPATH), not installed. Not yet run on a GPU (none was lent so far); on a CPU machine the
# CUDA tests skip and the bench runs on the CPU.
set -o pipefail
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MP3KIT_QUIET=1 MPLBACKEND=Agg
python3 - <<'PY' 2>&1 | tee "$out/device.txt"
import torch, torchvision
from mp3kit import train
from mp3kit.util import pick_device
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "is_bf16_supported", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
device = pick_device("auto")
print("precision decision (TrainConfig defaults):",
      train.precision_line(train.precision_info(device, train.amp_dtype(train.TrainConfig(), device))))
PY
status=0
python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$out/cuda-tests.log" || status=1
python3 -m mp3kit bench 2>&1 | tee "$out/bench.log" || status=1
tail -n 1 "$out/bench.log" > "$out/bench.json"
exit $status
