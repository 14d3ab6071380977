"""Why a network scores what it scores (mp3kit.explain): thresholds chosen on val, prediction marks, context errors,
Grad-CAM, and `mp3kit explain`; the learning tests (marked slow) train small networks on synthetic trees."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from mp3kit import data as voc
from mp3kit import explain, runs, synth, train
from mp3kit.util import UserError

SMOKE = dict(model="simple", image_size=64, max_images=40, epochs=2, eval_every=1, batch_size=20)
LEARN = dict(image_size=64, epochs=12, batch_size=16, optimizer="adam", lr=1e-3, eval_every=100)
PLANTED = {"dog": "bird"}  # every synthetic image holding a dog holds a bird too


class GapNet(nn.Module):
    """A student's network: four convolutions with BatchNorm, a global average pool and one Linear layer."""

    def __init__(self, num_classes=20):
        super().__init__()
        layers, channels = [], [3, 16, 32, 64, 64]
        for i, (a, b) in enumerate(zip(channels, channels[1:])):
            layers += [nn.Conv2d(a, b, 3, stride=2 if i < 3 else 1, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))  # (B, 20)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mp3kit", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def voc_root():
    return synth.ensure_synthetic()


@pytest.fixture(scope="module")
def smoke_run(voc_root, tmp_path_factory):
    return train.fit(train.TrainConfig(**SMOKE), voc_root, name="smoke", runs_dir=tmp_path_factory.mktemp("runs"),
                     progress=False)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The same 1,200 synthetic images twice: as generated, and with every dog's image holding a bird."""
    base = tmp_path_factory.mktemp("trees")
    return {"plain": synth.make_synthetic_voc(base / "plain", n_images=1200, seed=0),
            "planted": synth.make_synthetic_voc(base / "planted", n_images=1200, seed=0, together=PLANTED)}


@pytest.fixture(scope="module")
def learned(trees, tmp_path_factory):
    """GapNet trained briefly on each tree."""
    folder = tmp_path_factory.mktemp("learned")
    return {kind: train.fit(train.TrainConfig(model=GapNet, **LEARN), root, name=kind, runs_dir=folder, progress=False)
            for kind, root in trees.items()}


# ---------------------------------------------------------------- thresholds and marks


def test_each_class_gets_the_threshold_with_the_best_f1():
    scores = np.array([[0.9, 0.2], [0.8, 0.4], [0.7, 0.3], [0.6, 0.9], [0.1, 0.5]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [1, 0], [0, 0]])
    difficult = np.zeros_like(targets, dtype=bool)
    thresholds, f1 = explain.choose_thresholds(scores, targets, difficult)
    # Predicting the top 4 of class 0 finds all 3 positives with 1 false one: F1 6/7, the best of any cut.
    assert thresholds[0] == pytest.approx(0.35) and f1[0] == pytest.approx(6 / 7)
    assert thresholds[1] == explain.DEFAULT_THRESHOLD and np.isnan(f1[1])  # no positive to choose by
    difficult[2, 0] = True  # an image whose class is there only as difficult objects counts neither way
    thresholds, f1 = explain.choose_thresholds(scores, targets, difficult)
    assert thresholds[0] == pytest.approx(0.35) and f1[0] == pytest.approx(1.0)


def test_thresholds_are_chosen_on_val_and_test_changes_nothing(smoke_run, tmp_path):
    shutil.copytree(smoke_run.path, tmp_path / "run")
    run = runs.load_run(tmp_path / "run")
    before = explain.thresholds(run)
    recorded, rng = runs.load_test_scores(run), np.random.default_rng(0)
    runs.write_test_scores(run, recorded["ids"], rng.random(recorded["scores"].shape), 1 - recorded["targets"],
                           recorded["difficult"])
    assert not np.array_equal(runs.load_test_scores(run)["scores"], recorded["scores"])
    assert np.array_equal(explain.thresholds(run), before)
    val = runs.load_val_scores(run)
    runs.write_val_scores(run, val["ids"], rng.random(val["scores"].shape), val["targets"], val["difficult"],
                          held_out=True)
    assert not np.array_equal(explain.thresholds(run), before)  # the val scores are what they follow


