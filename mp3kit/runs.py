"""The Run record on disk: one folder per training run, the unit of truth for plots and reports.

runs/<name>/
    config.json       the TrainConfig that made the run
    history.json      one dict per completed epoch
    metrics.json      the test evaluation (written when the run completes)
    status.json       running | complete | stopped | interrupted | failed, with a reason, and what the run trains on
    test_scores.npz   ids, scores (N, 20), targets, difficult of the test split
    checkpoint.pt     model, optimizer, gradient scaler, epoch, history, RNG states, config
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mp3kit.util import UserError, atomic_write_bytes, atomic_write_json

RUN_FILES = ("config.json", "history.json", "metrics.json", "status.json", "test_scores.npz", "checkpoint.pt")


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
    origin: str = ""  # what the fit() call that returned it did: reused, resumed or trained ("" when loaded)

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
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

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
            "best_val_map": self.best_val_map(),
            "synthetic": self.synthetic,
        }

    def __repr__(self) -> str:
        tm = f"{self.test_map:.4f}" if self.test_map is not None else "-"
        return f"Run({self.name!r}, status={self.status}, epochs={len(self.history)}, test_map={tm})"


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
    )


def list_runs(runs_dir) -> list[Run]:
    """Return every run recorded under runs_dir, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir() if (p / "config.json").exists()]
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
    """Write the run's status.json: its status, the reason, and what it trains on."""
    atomic_write_json(run.path / "status.json", {"status": run.status, "reason": run.reason, "device": run.device_info})


def write_metrics(run: Run) -> None:
    """Write the run's metrics.json."""
    atomic_write_json(run.path / "metrics.json", run.metrics)


def write_test_scores(run: Run, ids, scores, targets, difficult) -> None:
    """Write the test split's per-image scores so plots and CSVs need no model."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        ids=np.asarray(ids, dtype=str),
        scores=np.asarray(scores, dtype=np.float32),  # (N, 20)
        targets=np.asarray(targets, dtype=np.uint8),
        difficult=np.asarray(difficult, dtype=bool),
    )
    atomic_write_bytes(run.path / "test_scores.npz", buf.getvalue())


def load_test_scores(run: Run) -> dict:
    """Return the run's test ids, scores, targets and difficult mask as numpy arrays."""
    path = run.path / "test_scores.npz"
    if not path.exists():
        raise UserError(f"{path} is missing: the run {run.name!r} has not finished its test evaluation; resume it "
                        f"with resume=True.")
    with np.load(path) as z:
        return {k: z[k] for k in ("ids", "scores", "targets", "difficult")}
