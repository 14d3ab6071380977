"""Small shared pieces: the user-error type, atomic writes, device choice."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error the user can fix: its message is one sentence naming the file or value and the fix."""

    def _render_traceback_(self) -> list[str]:
        """Return what IPython shows for this error in a notebook: the sentence, not the traceback."""
        # IPython (Jupyter, Colab) asks an exception for this before formatting a traceback; the traceback
        # stays in sys.last_traceback for %debug.
        return [f"\x1b[31mmp3kit:\x1b[0m {self}"]


SYNTHETIC_MARKER = "MP3KIT_SYNTHETIC.json"  # the file that marks a VOC2007 folder as made by mp3kit.synth

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
# The path itself is wrong: a folder where the file goes, a file where a folder should be, a folder that is not there.
_WRONG_PATH = {errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT}
# torch.save raises this RuntimeError when the file under it stops taking bytes, as on a full disk.
_TORCH_WRITE_ERROR = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed")


def megabytes(nbytes: int | None) -> str:
    """Return a size for a message, in MB."""
    if nbytes is None:
        return "an unknown size"
    mb = nbytes / 2**20
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.1f} MB" if mb >= 0.1 else "under 0.1 MB"


class WriteFailed(UserError, OSError):
    """A file could not be written: a full disk, a quota, a read-only or forbidden folder, or a path that is wrong."""

    def __init__(self, path, nbytes: int | None, reason: str, code: int | None = None, fix: str | None = None):
        self.path, self.nbytes, self.reason, self.code = Path(path), nbytes, reason, code
        self.folder = self.path.parent
        if fix is None:
            fix = self.remedy if code in _FULL else f"{self.remedy} or choose another folder"
        self.fix = fix
        super().__init__(f"Could not write {self.path.name} ({megabytes(nbytes)}) in {self.folder} ({reason}): {fix}.")
        self.errno = code

    @property
    def remedy(self) -> str:
        """Return what to do about the cause the errno names: free space, permissions, or the path itself."""
        if self.code in _FULL:
            return "free that much space there"
        if self.code in _READ_ONLY:
            return "make that folder writable"
        if self.code == errno.EISDIR:
            return f"move the folder {self.path} out of the way"
        if self.code in _WRONG_PATH:
            for folder in reversed(self.path.parents):  # from the top: the first part of the path that is wrong
                if not os.path.lexists(folder):
                    return f"create the folder {folder} (it was missing, or vanished during the write)"
                if not folder.is_dir():
                    return f"move the file {folder} out of the way (a folder belongs there)"
            return f"check the path {self.path}"
        return "check that disk"

    def advise(self, fix: str) -> WriteFailed:
        """Return the same failure with another fix."""
        return WriteFailed(self.path, self.nbytes, self.reason, self.code, fix)


def write_failure(exc: BaseException, path, nbytes: int | None = None) -> WriteFailed | None:
    """Return the WriteFailed that exc, raised while writing path, amounts to, or None when it is no failed write."""
    if isinstance(exc, WriteFailed):
        return exc
    cause = exc
    while cause is not None:  # torch.save re-raises the file's OSError as a RuntimeError, the OSError as its context
        if isinstance(cause, OSError):
            return WriteFailed(path, nbytes, cause.strerror or str(cause), cause.errno)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, RuntimeError) and _TORCH_WRITE_ERROR.search(str(exc)):
        return WriteFailed(path, nbytes, "the disk took only part of the file", errno.ENOSPC)
    return None


def usual_mode(folder: bool = False) -> int:
    """Return the mode open() or mkdir() gives a new file or folder under the umask (tempfile's are 0600 and 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write bytes to path through a temporary file in the same folder, then rename."""
    return atomic_write(path, lambda f: f.write(data), nbytes=len(data))


def atomic_write(path, write, nbytes: int | None = None) -> Path:
    """Call write(f) on a binary file in path's folder, then rename it to path: readers see the old file or the new.

    A full, over-quota or read-only disk raises WriteFailed (nbytes: what the write needs, for its message) and
    leaves no temporary file behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), usual_mode())  # mkstemp makes 0600 files; give the usual permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        failure = write_failure(exc, path, nbytes)
        if failure is None or failure is exc:
            raise
        raise failure from exc
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
