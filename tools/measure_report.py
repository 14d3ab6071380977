"""Measure `mp3kit report` as `make report` runs it after set-up: wall time and peak memory, as one JSON line.

Usage (from the repository root, after `make setup`):

    .venv/bin/python tools/measure_report.py --state fresh    # as after a fresh clone: no runs, no caches
    .venv/bin/python tools/measure_report.py --state warm     # with the runs and caches already on disk

--state fresh moves runs/<profile>/ aside to runs/<profile>@<UTC time>/ (runs are never deleted) and points
MP3KIT_CACHE at an empty temporary folder, so the synthetic dataset and the decoded-image cache are rebuilt as on a
fresh clone (set-up, i.e. creating .venv, is excluded).
Runs are keyed to the data's folder, so a --state warm run straight after a fresh one trains again (it reads the
dataset from the usual cache); the one after that measures the warm rebuild.
The report goes to a temporary folder unless --report-dir is given, so report/ is left alone.
The notebooks get make report's --set WORKED_EXAMPLE=True (notebook 3 runs the seed report's ablation), unless
--set gives other values.

Where the time goes, from the same build (the runs it trained: those whose config.json it wrote):
  runs                 per run, its estimate (status.json, made before it trained; mp3kit.estimate) against the seconds
                       fit took (metrics.json), and their ratio; worst_ratio is the run furthest from 1 either way;
                       epoch_ratio compares an epoch's estimated steps with the run's median epoch (history.json),
                       which a burst of load elsewhere on a shared machine moves far less than the run's total
  share                the report's wall time spent in training steps (the sum of the runs' epochs' seconds in
                       history.json) against the rest: evaluation inside fit, the estimate cells, the notebooks' other
                       cells (data, caches, figures, explanations), kernel starts, and mp3kit report outside the notebooks
  bench                this machine's `mp3kit bench` training figure (SimpleClassifier, images/s, cached pipeline),
                       run after the report in the same invocation, as a reference for comparing machines
A short summary of these goes to stderr; the JSON line to stdout holds every figure.

Memory is reported two ways:
  peak_tree_rss_mib    the largest sum of resident memory over the whole process tree (mp3kit plus the Jupyter
                       kernels it starts), sampled from /proc every --interval seconds (a peak shorter than the
                       interval can be missed);
  max_process_rss_mib  the largest peak of any single process in the tree, from the kernel's own accounting
                       (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss, exact but not a sum).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat

from mp3kit import layout
from mp3kit import runs as run_records

REPO = Path(__file__).resolve().parents[1]
MAKE_REPORT_SETS = ["WORKED_EXAMPLE=True"]  # what the Makefile's report target gives mp3kit report
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root_pid: int) -> int:
    """Return the summed resident memory of root_pid and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces; the fields after its closing parenthesis do not.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def measure(command: list[str], env: dict, interval: float) -> dict:
    """Run command, sampling its process tree's memory; return exit status, wall time and memory peaks."""
    peak = {"bytes": 0, "samples": 0}
    t0 = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env)
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["bytes"] = max(peak["bytes"], tree_rss_bytes(proc.pid))
            peak["samples"] += 1
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = proc.wait()
    wall = time.monotonic() - t0
    done.set()
    sampler.join()
    # ru_maxrss is in KiB on Linux.
    max_child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "exit_status": status,
        "wall_s": round(wall, 1),
        "peak_tree_rss_mib": round(peak["bytes"] / 2**20, 1),
        "max_process_rss_mib": round(max_child_kib / 1024, 1),
        "samples": peak["samples"],
    }


def trained_runs(runs_dir: Path, since: float) -> list:
    """Return the runs in runs_dir that a build started at since trained (their config.json is written when training
    starts; a reused run keeps its old one)."""
    folders = [p.parent for p in Path(runs_dir).glob("*/config.json") if p.stat().st_mtime >= since]
    return [run_records.load_run(folder) for folder in sorted(folders)]


def run_times(trained: list) -> list[dict]:
    """Return each run's estimated and actual seconds and their ratio, its training steps' seconds, and the estimated
    steps of an epoch against the median epoch's (a ratio that a burst of load on a shared machine hardly moves)."""
    rows = []
    for run in trained:
        estimated, actual = run.estimate.get("seconds"), run.metrics.get("seconds")
        epochs = [h["seconds"] for h in run.history if h.get("seconds")]
        per_epoch = (run.estimate.get("steps") or 0) * (run.estimate.get("step_s") or 0) / (run.estimate.get("epochs") or 1)
        rows.append({"run": run.name, "status": run.status, "estimated_s": estimated,
                     "actual_s": None if actual is None else round(actual, 2),
                     "ratio": round(estimated / actual, 3) if estimated and actual else None,
                     "steps_s": round(sum(epochs), 2),
                     "epoch_ratio": round(per_epoch / statistics.median(epochs), 3) if per_epoch and epochs else None})
    return rows


def cell_seconds(executed: Path, calls=("exp.estimate(",)) -> tuple[float, float]:
    """Return the seconds of an executed notebook's cells that make one of calls, and of all its cells (papermill's
    durations)."""
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    took = [(c.source, (c.metadata.get("papermill") or {}).get("duration") or 0.0) for c in cells]
    return sum(s for source, s in took if any(call in source for call in calls)), sum(s for _, s in took)


