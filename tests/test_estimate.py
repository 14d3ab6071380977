"""How long a run will take, said before it trains: the schedule's arithmetic, a timing that changes nothing, and an
estimate close to the time really taken."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mp3kit import estimate, synth, train
from mp3kit.config import TrainConfig
from mp3kit.experiment import Experiment

SMALL = dict(model="simple", image_size=32, batch_size=10, epochs=3, eval_every=2, max_images=60)


@pytest.fixture(scope="module")
def data():
    return train.load_data(synth.ensure_synthetic(), max_images=60)


def test_run_cost_counts_fits_steps_and_evaluations(data):
    config = TrainConfig(**SMALL)  # 60 train images at batch 10: 6 steps an epoch; evaluated after epochs 1, 2, 3
    assert estimate.run_cost(config, data) == (18, 3 * (60 + 60) + 60)
    assert estimate.run_cost(config, data, first_epoch=2) == (6, 1 * (60 + 60) + 60)  # resumed after epoch 2
    trainval = config.replace(train_split="trainval")  # 120 images, no held-out val
    assert estimate.run_cost(trainval, data) == (36, 3 * 120 + 60)
    assert estimate.run_cost(config.replace(tta="flip"), data) == (18, 2 * (3 * 120 + 60))  # every image twice
    assert estimate.run_cost(config.replace(epochs=10, eval_every=5), data)[1] == 3 * 120 + 60  # epochs 1, 5, 10


def test_epochs_to_train_follows_fits_decision(data, tmp_path):
    config = TrainConfig(**{**SMALL, "model": "simple"})
    path = tmp_path / "runs" / "mine"
    assert train.epochs_to_train(config, data, path) == 3  # nothing there yet
    stop = threading.Event()
    stopped = train.fit(config, data=data, name="mine", runs_dir=tmp_path / "runs", progress=False, stop=stop,
                        callback=lambda run: stop.set())
    assert stopped.status == "stopped" and len(stopped.history) == 1
    assert train.epochs_to_train(config, data, path, resume="auto") == 2  # resumes after its checkpoint
    assert train.epochs_to_train(config, data, path, resume=False) == 3  # trained afresh (the old one moves aside)
    assert train.epochs_to_train(config.replace(lr=0.001), data, path) == 3  # another config: afresh
    train.fit(config, data=data, name="mine", runs_dir=tmp_path / "runs", progress=False, resume=True)
    assert train.epochs_to_train(config, data, path) == 0  # finished: reused
    assert estimate.estimate_run(config, data, path=path).seconds == 0.0


@pytest.mark.slow
def test_timing_a_run_changes_nothing_it_then_trains(data, tmp_path):
    config = TrainConfig(**{**SMALL, "epochs": 2, "augment": "jitter-flip-rotate"})
    torch.manual_seed(123)
    np.random.seed(7)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    timing = estimate.measure(config, data)
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()
    assert timing.step_s > 0 and timing.eval_image_s > 0 and timing.device == "the CPU"
    # A run trained right after being timed is the run trained without it.
    timed = train.fit(config, data=data, name="timed", runs_dir=tmp_path, progress=False)
    plain = train.fit(config, data=data, name="plain", runs_dir=tmp_path, progress=False)
    assert timed.test_map == plain.test_map and [h["train_loss"] for h in timed.history] == [
        h["train_loss"] for h in plain.history]


@pytest.mark.slow
def test_the_estimate_is_within_a_factor_of_3_of_the_time_the_run_takes(data, tmp_path):
    # The README states the factor measured on the quick profile (tools/measure_eta.py); a tiny run here must stay
    # within 3x either way, or the schedule's arithmetic or the timing is wrong.
    config = TrainConfig(**{**SMALL, "image_size": 64, "epochs": 4, "max_images": None})
    full = train.load_data(synth.ensure_synthetic())
    expected = estimate.estimate_run(config, full)
    run = train.fit(config, data=full, name="timed", runs_dir=tmp_path, progress=False)
    taken = run.metrics["seconds"]
    assert expected.steps == 4 * 50 and 1 / 3 < expected.seconds / taken < 3, (expected.seconds, taken)


def test_a_notebooks_estimate_counts_reused_runs_as_nothing_and_warns_past_an_hour(tmp_path, capsys):
    exp = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    tiny = exp.config(model="simple", image_size=32, epochs=1)
    exp.run("done", tiny)
    capsys.readouterr()
    exp.estimate({"done": tiny, "new": tiny.replace(epochs=2)})
    out, total = capsys.readouterr().out, exp.manifest.values["estimate"]["seconds"]
    assert "finished: reused" in out and "0 s" in out and total > 0 and "more than an hour" not in out
    # A network whose steps take 10 s (a stand-in timing) makes hours of work: the warning says what to do.
    (key,) = exp._timings
    exp._timings[key] = estimate.Timing(10.0, 0.1, "a slow GPU")
    exp.estimate({"long": tiny.replace(epochs=400)})
    out, total = capsys.readouterr().out, exp.manifest.values["estimate"]["seconds"]
    assert total > estimate.LONG_S and "more than an hour" in out and "RUNS_ON_DRIVE = True" in out
    assert "about 2 h" in out and "a slow GPU" in out  # 400 steps of 10 s (smoke: one batch an epoch)


def test_duration_reads_as_a_person_says_it():
    assert [estimate.duration(s) for s in (0.4, 42, 200, 3599, 3600, 7385)] == [
        "0 s", "42 s", "3 min 20 s", "59 min 59 s", "1 h 00 min", "2 h 03 min"]


@pytest.mark.slow
def test_mp3kit_train_says_how_long_before_it_trains(tmp_path, capsys):
    from mp3kit import cli

    argv = ["train", "--name", "t", "--runs-dir", str(tmp_path), "--model", "simple", "--image-size", "32", "--epochs", "2",
            "--max-images", "20", "--batch-size", "10"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("t: about ") and "4 training steps" in out[0] and "on the CPU" in out[0]
    assert cli.main([*argv, "--quiet"]) == 0  # --quiet: no estimate, nothing timed
    assert not any("about" in line for line in capsys.readouterr().out.splitlines())
