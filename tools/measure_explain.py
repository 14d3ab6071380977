"""Measure what the explanations (mp3kit.explain) add to a profile's report, one line per notebook, side by side.

Usage, once `mp3kit report --profile quick --runs-dir DIR --report-dir REPORT` has built the report:

    .venv/bin/python tools/measure_explain.py --runs-dir DIR --report-dir REPORT

Per notebook it prints the notebook's time in that report (results.json), the time its explanation cells took there
(papermill's duration of each cell that calls exp.show_predictions, exp.context_errors, exp.runs_from or
exp.grad_cam, read from REPORT/executed/), and the time of the pass over val that fit's finish now makes for each of
the notebook's runs, timed here on the runs in DIR (nothing is trained; notebook 3's Classifier comes from its cell).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from measure_report import cell_seconds  # tools/ is on sys.path when this script runs

from mp3kit import explain, pipeline, runs, train

ROOT = Path(__file__).resolve().parents[1]
CALLS = ("exp.show_predictions", "exp.context_errors", "exp.runs_from", "exp.grad_cam")


def classifier(width: float, folder: Path):
    """Return notebook 3's Classifier class, from its cell in the notebook's source (as a module file, so that its
    source, which identifies the runs it trained, can be read), built at width."""
    source = (ROOT / "notebooks" / "03_develop_classifier.py").read_text()
    cell = next(c for c in source.split("# %%") if "class Classifier(nn.Module)" in c)
    path = folder / "notebook3_classifier.py"
    path.write_text(f"import torch\nfrom torch import nn\n\nWIDTH = {width!r}\n" + cell.split("\n", 1)[1].replace(
        "WIDTH = exp.width", ""))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Classifier


def val_pass_seconds(runs_dir: Path, notebook: str) -> float:
    """Return the seconds of one evaluation pass over val for each of notebook's complete runs in runs_dir."""
    manifest = json.loads((runs_dir / f"{notebook}.manifest.json").read_text())
    device, total = torch.device("cpu"), 0.0
    for entry in manifest["runs"].values():
        run = runs.load_run(runs_dir / entry["run"])
        if not run.complete:
            continue
        config = train.TrainConfig.from_dict(run.config)
        own = isinstance(run.config.get("model"), dict) and run.config["model"].get("module") == "Classifier"
        with tempfile.TemporaryDirectory() as folder:
            network = classifier(config.width, Path(folder)) if own else None
            model = train.place_model(train.load_model(run, "cpu", model=network), device)
        split = explain.val_split(run)
        t0 = time.perf_counter()
        loader = pipeline.make_loader(split, batch_size=2 * config.batch_size, image_size=config.image_size,
                                      train=False, device=device, pipeline=config.pipeline, progress=False)
        train.evaluate(model, loader, device, None, config.tta)
        total += time.perf_counter() - t0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", required=True, type=Path)
    parser.add_argument("--report-dir", required=True, type=Path)
    args = parser.parse_args()
    results = json.loads((args.report_dir / "results.json").read_text())
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} now; torch threads {torch.get_num_threads()}")
    print(f"{'notebook':<26} {'notebook s':>10} {'of it, explanation cells s':>27} {'val passes s':>12} {'added':>7}")
    totals = [0.0, 0.0, 0.0]
    for name, nb in results["notebooks"].items():
        if nb.get("missing") or not nb.get("executed"):
            continue
        explaining, _ = cell_seconds(args.report_dir / nb["executed"], CALLS)
        passes, seconds = val_pass_seconds(args.runs_dir, name), nb["seconds"]
        print(f"{name:<26} {seconds:>10.1f} {explaining:>27.1f} {passes:>12.1f} {(explaining + passes) / seconds:>7.1%}")
        totals = [totals[0] + seconds, totals[1] + explaining, totals[2] + passes]
    print(f"{'all three':<26} {totals[0]:>10.1f} {totals[1]:>27.1f} {totals[2]:>12.1f} "
          f"{(totals[1] + totals[2]) / totals[0]:>7.1%}")


if __name__ == "__main__":
    main()
