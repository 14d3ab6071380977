"""The training engine: learning, run records, resume, and the errors a user can cause."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mp3kit import runs, settings, synth, train
from mp3kit.util import UserError

TINY_NET = {"name": "tiny", "blocks": [{"conv": 16, "s": 2, "bn": True}, {"conv": 32, "s": 2, "bn": True},
                                        {"conv": 64, "s": 2, "bn": True}], "pool": "global", "head": []}
SMALL = dict(model=TINY_NET, image_size=64, max_images=60, epochs=3, eval_every=1, batch_size=20)


@pytest.fixture(scope="session")
def voc_root():
    return synth.ensure_synthetic()


@pytest.fixture(scope="module")
def uninterrupted(voc_root, tmp_path_factory):
    """Return a function giving SMALL's uninterrupted run with an augmentation, each trained once; tests only read them."""
    folder, made = tmp_path_factory.mktemp("whole"), {}

    def run(augment: str = "none"):
        if augment not in made:
            made[augment] = train.fit(train.TrainConfig(**SMALL, augment=augment), voc_root, name=f"whole-{augment}",
                                      runs_dir=folder, progress=False)
        return made[augment]

    return run


@pytest.fixture(scope="module")
def whole_run(uninterrupted):
    return uninterrupted()


def _history_numbers(run):
    keys = ("train_loss", "val_loss", "train_map", "val_map")
    return [[h[k] for k in keys] for h in run.history]


@pytest.mark.slow
def test_training_lowers_loss_and_lifts_map_well_above_chance(voc_root, tmp_path):
    cfg = train.TrainConfig(model=TINY_NET, image_size=64, epochs=8, eval_every=1, batch_size=16,
                            optimizer="adam", lr=3e-3)
    run = train.fit(cfg, voc_root, name="learn", runs_dir=tmp_path, progress=False)
    data = train.load_data(voc_root)
    chance = float(data.test.targets.mean())  # AP of random scores is about the class prevalence
    first, last = run.history[0], run.history[-1]
    assert last["train_loss"] < 0.6 * first["train_loss"]
    assert last["val_map"] > first["val_map"] + 0.05
    assert run.test_map > chance + 0.12, (run.test_map, chance)
    assert run.test_map < 0.95  # the synthetic set is learnable, not trivial


def test_run_record_on_disk_matches_the_returned_run(whole_run):
    run = whole_run
    assert run.status == "complete"
    for f in runs.RUN_FILES:
        assert (run.path / f).exists(), f
    loaded = runs.load_run(run.path)
    assert loaded.history == run.history and loaded.metrics == run.metrics and loaded.status == "complete"
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert len(metrics["test_ap"]) == 20 and 0 <= metrics["test_map"] <= 1 and metrics["test_loss"] > 0
    assert metrics["synthetic"] is True
    evals = [h["epoch"] for h in run.history if h["val_map"] is not None]
    assert evals == [1, 2, 3]
    scores = runs.load_test_scores(loaded)
    assert scores["scores"].shape == (len(scores["ids"]), 20)


def test_eval_epochs_follow_the_kits_test_frequency(voc_root, tmp_path):
    cfg = train.TrainConfig(**{**SMALL, "epochs": 6, "eval_every": 5, "max_images": 30})
    run = train.fit(cfg, voc_root, name="freq", runs_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in run.history if h["val_map"] is not None] == [1, 5, 6]
    assert all(h["train_loss"] is not None for h in run.history)


@pytest.mark.parametrize("augment", ["none", "standard"])
def test_resumed_run_ends_like_an_uninterrupted_one(voc_root, tmp_path, uninterrupted, augment):
    cfg = train.TrainConfig(**SMALL, augment=augment)
    whole = uninterrupted(augment)

    stop = threading.Event()
    stopped = train.fit(cfg, voc_root, name="cut", runs_dir=tmp_path, progress=False, stop=stop,
                        callback=lambda run: stop.set())
    assert stopped.status == "stopped" and len(stopped.history) == 1
    assert runs.load_run(tmp_path / "cut").status == "stopped"
    resumed = train.fit(cfg, voc_root, name="cut", runs_dir=tmp_path, progress=False, resume=True)
    assert resumed.status == "complete"
    np.testing.assert_allclose(_history_numbers(resumed), _history_numbers(whole), rtol=1e-5)
    assert resumed.test_map == pytest.approx(whole.test_map, abs=1e-6)


def test_reuse_returns_a_complete_run_without_training(voc_root, tmp_path, monkeypatch):
    cfg = train.TrainConfig(**{**SMALL, "epochs": 1})
    first = train.fit(cfg, voc_root, name="r", runs_dir=tmp_path, progress=False)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: pytest.fail("trained again"))
    again = train.fit(cfg, voc_root, name="r", runs_dir=tmp_path, progress=False, reuse=True)
    assert again.metrics == first.metrics


def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint(voc_root, tmp_path, monkeypatch):
    real_loss = train._loss
    state = {"epochs": 0}

    def loss(logits, y, pos_weight):
        value = real_loss(logits, y, pos_weight)
        return value * float("nan") if state["epochs"] >= 1 else value

    monkeypatch.setattr(train, "_loss", loss)
    cfg = train.TrainConfig(**SMALL)
    with pytest.raises(UserError, match=r"epoch 2, batch 1.*lower the learning rate"):
        train.fit(cfg, voc_root, name="nan", runs_dir=tmp_path, progress=False,
                  callback=lambda run: state.update(epochs=len(run.history)))
    ckpt = train.load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert runs.load_run(tmp_path / "nan").status == "failed"


