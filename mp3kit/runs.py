"""The Run record on disk: one folder per training run, the unit of truth for plots and reports.

runs/<name>/
    config.json       the TrainConfig that made the run
    history.json      one dict per completed epoch
    metrics.json      the test evaluation (written when the run completes)
    status.json       running | complete | stopped | interrupted | failed, with a reason, what the run trains on, and
                      how long it was expected to take when it started (mp3kit.estimate; absent when not estimated)
    test_scores.npz   ids, scores (N, 20), targets, difficult of the test split
    val_scores.npz    the same of the val split, and whether val was held out (explanations need no model)
    checkpoint.pt     model, optimizer, gradient scaler, epoch, history, RNG states, config
    training.lock     only while fit trains the run: the owning process id, host and start time

A run is never deleted: when fit starts a name afresh, the run already in its folder moves aside, intact, to a
sibling <name>@<UTC time> (e.g. final@2026-12-06T10-12-03), which stays listed and loads like any other run.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mp3kit.table import MISSING
from mp3kit.util import UserError, atomic_write_bytes, atomic_write_json, write_failure

RUN_FILES = ("config.json", "history.json", "metrics.json", "status.json", "test_scores.npz", "val_scores.npz",
             "checkpoint.pt")
LOCK_FILE = "training.lock"
EARLIER = re.compile(r"(?P<name>.+)@(?P<when>\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d)(-\d+)?")  # a run moved aside
UNREADABLE_LOCK_S = 60  # a lock file still empty or garbled after this long was left by a process killed while taking it


@dataclass
class Run:
    """A training run as recorded on disk."""

    name: str
    path: Path
    config: dict
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    status: str = "running"
    reason: str = ""
    device_info: dict = field(default_factory=dict)  # device, its name and compute capability, autocast dtype
    # The estimate made before this training started (mp3kit.estimate.Estimate.record: seconds, steps, device ...);
    # empty when none was made. A resumed run's covers the epochs it resumed, as its metrics' seconds do.
    estimate: dict = field(default_factory=dict)
    origin: str = ""  # what the fit() call that returned it did: reused, resumed or trained ("" when loaded)
    moved_aside: str = ""  # where that fit() call moved the earlier run it found in this folder ("" when none)
    # The runs of the same config with several seeds (Experiment.run(seeds=N)), this one first; empty for one seed.
    seeds: list = field(default_factory=list, repr=False)

    @property
    def test_map(self):
        return self.metrics.get("test_map")

    @property
    def test_loss(self):
        return self.metrics.get("test_loss")

    @property
    def test_ap(self):
        return self.metrics.get("test_ap")

    @property
    def synthetic(self) -> bool:
        # fit() writes config["data"]["synthetic"]; runs saved by earlier versions have config["synthetic"].
        data = self.config.get("data") or {}
        return bool(self.metrics.get("synthetic", data.get("synthetic", self.config.get("synthetic", False))))

    @property
    def earlier_version_of(self) -> str | None:
        """Return the run name this run is an earlier version of (its folder is name@time), or None."""
        return earlier_version_of(self.name)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def val_map(self):
        """Return the val mAP after the last evaluated epoch (the weights a finished run is tested with), or None."""
        values = [h["val_map"] for h in self.history if h.get("val_map") is not None]
        return values[-1] if values else None

    def best_val_map(self):
        """Return the best validation mAP seen at an evaluation epoch, or None."""
        values = [h["val_map"] for h in self.history if h.get("val_map") is not None]
        return max(values) if values else None

    def summary(self) -> dict:
        """Return the run's headline numbers as a flat dict (for tables and results.json)."""
        return {
            "name": self.name,
            "status": self.status,
            "epochs_done": len(self.history),
            "test_map": self.test_map,
            "test_loss": self.test_loss,
            "val_map": self.val_map,
            "best_val_map": self.best_val_map(),
            "synthetic": self.synthetic,
        }

    def __repr__(self) -> str:
        tm = f"{self.test_map:.4f}" if self.test_map is not None else MISSING
        return f"Run({self.name!r}, status={self.status}, epochs={len(self.history)}, test_map={tm})"


