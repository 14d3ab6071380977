"""The notebooks' Experiment helper: profiles, run reuse, the manifest the report reads, and its errors."""

import json
import re
import threading

import numpy as np
import pytest
import torch

from mp3kit import config, experiment, findings, metrics, models, synth, train
from mp3kit.experiment import Experiment
from mp3kit.util import UserError

TINY_NET = {"name": "tiny", "blocks": [{"conv": 8, "s": 2, "bn": True}, {"conv": 16, "s": 2, "bn": True}],
            "pool": "global", "head": []}
TINY = dict(model=TINY_NET, epochs=1, max_images=24)


@pytest.fixture(scope="session")
def voc_root():
    return synth.ensure_synthetic()


@pytest.fixture
def exp(tmp_path, voc_root):
    return Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)


def _manifest(exp):
    return json.loads(exp.manifest_path.read_text())


def test_smoke_profile_says_synthetic_in_its_first_output(tmp_path, voc_root, capsys):
    Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    first = capsys.readouterr().out.splitlines()[0]
    assert "SYNTHETIC" in first and "not real photographs" in first and "40 train" in first


def test_a_data_root_without_a_voc_tree_falls_back_to_synthetic_and_names_it(tmp_path, voc_root, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    exp = Experiment("01_introduction", "smoke", empty, tmp_path / "runs", tmp_path / "figures", quiet=True)
    assert exp.synthetic
    assert capsys.readouterr().out.startswith(f"No VOC tree in {empty}, so using the embedded SYNTHETIC dataset")


@pytest.mark.parametrize("where", ["none", "empty", "synthetic"])
def test_full_profile_without_real_voc_is_a_user_error(tmp_path, voc_root, where):
    root = {"none": None, "empty": tmp_path, "synthetic": voc_root}[where]
    with pytest.raises(UserError, match="mp3kit data fetch"):
        Experiment("01_introduction", "full", root, tmp_path / "runs", tmp_path / "figures", quiet=True)


def test_quick_profile_sizes_each_notebook_and_says_so(tmp_path, voc_root, capsys):
    quick = config.get_profile("quick")
    intro, scratch = quick.for_notebook("01_introduction"), quick.for_notebook("02_scratch_vs_pretrained")
    # The course's 20 and 40 epochs everywhere, at batch 8 for the simple classifier (32 px) and 10 for AlexNet's
    # layers (64 px, the smallest size they take, at 1/8 width; notebook 3 at 128 px, where every ablation row fits).
    assert (intro.train["batch_size"], intro.epochs, intro.long_epochs) == (8, 20, 40)
    assert (scratch.train["batch_size"], scratch.epochs, scratch.long_epochs) == (10, 20, 40)
    assert (intro.train["image_size"], scratch.train["image_size"]) == (32, 64)
    assert scratch.train["width"] == 0.125
    develop = quick.for_notebook("03_develop_classifier")
    assert develop.train == {**scratch.train, "image_size": 128}
    # Every network of the seed's ablation, the extra convolution rows included, takes notebook 3's images.
    with torch.device("meta"):
        for _, spec in models.SEED_ABLATION:
            models.model_from_name(spec, image_size=develop.train["image_size"], width=develop.train["width"])
    exp = Experiment("02_scratch_vs_pretrained", "quick", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    assert exp.config().batch_size == 10 and exp.long_epochs == 40
    assert "profile quick: 64 px, batch 10, 20 epochs, AlexNet and spec networks at width 0.125" in capsys.readouterr().out


def test_unknown_profile_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="smoke, quick, full"):
        Experiment("01_introduction", "fast", None, tmp_path / "runs", tmp_path / "figures")


def test_config_is_the_profile_plus_changes_on_the_course_defaults(exp):
    cfg = exp.config(model="alexnet", optimizer="adam", lr=1e-4)
    assert (cfg.image_size, cfg.max_images, cfg.epochs, cfg.eval_every) == (64, 40, 2, 1)
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.momentum) == ("alexnet", "adam", 1e-4, 0.9)
    full = config.PROFILES["full"].train
    assert full == {}  # the full profile is the course's TrainConfig defaults, untouched


