"""Report items and the manifest: every kind round-trips, manifests of 0.1.0 still render the same, one write per change."""

import json
import re
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from mp3kit import findings, items, report
from mp3kit.util import UserError

# Written by mp3kit at commit bee6364 (before items.py): `mp3kit report --profile smoke` ran the three notebooks, and a
# script gave a fourth notebook, 04_branches, one of each rarer case through Experiment (a missing figure, items under
# no marker, a failed and a never-run run, a skipped ablation row, both Kaggle conventions, a student's own network).
# The archive holds those runs folder's manifests, its runs' JSON records (no checkpoints), 8x6 stand-ins for its
# figures, and the report.md that commit built from them with --no-execute.
OLD_RUNS = Path(__file__).parent / "data" / "manifests_bee6364.tar.xz"
STAMP = re.compile(r" on \d{4}-\d\d-\d\d \d\d:\d\d UTC\.")

EXAMPLES = [
    items.FigureItem("curves", "simple-plots", caption="Loss and mAP per epoch", file="curves.png"),
    items.TableItem("layers", "final-architecture", markdown="| # | layer |\n|---:|---|\n| 1 | Conv2d |\n"),
    items.RunsItem("study", "simple-results", caption="The study", runs=["simple-default", "simple-adam"], columns="ap",
                   best=True),
    items.ResultItem("simple-default", "simple-results", caption="Course defaults"),
    items.AblationItem("ablation", "ablation", rows=[items.AblationRow(1, "BaseNet (SGD)", "ablation-1"),
                                                     items.AblationRow(2, "+ 2 Conv", "ablation-2", "needs larger images")],
                       note="Each row is one run."),
    items.NoteItem("data", "data", text="Data: the embedded synthetic dataset."),
    items.FindingItem("finding-4", "findings", finding=findings.Finding(
        "4", "Adam beats SGD", (findings.Claim("beats", ("simple-adam", "simple-default")),), "0.21 vs 0.15", "")),
]


def test_every_kind_round_trips_through_the_json_a_manifest_holds():
    assert {type(item) for item in EXAMPLES} == set(items.KINDS.values()), "give each kind an example here"
    for item in EXAMPLES:
        saved = json.loads(json.dumps(item.to_dict()))
        assert saved["kind"] == item.kind and (saved["key"], saved["section"]) == (item.key, item.section)
        assert items.from_dict(saved, "x.manifest.json") == item
    # As the report writes a figure into results.json: with its place in the report folder and whether it is there.
    placed = replace(EXAMPLES[0], present=True)
    assert placed.to_dict() == {"kind": "figure", "key": "curves", "section": "simple-plots",
                                "caption": "Loss and mAP per epoch", "file": "curves.png", "path": "figures/curves.png",
                                "present": True}
    assert items.from_dict(placed.to_dict(), "results.json") == placed
    assert "present" not in EXAMPLES[0].to_dict() and "skipped" not in EXAMPLES[4].to_dict()["rows"][0]


def test_manifests_written_by_0_1_0_load_as_they_are_and_render_the_same_report(tmp_path):
    with tarfile.open(OLD_RUNS) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    manifests = sorted((tmp_path / "runs").glob("*.manifest.json"))
    assert len(manifests) == 4
    kinds = set()
    for path in manifests:
        manifest = items.Manifest.load(path)
        kinds |= {item.kind for item in manifest.items}
        assert json.dumps(manifest.to_dict(), indent=2) + "\n" == path.read_text()  # saved again, byte for byte
    assert kinds == set(items.KINDS)

    built = report.build("smoke", runs_dir=tmp_path / "runs", report_dir=tmp_path / "report", execute=False)
    new, old = (report.generated_text(p.read_text()) for p in (built, tmp_path / "report.md"))
    assert STAMP.sub("", new.pop("header")) == STAMP.sub("", old.pop("header"))
    assert {key: new[key] for key in old} == old


def test_a_manifest_is_written_once_per_change(tmp_path):
    manifest = items.Manifest(tmp_path / "01_introduction.manifest.json", "01_introduction", "smoke")
    note = items.NoteItem("data", "data", text="Data: synthetic.")
    manifest.declare(note)
    manifest.record("chance_map", 0.07)
    written = manifest.path.stat().st_ino  # every write renames a new file into place

    manifest.declare(note)  # the same cell run again
    manifest.record("chance_map", 0.07)
    assert manifest.path.stat().st_ino == written

    with manifest.changes():  # several changes that make one (Experiment.kaggle_csv's)
        manifest.record("kaggle_score", 0.9)
        manifest.declare(items.NoteItem("kaggle", "kaggle", text="The Kaggle CSV."))
        assert manifest.path.stat().st_ino == written and "kaggle" not in manifest.path.read_text()
    assert manifest.path.stat().st_ino != written
    saved = json.loads(manifest.path.read_text())
    assert saved["values"] == {"chance_map": 0.07, "kaggle_score": 0.9}
    assert [i["key"] for i in saved["report"]] == ["data", "kaggle"]

    manifest.declare(replace(note, text="Data: VOC."))  # declared again with new content: replaced where it stood
    assert [i["text"] for i in json.loads(manifest.path.read_text())["report"]][0] == "Data: VOC."

    manifest.path.unlink()  # a runs folder cleared while the notebook's kernel still runs
    manifest.declare(items.NoteItem("kaggle", "kaggle", text="The Kaggle CSV."))
    assert items.Manifest.load(manifest.path).to_dict() == manifest.to_dict()


@pytest.mark.parametrize("item, says", [
    ({"kind": "video", "key": "v", "section": "s"}, "holds a report item of unknown kind 'video'"),
    ({"kind": "finding", "key": "finding-1", "section": "findings"}, "holds a finding item that cannot be read"),
])
def test_an_item_mp3kit_cannot_read_is_one_sentence_naming_the_manifest(tmp_path, item, says):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    path = runs_dir / "01_introduction.manifest.json"
    path.write_text(json.dumps({"notebook": "01_introduction", "profile": "smoke", "runs": {}, "values": {},
                                "report": [item]}))
    with pytest.raises(UserError, match=re.escape(f"{path} {says}")):
        items.Manifest.load(path)
    out = subprocess.run([sys.executable, "-m", "mp3kit", "report", "--profile", "smoke", "--no-execute", "--runs-dir",
                          str(runs_dir), "--report-dir", str(tmp_path / "report")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith(f"mp3kit: {path} {says}")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "report" / "report.md").exists()


def test_items_import_neither_torch_nor_papermill():
    code = "import sys, mp3kit.items; print(sorted({'torch', 'papermill'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