def _value(run, field: str):
    """Return field (val_map, test_map, test_loss) of a complete Run or results.json run entry, else None."""
    if isinstance(run, Run):
        return getattr(run, field) if run.complete else None
    return run.get(field) if run.get("status") == "complete" else None


def seed_names(name: str, first_seed: int, seeds: int) -> list[str]:
    """Return the run names of a config trained with seeds first_seed, first_seed + 1, ...: name, then name-seed<seed>."""
    return [name] + [f"{name}-seed{first_seed + i}" for i in range(1, seeds)]


def seed_values(candidate, field: str) -> list:
    """Return field (val_map, test_map, test_loss) of every complete run of a candidate that has it.

    A candidate is a Run or a results.json run entry; with several seeds (a Run's seeds, an entry's "seeds"), it
    stands for all of them.
    """
    group = candidate.seeds if isinstance(candidate, Run) else candidate.get("seeds")
    values = [_value(run, field) for run in (group or [candidate])]
    return [v for v in values if v is not None]


def mean_and_std(values) -> tuple:
    """Return the mean and the sample standard deviation (n - 1) of values; None for what too few values cannot give."""
    values = [float(v) for v in values]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def score(candidate, field: str = "test_map"):
    """Return what a candidate scored as findings.check takes it: the list of its complete seeds' values when it ran
    with several, its own value when one, None when it has none (not complete, or no such number)."""
    values = seed_values(candidate, field)
    if len(values) > 1:
        return values
    return values[0] if values else None


def as_shown(run: Run, field: str):
    """Return a run's val_map, test_map or test_loss as a table shows it: the mean ± standard deviation of its complete
    seeds (text) when it ran with several, else its own number."""
    values = seed_values(run, field) if run.seeds else []
    if len(values) < 2:
        return getattr(run, field)
    mean, std = mean_and_std(values)
    return f"{mean:.4f} ± {std:.4f}"


def best_by_val(candidates: dict):
    """Return the key of the complete run with the highest val mAP after its last epoch, or None.

    candidates maps keys to Runs or to results.json run dicts; one that ran with several seeds counts with the mean
    val mAP of its seeds. Val chooses, test only reports: a run without val numbers (trained on trainval) is no
    candidate, and test mAP is never looked at.
    """
    scored = {key: mean_and_std(seed_values(run, "val_map"))[0] for key, run in candidates.items()}
    scored = {key: v for key, v in scored.items() if v is not None}
    return max(scored, key=scored.get) if scored else None


def _read_json(path: Path, default):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not JSON, or not even UTF-8 text
        what = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise UserError(f"{path} is not valid JSON ({what}): delete the run folder {path.parent} and train it again.") from exc


def load_run(path) -> Run:
    """Load the Run recorded in folder path (no retraining)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path} holds no run (no config.json): pass a folder made by mp3kit train or fit().")
    status = _read_json(path / "status.json", {"status": "running"})
    return Run(
        name=path.name,
        path=path,
        config=_read_json(path / "config.json", {}),
        history=_read_json(path / "history.json", []),
        metrics=_read_json(path / "metrics.json", {}),
        status=status.get("status", "running"),
        reason=status.get("reason", ""),
        device_info=status.get("device", {}),
        estimate=status.get("estimate", {}),
    )


def list_runs(runs_dir) -> list[Run]:
    """Return every run recorded under runs_dir (earlier versions moved aside too), oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    # Hidden folders (.ipynb_checkpoints, a report's staging) are no runs, whatever they hold.
    folders = [p for p in runs_dir.iterdir() if _valid_name(p.name) and (p / "config.json").exists()]
    folders.sort(key=lambda p: (p / "config.json").stat().st_mtime)
    return [load_run(p) for p in folders]


def write_config(run: Run) -> None:
    """Write the run's config.json."""
    atomic_write_json(run.path / "config.json", run.config)


def write_progress(run: Run) -> None:
    """Write the run's history.json and status.json."""
    atomic_write_json(run.path / "history.json", run.history)
    write_status(run)


def write_status(run: Run) -> None:
    """Write the run's status.json: its status, the reason, what it trains on and, when made, its estimate."""
    status = {"status": run.status, "reason": run.reason, "device": run.device_info}
    atomic_write_json(run.path / "status.json", {**status, "estimate": run.estimate} if run.estimate else status)