def test_manifest_records_runs_figures_and_values(exp):
    run = exp.run("simple-default", exp.config(**TINY), label="tiny, SGD")
    figure = exp.figure("simple-default-curves", "Loss and mAP", "simple-plots")
    exp.record("kaggle_score", 0.75)
    m = _manifest(exp)
    assert m["notebook"] == "01_introduction" and m["profile"] == "smoke" and m["synthetic"] is True
    assert m["data_root"] == str(exp.data_root)
    assert m["runs"] == {"simple-default": {"run": "01-smoke-simple-default", "label": "tiny, SGD"}}
    assert (exp.runs_dir / m["runs"]["simple-default"]["run"] / "metrics.json").exists()
    assert run.status == "complete" and run.synthetic
    assert m["report"] == [{"kind": "figure", "key": "simple-default-curves", "section": "simple-plots",
                            "caption": "Loss and mAP", "file": "simple-default-curves.png"}]
    assert figure == exp.figures_dir / "simple-default-curves.png" and exp.figures_dir.is_dir()
    chance = metrics.chance_map(exp.data.test.targets, exp.data.test.difficult)
    assert m["values"] == {"chance_map": chance, "kaggle_score": 0.75} and 0 < chance < 0.5
    (shown,) = exp.labelled(run, "alexnet-pretrained")  # a key never run is left out
    assert shown.name == "tiny, SGD" and shown.path == run.path and run.name == "01-smoke-simple-default"


def test_running_again_reuses_a_complete_run_and_retrains_a_changed_one(tmp_path, voc_root, capsys):
    def fresh():
        return Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)

    first = fresh().run("simple-default", fresh().config(**TINY))
    metrics = first.path / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    capsys.readouterr()

    again = fresh()  # a re-executed notebook: a new Experiment, the same runs folder
    reused = again.run("simple-default", again.config(**TINY))
    assert "reused from disk" in capsys.readouterr().out
    assert metrics.stat().st_mtime_ns == stamp and reused.metrics == first.metrics
    assert _manifest(again)["runs"]["simple-default"]["run"] == first.name

    changed = again.run("simple-default", again.config(**{**TINY, "lr": 0.001}))
    assert "trained in" in capsys.readouterr().out and changed.config["lr"] == 0.001

    forced = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True,
                        retrain=True)
    forced.run("simple-default", forced.config(**{**TINY, "lr": 0.001}))
    assert "trained in" in capsys.readouterr().out


class TinyNet(torch.nn.Module):
    """A student's class as notebook 3 writes one: num_classes from mp3kit, options for ablation variants."""

    def __init__(self, num_classes=20, bn=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.norm = torch.nn.BatchNorm2d(8) if bn else torch.nn.Identity()
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))  # (B, 8, h, w)
        return self.head(x.mean((2, 3)))  # (B, 20)