def test_checkpoint_of_another_architecture_is_a_clear_error(voc_root, tmp_path):
    train.fit(train.TrainConfig(**{**SMALL, "epochs": 1}), voc_root, name="m", runs_dir=tmp_path, progress=False)
    model = train.load_model(tmp_path / "m")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 20)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"] = "alexnet"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not match the model's architecture"):
        train.load_model(tmp_path / "m")


def test_bad_config_values_name_the_field():
    with pytest.raises(UserError, match="optimizer"):
        train.TrainConfig(optimizer="rmsprop")
    with pytest.raises(UserError, match="lr"):
        train.TrainConfig(lr=-1)
    with pytest.raises(UserError, match="augment"):
        train.TrainConfig(augment="fancy")


def test_lr_schedules():
    cfg = train.TrainConfig(epochs=10, schedule="cosine", warmup_epochs=2)
    factors = [train.lr_factor(cfg, e) for e in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:])) and factors[-1] < 0.1
    step = train.TrainConfig(schedule="step", step_size=3, gamma=0.1)
    assert [train.lr_factor(step, e) for e in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mp3kit", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_train_writes_the_run_with_test_metrics(voc_root, tmp_path):
    out = _cli("train", "--data-root", str(voc_root), "--name", "cli", "--runs-dir", str(tmp_path), "--epochs", "1",
               "--image-size", "64", "--max-images", "30", "--optimizer", "adam", "--lr", "0.001", "--quiet")
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert {"test_map", "test_loss", "test_ap"} <= metrics.keys() and len(metrics["test_ap"]) == 20
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["optimizer"] == "adam" and config["lr"] == 0.001 and config["epochs"] == 1
    assert "synthetic" in out.stdout
    listed = _cli("runs", "--runs-dir", str(tmp_path))
    assert "cli" in listed.stdout and "complete" in listed.stdout


@pytest.mark.slow
def test_cli_trains_one_config_with_several_seeds_as_runs_of_their_own_and_prints_their_spread(voc_root, tmp_path):
    out = _cli("train", "--data-root", str(voc_root), "--name", "cli", "--runs-dir", str(tmp_path), "--epochs", "1",
               "--image-size", "64", "--max-images", "30", "--seed", "4", "--seeds", "3", "--quiet")
    assert out.returncode == 0, out.stderr
    seeds = [runs.load_run(tmp_path / name) for name in ("cli", "cli-seed5", "cli-seed6")]
    assert [r.config["seed"] for r in seeds] == [4, 5, 6] and all(r.complete for r in seeds)
    tests = [r.test_map for r in seeds]
    assert len(set(tests)) == 3, "the seeds should change the numbers"
    for r in seeds:
        assert f"{r.name}: test mAP {r.test_map:.4f}" in out.stdout
    mean, sd = np.mean(tests), np.std(tests, ddof=1)
    assert out.stdout.rstrip().endswith(f"test mAP {mean:.4f} ± {sd:.4f} (mean ± standard deviation)")
    assert "3 seeds (4, 5, 6): val mAP " in out.stdout
    refused = _cli("train", "--seeds", "0", "--runs-dir", str(tmp_path / "none"))
    assert refused.returncode == 2
    assert refused.stderr == "mp3kit: --seeds 0 is not a number of seeds: give a whole number of at least 1.\n"
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_cli_user_errors_are_one_sentence_and_exit_2(tmp_path):
    out = _cli("train", "--data-root", str(tmp_path / "nowhere"), "--name", "x", "--runs-dir", str(tmp_path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "mp3kit data" in out.stderr
    out = _cli("train", "--model", '{"blocks": ', "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "JSON" in out.stderr and "Traceback" not in out.stderr


def test_diverging_outputs_stop_with_a_clear_error(voc_root, tmp_path):
    cfg = train.TrainConfig(model="simple", image_size=64, max_images=40, epochs=2, eval_every=1, batch_size=40, lr=1e30)
    with pytest.raises(UserError, match="lower the learning rate"):
        train.fit(cfg, voc_root, name="diverge", runs_dir=tmp_path, progress=False)
    assert runs.load_run(tmp_path / "diverge").status == "failed"


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_use_the_fused_kernel_and_fall_back_where_torch_has_none(name, monkeypatch):
    config = train.TrainConfig(optimizer=name, lr=0.05, weight_decay=1e-4)
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = train.make_optimizer(config, params)
    group = optimizer.param_groups[0]
    assert group["fused"] is True and group["lr"] == 0.05 and group["weight_decay"] == 1e-4
    cls = type(optimizer)

    class OlderTorch(cls):  # as torch < 2.3 (SGD) or < 2.4 (Adam on the CPU): no fused kernel
        def __init__(self, *args, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, cls.__name__, OlderTorch)
    optimizer = train.make_optimizer(config, params)
    assert isinstance(optimizer, OlderTorch) and not optimizer.param_groups[0].get("fused")
    assert optimizer.param_groups[0]["lr"] == 0.05


@pytest.mark.slow
def test_a_checkpoint_written_while_the_next_epoch_trains_holds_its_own_epochs_weights(voc_root, tmp_path, monkeypatch):
    one = train.fit(train.TrainConfig(**{**SMALL, "epochs": 1}), voc_root, name="one", runs_dir=tmp_path, progress=False)
    expected = train.load_checkpoint(one.checkpoint_path)["model"]

    written, save = [], train._save_checkpoint

    def slow_disk(path, state):
        time.sleep(1.0)  # the next epoch trains meanwhile, changing the live weights
        written.append((state["epoch"], {k: v.clone() for k, v in state["model"].items()}))
        save(path, state)

    monkeypatch.setattr(train, "_save_checkpoint", slow_disk)
    three = train.fit(train.TrainConfig(**SMALL), voc_root, name="three", runs_dir=tmp_path, progress=False)
    assert three.status == "complete" and [epoch for epoch, _ in written] == [1, 2, 3]
    first = written[0][1]
    assert first.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(first[key], value, msg=key)
    assert train.load_checkpoint(three.checkpoint_path)["epoch"] == 3  # the last write is the finished run's


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_that_error(voc_root, tmp_path, monkeypatch):
    def full_disk(path, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "_save_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train.fit(train.TrainConfig(**SMALL), voc_root, name="full", runs_dir=tmp_path, progress=False)


# ---------------------------------------------------------------- mixed precision that fits the GPU


def _stub_gpu(monkeypatch, capability, name="Tesla T4"):
    """Stand in for a CUDA device of the given compute capability (bfloat16 "supported", as torch says on a T4)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("capability, name, dtype", [
    ((6, 0), "Tesla P100-PCIE-16GB", torch.float16),
    ((7, 0), "Tesla V100-SXM2-16GB", torch.float16),
    ((7, 5), "Tesla T4", torch.float16),  # is_bf16_supported() is True here, by emulation: float16 all the same
    ((8, 0), "NVIDIA A100-SXM4-40GB", torch.bfloat16),
    ((8, 9), "NVIDIA L4", torch.bfloat16),
    ((9, 0), "NVIDIA H100 80GB HBM3", torch.bfloat16),
])
def test_mixed_precision_follows_the_compute_capability(monkeypatch, capability, name, dtype):
    _stub_gpu(monkeypatch, capability, name)
    cuda = torch.device("cuda")
    amp = train.amp_dtype(train.TrainConfig(), cuda)
    assert amp == dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "GradScaler is enabled, but CUDA is not available" here
        scaler = train.grad_scaler(amp)
    assert isinstance(scaler, torch.amp.GradScaler) if dtype == torch.float16 else scaler is None
    info = train.precision_info(cuda, amp)
    assert info == {"device": "cuda", "device_name": name, "capability": "{}.{}".format(*capability),
                    "amp_dtype": str(dtype).removeprefix("torch."), "grad_scaler": dtype == torch.float16,
                    "tf32": capability >= (8, 0)}
    line = train.precision_line(info)
    assert name in line and info["capability"] in line and info["amp_dtype"] in line
    assert ("gradient scaler" in line) == (dtype == torch.float16)
    assert train.amp_dtype(train.TrainConfig(amp="off"), cuda) is None


def test_no_mixed_precision_on_the_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert train.amp_dtype(train.TrainConfig(), cpu) is None
    assert train.amp_dtype(train.TrainConfig(amp="on"), cpu) == torch.bfloat16
    assert train.grad_scaler(None) is None and train.grad_scaler(torch.bfloat16) is None


@pytest.fixture
def cuda_backends():
    """Give the test torch's global cuDNN and TF32 settings and put them back afterwards."""
    new_api = hasattr(torch.backends.cuda.matmul, "fp32_precision")  # torch >= 2.9
    places = ([(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision")] if new_api
              else [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")])
    saved = [getattr(obj, name) for obj, name in places] + [torch.backends.cudnn.benchmark]
    for obj, name in places:
        setattr(obj, name, "ieee" if new_api else False)
    torch.backends.cudnn.benchmark = False
    yield lambda: tuple(getattr(obj, name) for obj, name in places), ("tf32", "tf32") if new_api else (True, True)
    for (obj, name), value in zip(places, saved):
        setattr(obj, name, value)
    torch.backends.cudnn.benchmark = saved[-1]


@pytest.mark.parametrize("capability, tf32", [((7, 5), False), ((8, 0), True)])
def test_cudnn_benchmark_on_cuda_and_tf32_from_ampere(monkeypatch, cuda_backends, capability, tf32):
    _stub_gpu(monkeypatch, capability)
    tf32_settings, allowed = cuda_backends
    before = tf32_settings()
    train.configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False and tf32_settings() == before
    train.configure_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
    assert tf32_settings() == (allowed if tf32 else before)


def test_a_run_records_and_shows_once_what_it_computes_on(voc_root, tmp_path, capsys):
    cfg = train.TrainConfig(**{**SMALL, "epochs": 1, "max_images": 30})
    run = train.fit(cfg, voc_root, name="where", runs_dir=tmp_path, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "training on" in line]
    assert lines == [f"where: training on cpu ({train.device_name(torch.device('cpu'))}) in float32"]
    assert {k: run.metrics[k] for k in ("device", "amp_dtype", "grad_scaler", "capability")} == {
        "device": "cpu", "amp_dtype": "float32", "grad_scaler": False, "capability": None}
    assert run.metrics["device_name"] and runs.load_run(run.path).device_info == run.device_info
    train.fit(cfg, voc_root, name="quiet", runs_dir=tmp_path, progress=False)
    assert "training on" not in capsys.readouterr().out


# ---------------------------------------------------------------- fit alone decides: reused, resumed or trained


def test_fit_says_whether_it_reused_resumed_or_trained_a_run(voc_root, tmp_path):
    cfg = train.TrainConfig(**{**SMALL, "epochs": 2})
    stop = threading.Event()
    first = train.fit(cfg, voc_root, name="o", runs_dir=tmp_path, progress=False, stop=stop,
                      callback=lambda run: stop.set())
    assert first.origin == "trained" and first.status == "stopped"
    resumed = train.fit(cfg, voc_root, name="o", runs_dir=tmp_path, progress=False, resume="auto")
    assert resumed.origin == "resumed" and resumed.complete and resumed.history[0] == first.history[0]
    again = train.fit(cfg, voc_root, name="o", runs_dir=tmp_path, progress=False, resume="auto", reuse=True)
    assert again.origin == "reused" and again.metrics == resumed.metrics

    other = cfg.replace(lr=0.02)
    stop.clear()
    train.fit(other, voc_root, name="p", runs_dir=tmp_path, progress=False, stop=stop, callback=lambda run: stop.set())
    with pytest.raises(UserError, match="another config"):
        train.fit(cfg, voc_root, name="p", runs_dir=tmp_path, progress=False, resume=True)
    fresh = train.fit(cfg, voc_root, name="p", runs_dir=tmp_path, progress=False, resume="auto")
    assert fresh.origin == "trained" and fresh.complete and fresh.config["lr"] == cfg.lr


def test_a_stopped_run_on_synthetic_data_shows_as_synthetic(voc_root, tmp_path):
    stop = threading.Event()
    train.fit(train.TrainConfig(**SMALL), voc_root, name="syn", runs_dir=tmp_path, progress=False, stop=stop,
              callback=lambda run: stop.set())
    loaded = runs.load_run(tmp_path / "syn")
    assert loaded.status == "stopped" and not loaded.metrics
    assert loaded.synthetic is True and loaded.summary()["synthetic"] is True
    # A run saved before the data record existed kept the mark at the top of its config.
    old = {k: v for k, v in loaded.config.items() if k != "data"}
    assert runs.Run(name="old", path=tmp_path / "old", config={**old, "synthetic": True}).synthetic is True
    real = {**loaded.config, "data": {"synthetic": False}}
    assert runs.Run(name="real", path=tmp_path / "real", config=real).synthetic is False


# ---------------------------------------------------------------- a full or unwritable disk loses nothing


class _FileOnAFullDisk:
    """A file whose disk fills up after `room` more bytes: the write that crosses it lands partly, then ENOSPC."""

    def __init__(self, file, room: int, code: int):
        self.file, self.room, self.code = file, room, code

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def _disk_fills_up(monkeypatch, name: str, nth: int = 1, room: int = 4096, code: int = errno.ENOSPC) -> None:
    """Stand in for a disk that fills up while the nth file called name is written (other writes go through)."""
    real_mkstemp, real_fdopen, temp_names, seen = tempfile.mkstemp, os.fdopen, {}, []

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        temp_names[fd] = Path(path).name
        return fd, path

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        if temp_names.pop(fd, "").startswith(f".{name}."):
            seen.append(fd)
            if len(seen) == nth:
                return _FileOnAFullDisk(file, room, code)
        return file

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


def _folder_refuses_writes(monkeypatch, folder: Path, code: int) -> None:
    """Stand in for a read-only (EROFS) or forbidden (EACCES) folder, which root too cannot write in."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and folder in (Path(dir), *Path(dir).parents):
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("file, nth, room, kept", [
    ("checkpoint.pt", 2, 4096, 1),  # epoch 2's checkpoint, in the background writer
    ("history.json", 2, 10, 1),  # the history after epoch 1
    ("metrics.json", 1, 10, 3),  # the finished run's metrics, after its weights were kept
])
def test_a_disk_that_fills_up_fails_the_run_in_one_sentence_and_resume_finishes_it(
        voc_root, tmp_path, monkeypatch, whole_run, file, nth, room, kept):
    cfg = train.TrainConfig(**SMALL)
    _disk_fills_up(monkeypatch, file, nth, room)
    with pytest.raises(UserError) as caught:
        train.fit(cfg, voc_root, name="full", runs_dir=tmp_path, progress=False)
    message = str(caught.value)
    folder = tmp_path / "full"
    assert "\n" not in message and message.count(". ") == 0, message
    assert f"Could not write {file} (" in message and " MB) in " in message and str(folder) in message
    assert "No space left on device" in message and "free that much space" in message and "RUNS_DIR" in message
    assert "resume the run (resume=True, or mp3kit train --resume)" in message and f"(epoch {kept})" in message
    failed = runs.load_run(folder)
    assert failed.status == "failed" and failed.reason == message
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"
    assert train.load_checkpoint(folder / "checkpoint.pt")["epoch"] == kept  # the last good checkpoint

    monkeypatch.undo()  # space freed
    resumed = train.fit(cfg, voc_root, name="full", runs_dir=tmp_path, progress=False, resume=True)
    assert resumed.status == "complete" and resumed.origin == "resumed"
    np.testing.assert_allclose(_history_numbers(resumed), _history_numbers(whole_run), rtol=1e-5)
    assert resumed.test_map == pytest.approx(whole_run.test_map, abs=1e-6)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_runs_folder_is_one_sentence_and_exit_2_from_the_cli(voc_root, tmp_path, monkeypatch, capsys, code):
    from mp3kit import cli

    _folder_refuses_writes(monkeypatch, tmp_path / "runs", code)
    with pytest.raises(UserError) as caught:
        train.fit(train.TrainConfig(**SMALL), voc_root, name="ro", runs_dir=tmp_path / "runs", progress=False)
    message = str(caught.value)
    assert os.strerror(code) in message and str(tmp_path / "runs" / "ro") in message and "\n" not in message
    assert "make that folder writable or choose another RUNS_DIR (--runs-dir)" in message
    assert not list((tmp_path / "runs").rglob("*.*")), "nothing is written in a read-only folder"

    status = cli.main(["train", "--data-root", str(voc_root), "--name", "ro", "--runs-dir", str(tmp_path / "runs"),
                       "--epochs", "1", "--image-size", "64", "--max-images", "30", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("mp3kit: Could not write config.json") and os.strerror(code) in err


@pytest.fixture
def small_disk(tmp_path):
    """Return a real 320 KB filesystem (tmpfs): the kernel refuses what does not fit, for root too."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = sys.platform == "linux" and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_keeps_the_last_good_checkpoint_and_resume_ends_like_an_uninterrupted_run(
        voc_root, small_disk, whole_run):
    # 320 KB hold the config, the history and one epoch's checkpoint (about 215 KB with SGD's momentum), not two:
    # epoch 2's checkpoint fills the disk halfway and torch.save raises its `unexpected pos` RuntimeError.
    cfg = train.TrainConfig(**SMALL)
    with pytest.raises(UserError, match=r"Could not write checkpoint\.pt \(0\.\d MB\) in .*No space left on device"):
        train.fit(cfg, voc_root, name="full", runs_dir=small_disk, progress=False)
    folder = small_disk / "full"
    assert runs.load_run(folder).status == "failed"
    assert not list(folder.glob(".*.tmp")) and train.load_checkpoint(folder / "checkpoint.pt")["epoch"] == 1

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space freed
    resumed = train.fit(cfg, voc_root, name="full", runs_dir=small_disk, progress=False, resume=True)
    assert resumed.status == "complete"
    np.testing.assert_allclose(_history_numbers(resumed), _history_numbers(whole_run), rtol=1e-5)

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # and now a read-only disk
    with pytest.raises(UserError, match=r"in .*disk/again \(Read-only file system\): make that folder writable"):
        train.fit(cfg, voc_root, name="again", runs_dir=small_disk, progress=False)


def test_a_user_error_in_a_notebook_shows_its_sentence_not_a_traceback():
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        errors = []
        client.execute_interactive(
            "from mp3kit.util import WriteFailed\n"
            "raise WriteFailed('runs/x/checkpoint.pt', 3 * 2**20, 'No space left on device', 28)",
            timeout=60, output_hook=lambda msg: errors.append(msg["content"]) if msg["msg_type"] == "error" else None)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert len(errors) == 1 and errors[0]["ename"] == "WriteFailed"
    shown = "\n".join(errors[0]["traceback"])
    assert "Traceback" not in shown and "File " not in shown and len(errors[0]["traceback"]) == 1
    assert "Could not write checkpoint.pt (3.0 MB) in runs/x (No space left on device): free that much space there." in shown


# Configs that mp3kit 0.1.0's train.fit recorded, before TrainConfig's fields and the model registry were rewritten.
RECORDED = json.loads((Path(__file__).parent / "data" / "configs-0.1.0.json").read_text())["runs"]


@pytest.mark.parametrize("recorded", RECORDED, ids=[r["name"] for r in RECORDED])
def test_a_config_recorded_by_0_1_0_reads_back_as_the_same_run_under_the_same_name(recorded):
    config = train.TrainConfig(**recorded["kwargs"])
    assert config.default_name() == recorded["name"]  # a run named by default is found under its name
    assert config.to_dict() == recorded["config"]
    assert train.TrainConfig.from_dict(recorded["config"]).identity() == config.identity()


def test_a_run_recorded_by_0_1_0_is_reused_not_trained_again(voc_root, tmp_path, monkeypatch):
    recorded = RECORDED[0]
    first = train.fit(train.TrainConfig(**recorded["kwargs"]), voc_root, runs_dir=tmp_path, progress=False)
    config_file = first.path / "config.json"
    on_disk = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**recorded["config"], "data": on_disk["data"]}))  # as 0.1.0 wrote it
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    again = train.fit(train.TrainConfig(**recorded["kwargs"]), voc_root, runs_dir=tmp_path, progress=False, reuse=True)
    assert again.name == recorded["name"] and again.origin == "reused" and again.metrics == first.metrics


@pytest.mark.slow
def test_an_old_name_is_refused_in_one_sentence_that_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match=r"^Unknown model 'seed': use one of simple, alexnet, alexnet-pretrained, "
                                        r"alexnet-pretrained-frozen, alexnet-bn, basenet, a spec"):
        train.TrainConfig(model="seed")
    with pytest.raises(UserError, match=r"^TrainConfig.augment='seed' is not one of none, jitter-flip-rotate, standard, flip\.$"):
        train.TrainConfig(augment="seed")
    out = _cli("train", "--model", "seed", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Unknown model 'seed'" in out.stderr
    assert not (tmp_path / "seed").exists()


@pytest.mark.slow
def test_a_pretrained_run_at_the_quick_profiles_width_loads_back(voc_root, tmp_path, monkeypatch):
    # The quick profile gives every run width 0.125; the pretrained AlexNet keeps ImageNet's sizes whatever the width,
    # and load_model must rebuild it at those sizes (without the ImageNet file: the checkpoint holds every weight).
    with torch.device("meta"):
        shapes = torchvision.models.alexnet().state_dict()
    torch.save({k: torch.randn(v.shape) * 0.01 for k, v in shapes.items()}, tmp_path / "imagenet.pth")
    monkeypatch.setenv(settings.ALEXNET_WEIGHTS, str(tmp_path / "imagenet.pth"))
    cfg = train.TrainConfig(model="alexnet-pretrained", width=0.125, image_size=64, max_images=20, epochs=1,
                            eval_every=1, batch_size=20)
    run = train.fit(cfg, voc_root, name="pretrained", runs_dir=tmp_path / "runs", progress=False)
    monkeypatch.setenv(settings.ALEXNET_WEIGHTS, str(tmp_path / "gone.pth"))
    model = train.load_model(run.path)
    assert model.features[0].out_channels == 64 and model.classifier[6].out_features == 20
    saved = torch.load(run.checkpoint_path, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- fine-tuning: a faster head, flips


@pytest.mark.slow
def test_the_fine_tuning_recipe_trains_the_new_head_at_its_multiple_of_the_pretrained_layers_lr(
        voc_root, tmp_path, monkeypatch):
    # A locally written file stands in for the ImageNet weights, as notebook 2's pretrained AlexNet reads them.
    with torch.device("meta"):
        shapes = torchvision.models.alexnet().state_dict()
    torch.save({k: torch.randn(v.shape) * 0.01 for k, v in shapes.items()}, tmp_path / "imagenet.pth")
    monkeypatch.setenv(settings.ALEXNET_WEIGHTS, str(tmp_path / "imagenet.pth"))
    seen = []

    def recording(session, loader, epoch, stop=None):  # the optimizer's groups as each epoch trains with them
        named = {id(p): n for n, p in session.model.named_parameters()}
        seen.append([(g["lr"], sorted(named[id(p)] for p in g["params"])) for g in session.optimizer.param_groups])
        return train_one_epoch(session, loader, epoch, stop)

    train_one_epoch = train.train_one_epoch
    monkeypatch.setattr(train, "train_one_epoch", recording)
    recipe = train.TrainConfig(model="alexnet-pretrained", lr=1e-3, head_lr_mult=10, augment="flip", image_size=64,
                               max_images=20, epochs=2, eval_every=1, batch_size=20, schedule="step", step_size=1,
                               gamma=0.5)
    run = train.fit(recipe, voc_root, name="finetuned", runs_dir=tmp_path / "runs", progress=False)
    assert run.complete and run.test_map is not None
    head = ["classifier.6.bias", "classifier.6.weight"]  # the new 4096 -> 20 layer
    for epoch, groups in enumerate(seen):  # the schedule scales both groups alike, epoch after epoch
        (body_lr, body), (head_lr, in_head) = groups
        assert body_lr == pytest.approx(1e-3 * 0.5 ** epoch) and head_lr == pytest.approx(1e-2 * 0.5 ** epoch)
        assert in_head == head and len(body) == len(dict(train.build_model(recipe).named_parameters())) - 2
    assert [h["lr"] for h in run.history] == pytest.approx([1e-3, 5e-4])  # the history records the pretrained layers' lr
    assert run.config["head_lr_mult"] == 10 and run.config["augment"] == "flip"
    # The course's single lr is another run: it records no multiplier and is not reused for the recipe.
    single = train.TrainConfig(model="alexnet-pretrained")
    assert "head_lr_mult" not in single.to_dict() and single.default_name() != single.replace(head_lr_mult=10).default_name()


@pytest.mark.slow
def test_a_faster_head_learns_more_from_the_same_steps():
    # A network whose layers learn at a small lr: with the head 30 times faster, the same steps lower the loss more.
    data = train.load_data(synth.ensure_synthetic(), SMALL["max_images"])
    losses = {}
    for mult in (1, 30):
        session = train.start_session(train.TrainConfig(**{**SMALL, "lr": 1e-3, "head_lr_mult": mult}), data.train)
        loader = session.train_loader()
        losses[mult] = [train.train_one_epoch(session, loader, epoch)["train_loss"] for epoch in range(4)]
    assert losses[1][0] == pytest.approx(losses[30][0], abs=0.02)  # the same start
    assert losses[30][-1] < losses[1][-1] - 0.02, losses


class ConvScores(torch.nn.Module):
    """A network whose 20 scores come from a 1x1 convolution, averaged: it has no Linear layer."""

    def __init__(self, num_classes=20):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))  # (B, 20)


def test_a_head_multiplier_without_a_linear_head_is_one_sentence(voc_root, tmp_path):
    with pytest.raises(UserError, match=r"^TrainConfig.head_lr_mult=10 needs a network whose 20 scores come from an "
                                        r"nn.Linear layer, and ConvScores has none: leave head_lr_mult at 1\.$"):
        train.fit(train.TrainConfig(**{**SMALL, "model": ConvScores, "head_lr_mult": 10}), voc_root, name="x",
                  runs_dir=tmp_path, progress=False)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- recipes: trainval, flip TTA, the lr range test

RECIPE_NET = {"name": "tiny3", "blocks": [{"conv": 16, "s": 2, "bn": True}, {"conv": 32, "s": 2, "bn": True},
                                         {"conv": 64, "s": 2, "bn": True}], "pool": "global", "head": []}
RECIPE = dict(model=RECIPE_NET, optimizer="adam", lr=3e-3, epochs=6, batch_size=25, image_size=64, eval_every=3,
              max_images=200)


@pytest.fixture(scope="module")
def recipe_data(voc_root):
    return train.load_data(voc_root, RECIPE["max_images"])


@pytest.fixture(scope="module")
def recipe_run(recipe_data, tmp_path_factory):
    return train.fit(train.TrainConfig(**RECIPE), name="train", runs_dir=tmp_path_factory.mktemp("recipe"),
                     progress=False, data=recipe_data)


@pytest.mark.slow
def test_training_on_trainval_beats_train_alone_with_the_same_recipe(recipe_data, recipe_run, tmp_path):
    both = train.fit(train.TrainConfig(**RECIPE, train_split="trainval"), name="tv", runs_dir=tmp_path, progress=False,
                     data=recipe_data)
    assert both.config["train_split"] == "trainval" and recipe_run.config["train_split"] == "train"
    assert both.test_map >= recipe_run.test_map + 0.02, (both.test_map, recipe_run.test_map)
    # val is trained on, so a trainval run has no held-out val curve, only the train mAP over train + val.
    evaluated = [h for h in both.history if h["train_map"] is not None]
    assert evaluated and all(h["val_map"] is None and h["val_loss"] is None for h in evaluated)
    assert both.best_val_map() is None and both.complete


def test_flip_tta_scores_an_image_and_its_mirror_alike_and_does_not_lower_map(recipe_data, recipe_run):
    model = train.load_model(recipe_run)
    loader = train.pipeline.make_loader(recipe_data.test, train=False, batch_size=50, image_size=64,
                                        device=torch.device("cpu"))
    plain, _ = train.evaluate_test(model, loader, recipe_data.test, torch.device("cpu"), None)
    flip, scores = train.evaluate_test(model, loader, recipe_data.test, torch.device("cpu"), None, tta="flip")
    assert flip["test_map"] >= plain["test_map"] - 0.005, (flip["test_map"], plain["test_map"])
    assert flip["test_map"] != plain["test_map"]  # the mirror images were really scored
    x, _ = next(iter(loader))
    mirrored = _OneBatch(x.flip(-1))
    _, a = train.evaluate(model, _OneBatch(x), torch.device("cpu"), tta="flip")
    _, b = train.evaluate(model, mirrored, torch.device("cpu"), tta="flip")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _OneBatch:
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        yield self.x, torch.zeros(self.x.shape[0], 20)


def test_tta_is_recorded_in_the_config_and_a_run_without_the_new_fields_is_still_reused(recipe_data, recipe_run, tmp_path):
    assert recipe_run.config["tta"] == "none"
    copy = shutil.copytree(recipe_run.path, tmp_path / recipe_run.name)  # the other tests read the run as trained
    old = runs.load_run(copy)
    config = {k: v for k, v in old.config.items() if k not in ("train_split", "tta")}  # as saved before they existed
    (copy / "config.json").write_text(json.dumps(config))
    again = train.fit(train.TrainConfig(**RECIPE), name="train", runs_dir=tmp_path, progress=False,
                      data=recipe_data, reuse=True)
    assert again.origin == "reused"
    with pytest.raises(UserError, match="TrainConfig.tta='mirror' is not one of none, flip"):
        train.TrainConfig(tta="mirror")


@pytest.mark.slow
def test_the_lr_range_test_suggests_an_lr_that_trains_far_faster_than_a_decade_lower(recipe_data, tmp_path):
    config = train.TrainConfig(**{**RECIPE, "epochs": 2})
    found = train.lr_range_test(config, data=recipe_data, steps=150)
    lr, (low, high) = found["suggested_lr"], found["range"]
    assert low <= lr <= high and len(found["lr"]) == len(found["loss"]) == len(found["smoothed"])
    assert all(b > a for a, b in zip(found["lr"], found["lr"][1:]))

    def losses(lr):
        run = train.fit(config.replace(lr=lr), name=f"lr{lr:g}", runs_dir=tmp_path, progress=False, data=recipe_data)
        return [h["train_loss"] for h in run.history]

    # Training at the suggestion falls steadily and far below training a decade lower, which barely moves in 2
    # epochs. (The steepest fall is a safe choice, not the fastest lr: the top of the range often trains faster.)
    at, below = losses(lr), losses(lr / 10)
    assert at[-1] < at[0] and at[-1] < below[-1] - 0.1, (below, at)


def test_suggest_lr_finds_the_steepest_fall_of_a_known_curve():
    lrs = np.logspace(-6, 0, 121)
    loss = 0.7 - 0.5 / (1 + np.exp(-(np.log10(lrs) + 3) * 3))  # falls fastest at lr 1e-3
    found = train.suggest_lr(lrs, loss)
    assert found["suggested_lr"] == pytest.approx(1e-3, rel=0.13)
    assert found["range"][0] < 1e-3 < found["range"][1] and found["range"][1] / found["range"][0] < 100
    assert train.suggest_lr(lrs, np.linspace(0.2, 0.7, 121)) == {"suggested_lr": None, "range": None}


@pytest.mark.slow
def test_cli_trains_on_trainval_with_flip_tta_and_runs_the_lr_range_test(voc_root, tmp_path):
    out = _cli("train", "--data-root", str(voc_root), "--name", "tv", "--runs-dir", str(tmp_path), "--epochs", "1",
               "--image-size", "64", "--max-images", "30", "--train-split", "trainval", "--tta", "flip", "--quiet")
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert config["train_split"] == "trainval" and config["tta"] == "flip"
    found = _cli("lr-find", "--data-root", str(voc_root), "--image-size", "64", "--max-images", "60", "--steps", "40",
                 "--optimizer", "adam", "--plot", str(tmp_path / "lr.png"), "--quiet")
    assert found.returncode == 0, found.stderr
    assert re.fullmatch(r"simple with adam: the loss falls fastest at lr \S+, and at least half as fast from \S+ to \S+ "
                        r"\(40 steps\); plot: .*lr\.png\n", found.stdout), found.stdout
    assert (tmp_path / "lr.png").stat().st_size > 1000
    bad = _cli("train", "--tta", "mirror")
    assert bad.returncode == 2 and "invalid choice: 'mirror'" in bad.stderr


@pytest.mark.slow
def test_cli_trains_a_narrow_network_and_the_run_loads_back_at_its_width(voc_root, tmp_path):
    out = _cli("train", "--data-root", str(voc_root), "--name", "narrow", "--runs-dir", str(tmp_path), "--epochs", "1",
               "--model", "alexnet-bn", "--width", "0.125", "--image-size", "64", "--max-images", "20", "--quiet")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "narrow" / "config.json").read_text())["width"] == 0.125
    model = train.load_model(tmp_path / "narrow")  # rebuilt from the recorded width, so the weights fit
    assert model.features[0].out_channels == 8
    bad = _cli("train", "--data-root", str(voc_root), "--runs-dir", str(tmp_path), "--width", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "TrainConfig.width=-1.0" in bad.stderr


# ---------------------------------------------------------------- Ctrl-C, the kernel's interrupt and SIGTERM


def _cli_train_args(voc_root, runs_dir, name, epochs):
    return ["train", "--data-root", str(voc_root), "--name", name, "--runs-dir", str(runs_dir), "--epochs", str(epochs),
            "--model", json.dumps(TINY_NET), "--image-size", "64", "--max-images", "20", "--batch-size", "20", "--quiet"]


def _wait_for(path: Path, process=None, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("sig, code, how", [(signal.SIGINT, 130, "was interrupted"),
                                            (signal.SIGTERM, 143, "was stopped by SIGTERM")], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_a_signal_to_mp3kit_train_marks_the_run_interrupted_at_its_checkpoint_and_resume_finishes_it(
        voc_root, tmp_path, sig, code, how):
    args = _cli_train_args(voc_root, tmp_path, "cut", epochs=15)
    # A background job of a non-interactive shell ignores SIGINT, and its children inherit that: give it back the
    # default, as a terminal has it, so that Python turns Ctrl-C into KeyboardInterrupt.
    process = subprocess.Popen([sys.executable, "-m", "mp3kit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folder = tmp_path / "cut"
    _wait_for(folder / "checkpoint.pt", process)
    config_before = (folder / "config.json").read_bytes()
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err

    kept = train.load_checkpoint(folder / "checkpoint.pt")["epoch"]
    assert 1 <= kept < 15
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"mp3kit: Run cut {how} during epoch ")
    assert f"its last good checkpoint is epoch {kept}: resume it (resume=True, or mp3kit train --resume)" in lines[0]
    interrupted = runs.load_run(folder)
    assert interrupted.status == "interrupted" and interrupted.reason == lines[0].removeprefix("mp3kit: ")
    assert len(interrupted.history) == kept  # what the checkpoint holds
    assert (folder / "config.json").read_bytes() == config_before and not list(folder.glob(".*.tmp"))

    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    done = runs.load_run(folder)
    assert done.status == "complete" and len(done.history) == 15
    assert done.history[:kept] == interrupted.history  # the epochs before the interrupt were not trained again


def test_sigterm_lets_the_checkpoint_being_written_land_and_fit_restores_the_old_handler(voc_root, tmp_path, monkeypatch):
    save, written = train._save_checkpoint, []

    def slow_disk(path, state):
        time.sleep(1.0)  # SIGTERM arrives while this epoch's checkpoint is still being written
        save(path, state)
        written.append(state["epoch"])

    def terminate_after_epoch_2(run):
        if len(run.history) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train, "_save_checkpoint", slow_disk)
    before = signal.getsignal(signal.SIGTERM)
    cfg = train.TrainConfig(**{**SMALL, "epochs": 4})
    with pytest.raises(KeyboardInterrupt) as caught:
        train.fit(cfg, voc_root, name="term", runs_dir=tmp_path, progress=False, callback=terminate_after_epoch_2)
    assert signal.getsignal(signal.SIGTERM) is before
    assert isinstance(caught.value, train.Interrupted) and caught.value.signum == signal.SIGTERM
    assert written == [1, 2] and "its last good checkpoint is epoch 2:" in str(caught.value)
    assert train.load_checkpoint(tmp_path / "term" / "checkpoint.pt")["epoch"] == 2
    assert runs.load_run(tmp_path / "term").status == "interrupted"

    monkeypatch.undo()
    # In a thread (the widget panel's), where no signal handler can be installed, fit trains and leaves them alone.
    results = []
    worker = threading.Thread(target=lambda: results.append(
        train.fit(cfg, voc_root, name="term", runs_dir=tmp_path, progress=False, resume=True)))
    worker.start()
    worker.join()
    assert results and results[0].status == "complete" and results[0].origin == "resumed"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_before_the_checkpoint_writer_starts_ends_the_run_as_that_signal(tmp_path, monkeypatch):
    # fit's SIGTERM handler raises where the main thread is; here, between making the writer thread and starting it.
    def signalled(self):
        raise train.Interrupted(signum=signal.SIGTERM)

    monkeypatch.setattr(threading.Thread, "start", signalled)
    with pytest.raises(train.Interrupted), train._CheckpointWriter() as writer:
        writer.save(tmp_path / "checkpoint.pt", {"epoch": 1})
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_the_kernels_interrupt_button_marks_the_run_interrupted_in_one_line(voc_root, tmp_path):
    from jupyter_client.manager import start_new_kernel

    folder = tmp_path / "nb"
    code = (f"from mp3kit import train\n"
            f"cfg = train.TrainConfig(model={TINY_NET!r}, image_size=64, max_images=20, batch_size=20, epochs=15)\n"
            f"run = train.fit(cfg, {str(voc_root)!r}, name='nb', runs_dir={str(tmp_path)!r}, progress=False, "
            f"resume=RESUME)\n")
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        msg_id = client.execute("RESUME = False\n" + code)
        _wait_for(folder / "checkpoint.pt")
        manager.interrupt_kernel()
        errors = []
        while True:
            msg = client.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                errors.append(msg["content"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        interrupted = runs.load_run(folder)
        resumed = []
        client.execute_interactive("RESUME = True\n" + code + "print(run.status, run.origin)", timeout=120,
                                   output_hook=lambda m: resumed.append(m["content"].get("text", "")))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert len(errors) == 1 and errors[0]["ename"] == "Interrupted" and len(errors[0]["traceback"]) == 1
    shown = errors[0]["traceback"][0]
    assert "Traceback" not in shown and "Run nb was interrupted during epoch " in shown
    assert interrupted.status == "interrupted" and interrupted.reason in shown
    assert f"its last good checkpoint is epoch {len(interrupted.history)}:" in shown
    assert "complete resumed" in "".join(resumed)
