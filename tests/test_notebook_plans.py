"""Each notebook says how long its runs will take before the first one trains: one cell lists them (PLAN) and
estimates them, the training cells take their configs from it, and a built report's runs are exactly the plan's, each
keeping its estimate beside the time it took."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mp3kit import report, runs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_introduction", "02_scratch_vs_pretrained", "03_develop_classifier"]
TRAINING = re.compile(r"\bexp\.(run|ablation|final)\(|TrainPanel\(")


def _code_cells(name: str) -> list[str]:
    """Return the code cells of a notebook's jupytext source, in order."""
    text = (ROOT / "notebooks" / f"{name}.py").read_text(encoding="utf-8")
    cells = re.split(r"^# %%.*$", text, flags=re.M)[1:]
    kinds = re.findall(r"^# %%(.*)$", text, flags=re.M)
    return [cell for kind, cell in zip(kinds, cells) if "[markdown]" not in kind]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_estimate_cell_comes_before_the_first_training_cell_and_the_runs_take_their_configs_from_its_plan(name):
    cells = _code_cells(name)
    estimating = [i for i, cell in enumerate(cells) if "exp.estimate(PLAN)" in cell]
    training = [i for i, cell in enumerate(cells) if TRAINING.search(cell)]
    assert len(estimating) == 1 and training and estimating[0] < training[0]
    source = "\n".join(cells)
    if name.startswith("03"):  # the plan is made of what the ablation and the final model are given
        assert "PLAN = exp.ablation_plan(ABLATION, seeds=SEEDS, final=FINAL)" in source
        assert "exp.ablation(ABLATION, seeds=SEEDS)" in source and "exp.final(ablation, **FINAL)" in source
        return
    # Every run trained by key takes its config from PLAN under that key: no config is written a second time.
    calls = re.findall(r"exp\.run\(\s*([^,]+),\s*([^,\n]+)", source)
    assert calls and all(config == f"PLAN[{key}]" for key, config in calls), calls


@pytest.mark.slow
def test_a_built_reports_runs_are_the_plans_each_with_its_estimate(tmp_path):
    # The notebooks as mp3kit report runs them (smoke, papermill kernels), notebook 3 with two seeds per row: every run a
    # notebook records is one its plan counted (seed runs and the final model included), and nothing else was
    # planned except the pretrained runs a machine without the ImageNet weights skips.
    report.build("smoke", notebooks_dir=ROOT / "notebooks", runs_dir=tmp_path / "runs", report_dir=tmp_path / "report",
                 parameters={"SEEDS": 2})
    for name in NOTEBOOKS:
        manifest = json.loads((tmp_path / "runs" / f"{name}.manifest.json").read_text())
        planned = manifest["values"]["estimate"]["runs"]
        trained = {seed for entry in manifest["runs"].values() for seed in entry.get("seeds") or [entry["run"]]}
        skipped = set(planned) - trained
        if "pretrained_unavailable" in manifest["values"]:
            assert skipped == {"02-smoke-alexnet-pretrained", "02-smoke-alexnet-finetuned"}
        else:
            assert not skipped
        assert trained <= set(planned), f"{name} trained runs its plan did not count: {trained - set(planned)}"
        for folder in trained:
            run = runs.load_run(tmp_path / "runs" / folder)
            assert run.complete and run.estimate["device"] == "the CPU" and run.estimate["steps"] > 0
            assert run.metrics["seconds"] > 0
            if folder.endswith("-final"):  # planned as the slowest row it might be, trained as the one val chose
                assert run.estimate["seconds"] <= planned[folder]
            else:
                assert run.estimate["seconds"] == planned[folder]
    seeds = json.loads((tmp_path / "runs" / "03_develop_classifier.manifest.json").read_text())["values"]["estimate"]
    assert {"03-smoke-ablation-1-seed1", "03-smoke-ablation-2-seed1"} <= set(seeds["runs"])
