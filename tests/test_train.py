"""The training engine: learning, run records, resume, and the errors a user can cause."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from mp3kit import runs, synth, train
from mp3kit.util import UserError

TINY_NET = {"name": "tiny", "blocks": [{"conv": 16, "s": 2, "bn": True}, {"conv": 32, "s": 2, "bn": True},
                                        {"conv": 64, "s": 2, "bn": True}], "pool": "global", "head": []}
SMALL = dict(model=TINY_NET, image_size=64, max_images=60, epochs=3, eval_every=1, batch_size=20)


@pytest.fixture(scope="session")
def voc_root():
    return synth.ensure_synthetic()


def _history_numbers(run):
    keys = ("train_loss", "val_loss", "train_map", "val_map")
    return [[h[k] for k in keys] for h in run.history]


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


def test_run_record_on_disk_matches_the_returned_run(voc_root, tmp_path):
    run = train.fit(train.TrainConfig(**SMALL), voc_root, name="rec", runs_dir=tmp_path, progress=False)
    assert run.status == "complete"
    for f in runs.RUN_FILES:
        assert (tmp_path / "rec" / f).exists(), f
    loaded = runs.load_run(tmp_path / "rec")
    assert loaded.history == run.history and loaded.metrics == run.metrics and loaded.status == "complete"
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
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
def test_resumed_run_ends_like_an_uninterrupted_one(voc_root, tmp_path, augment):
    cfg = train.TrainConfig(**SMALL, augment=augment)
    whole = train.fit(cfg, voc_root, name="whole", runs_dir=tmp_path, progress=False)

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
