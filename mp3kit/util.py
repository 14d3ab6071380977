"""Small shared pieces: the user-error type, atomic writes, device choice."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error the user can fix: its message is one sentence naming the file or value and the fix."""


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write bytes to path through a temporary file in the same folder, then rename."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write(path, write) -> Path:
    """Call write(f) on a binary file in path's folder, then rename it to path: readers see the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write text (UTF-8) to path atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    """Write obj as indented JSON to path atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def pick_device(name: str = "auto"):
    """Return the torch device to use: CUDA, then Apple MPS, then CPU when name is 'auto'."""
    import torch

    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise UserError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"Device {name!r} was asked for but CUDA is not available here: use --device auto or cpu.")
        if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError(f"Device {name!r} was asked for but Apple MPS is not available here: use --device auto or cpu.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_cache_dir() -> Path:
    """Return mp3kit's cache folder ($MP3KIT_CACHE, else ~/.cache/mp3kit)."""
    return Path(os.environ.get("MP3KIT_CACHE") or Path.home() / ".cache" / "mp3kit")


@contextmanager
def temporary_environ(**values):
    """Set environment variables for the duration of the block (child processes, e.g. kernels, inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
