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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
    if args.state == "fresh":
        runs = REPO / "runs" / args.profile
        if runs.exists():
            aside = runs.with_name(f"{runs.name}@{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime())}")
            print(f"measure_report: moving {runs} aside to {aside} (state fresh)", file=sys.stderr)
            runs.rename(aside)
        env["MP3KIT_CACHE"] = str(scratch / "cache")
    given = args.set if args.set is not None else MAKE_REPORT_SETS
    command = [sys.executable, "-m", "mp3kit", "report", "--profile", args.profile, "--report-dir", str(report_dir),
               *(f"--set={item}" for item in given)]
    try:
        result = measure(command, env, args.interval)
    finally:
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        if not args.report_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {"command": " ".join(["mp3kit report --profile", args.profile, *(f"--set {item}" for item in given)]),
              "state": args.state, **result,
              "cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(), "python": platform.python_version()}
    print(json.dumps(result))
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