def test_ablation_runs_each_row_with_its_own_network_and_recipe(exp, capsys):
    too_deep = {"name": "too-deep", "blocks": [{"conv": 8, "s": 2, "pool": 2, "repeat": 1}] * 6, "pool": "global"}
    adam = {"optimizer": "adam", "lr": 1e-3}
    ablation = exp.ablation([("tiny (SGD)", TINY_NET, {}), ("my class, Adam", TinyNet, adam),
                             ("my class + BatchNorm, Adam", lambda: TinyNet(bn=True), adam), ("too deep", too_deep, adam)],
                            epochs=1)
    assert [r["serial"] for r in ablation.table.rows] == [1, 2, 3, 4]
    sgd, mine, bn = exp.runs["ablation-1"], exp.runs["ablation-2"], exp.runs["ablation-3"]
    assert sgd.config["optimizer"] == "sgd" and sgd.config["model"] == TINY_NET
    assert mine.config["optimizer"] == "adam" and mine.config["model"]["module"] == "TinyNet"
    assert "BatchNorm2d" in bn.config["model"]["repr"] and "BatchNorm2d" not in mine.config["model"]["repr"]
    assert bn.config["model"]["builder"] == "lambda: TinyNet(bn=True)"  # the row's callable, recorded with its run
    (item,) = _manifest(exp)["report"]
    assert (item["kind"], item["section"]) == ("ablation", "ablation") and "val mAP" in item["note"]
    assert item["rows"][:2] == [{"serial": 1, "label": "tiny (SGD)", "key": "ablation-1"},
                                {"serial": 2, "label": "my class, Adam", "key": "ablation-2"}]
    assert item["rows"][3]["key"] == "ablation-4" and "64 px" in item["rows"][3]["skipped"]
    assert "ablation-4" not in exp.runs and "skipped" in ablation.table.to_markdown()


def test_the_best_row_is_the_highest_val_map_and_the_final_model_trains_it_longer(exp, monkeypatch):
    ablation = exp.ablation([("tiny (SGD)", TINY_NET, {}), ("tiny (Adam)", TINY_NET, {"optimizer": "adam", "lr": 1e-3})],
                            epochs=1)
    vals = {key: run.val_map for key, run in ablation.runs.items()}
    assert ablation.best == max(vals, key=vals.get)
    best_row = ablation.rows[ablation.best]["serial"]
    assert [r["note"] for r in ablation.table.rows][best_row - 1] == "best by val mAP"
    final = exp.final(ablation, epochs=2, tta="flip")
    chosen = exp.runs[ablation.best].config
    assert final.config["optimizer"] == chosen["optimizer"] and final.config["epochs"] == 2 and final.config["tta"] == "flip"
    assert _manifest(exp)["runs"]["final"]["label"].startswith(f"row {best_row} (")


def test_best_by_val_never_looks_at_test_and_skips_runs_without_val(tmp_path):
    from mp3kit.runs import Run, best_by_val

    def run(val, test, status="complete"):
        return Run("r", tmp_path, {}, history=[{"val_map": 0.9}, {"val_map": val}], metrics={"test_map": test},
                   status=status)

    # b has the higher test mAP and a) the higher val mAP after the last epoch: val chooses.
    assert best_by_val({"a": run(0.5, 0.1), "b": run(0.4, 0.9)}) == "a"
    trainval = Run("t", tmp_path, {}, history=[{"val_map": None}], metrics={"test_map": 0.99}, status="complete")
    assert best_by_val({"t": trainval, "a": run(0.3, 0.2), "s": run(0.8, 0.8, status="stopped")}) == "a"
    assert best_by_val({"t": trainval}) is None
    assert best_by_val({"x": {"status": "complete", "val_map": 0.2, "test_map": 0.9},
                        "y": {"status": "complete", "val_map": 0.3, "test_map": 0.1}}) == "y"


def test_ablation_says_its_networks_are_narrower_than_their_labels(exp):
    # The smoke profile builds specs at width 0.125, so a row labelled with the seed's 384 channels has 48.
    ablation = exp.ablation([("tiny", TINY_NET, {})], epochs=1)
    (item,) = _manifest(exp)["report"]
    for note in (ablation.table.note, item["note"]):
        assert "built at width 0.125" in note and "384 channels has 48" in note
        assert "Every row trains and tests on 64 px images." in note  # the smoke profile's size
    assert exp.runs["ablation-1"].config["width"] == 0.125


def test_ablation_of_unscaled_networks_has_no_width_sentence(exp):
    # The simple classifier and a student's class keep their sizes whatever the width.
    ablation = exp.ablation([("simple", "simple", {}), ("mine", TinyNet, {})], epochs=1)
    (item,) = _manifest(exp)["report"]
    assert "width" not in ablation.table.note and "width" not in item["note"]