def where_time_goes(wall: float, rows: list[dict], report_dir: Path) -> dict:
    """Return the seconds of the build's parts, from the runs (rows) and the report's results.json and executed notebooks."""
    steps = sum(r["steps_s"] for r in rows)
    fit = sum(r["actual_s"] or r["steps_s"] for r in rows)
    results = report_dir / "results.json"
    notebooks = json.loads(results.read_text())["notebooks"].values() if results.exists() else []
    in_notebooks = sum(nb.get("seconds") or 0.0 for nb in notebooks)
    estimating = in_cells = 0.0
    for nb in notebooks:
        if nb.get("executed") and (report_dir / nb["executed"]).exists():
            estimate_cells, cells = cell_seconds(report_dir / nb["executed"])
            estimating, in_cells = estimating + estimate_cells, in_cells + cells
    parts = {"training_steps_s": steps, "evaluation_in_fit_s": fit - steps, "estimate_cells_s": estimating,
             "other_cells_s": in_cells - fit - estimating, "kernel_starts_s": in_notebooks - in_cells,
             "outside_notebooks_s": wall - in_notebooks}
    return {**{k: round(v, 1) for k, v in parts.items()}, "training_steps_share": round(steps / wall, 3) if wall else None}


def bench_reference(env: dict) -> dict:
    """Run `mp3kit bench` (its whole set, as documented) and return its training figure and how long it took."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "mp3kit", "bench"], cwd=REPO, env=env, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    figures = json.loads(lines[-1])
    return {"simple_cached_train_img_s": figures["simple_cached_img_s"], "image_size": figures["image_size"],
            "batch_size": figures["batch_size"], "device": figures["device"], "seconds": round(time.monotonic() - t0, 1)}


def summary(result: dict) -> str:
    """Return the human summary of the time figures: estimates against actual times, the training share, the bench."""
    rows = [r for r in result.get("runs", []) if r["ratio"] is not None]
    lines = [f"load average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after "
             f"({result['cpus']} CPUs)"]
    if rows:
        lines.append(f"{'run':<44} {'estimated s':>11} {'actual s':>9} {'ratio':>6} {'median epoch ratio':>18}")
        lines += [f"{r['run']:<44} {r['estimated_s']:>11.1f} {r['actual_s']:>9.1f} {r['ratio']:>6.2f} "
                  f"{r['epoch_ratio'] or float('nan'):>18.2f}" for r in rows]
        lines.append(f"worst ratio (estimated / actual): {result['worst_ratio']:.2f}; all {len(rows)} runs: estimated "
                     f"{sum(r['estimated_s'] for r in rows):.0f} s, actual {sum(r['actual_s'] for r in rows):.0f} s")
    time_parts = result.get("time", {})
    if time_parts.get("training_steps_share") is not None:
        parts = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s" for k, v in time_parts.items()
                          if k.endswith("_s"))
        lines.append(f"training steps: {time_parts['training_steps_share']:.0%} of the wall time {result['wall_s']:.0f} s "
                     f"(goal 80%): {parts}")
    bench = result.get("bench", {})
    if "simple_cached_train_img_s" in bench:
        lines.append(f"mp3kit bench on this machine: SimpleClassifier training {bench['simple_cached_train_img_s']:.1f} "
                     f"images/s ({bench['image_size']} px, batch {bench['batch_size']}, {bench['device']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Parse the arguments, prepare the state, run the report and print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state", choices=["fresh", "warm"], default="fresh",
                   help="fresh: delete runs/<profile>/ and use empty caches; warm: keep them (default: fresh)")
    p.add_argument("--profile", choices=["smoke", "quick", "full"], default="quick")
    p.add_argument("--report-dir", default=None, help="where the report goes (default: a temporary folder)")
    p.add_argument("--interval", type=float, default=0.2, help="memory sampling interval in seconds")
    p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                   help="the notebooks' parameters, as mp3kit report --set takes them (default: WORKED_EXAMPLE=True, as "
                        "make report gives)")
    args = p.parse_args(argv)

    env = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix="mp3kit-measure-"))
    report_dir = Path(args.report_dir) if args.report_dir else scratch / "report"
    # Where mp3kit report, run from here, keeps the profile's runs ($MP3KIT_RUNS_DIR included).
    runs = layout.runs_folder(args.profile, notebooks_dir=REPO / "notebooks")
    if args.state == "fresh":
        if runs.exists():
            aside = runs.with_name(f"{runs.name}@{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime())}")
            print(f"measure_report: moving {runs} aside to {aside} (state fresh)", file=sys.stderr)
            runs.rename(aside)
        env["MP3KIT_CACHE"] = str(scratch / "cache")
    given = args.set if args.set is not None else MAKE_REPORT_SETS
    command = [sys.executable, "-m", "mp3kit", "report", "--profile", args.profile, "--report-dir", str(report_dir),
               *(f"--set={item}" for item in given)]
    load_before, since = os.getloadavg(), time.time() - 1  # a second's slack for file systems that round mtimes
    try:
        result = measure(command, env, args.interval)
        rows = run_times(trained_runs(runs, since))
        parts = where_time_goes(result.get("wall_s", 0.0), rows, report_dir)
    finally:
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        if not args.report_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    bench = bench_reference(dict(os.environ))
    result = {"command": " ".join(["mp3kit report --profile", args.profile, *(f"--set {item}" for item in given)]),
              "state": args.state, **result,
              "cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(), "python": platform.python_version(),
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "runs": rows, "worst_ratio": max(ratios, key=lambda r: max(r, 1 / r)) if ratios else None, "time": parts,
              "bench": bench}
    print(summary(result), file=sys.stderr)
    print(json.dumps(result))
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
