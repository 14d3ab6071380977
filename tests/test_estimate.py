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
    # docs/measurements.md states the error measured on the quick profile (tools/measure_report.py); a run here must
    # stay within 3x either way, or the schedule's arithmetic or the timing is wrong.
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


def test_a_plans_seeds_each_cost_a_run_and_a_finished_seed_costs_nothing(tmp_path, capsys):
    exp = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    tiny = exp.config(model="simple", image_size=32, epochs=1)
    exp.estimate({"a": estimate.Planned(tiny, seeds=3)})
    planned = exp.manifest.values["estimate"]["runs"]
    assert list(planned) == ["01-smoke-a", "01-smoke-a-seed1", "01-smoke-a-seed2"]  # the names exp.run gives them
    assert len(set(planned.values())) == 1 and planned["01-smoke-a"] > 0  # each seed costs what the first costs
    assert exp.manifest.values["estimate"]["seconds"] == pytest.approx(3 * planned["01-smoke-a"], abs=0.02)
    assert "3 seeds: 3 steps" in capsys.readouterr().out
    exp.run("a", tiny, seeds=2)
    capsys.readouterr()
    exp.estimate({"a": estimate.Planned(tiny, seeds=3)})
    assert list(exp.manifest.values["estimate"]["runs"].values()) == [0, 0, planned["01-smoke-a-seed2"]]
    assert "3 seeds, 2 finished: 1 steps" in capsys.readouterr().out


def test_the_final_model_counts_as_the_slowest_row_until_its_folder_holds_one(tmp_path, capsys):
    from mp3kit import models

    exp = Experiment("03_develop_classifier", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    too_deep = models.SEED_ABLATION[-1][1]  # the extra convolutions: more than 64 px images can take
    rows = [("fast", "simple", {}), ("slow", "simple", {"image_size": 128}), ("too deep", too_deep, {})]
    plan = exp.ablation_plan(rows, final={"epochs": 3})
    assert list(plan) == ["ablation-1", "ablation-2", "final"]  # a row the ablation skips trains nothing
    exp.estimate(plan)
    planned = exp.manifest.values["estimate"]["runs"]
    slow, fast = (exp._estimate(c, "03-smoke-final").seconds for c in (plan["final"].configs[1], plan["final"].configs[0]))
    assert slow > fast and planned["03-smoke-final"] == round(slow, 2)
    assert "(the slowest of the 2 configs it may be)" in capsys.readouterr().out
    exp.run("final", plan["final"].configs[0])  # val chose the fast row: its final run is on disk now
    exp.estimate(plan)
    assert exp.manifest.values["estimate"]["runs"]["03-smoke-final"] == 0


def test_a_pretrained_network_whose_weights_are_missing_is_timed_with_fresh_weights(tmp_path, monkeypatch, capsys):
    from mp3kit import settings

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty hub cache, no file named
    monkeypatch.delenv(settings.ALEXNET_WEIGHTS, raising=False)
    monkeypatch.delenv(settings.ALLOW_DOWNLOAD, raising=False)
    exp = Experiment("02_scratch_vs_pretrained", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    assert exp.check_pretrained() is not None  # the weights cannot be loaded here
    capsys.readouterr()
    exp.estimate({"alexnet-pretrained": exp.config(model="alexnet-pretrained", epochs=1)})
    out = capsys.readouterr().out
    assert exp.manifest.values["estimate"]["runs"]["02-smoke-alexnet-pretrained"] > 0
    assert "alexnet-pretrained  1 steps" in out and "on the CPU" in out


def test_a_run_keeps_its_estimate_beside_the_seconds_it_took(tmp_path, capsys):
    from mp3kit import runs

    exp = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    tiny = exp.config(model="simple", image_size=32, epochs=2)
    exp.estimate({"a": tiny})
    run = exp.run("a", tiny)
    recorded = runs.load_run(run.path)
    assert recorded.estimate["seconds"] == exp.manifest.values["estimate"]["runs"]["01-smoke-a"] > 0
    assert recorded.estimate["steps"] == 2 and recorded.estimate["device"] == "the CPU"
    assert recorded.metrics["seconds"] > 0  # the time it took, to compare with (tools/measure_report.py)
    status = (run.path / "status.json").read_bytes()
    again = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    again.estimate({"a": tiny})
    assert again.run("a", tiny).origin == "reused" and (run.path / "status.json").read_bytes() == status