@pytest.mark.parametrize("row, message", [
    (("base", TINY_NET), "write it as (\"label\", network, recipe)"),
    (("typo", TINY_NET, {"learning_rate": 0.1}), "'learning_rate'"),
    (("two networks", TINY_NET, {"model": "simple"}), "'model'"),
])
def test_ablation_rows_that_cannot_be_read_are_user_errors(exp, row, message):
    with pytest.raises(UserError, match=re.escape(message)):
        exp.ablation([row])


def test_the_worked_example_is_the_seed_reports_ablation_and_labels_itself(tmp_path, voc_root):
    rows = experiment.worked_example_rows()
    assert [label for label, _, _ in rows][:3] == ["BaseNet (SGD)", "BaseNet (Adam)", "BaseNet (Adam) + data augmentation"]
    assert [network for _, network, _ in rows[3:]] == [spec for _, spec in models.SEED_ABLATION[1:]]
    assert rows[0][2]["optimizer"] == "sgd" and all(r[2]["optimizer"] == "adam" for r in rows[1:])
    example = Experiment("03_develop_classifier", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True,
                         worked_example=True)
    run = example.run("final", example.config(**TINY), label="tiny")
    assert run.name == "03-smoke-example-final"  # apart from the student's own 03-smoke-final
    assert _manifest(example)["runs"]["final"]["label"] == "worked example: tiny" and _manifest(example)["worked_example"]