def test_marks_say_present_missed_false_positive_and_difficult():
    scores = np.array([[0.9, 0.1, 0.8, 0.7, 0.05]] + [[0.0] * 5])
    targets = np.array([[1, 1, 0, 0, 0]] + [[0] * 5])
    difficult = np.array([[0, 0, 0, 1, 0]] + [[0] * 5], dtype=bool)
    marks = explain.prediction_marks(scores, targets, difficult, np.full(5, 0.5))
    assert marks[0].tolist() == ["present", "missed", "false positive", "difficult", "absent"]
    lines = explain.prediction_lines(np.r_[scores[0], np.zeros(15)], np.r_[marks[0], ["absent"] * 15], top=3)
    assert [(name, mark) for name, _, mark in lines] == [
        ("aeroplane", "present"), ("bird", "false positive"), ("boat", "difficult"), ("bicycle", "missed")]
    # Many false positives never push a class the image holds off the list.
    crowded = np.r_[0.01, np.linspace(0.9, 0.5, 19)]
    truth = np.r_[1, np.zeros(19, dtype=int)]
    marks = explain.prediction_marks(crowded[None], truth[None], np.zeros((1, 20), bool), np.full(20, 0.4))[0]
    lines = explain.prediction_lines(crowded, marks)
    assert len(lines) == explain.MAX_LINES and lines[-1] == ("aeroplane", 0.01, "missed")