def write_metrics(run: Run) -> None:
    """Write the run's metrics.json."""
    atomic_write_json(run.path / "metrics.json", run.metrics)


def write_test_scores(run: Run, ids, scores, targets, difficult) -> None:
    """Write the test split's per-image scores so plots and CSVs need no model."""
    _write_scores(run.path / "test_scores.npz", ids, scores, targets, difficult)


def write_val_scores(run: Run, ids, scores, targets, difficult, held_out: bool) -> None:
    """Write the val split's per-image scores (held_out False: the run trained on val too) so explanations need no model."""
    _write_scores(run.path / "val_scores.npz", ids, scores, targets, difficult, held_out=np.asarray(bool(held_out)))


def _write_scores(path: Path, ids, scores, targets, difficult, **extra) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        ids=np.asarray(ids, dtype=str),
        scores=np.asarray(scores, dtype=np.float32),  # (N, 20)
        targets=np.asarray(targets, dtype=np.uint8),
        difficult=np.asarray(difficult, dtype=bool),
        **extra,
    )
    atomic_write_bytes(path, buf.getvalue())


def load_test_scores(run: Run) -> dict:
    """Return the run's test ids, scores, targets and difficult mask as numpy arrays."""
    path = run.path / "test_scores.npz"
    if not path.exists():
        raise UserError(f"{path} is missing: the run {run.name!r} has not finished its test evaluation; resume it "
                        f"with resume=True.")
    with np.load(path) as z:
        return {k: z[k] for k in ("ids", "scores", "targets", "difficult")}


def load_val_scores(run: Run) -> dict | None:
    """Return the run's val ids, scores, targets, difficult mask and held_out flag, or None when it recorded none."""
    path = run.path / "val_scores.npz"
    if not path.exists():
        return None  # a run finished before runs recorded them
    with np.load(path) as z:
        return {**{k: z[k] for k in ("ids", "scores", "targets", "difficult")}, "held_out": bool(z["held_out"])}


# ---------------------------------------------------------------- names, earlier versions, the training lock


def _name_problem(name) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "holds a path separator"
    if ".." in name:
        return "holds '..'"
    if name.startswith("."):
        return "starts with a dot"
    if any(ord(ch) < 32 for ch in name):
        return "holds a control character"
    return None


def _valid_name(name) -> bool:
    return _name_problem(name) is None


def check_name(name) -> str:
    """Return name when it can name a run folder (one folder inside the runs folder), else raise UserError naming it."""
    problem = _name_problem(name)
    if problem:
        raise UserError(f"The run name {name!r} {problem}: a run name is one folder in the runs folder; use letters, "
                        f"digits, '-', '_' and '.', e.g. \"final-adam\".")
    return name


def earlier_version_of(name: str) -> str | None:
    """Return the run name that name (a folder name@time moved aside) is an earlier version of, or None."""
    m = EARLIER.fullmatch(name)
    return m["name"] if m else None


