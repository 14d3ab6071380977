"""The report builder: marker-preserving rebuilds, failures that keep the old report, numbers traceable to results.json."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from mp3kit import ablation, experiment, findings, report, runs, settings, synth
from mp3kit.util import UserError

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
           "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
# The number formats report.md may use; a number written any other way is not traceable.
FORMATS = ("{:.4f}", "{:.5f}", "{:.0f}", "{:g}")
NUMBER = re.compile(r"(?<![\w.-])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


def write_run(runs_dir, name, *, test_map, test_loss, model="simple", optimizer="sgd", lr=0.01, epochs=3,
              synthetic=True, status="complete", seed=0, val_map=None):
    """Record a fake complete run with mp3kit.runs' writers and return its name (val mAP rising to val_map, by
    default to test_map)."""
    final_val = test_map if val_map is None else val_map
    config = {"model": model, "optimizer": optimizer, "lr": lr, "momentum": 0.9, "epochs": epochs, "batch_size": 50,
              "augment": "none", "image_size": 64, "eval_every": 1, "seed": seed,
              "data": {"root": "/x", "synthetic": synthetic}}
    history = [{"epoch": e, "train_loss": 0.5 - 0.01 * e, "val_loss": 0.4, "train_map": 0.1 * e,
                "val_map": None if final_val is None else final_val * e / epochs,
                "seconds": 1.5, "images_per_s": 40.0, "lr": lr} for e in range(1, epochs + 1)]
    ap = [round(0.05 + 0.037 * ((i * 7 + seed) % 20), 6) for i in range(20)]
    ap[4] = math.nan  # a class with no positives
    metrics = {"test_map": test_map, "test_loss": test_loss, "test_ap": ap, "classes": CLASSES,
               "best_val_map": 0.05 * epochs, "epochs_done": epochs, "synthetic": synthetic, "device": "cpu",
               "seconds": 12.25}
    run = runs.Run(name=name, path=Path(runs_dir) / name, config=config, history=history, metrics=metrics,
                   status=status)
    run.path.mkdir(parents=True, exist_ok=True)
    runs.write_config(run)
    runs.write_progress(run)
    runs.write_metrics(run)
    return name


def write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path)


def write_manifest(runs_dir, notebook, runs_, items, values, synthetic=True):
    manifest = {"notebook": notebook, "profile": "smoke", "synthetic": synthetic, "data_root": None,
                "runs": {k: {"run": f"{notebook[:2]}-{k}", "label": label} for k, label in runs_.items()},
                "values": values, "report": items}
    (Path(runs_dir) / f"{notebook}.manifest.json").write_text(json.dumps(manifest))


# Report items as the Experiment methods declare them (see mp3kit.experiment).

def figure(key, section, caption=""):
    return {"kind": "figure", "key": key, "section": section, "caption": caption or key, "file": f"{key}.png"}


def runs_table(key, keys, section, caption="", columns="settings", best=False):
    return {"kind": "runs", "key": key, "section": section, "caption": caption, "runs": keys, "columns": columns,
            "best": best}


def result(key, caption, section):
    return {"kind": "result", "key": key, "section": section, "caption": caption}


def note(key, text, section):
    return {"kind": "note", "key": key, "section": section, "text": text}


def finding(number, text, claims, seed="", published=""):
    f = findings.Finding(str(number), text, tuple(findings.Claim(c[0], tuple(c[1:])) for c in claims), seed, published)
    return {"kind": "finding", "key": f"finding-{number}", "section": "findings", "finding": f.to_dict(),
            "rule": findings.RULE}


@pytest.fixture
def kit(tmp_path):
    """A runs folder with fake runs and manifests for all three notebooks, and a report folder with their figures."""
    return make_kit(tmp_path)


def make_kit(tmp_path, synthetic=True, pretrained=False, chance=0.0726):
    runs_dir, report_dir = tmp_path / "runs", tmp_path / "report"
    runs_dir.mkdir()
    plan = {
        "01_introduction": {"simple-default": "SGD lr 0.01, 3 epochs (course defaults)",
                            "simple-lr0.001": "SGD lr 0.001", "simple-lr0.0001": "SGD lr 0.0001",
                            "simple-long": "SGD lr 0.01, 6 epochs", "simple-adam": "Adam lr 1e-4"},
        "02_scratch_vs_pretrained": {"alexnet-scratch-sgd": "AlexNet, SGD 0.01", "alexnet-scratch-tuned": "AlexNet, tuned",
                                     "alexnet-scratch-adam": "AlexNet, Adam 1e-4"},
        "03_develop_classifier": {"ablation-1": "BaseNet (SGD)", "ablation-2": "BaseNet (Adam) | + BatchNorm",
                                  "final": "BaseNet + BN + augmentation"},
    }
    if pretrained:
        plan["02_scratch_vs_pretrained"]["alexnet-pretrained"] = "AlexNet, ImageNet weights"
    reason = "the ImageNet weights are not in the cache and downloads are off."
    alexnets = ["alexnet-scratch-sgd", "alexnet-scratch-tuned", "alexnet-scratch-adam", "alexnet-pretrained"]
    if pretrained:
        unavailable = [result("alexnet-pretrained", "ImageNet-pretrained AlexNet", "pretrained-results"),
                       runs_table("pretrained-run", ["alexnet-pretrained"], "pretrained-results")]
    else:
        unavailable = [note("pretrained-unavailable", experiment.pretrained_notice(reason, full=section == "pretrained-results"),
                            section) for section in ("pretrained-results", "pretrained-plots", "scratch-vs-pretrained")]
    items = {
        "01_introduction": [
            note("data", experiment.data_notice(synthetic, "/x", chance), "data"),
            figure("data-boxes", "data", "Training images with their boxes"), figure("label-stats", "data"),
            result("simple-default", "Simple classifier with the course defaults", "simple-results"),
            figure("simple-default-curves", "simple-plots"), figure("simple-per-class-ap", "simple-plots"),
            figure("lr-study-curves", "simple-plots"),
            runs_table("simple-study", list(plan["01_introduction"]), "simple-results",
                       "The hyperparameter study (one change at a time from the course defaults)", best=True),
            figure("an-extra-figure", "an-extra-figure", "A figure no marker places"),
            finding(1, "the simple classifier leaves chance", [("above_chance", "simple-default")], seed="0.147"),
            finding(2, "lr 0.01 is best", [("beats", "simple-default", "simple-lr0.001", "simple-lr0.0001")]),
        ],
        "02_scratch_vs_pretrained": [
            result("alexnet-scratch-sgd", "AlexNet from scratch, course defaults", "scratch-results"),
            figure("alexnet-scratch-sgd-curves", "scratch-plots"),
            runs_table("scratch-runs", alexnets[:3], "scratch-results", best=True),
            *unavailable,
            runs_table("alexnet-ap", alexnets, "scratch-vs-pretrained", "Test AP per class", columns="ap"),
            figure("scratch-vs-pretrained-per-class", "scratch-vs-pretrained"),
            finding(8, "pretrained beats scratch", [("beats", "alexnet-pretrained", "alexnet-scratch-sgd")],
                    seed="0.680", published="about 0.78-0.80 (Pathak et al., CVPR 2016)"),
        ],
        "03_develop_classifier": [
            {"kind": "table", "key": "final-architecture", "section": "final-architecture", "caption": "",
             "markdown": "| # | layer | params |\n|---:|---|---:|\n| 1 | Conv2d | 23,296 |\n\n"
                         "Total parameters: 23,296 (trainable 23,296, frozen 0)\n"},
            {"kind": "ablation", "key": "ablation", "section": "ablation", "note": ablation.NOTE,
             "rows": [{"serial": 1, "label": "BaseNet (SGD)", "key": "ablation-1"},
                      {"serial": 2, "label": "BaseNet (Adam) | + BatchNorm", "key": "ablation-2"},
                      {"serial": 3, "label": "+ 2 Conv", "key": "ablation-3",
                       "skipped": "Model 'basenet+conv' cannot take 48 px images"}]},
            figure("ablation-bars", "ablation"),
            result("final", "Final model", "final-results"), runs_table("final-run", ["final"], "final-results"),
            result("final", "Final model", "ablation"), figure("final-curves", "final-results"),
            note("kaggle", experiment.kaggle_notice("runs/smoke/kaggle.csv", 0.6123456, synthetic), "kaggle"),
            figure("final-pr-curves", "diagnostics"),
        ],
    }
    values = {
        "01_introduction": {"chance_map": chance},
        "02_scratch_vs_pretrained": {} if pretrained else {"pretrained_unavailable": reason},
        "03_develop_classifier": {"kaggle_csv": "runs/smoke/kaggle.csv", "kaggle_score": 0.6123456},
    }
    for i, (nb, planned) in enumerate(plan.items()):
        for j, key in enumerate(planned):
            write_run(runs_dir, f"{nb[:2]}-{key}", test_map=0.1 + 0.0123 * (3 * i + j), test_loss=0.25 - 0.001 * j,
                      optimizer="adam" if "adam" in key else "sgd", lr=1e-4 if "adam" in key else 0.01,
                      model={"name": "basenet+bn"} if nb.startswith("03") else "simple", synthetic=synthetic, seed=j)
        write_manifest(runs_dir, nb, planned, items[nb], values[nb], synthetic=synthetic)
        for item in items[nb]:
            if item["kind"] == "figure":
                write_png(report_dir / "figures" / item["file"])
    return {"runs_dir": runs_dir, "report_dir": report_dir, "tmp": tmp_path}


def build(kit, **kw):
    kw.setdefault("execute", False)
    return report.build("smoke", runs_dir=kit["runs_dir"], report_dir=kit["report_dir"], **kw)


def numbers_in(value, found=None):
    """Return every way results.json's numbers may be written in report.md, plus the numbers inside its strings."""
    found = set() if found is None else found
    if isinstance(value, bool) or value is None:
        return found
    if isinstance(value, (int, float)):
        found.update(f.format(value) for f in FORMATS)
        if isinstance(value, int):
            found.update({str(value), f"{value:,}"})
    elif isinstance(value, str):
        found.update(NUMBER.findall(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            numbers_in(k, found)
            numbers_in(v, found)
    elif isinstance(value, list):
        for v in value:
            numbers_in(v, found)
    return found


def test_first_build_fills_every_section_from_the_template(kit):
    path = build(kit)
    text = path.read_text()
    sections = report.generated_text(text)
    assert set(sections) == report.marker_keys(report.TEMPLATE.read_text())
    assert not [k for k, body in sections.items() if "Nothing was recorded" in body]  # the kit fills every section
    assert "_Your analysis, at least 3 sentences" in text
    results = json.loads((kit["report_dir"] / "results.json").read_text())
    intro = results["notebooks"]["01_introduction"]
    assert intro["runs"]["simple-default"]["test_ap"]["bottle"] is None  # NaN became null: strict JSON
    assert intro["runs"]["simple-adam"]["config"]["optimizer"] == "adam"
    assert results["notebooks"]["03_develop_classifier"]["runs"]["final"]["config"]["model"] == "basenet+bn"
    assert f"{intro['runs']['simple-default']['test_map']:.4f}" in sections["simple-results"]
    assert "0.61235" in sections["kaggle"]
    assert "| 2 | BaseNet (Adam) \\| + BatchNorm (best by val mAP) |" in sections["ablation"]
    assert "| 3 | + 2 Conv | – | – |" in sections["ablation"]
    assert "Row 3 was skipped: Model 'basenet+conv' cannot take 48 px images." in sections["ablation"]
    assert "figures/an-extra-figure.png" in sections["more-figures"]
    assert not list(kit["report_dir"].glob(".staging-*"))


def test_rebuild_keeps_prose_and_regenerates_only_the_markers(kit):
    path = build(kit)
    text = path.read_text()
    text = text.replace("_Your analysis, at least 3 sentences: how do the training",
                        "My own analysis of the simple classifier. _Was:_ how do the training")
    text = text.replace("<!-- mp3kit:begin ablation -->\n", "<!-- mp3kit:begin ablation -->\nEDITED INSIDE\n")
    text += "\nA closing paragraph of my own.\n"
    path.write_text(text)
    # A run is retrained with a different result between the two builds.
    run = runs.load_run(kit["runs_dir"] / "01-simple-default")
    run.metrics["test_map"] = 0.4321
    runs.write_metrics(run)

    new = build(kit).read_text()
    assert "My own analysis of the simple classifier." in new
    assert new.endswith("A closing paragraph of my own.\n")
    assert "EDITED INSIDE" not in new
    assert "0.4321" in report.generated_text(new)["simple-results"]
    # Outside the markers nothing else moved.
    outside = lambda t: [p for p in report.split_sections(t) if isinstance(p, str)]  # noqa: E731
    assert outside(new) == outside(text)


def test_every_number_in_report_md_comes_from_results_json(kit):
    text = build(kit).read_text()
    known = numbers_in(json.loads((kit["report_dir"] / "results.json").read_text()))
    untraced = []
    for key, body in report.generated_text(text).items():
        body = re.sub(r"\]\([^)]*\)", "]", body)  # link and image targets are file names, not numbers
        body = re.sub(r"`[^`]*`", "", body)  # code: commands and paths
        body = body.replace("1 − mAP", "")  # the Kaggle score's definition
        untraced += [(key, n) for n in NUMBER.findall(body) if n not in known]
    assert not untraced, untraced


def test_the_findings_of_every_notebook_make_one_table_with_verdicts_from_results_json(tmp_path):
    text = build(make_kit(tmp_path)).read_text()
    body = report.generated_text(text)["findings"]
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    # simple-default 0.1000 is 0.0274 above chance 0.0726; lr 0.001 and 0.0001 scored higher than lr 0.01;
    # the pretrained run is missing.
    assert [row.split(" | ")[0] + " | " + row.rsplit(" | ", 1)[1] for row in rows] == [
        "| 1 | reproduced |", "| 2 | not reproduced |", "| 8 | not run |"]
    assert "SGD lr 0.01, 3 epochs (course defaults) 0.1000 (chance 0.0726)" in rows[0]
    assert "SGD lr 0.001 0.1123" in rows[1] and "AlexNet, ImageNet weights not run" not in rows[2]
    assert findings.RULE in body
    assert "| seed report |" not in body and "Pathak" not in body  # reference figures: the full profile only
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    results["profile"] = "full"
    full = report.render_sections(results, ["findings"])["findings"]
    assert "| seed report | published |" in full and "0.680" in full and "Pathak et al., CVPR 2016" in full


def test_chance_level_is_stated_and_no_winner_is_named_among_runs_near_it(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    text = build(make_kit(tmp_path / "a")).read_text()
    assert "Chance level" in text and "**0.0726**" in text
    # 0.1492 > 1.25 x 0.0726
    assert "Best by val mAP (chosen on val; test mAP only reports): **Adam lr 1e-4**, val mAP 0.1492, test mAP 0.1492." in text
    # The same runs against a chance level they do not clear by a quarter: no winner, a plain warning.
    text = build(make_kit(tmp_path / "b", chance=0.12)).read_text()
    simple = text.split("<!-- mp3kit:begin simple-results -->")[1].split("<!-- mp3kit:end")[0]
    assert "Best by val mAP (" not in simple
    assert "Every run here is near chance (0.1200" in simple and "at test mAP 0.1492" in simple


def test_val_chooses_the_best_run_and_ablation_row_and_test_only_reports(tmp_path):
    # Two runs whose val and test mAP disagree: the report names (and marks) the one with the higher val mAP.
    kit = make_kit(tmp_path)
    runs_dir = kit["runs_dir"]
    manifest = json.loads((runs_dir / "03_develop_classifier.manifest.json").read_text())
    for key, (val, test) in {"ablation-1": (0.40, 0.20), "ablation-2": (0.30, 0.35)}.items():
        write_run(runs_dir, manifest["runs"][key]["run"], test_map=test, test_loss=0.3, val_map=val)
    manifest["report"].append(runs_table("ablation-runs", ["ablation-1", "ablation-2"], "ablation", best=True))
    (runs_dir / "03_develop_classifier.manifest.json").write_text(json.dumps(manifest))
    sections = report.generated_text(build(kit).read_text())
    assert "| 1 | BaseNet (SGD) (best by val mAP) | 0.4000 | 0.2000 |" in sections["ablation"]
    assert "(best by val mAP)" not in sections["ablation"].split("| 2 |")[1].split("\n")[0]
    assert "**BaseNet (SGD)**, val mAP 0.4000, test mAP 0.2000" in sections["ablation"]


def test_synthetic_data_carries_the_banner(kit):
    text = build(kit).read_text()
    assert report.SYNTHETIC_BANNER in report.generated_text(text)["header"]
    assert json.loads((kit["report_dir"] / "results.json").read_text())["synthetic"] is True


def test_real_data_has_no_banner(tmp_path):
    kit = make_kit(tmp_path, synthetic=False, pretrained=True)
    text = build(kit).read_text()
    assert "SYNTHETIC" not in text
    assert "do not upload" not in text


def test_pretrained_unavailable_says_so_instead_of_a_number(kit):
    sections = report.generated_text(build(kit).read_text())
    reason = "the ImageNet weights are not in the cache and downloads are off."
    assert sections["pretrained-results"] == f"**Pretrained weights unavailable:** {reason}"
    assert "Pretrained weights unavailable" in sections["scratch-vs-pretrained"]


def test_pretrained_run_is_reported_when_present(tmp_path):
    kit = make_kit(tmp_path, pretrained=True)
    sections = report.generated_text(build(kit).read_text())
    assert "unavailable" not in sections["pretrained-results"]
    assert "test mAP **0.1" in sections["pretrained-results"]
    assert "AlexNet, ImageNet weights" in sections["scratch-vs-pretrained"]


def test_html_is_self_contained(kit):
    build(kit)
    html = (kit["report_dir"] / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in html and "<!-- mp3kit:begin" not in html
    assert "<link" not in html and "<script" not in html


def test_missing_manifest_says_not_built_yet(kit):
    (kit["runs_dir"] / "03_develop_classifier.manifest.json").unlink()
    sections = report.generated_text(build(kit).read_text())
    assert sections["ablation"].startswith("_Not built yet: 03_develop_classifier")
    assert "Not built yet: 03_develop_classifier" in sections["header"]


def test_a_newer_template_adds_its_new_sections(kit, tmp_path):
    build(kit)
    template = tmp_path / "template.md"
    template.write_text(report.find_template(kit["report_dir"]).read_text()
                        + "\n<!-- mp3kit:begin future-section -->\n<!-- mp3kit:end future-section -->\n")
    text = build(kit, template=template).read_text()
    assert "## Sections added by a newer template" in text
    assert "<!-- mp3kit:begin future-section -->" in text


def test_broken_markers_are_refused_before_anything_runs(kit):
    path = build(kit)
    path.write_text(path.read_text().replace("<!-- mp3kit:end ablation -->", ""))
    with pytest.raises(UserError, match="ablation"):
        build(kit)


def test_only_names_a_notebook_with_or_without_ipynb(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for name in ("01_introduction", "02_scratch_vs_pretrained", "03_develop_classifier"):
        nbformat.write(nbformat.v4.new_notebook(), str(nbdir / f"{name}.ipynb"))
    assert report.select_notebooks(nbdir, "02_scratch_vs_pretrained.ipynb") == ["02_scratch_vs_pretrained"]
    assert report.select_notebooks(nbdir, "03") == ["03_develop_classifier"]
    with pytest.raises(UserError, match="01_introduction, 02_scratch_vs_pretrained, 03_develop_classifier"):
        report.select_notebooks(nbdir, "04_missing")


def _notebook(nbdir, name, *cells):
    params = nbformat.v4.new_code_cell('PROFILE = "quick"\nDATA_ROOT = None\nRUNS_DIR = "runs"\nFIGURES_DIR = "figures"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A test notebook"), params,
                                         *map(nbformat.v4.new_code_cell, cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nbdir / f"{name}.ipynb"))


def test_a_failing_notebook_names_the_cell_and_keeps_the_old_report(kit, capsys):
    build(kit)
    before = {p.relative_to(kit["report_dir"]): p.read_bytes() for p in kit["report_dir"].rglob("*") if p.is_file()}
    nbdir = kit["tmp"] / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir, "02_scratch_vs_pretrained", "x = 1",
              "from PIL import Image\nImage.new('RGB', (4, 4)).save(f'{FIGURES_DIR}/alexnet-scratch-sgd-curves.png')",
              "# train the pretrained net\nraise ValueError('boom: no weights')")
    with pytest.raises(report.NotebookError) as err:
        build(kit, only="02_scratch_vs_pretrained", notebooks_dir=nbdir, execute=True)
    message = str(err.value)
    assert "02_scratch_vs_pretrained.ipynb failed in cell 5 (`raise ValueError('boom: no weights')`)" in message
    assert "ValueError: boom: no weights" in message
    assert (kit["runs_dir"] / "02_scratch_vs_pretrained.failed.ipynb").exists()
    after = {p.relative_to(kit["report_dir"]): p.read_bytes() for p in kit["report_dir"].rglob("*") if p.is_file()}
    assert after == before
    assert "[1/1] 02_scratch_vs_pretrained ... failed after" in capsys.readouterr().out


def test_only_runs_one_notebook_with_the_report_parameters(kit, capsys):
    build(kit)
    nbdir = kit["tmp"] / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir, "01_introduction",
              "import json, os\nfrom pathlib import Path\nfrom PIL import Image\n"
              "Image.new('RGB', (4, 4)).save(Path(FIGURES_DIR) / 'data-boxes.png')\n"
              "m = json.loads((Path(RUNS_DIR) / '01_introduction.manifest.json').read_text())\n"
              "m['report'] = [{'kind': 'figure', 'key': 'data-boxes', 'section': 'data', 'caption': 'Boxes', "
              "'file': 'data-boxes.png'}]\n"
              "m['values'] = {'cwd': os.getcwd(), 'quiet': os.environ.get('MP3KIT_QUIET'), 'profile': PROFILE}\n"
              "(Path(RUNS_DIR) / '01_introduction.manifest.json').write_text(json.dumps(m))")
    report.build("smoke", runs_dir=kit["runs_dir"], report_dir=kit["report_dir"], only="01_introduction.ipynb",
                 notebooks_dir=nbdir)
    assert "[1/1] 01_introduction ... done in" in capsys.readouterr().out
    results = json.loads((kit["report_dir"] / "results.json").read_text())
    intro = results["notebooks"]["01_introduction"]
    assert intro["values"] == {"cwd": str(nbdir), "quiet": "1", "profile": "smoke"}
    assert intro["executed"] == "executed/01_introduction.ipynb" and intro["seconds"] is not None
    assert (kit["report_dir"] / "executed" / "01_introduction.ipynb").exists()
    # The other notebooks' figures and numbers are still in the report.
    assert (kit["report_dir"] / "figures" / "final-curves.png").exists()
    assert results["notebooks"]["03_develop_classifier"]["runs"]["final"]["test_map"] is not None


def test_main_exits_non_zero_with_one_message(tmp_path, monkeypatch, capsys):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "report").mkdir()
    _notebook(tmp_path / "notebooks", "03_develop_classifier", "1 / 0")
    monkeypatch.chdir(tmp_path)  # a student's project: notebooks/ here, runs/<profile> and report/ to be made
    monkeypatch.delenv(settings.RUNS_DIR), monkeypatch.delenv(settings.FIGURES_DIR)
    status = report.main(profile="smoke", only="03_develop_classifier")
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("mp3kit: 03_develop_classifier.ipynb failed in cell 3 (`1 / 0`): ZeroDivisionError")
    assert f"The executed copy with the full traceback is {tmp_path / 'runs' / 'smoke'}" in err
    assert err.count("\n") == 1
    assert not list((tmp_path / "report").iterdir())  # nothing was written there


def test_without_notebooks_or_runs_the_report_says_what_to_give(tmp_path, monkeypatch, capsys):
    from mp3kit import cli

    monkeypatch.chdir(tmp_path)  # a folder with no notebooks and no runs: not the kit's checkout either
    monkeypatch.delenv(settings.RUNS_DIR), monkeypatch.delenv(settings.FIGURES_DIR)
    assert cli.main(["report", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mp3kit: No notebooks in {tmp_path} or its notebooks/ folder") and "--notebooks-dir" in err
    assert cli.main(["report", "--profile", "smoke", "--no-execute"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mp3kit: {tmp_path / 'runs' / 'smoke'} does not exist") and "--runs-dir" in err
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


NEW_EXPERIMENT = '''\
# %% tags=["parameters"]
PROFILE = "quick"
DATA_ROOT = None
RUNS_DIR = "runs"
FIGURES_DIR = "figures"

# %% [markdown]
# # 04 · A new experiment

# %%
from PIL import Image
from mp3kit.experiment import Experiment

exp = Experiment("04_new_experiment", PROFILE, DATA_ROOT, RUNS_DIR, FIGURES_DIR)

# %%
Image.new("RGB", (8, 6), (30, 30, 200)).save(exp.figure("new-figure", "A figure that report.py never names", "new-figure"))
'''


@pytest.mark.slow
def test_a_figure_a_notebook_declares_appears_where_one_template_marker_places_it(kit, tmp_path):
    import jupytext

    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = jupytext.reads(NEW_EXPERIMENT, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nbdir / "04_new_experiment.ipynb"))
    template = tmp_path / "template.md"
    template.write_text(report.TEMPLATE.read_text()
                        + "\n## A new experiment\n\n<!-- mp3kit:begin new-figure -->\n<!-- mp3kit:end new-figure -->\n")
    voc = synth.make_synthetic_voc(tmp_path / "voc", n_images=60)
    text = build(kit, only="04_new", notebooks_dir=nbdir, template=template, execute=True, data_root=voc.parent).read_text()
    sections = report.generated_text(text)
    assert sections["new-figure"] == ("![A figure that report.py never names](figures/new-figure.png)\n\n"
                                      "_A figure that report.py never names._")
    assert "new-figure" not in sections["more-figures"]
    assert "figures/final-curves.png" in sections["final-results"]  # the other notebooks' items are still placed
    html = (kit["report_dir"] / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(re.findall(r"!\[[^\]]*\]\(figures/", text))


def test_set_gives_the_notebooks_more_parameters_and_refuses_what_is_not_name_value(tmp_path, monkeypatch, capsys):
    from mp3kit import cli

    assert report.parse_parameters(["WORKED_EXAMPLE=True", "ADAM_LR=1e-4", "TOP_CLASS=dog", "NOTE='a b'"]) == {
        "WORKED_EXAMPLE": True, "ADAM_LR": 1e-4, "TOP_CLASS": "dog", "NOTE": "a b"}
    for bad, message in (("WORKED_EXAMPLE", "is not NAME=VALUE"), ("1X=2", "is not NAME=VALUE"),
                         ("RUNS_DIR=elsewhere", "is set by --runs-dir")):
        with pytest.raises(UserError, match=re.escape(message)):
            report.parse_parameters([bad])
    assert cli.main(["report", "--set", "oops"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mp3kit: --set 'oops' is not NAME=VALUE") and "\n" not in err

    # The value reaches every notebook's parameters, with the report's own four.
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), str(notebooks / "03_develop_classifier.ipynb"))
    given = []
    monkeypatch.setattr(report, "run_notebook", lambda path, out, parameters, *a: given.append(parameters))
    report.build("smoke", notebooks_dir=notebooks, runs_dir=tmp_path / "runs", report_dir=tmp_path / "report",
                 parameters={"WORKED_EXAMPLE": True})
    assert given[0]["WORKED_EXAMPLE"] is True and given[0]["PROFILE"] == "smoke"
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "--set WORKED_EXAMPLE=True" in results["built_by"]


def test_a_worked_example_is_named_in_the_header(tmp_path):
    kit = make_kit(tmp_path)
    path = kit["runs_dir"] / "03_develop_classifier.manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "worked_example": True}))
    header = report.generated_text(build(kit).read_text())["header"]
    assert "**Worked example.** 03_develop_classifier ran the seed report's network and ablation" in header


def test_a_report_md_saved_as_windows_1252_is_one_sentence_and_stays_as_it_was(tmp_path):
    report_dir, runs_dir = tmp_path / "report", tmp_path / "runs"
    report_dir.mkdir(), runs_dir.mkdir()
    student = "# My report\n\nAdam\u2019s curve \u2013 smoother than SGD\u2019s.\n"
    (report_dir / "report.md").write_bytes(student.encode("cp1252"))  # what Notepad's "ANSI" gives
    before = sorted((p.name, p.read_bytes()) for p in report_dir.iterdir())
    out = subprocess.run([sys.executable, "-m", "mp3kit", "report", "--report-dir", str(report_dir), "--runs-dir",
                          str(runs_dir), "--no-execute"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == (f"mp3kit: {report_dir / 'report.md'} is not UTF-8 text (byte 0x92 at position 17, as "
                          f"Windows-1252 writes curly quotes and dashes): save it as UTF-8 (in Notepad: File, Save As, "
                          f"Encoding UTF-8), then run mp3kit report again.\n")
    assert sorted((p.name, p.read_bytes()) for p in report_dir.iterdir()) == before


def test_a_row_with_several_seeds_shows_its_spread_is_chosen_by_its_mean_and_its_findings_say_their_rule(tmp_path):
    kit = make_kit(tmp_path)
    runs_dir = kit["runs_dir"]
    path = runs_dir / "03_develop_classifier.manifest.json"
    manifest = json.loads(path.read_text())
    # Row 2's first seed has the higher val mAP (0.45 against 0.40), its mean over two seeds the lower (0.35).
    write_run(runs_dir, "03-ablation-1", test_map=0.20, test_loss=0.3, val_map=0.40)
    write_run(runs_dir, "03-ablation-2", test_map=0.26, test_loss=0.3, val_map=0.45)
    write_run(runs_dir, "03-ablation-2-seed1", test_map=0.22, test_loss=0.3, val_map=0.25, seed=1)
    manifest["runs"]["ablation-2"]["seeds"] = ["03-ablation-2", "03-ablation-2-seed1"]
    manifest["report"].append(finding(9, "row 2 beats row 1", [("beats", "ablation-2", "ablation-1")]))
    path.write_text(json.dumps(manifest))
    sections = report.generated_text(build(kit).read_text())
    assert "| 1 | BaseNet (SGD) (best by val mAP) | 0.4000 | 0.2000 |" in sections["ablation"]
    assert "| 2 | BaseNet (Adam) \\| + BatchNorm | 0.3500 ± 0.1414 | 0.2400 ± 0.0283 |" in sections["ablation"]
    assert "Row 2: mean ± standard deviation over 2 seeds; the best row is chosen by the mean val mAP." in sections["ablation"]
    rows = {line.split(" | ")[0]: line for line in sections["findings"].splitlines() if line.startswith("| ")}
    assert rows["| #"].endswith("| verdict | rule |")
    # 0.24 against 0.20 is above the fixed margin but within twice the spread of row 2's seeds (2 x 0.0283).
    assert rows["| 9"].endswith("| not reproduced | measured spread: 2 × pooled SD = 0.0566 |")
    assert rows["| 1"].endswith("| reproduced | fixed margins |") and rows["| 2"].endswith(f"| fixed margin {findings.MARGIN} |")
    entry = json.loads((kit["report_dir"] / "results.json").read_text())["notebooks"]["03_develop_classifier"]["runs"]
    assert entry["ablation-2"]["spread"]["val_map"] == {"mean": pytest.approx(0.35), "std": pytest.approx(0.1414, abs=1e-4),
                                                       "n": 2}