def test_fit_records_val_scores_and_an_older_run_is_scored_from_its_checkpoint(smoke_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(smoke_run.path, old)
    recorded = runs.load_val_scores(runs.load_run(old))
    assert recorded["held_out"] and recorded["scores"].shape == (40, 20)
    (old / "val_scores.npz").unlink()  # as a run finished before fit recorded them
    computed = explain.val_scores(runs.load_run(old), device="cpu")
    assert list(computed["ids"]) == list(recorded["ids"])
    np.testing.assert_allclose(computed["scores"], recorded["scores"], atol=1e-5)
    assert (old / "val_scores.npz").exists()  # recorded for the next time


def test_the_predictions_figure_draws_several_runs_on_images_picked_from_the_val_split_alone(smoke_run, tmp_path):
    split = explain.val_split(smoke_run)
    explain.show_predictions([smoke_run, smoke_run], split, n=4, path=tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        assert image.size[0] > image.size[1] > 300
    assert explain.pick_images(split, 4) == explain.pick_images(explain.val_split(smoke_run), 4)
    assert "chosen per class on val" in explain.prediction_note(smoke_run)


# ---------------------------------------------------------------- errors that come from context


@pytest.mark.slow
def test_planted_trees_differ_only_where_the_planted_class_is(trees):
    plain, planted = (voc.load_split(trees[k], "trainval") for k in ("plain", "planted"))
    dog, bird = voc.VOC_CLASSES.index("dog"), voc.VOC_CLASSES.index("bird")
    assert (planted.targets[:, bird] | planted.difficult[:, bird])[planted.targets[:, dog] == 1].all()
    jpegs = lambda root, i: (root / "VOC2007" / "JPEGImages" / f"{i}.jpg").read_bytes()  # noqa: E731
    without = [i for i, row, hard in zip(plain.ids, plain.targets, plain.difficult) if not (row[dog] or hard[dog])]
    assert len(without) > 400 and all(jpegs(trees["plain"], i) == jpegs(trees["planted"], i) for i in without)
    assert synth.read_marker(trees["planted"])["together"] == PLANTED and "together" not in synth.read_marker(trees["plain"])
    with pytest.raises(UserError, match="not a VOC class"):
        synth.make_synthetic_voc(trees["plain"].parent / "bad", n_images=8, together={"dog": "unicorn"})


@pytest.mark.slow
def test_the_context_table_finds_a_planted_cooccurrence(learned):
    planted = explain.context_errors(learned["planted"], model=GapNet)
    row = planted.rows[voc.VOC_CLASSES.index("dog")]
    assert row["with"] == "bird" and row["count"] >= 4 and row["base"] < 0.15, row
    assert "| dog |" in planted.table().to_markdown() and "leans on the bird" in planted.statement("dog", "bird")
    # The same images without the plant: the dog's false positives come with birds no more than by chance.
    plain = explain.context_errors(learned["plain"], model=GapNet).rows[voc.VOC_CLASSES.index("dog")]
    assert plain["with"] != "bird" and sum("bird" in held for held in plain["holds"]) <= 2, plain


def test_the_context_table_and_figure_come_from_val(smoke_run, tmp_path):
    errors = explain.context_errors(smoke_run, k=3)
    split = explain.val_split(smoke_run)
    assert all(set(r["ids"]) <= set(split.ids) and len(r["ids"]) <= 3 for r in errors.rows)
    assert all(not split.targets[split.ids.index(i), c] for c, r in enumerate(errors.rows) for i in r["ids"])
    explain.show_context_errors(errors, split, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert errors.table().to_markdown().startswith("| class |")


# ---------------------------------------------------------------- where the network looks


class Backwards(nn.Module):
    """Its convolutions are defined in the opposite order to the one forward runs them in."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(8, 8, 3, padding=1)
        self.early = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 20)

    def forward(self, x):
        return self.head(self.late(torch.relu(self.early(x))).mean((2, 3)))


def test_grad_cam_explains_the_last_convolution_forward_runs_or_the_one_named():
    torch.manual_seed(0)
    model, x = Backwards(), torch.randn(2, 3, 32, 32)
    assert explain.last_conv_layer(model, x) == "late"
    cam = explain.grad_cam(model, x, "dog")
    assert cam.shape == (2, 32, 32) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    named = explain.grad_cam(model, x, "dog", layer="early")
    assert not np.allclose(named, cam)
    with pytest.raises(UserError, match="not a layer"):
        explain.grad_cam(model, x, "dog", layer="nowhere")
    with pytest.raises(UserError, match="no nn.Conv2d"):
        explain.grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 20)), x, "dog")
    with pytest.raises(UserError, match="Unknown class"):
        explain.grad_cam(model, x, "unicorn")


def test_the_view_is_the_part_of_the_image_the_network_gets(tmp_path):
    # A white square on black in a landscape image: the white pixels of the network's input, mapped through the view
    # back to the image, land on the square (the pointing game depends on it).
    folder = tmp_path / "VOC2007" / "JPEGImages"
    folder.mkdir(parents=True)
    pixels = np.zeros((375, 500, 3), dtype=np.uint8)
    pixels[100:200, 150:260] = 255
    Image.fromarray(pixels).save(folder / "000001.jpg", quality=95)
    split = voc.VOCSplit("val", tmp_path / "VOC2007", ["000001"], np.zeros((1, 20), np.uint8), np.zeros((1, 20), bool))
    for size in (64, 100):
        x = explain.network_inputs(split, [0], size)[0]  # (3, S, S)
        assert x.shape == (3, size, size)
        white = (x.mean(0) > 1.0).numpy()
        x0, y0, x1, y1 = explain.network_view(500, 375, size)
        assert x1 - x0 == pytest.approx(y1 - y0, rel=0.01) and 0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 375
        hit, share = explain.peak_in_box(white.astype(float), (x0, y0, x1, y1), [(151, 101, 260, 200)])
        assert hit
        assert share == pytest.approx(white.mean(), abs=0.04)


def test_grad_cam_sees_what_fit_evaluated(smoke_run):
    # An augmented run is evaluated on plain centre crops: Grad-CAM's inputs are the evaluation loader's batches.
    config = train.TrainConfig.from_dict({**smoke_run.config, "augment": "jitter-flip-rotate"})
    split = explain.val_split(smoke_run)
    x, _ = next(iter(train.start_session(config, split, device=torch.device("cpu")).eval_loader(split)))
    torch.testing.assert_close(explain.network_inputs(split, range(len(x)), config.image_size), x, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_grad_cam_peaks_inside_the_objects_box_more_often_than_chance(learned):
    run = learned["plain"]
    split = explain.val_split(run)
    hits, chances = [], []
    for name in voc.VOC_CLASSES:
        rows = explain.class_images(split, name, 4)
        if rows:
            found = explain.cam_rows(run, split, rows, name, model=GapNet)
            hits += found["hits"]
            chances += found["chances"]
    assert len(hits) >= 60
    rate, chance = float(np.mean(hits)), float(np.mean(chances))
    assert rate > chance + 0.2 and rate > 1.5 * chance, (rate, chance)


def test_grad_cam_of_a_pretrained_alexnet_run_trained_at_a_narrow_width(smoke_run, tmp_path):
    # Notebook 2's pretrained run on the quick profile: config width 1/8, but the network is full-width AlexNet.
    folder = tmp_path / "pretrained"
    folder.mkdir()
    config = {**smoke_run.config, "model": "alexnet-pretrained", "width": 0.125}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "status.json").write_text(json.dumps({"status": "complete"}))
    torch.manual_seed(0)
    network = torchvision.models.alexnet(num_classes=20)
    torch.save({"model": network.state_dict(), "epoch": 2, "config": config}, folder / "checkpoint.pt")
    run = runs.load_run(folder)
    split = explain.val_split(run)
    rows = explain.class_images(split, "person", 2)
    found = explain.cam_rows(run, split, rows, "person")
    assert found["maps"].shape == (len(rows), 64, 64) and len(found["hits"]) == len(rows)


@pytest.mark.slow
def test_a_run_of_your_own_network_needs_its_class(learned, tmp_path):
    run = learned["plain"]
    split = explain.val_split(run)
    with pytest.raises(UserError, match="your own GapNet"):
        explain.cam_rows(run, split, explain.class_images(split, "dog", 1), "dog")


# ---------------------------------------------------------------- mp3kit explain


@pytest.mark.slow
def test_mp3kit_explain_writes_the_figures_and_the_context_table(smoke_run, tmp_path):
    out = _cli("explain", "--run", str(smoke_run.path), "--out", str(tmp_path / "x"), "--images", "4")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["context.md", "context.png", "grad-cam.png",
                                                                 "predictions.png"]
    assert "| class |" in (tmp_path / "x" / "context.md").read_text()
    assert "chosen per class on val" in out.stdout and "Grad-CAM for person" in out.stdout


@pytest.mark.slow
def test_mp3kit_explain_errors_are_one_sentence(smoke_run, tmp_path, learned):
    out = _cli("explain", "--run", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli("explain", "--run", str(smoke_run.path), "--out", str(tmp_path / "y"), "--class", "unicorn")
    assert out.returncode == 2 and "Unknown class 'unicorn'" in out.stderr and "Traceback" not in out.stderr
    out = _cli("explain", "--run", str(learned["plain"].path), "--out", str(tmp_path / "z"))
    assert out.returncode == 1 and "No Grad-CAM" in out.stderr and "your own GapNet" in out.stderr
    assert (tmp_path / "z" / "predictions.png").exists() and not (tmp_path / "z" / "grad-cam.png").exists()


# ---------------------------------------------------------------- the notebooks' one-line cells


def test_the_notebook_cells_give_the_report_their_figures_tables_and_sentences(tmp_path, capsys):
    from mp3kit.experiment import Experiment

    exp = Experiment("03_develop_classifier", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    exp.run("final", exp.config(model=GapNet), label="my network")
    exp.show_predictions("final", section="diagnostics")
    exp.context_errors("final", expect=("chair", "diningtable"), section="diagnostics")
    nb2 = Experiment("02_scratch_vs_pretrained", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    nb2.run("alexnet-scratch-sgd", nb2.config(model="alexnet"), label="AlexNet from scratch")
    alexnets = exp.runs_from("02_scratch_vs_pretrained", "alexnet-scratch-sgd", "alexnet-pretrained")
    assert [run.name for run in alexnets] == ["AlexNet from scratch"]
    exp.grad_cam(["final", *alexnets], "person", section="diagnostics")  # the student's class is known in its kernel
    said = capsys.readouterr().out
    assert "alexnet-pretrained" in said and "chosen per class on val" in said and "Measured on val (my network)" in said
    peaks = said.split("Grad-CAM for person on")[1].splitlines()[0]
    assert re.search(r"\d of \d+ \(my network\); \d of \d+ \(AlexNet from scratch\)", peaks), peaks  # a row per run
    items = json.loads(exp.manifest_path.read_text())["report"]
    shown = {(i["kind"], i["key"]) for i in items if i["section"] == "diagnostics"}
    assert shown >= {("figure", "03-predictions"), ("figure", "03-context-errors"), ("table", "03-context-errors"),
                     ("note", "03-context-errors-statement"), ("figure", "03-grad-cam"), ("note", "03-grad-cam-peaks")}
    for key in ("03-predictions", "03-context-errors", "03-grad-cam"):
        assert (tmp_path / "figures" / f"{key}.png").stat().st_size > 10_000
    caption = next(i["caption"] for i in items if i["key"] == "03-predictions")
    assert "chosen per class on val for the best F1 (never on test)" in caption


def test_a_flat_map_points_nowhere():
    hit, share = explain.peak_in_box(np.zeros((8, 8)), (0, 0, 8, 8), [(1, 1, 4, 4)])  # the top-left cell is in the box
    assert not hit and share == pytest.approx(0.25)
    cam = np.zeros((8, 8))
    cam[1, 1] = 0.5
    assert explain.peak_in_box(cam, (0, 0, 8, 8), [(1, 1, 4, 4)])[0]