def _aside(folder: Path) -> Path:
    """Return a free sibling of folder named <name>@<UTC time>, with -2, -3, ... when the second is taken."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime())
    candidate, n = folder.with_name(f"{folder.name}@{stamp}"), 1
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}@{stamp}-{n}")
    return candidate


class RunBusy(UserError):
    """Another process, or another thread of this one, is training the run."""


_held: set[str] = set()  # the tokens of the locks this process holds, so a lock with our pid is told from a stale one
_held_guard = threading.Lock()


class RunLock:
    """The lock of a run folder while fit trains it: a file made with O_CREAT | O_EXCL that holds its owner.

    A second fit of the run (another process, or another thread of this one, such as the training panel's) finds
    the file and stops with a sentence naming the owner. A lock whose process is gone (same host, no such pid) is
    stale and cleared.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.info: dict | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> RunLock:
        """Take the lock, clearing a stale one, or raise RunBusy naming the process that holds it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(exc, self.path, 0) from exc
        info = {"pid": os.getpid(), "host": socket.gethostname(), "thread": threading.current_thread().name,
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "time": time.time(),
                "token": uuid.uuid4().hex}
        for _ in range(3):  # a stale lock cleared may be taken by another process first; then it is that one's
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.path)
                if not _stale(holder, self.path):
                    raise RunBusy(_busy_sentence(self.folder, holder)) from None
                _remove_lock(self.path, holder)
                continue
            except OSError as exc:
                raise write_failure(exc, self.path, 0) from exc
            with _held_guard:
                _held.add(info["token"])
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(info))
            except OSError as exc:
                self.path.unlink(missing_ok=True)  # ours, half written
                with _held_guard:
                    _held.discard(info["token"])
                raise write_failure(exc, self.path, 0) from exc
            self.info = info
            return self
        raise RunBusy(_busy_sentence(self.folder, _read_lock(self.path)))

    def release(self) -> None:
        """Remove the lock file if it is still this lock's."""
        if self.info is None:
            return
        _remove_lock(self.path, self.info)
        with _held_guard:
            _held.discard(self.info["token"])
        self.info = None

    def move_aside(self) -> Path | None:
        """Move the run in the locked folder, intact, to a sibling <name>@<UTC time>; keep the name locked.

        Returns where the run went, or None when the folder holds no run file.
        """
        if not any((self.folder / f).exists() for f in RUN_FILES):
            return None
        aside = _aside(self.folder)
        try:
            os.rename(self.folder, aside)  # one rename: the run moves whole or not at all
        except OSError as exc:
            raise UserError(f"Could not move the earlier run {self.folder} aside to {aside.name} "
                            f"({exc.strerror or exc}): make the runs folder writable, or train under another name.") from exc
        # The lock file went along with the folder: take the name's lock again at once, then drop the moved copy.
        old, self.info = self.info, None
        try:
            self.acquire()
        finally:
            _remove_lock(aside / LOCK_FILE, old)
            with _held_guard:
                _held.discard(old["token"])
        return aside

    def __enter__(self) -> RunLock:
        return self if self.info is not None else self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_lock(path: Path) -> dict | None:
    """Return the owner a lock file records, or None when it cannot be read (being written, or garbled)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _remove_lock(path: Path, holder: dict | None) -> None:
    """Remove the lock file at path if it still records holder (None: if it is still unreadable)."""
    now = _read_lock(path)
    if (now and now.get("token")) != (holder and holder.get("token")):
        return  # taken again meanwhile: it is another owner's now
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _stale(holder: dict | None, path: Path) -> bool:
    """Return True when the lock's process is gone; a lock taken on another host is never judged stale."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_LOCK_S
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if pid == os.getpid():
        with _held_guard:
            return holder.get("token") not in _held  # ours only while a thread of this process holds it
    return not _alive(pid, holder.get("time"))


def _alive(pid, since) -> bool:
    """Return True when process pid runs and started before since (a later one reuses a dead owner's pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, IndexError, StopIteration, ValueError):
        return True  # no /proc (macOS): the signal check above is all there is
    if stat[0] in ("Z", "X"):
        return False  # killed, and not yet reaped by its parent
    started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    return not isinstance(since, (int, float)) or started <= since + 1


def _alive_windows(pid: int) -> bool:
    # os.kill(pid, 0) would send Ctrl-C there; ask the kernel whether the process is still active instead.
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _busy_sentence(folder: Path, holder: dict | None) -> str:
    """Return the sentence that names the process training the run in folder and what to do."""
    if holder is None:
        return (f"The run {folder} is being claimed by another process right now ({folder / LOCK_FILE} is not readable "
                f"yet): wait for that process to finish, or train under another name.")
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("started", "an unknown time")
    if host != socket.gethostname():
        return (f"The run {folder} is being trained by process {pid} on another machine ({host}) since {since}: wait "
                f"for it to finish, or, if that machine no longer trains it (e.g. a Colab runtime that was reset), "
                f"delete {folder / LOCK_FILE} and run again.")
    if pid == os.getpid():
        return (f"The run {folder} is already being trained by this process (pid {pid}), in another thread "
                f"({holder.get('thread')}, e.g. the training panel) since {since}: wait for it to finish or stop it, "
                f"or train under another name.")
    return (f"The run {folder} is being trained by another process (pid {pid}) since {since}: wait for it to finish, "
            f"stop it (e.g. kill {pid}), or train under another name.")