def test_the_notebook_starter_network_is_recognised_as_not_yet_the_students_work(tmp_path, voc_root, capsys):
    import ast

    from mp3kit import usermodel

    source = (experiment.Path(__file__).resolve().parents[1] / "notebooks" / "03_develop_classifier.py").read_text()
    starter = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Classifier")
    digest = usermodel.code_digest({"Classifier": ast.get_source_segment(source, starter)})
    assert experiment.STARTER_CODE == {digest}, "notebook 3's starter Classifier changed: update experiment.STARTER_CODE"

    exp = Experiment("03_develop_classifier", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    starter_run = exp.run("final", exp.config(**{**TINY, "model": TinyNet}))
    capsys.readouterr()
    exp.own_work(starter_run, section="final-architecture")
    assert "own" in capsys.readouterr().out  # TinyNet is not the starter
    # The same run as if its network were the starter as handed out (only comments changed would give this too).
    as_starter = {**starter_run.config["model"], "code": {"Classifier": ast.get_source_segment(source, starter)}}
    exp.own_work(train.runs.Run("x", tmp_path, {**starter_run.config, "model": as_starter}), section="final-architecture")
    assert "Part 1B is not done yet" in capsys.readouterr().out
    notes = [i["text"] for i in _manifest(exp)["report"] if i["kind"] == "note"]
    assert "Part 1B is not done yet" in notes[-1]


def test_kaggle_csv_is_written_next_to_the_run_and_its_score_recorded_with_its_convention(exp, capsys):
    run = exp.run("final", exp.config(**{**TINY, "max_images": None, "image_size": 32}))
    capsys.readouterr()
    path = exp.kaggle_csv(run, section="kaggle")
    values = _manifest(exp)["values"]
    (note,) = [i for i in _manifest(exp)["report"] if i["section"] == "kaggle"]
    assert f"{values['kaggle_score']:.5f}" in note["text"] and "do not upload" in note["text"]
    assert path == run.path / "kaggle.csv" and values["kaggle_csv"] == str(path)
    # By default the course's convention (difficult-only labels are positives), as classmates' leaderboard scores;
    # the run's test mAP follows VOC's, and the report and the notebook say which is which.
    course = metrics.mean_average_precision(*_test_split(run), count_difficult=True)
    assert values["kaggle_score"] == pytest.approx(1 - course) and values["kaggle_convention"] == "course"
    assert abs(values["kaggle_score"] - (1 - run.test_map)) > 1e-4
    assert "with AP by the course's convention" in note["text"]
    assert "Every test mAP and AP elsewhere in this report follows the VOC convention" in note["text"]
    assert "course convention (difficult-only labels count as positives" in capsys.readouterr().out

    exp.kaggle_csv(run, run.path / "voc.csv", section="kaggle", count_difficult=False)
    values = _manifest(exp)["values"]
    (note,) = [i for i in _manifest(exp)["report"] if i["section"] == "kaggle"]
    assert values["kaggle_score"] == pytest.approx(1 - run.test_map) and values["kaggle_convention"] == "voc"
    assert "with AP by the VOC convention" in note["text"] and "does not compare with classmates'" in note["text"]


def _test_split(run):
    from mp3kit import runs

    recorded = runs.load_test_scores(run)
    return recorded["targets"], recorded["scores"], recorded["difficult"]


def test_report_items_keep_the_order_declared_and_a_declaration_made_again_replaces_its_item(exp):
    run = exp.run("simple-default", exp.config(**TINY), label="tiny, SGD")
    shown = exp.table("study", ["simple-default", "never-run"], "The study", "results", best=True)
    assert [r["run"] for r in shown.rows] == ["tiny, SGD"]  # the notebook shows the runs it has
    exp.result("simple-default", "Course defaults", section="results")
    exp.table("layers", exp.architecture("simple"), section="architecture")
    exp.note("data", exp.data_summary(), section="data")
    exp.table("study", ["simple-default"], "The study, again", "results")
    items = _manifest(exp)["report"]
    assert [(i["kind"], i["key"], i["section"]) for i in items] == [
        ("runs", "study", "results"), ("result", "simple-default", "results"), ("table", "layers", "architecture"),
        ("note", "data", "data")]
    assert items[0] == {"kind": "runs", "key": "study", "section": "results", "caption": "The study, again",
                        "runs": ["simple-default"], "columns": "settings", "best": False}
    assert "Total parameters" in items[2]["markdown"]
    assert f"**{exp.chance_map:.4f}**" in items[3]["text"] and "synthetic" in items[3]["text"]
    assert run.status == "complete"


def test_a_cell_run_again_leaves_the_manifest_as_it_was(exp):
    def cell():
        exp.figure("curves", "Loss and mAP", "simple-plots")
        exp.note("data", exp.data_summary(), section="data")
        exp.record("kaggle_score", 0.75)

    cell()
    written = exp.manifest_path.stat().st_ino  # every write renames a new file into place
    cell()  # run again: nothing changes, so nothing is written
    assert exp.manifest_path.stat().st_ino == written
    assert [i["key"] for i in _manifest(exp)["report"]] == ["curves", "data"]


def test_bad_keys_and_values_are_user_errors(exp):
    with pytest.raises(UserError, match="Run key"):
        exp.figure("../escape")
    with pytest.raises(UserError, match="not JSON"):
        exp.record("table", {1, 2})


@pytest.mark.parametrize("setting, shown", [("1", False), ("0", True)])
def test_quiet_setting_decides_progress_bars(monkeypatch, setting, shown):
    monkeypatch.setenv(experiment.QUIET_ENV, setting)
    assert experiment.show_progress() is shown


def test_no_progress_bars_without_a_terminal_or_a_person(monkeypatch):
    monkeypatch.delenv(experiment.QUIET_ENV, raising=False)
    assert experiment.show_progress() is False  # pytest captures stderr, as papermill and nbval do


def test_an_interrupted_run_is_resumed_where_it_stopped(exp, capsys):
    config = exp.config(**{**TINY, "epochs": 2})
    stop = threading.Event()
    stopped = train.fit(config, exp.data_root, name=exp.run_name("simple-default"), runs_dir=exp.runs_dir,
                        progress=False, callback=lambda run: stop.set(), stop=stop)
    assert stopped.status == "stopped" and len(stopped.history) == 1
    run = exp.run("simple-default", config)
    assert run.status == "complete" and run.history[0] == stopped.history[0]  # epoch 1 kept, not retrained


def test_a_diverging_run_is_recorded_as_failed_and_the_notebook_goes_on(exp, capsys):
    run = exp.run("simple-lr1e30", exp.config(**{**TINY, "model": "simple", "batch_size": 8, "lr": 1e30}), label="far too large")
    assert run.status == "failed" and "FAILED" in capsys.readouterr().out
    assert _manifest(exp)["runs"]["simple-lr1e30"]["label"] == "far too large"


def test_missing_imagenet_weights_are_said_in_each_section_named(exp):
    reason = exp.check_pretrained(sections=["pretrained-results", "pretrained-plots"])
    if reason is None:
        pytest.skip("the ImageNet AlexNet weights are installed here")
    notes = {i["section"]: i["text"] for i in _manifest(exp)["report"]}
    assert notes["pretrained-results"] == f"**Pretrained weights unavailable:** {reason}"
    assert notes["pretrained-plots"].startswith("**Pretrained weights unavailable**")


def test_a_finding_is_checked_on_the_notebooks_runs_printed_and_given_to_the_report(exp, capsys):
    exp.run("a", exp.config(**TINY), label="run a")
    exp.run("b", exp.config(**{**TINY, "lr": 0.001}), label="run b")
    maps = {k: exp.runs[k].test_map for k in ("a", "b")}
    capsys.readouterr()
    expected = "reproduced" if maps["a"] - maps["b"] >= 0.01 else "not reproduced"
    assert exp.finding(3, "a beats b", [("beats", "a", "b")], seed="0.2 vs 0.1") == expected
    assert exp.finding(8, "c beats a", [("beats", "c", "a")]) == "not run"  # c was never trained
    out = capsys.readouterr().out
    assert f"Finding 3 (a beats b): {expected.upper()}; run a {maps['a']:.4f} vs run b {maps['b']:.4f}." in out
    assert "Finding 8 (c beats a): NOT RUN; c not run vs run a" in out
    items = [i for i in _manifest(exp)["report"] if i["kind"] == "finding"]
    assert [(i["key"], i["section"]) for i in items] == [("finding-3", "findings"), ("finding-8", "findings")]
    assert items[0]["finding"]["claims"] == [{"kind": "beats", "keys": ["a", "b"], "text": ""}]
    assert items[0]["finding"]["seed"] == "0.2 vs 0.1" and items[0]["rule"] == findings.RULE


@pytest.mark.parametrize("claim, says", [
    (("wins", "a", "b"), "Finding 1: claim kind 'wins' is not one of"),
    (("beats", "a"), "Finding 1: a 'beats' claim takes two or more run keys"),
    ("beats a b", "Finding 1: the claim 'beats a b' is not a (kind, run key, ...) tuple"),
])
def test_a_malformed_finding_is_one_sentence(exp, claim, says):
    with pytest.raises(UserError, match=re.escape(says)):
        exp.finding(1, "x", [claim])


def test_lr_find_plots_the_range_test_prints_its_suggestion_and_records_it(exp, capsys):
    found = exp.lr_find(exp.config(model=TINY_NET, optimizer="adam", max_images=40), steps=40, section="simple-plots")
    out = capsys.readouterr().out
    assert (exp.figures_dir / "lr-find.png").stat().st_size > 1000
    low, high = found["range"]
    assert f"the loss falls fastest at lr {found['suggested_lr']:.2g}" in out and f"from {low:.2g} to {high:.2g}" in out
    m = _manifest(exp)
    assert m["values"]["lr-find"] == {"suggested_lr": found["suggested_lr"], "range": found["range"]}
    assert {"kind": "figure", "key": "lr-find", "section": "simple-plots"}.items() <= m["report"][-1].items()


def test_map_conventions_gives_the_test_map_under_mp3kits_voc07s_and_the_course_kits_rules(tmp_path, voc_root):
    exp = Experiment("01_introduction", "smoke", None, tmp_path / "runs", tmp_path / "figures", quiet=True)
    run = exp.run("simple-default", exp.config(**{**TINY, "max_images": None, "image_size": 32}))
    table = exp.map_conventions(run)
    ours, voc07, course = (row["test mAP"] for row in table.rows)
    assert ours == pytest.approx(run.test_map)  # the number every other table shows
    s = train.runs.load_test_scores(run)  # the whole test split (this run is not capped)
    assert voc07 == pytest.approx(metrics.mean_average_precision(s["targets"], s["scores"], s["difficult"], voc07=True))
    assert course == pytest.approx(metrics.mean_average_precision(s["targets"], s["scores"], s["difficult"],
                                                                  count_difficult=True))
    assert len({round(ours, 6), round(voc07, 6), round(course, 6)}) == 3  # the synthetic test split has difficult labels


def test_runs_and_figures_folders_given_with_a_tilde_are_in_the_home_folder(tmp_path, voc_root, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    # The notebooks' parameters cell passes $MP3KIT_RUNS_DIR and $MP3KIT_FIGURES_DIR as they are, ~ and all.
    exp = Experiment("01_introduction", "smoke", None, "~/mp3/runs", "~/mp3/figures", quiet=True)
    assert exp.figure("curve", "A curve") == home / "mp3" / "figures" / "curve.png"
    assert exp.manifest_path.parent == home / "mp3" / "runs" and exp.manifest_path.is_file()
    assert list(work.iterdir()) == []  # no folder literally named ~


# ---------------------------------------------------------------- seeds: spread, not one number


def test_seeds_change_the_numbers_and_the_spread_is_reported_in_the_notebook_and_the_report(exp, capsys):
    from mp3kit import report

    run = exp.run("a", exp.config(**TINY), label="run a", seeds=3)
    exp.run("b", exp.config(**{**TINY, "lr": 0.001}), label="run b")
    out = capsys.readouterr().out
    # Each seed is its own run, with its own folder, seed and numbers.
    assert [r.name for r in run.seeds] == ["01-smoke-a", "01-smoke-a-seed1", "01-smoke-a-seed2"] and run.seeds[0] is run
    assert [r.config["seed"] for r in run.seeds] == [0, 1, 2] and all(r.complete for r in run.seeds)
    tests = [r.test_map for r in run.seeds]
    assert len(set(tests)) == 3, "the seeds should change the numbers"
    mean, sd = float(np.mean(tests)), float(np.std(tests, ddof=1))
    assert f"test mAP {mean:.4f} ± {sd:.4f} (mean ± standard deviation)" in out and "a, 3 seeds:" in out
    assert _manifest(exp)["runs"]["a"] == {"run": "01-smoke-a", "label": "run a", "seeds": [r.name for r in run.seeds]}
    table = exp.runs_table()
    assert table.rows[0]["test mAP"] == f"{mean:.4f} ± {sd:.4f}" and table.rows[0]["seeds"] == 3
    assert table.rows[1]["test mAP"] == exp.runs["b"].test_map and table.rows[1]["seeds"] == 1

    exp.table("runs", ["a", "b"], "The runs", section="simple-results")
    exp.result("a", "Run a", section="simple-results")
    built = report.build("smoke", runs_dir=exp.runs_dir, report_dir=exp.runs_dir.parent / "report", execute=False)
    results = json.loads((built.parent / "results.json").read_text())
    entry = results["notebooks"]["01_introduction"]["runs"]["a"]
    assert [s["seed"] for s in entry["seeds"]] == [0, 1, 2] and [s["test_map"] for s in entry["seeds"]] == tests
    assert entry["spread"]["test_map"] == {"mean": pytest.approx(mean), "std": pytest.approx(sd), "n": 3}
    section = report.generated_text(built.read_text())["simple-results"]
    assert "| run a | tiny | sgd | 0.01 | 1 | 40 | none | 64 | " in section and f"| {mean:.4f} ± {sd:.4f} |" in section
    assert "_Mean ± standard deviation over the seeds of: run a (3 seeds)._" in section
    assert f"test mAP **{mean:.4f} ± {sd:.4f}**" in section and "(mean ± standard deviation over 3 seeds)" in section

    capsys.readouterr()
    again = Experiment("01_introduction", "smoke", None, exp.runs_dir, exp.figures_dir, quiet=True)
    assert [r.test_map for r in again.run("a", again.config(**TINY), seeds=3).seeds] == tests
    assert capsys.readouterr().out.count("reused from disk") == 3


def test_the_best_ablation_row_is_chosen_by_its_mean_val_map_and_findings_judge_it_by_the_spread(exp, capsys, monkeypatch):
    # Row 2's first seed has the highest val mAP of all, but its mean over its seeds is below row 1's.
    vals = {"01-smoke-ablation-1": 0.30, "01-smoke-ablation-2": 0.40, "01-smoke-ablation-2-seed1": 0.10}
    tests = {"01-smoke-ablation-1": 0.20, "01-smoke-ablation-2": 0.25, "01-smoke-ablation-2-seed1": 0.21}
    fit = train.fit

    def fit_and_set(config, **kw):  # the numbers of a trained run, set so that the choice is known
        run = fit(config, **kw)
        run.history[-1]["val_map"], run.metrics["test_map"] = vals[run.name], tests[run.name]
        return run

    monkeypatch.setattr(train, "fit", fit_and_set)
    ablation = exp.ablation([("one seed", TINY_NET, {}), ("two seeds", TINY_NET, {"lr": 0.001})], epochs=1, seeds={2: 2})
    assert [r.name for r in ablation.runs["ablation-2"].seeds] == ["01-smoke-ablation-2", "01-smoke-ablation-2-seed1"]
    assert ablation.best == "ablation-1"
    assert ablation.table.rows[1]["val mAP"] == "0.2500 ± 0.2121" and ablation.table.rows[1]["seeds"] == 2
    capsys.readouterr()
    # 0.23 against 0.20: more than the fixed margin, less than twice the standard deviation of row 2's seeds (0.0283).
    assert exp.finding(9, "two seeds beat one", [("beats", "ablation-2", "ablation-1")]) == "not reproduced"
    assert ("NOT REPRODUCED (measured spread: 2 × pooled SD = 0.0566); two seeds 0.2300 ± 0.0283 (2 seeds) vs one seed "
            "0.2000") in capsys.readouterr().out
    with pytest.raises(UserError, match=r"seeds name row 3, which it does not have"):
        exp.ablation([("one seed", TINY_NET, {})], epochs=1, seeds={3: 2})
    with pytest.raises(UserError, match=r"seeds=0 is not a number of seeds"):
        exp.run("c", exp.config(**TINY), seeds=0)


def test_the_worked_example_trains_its_decisive_rows_with_the_profiles_seeds(tmp_path, voc_root):
    example = Experiment("03_develop_classifier", "quick", None, tmp_path / "runs", tmp_path / "figures", quiet=True,
                         worked_example=True)
    labels = [label for label, _, _ in example.worked_example_rows()]
    seeds = example.worked_example_seeds()
    assert [labels[serial - 1] for serial in seeds] == ["BaseNet (Adam)", "BaseNet (Adam) + data augmentation",
                                                        "+ 1 BatchNorm"]
    assert set(seeds.values()) == {config.PROFILES["quick"].decisive_seeds}
    # The smoke profile, which the tests and nbval run, trains them with two seeds, so the spread is always exercised.
    assert config.PROFILES["smoke"].decisive_seeds == 2
