"""Download the two VOC 2007 tars (resumable, checksummed, with mirrors) and extract them safely."""

from __future__ import annotations

import hashlib
import http.client
import json
import posixpath
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mp3kit.util import UserError, atomic_write_json


@dataclass(frozen=True)
class VOCTar:
    """One tar to fetch: file name, expected MD5, and URLs to try in order."""

    name: str
    md5: str
    urls: tuple[str, ...]


_OFFICIAL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/"
_MIRRORS = ("https://pjreddie.com/media/files/",)

VOC_TARS: tuple[VOCTar, ...] = tuple(
    VOCTar(name, md5, tuple(base + name for base in (_OFFICIAL, *_MIRRORS)))
    for name, md5 in (("VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
                      ("VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f"))
)

_CHUNK = 1 << 20
# A transfer that keeps making progress is resumed this many times before the next URL is tried.
_MAX_RESUMES = 20


def file_md5(path) -> str:
    """Return the hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of url to part (asking for a byte range), or rewrite it when the server sends it all."""
    offset = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": "mp3kit"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        # 416: the part already holds the whole file; the checksum decides whether it is good.
        if exc.code == 416 and offset:
            return
        raise
    with response:
        if offset and response.status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise OSError(f"server answered a range starting at {start!r} instead of {offset}")
        else:
            offset = 0  # the server ignored Range (200): start again from byte 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not progress, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    received = _size(part)
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def _fetch_resuming(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Fetch url into part, resuming after drops for as long as each attempt makes progress."""
    for attempt in range(_MAX_RESUMES + 1):
        before = _size(part)
        try:
            _transfer(url, part, progress, timeout)
            return
        except (OSError, http.client.HTTPException):
            if _size(part) == before or attempt == _MAX_RESUMES:
                raise


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _try_url(url: str, part: Path, md5: str, progress: bool, timeout: float) -> str | None:
    """Fetch url into part; return None when its MD5 is right, else why not."""
    while True:
        resumed = _size(part) > 0
        try:
            _fetch_resuming(url, part, progress, timeout)
        except (OSError, http.client.HTTPException) as exc:
            return _why(exc)
        if file_md5(part) == md5:
            return None
        part.unlink()
        if not resumed:
            return "wrong MD5"
        # A bad checksum after resuming may come from a stale part: try once more from byte 0.


def download(url_list, dest, md5: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download dest from the first URL that works, resuming partial transfers, and verify its MD5."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if file_md5(dest) == md5:
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in url_list:
        reason = _try_url(url, part, md5, progress, timeout)
        if reason is None:
            part.replace(dest)
            return dest
        failures.append(f"{url}: {reason}")
    raise UserError(f"Could not download a good copy of {dest.name} ({'; '.join(failures) or 'no URL given'}): "
                    f"check your internet connection and run the command again, or download {dest.name} "
                    f"yourself into {dest.parent} (expected MD5 {md5}).")


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Say why a tar member could land outside the destination, or return None when it is safe."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        return "its path leaves the destination"
    if member.issym():
        target = member.linkname.replace("\\", "/")
        landing = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or landing == ".." or landing.startswith("../"):
            return f"it is a symlink to {member.linkname!r} outside the destination"
    if member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or ".." in target.split("/"):
            return f"it is a hard link to {member.linkname!r} outside the destination"
    if member.isdev():
        return "it is a device file"
    return None


def safe_extract(tar_path, dest, progress: bool = False) -> None:
    """Extract a tar into dest after checking that no member can land outside dest."""
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise UserError(f"Tar file {tar_path} does not exist: check the path, or run `mp3kit data fetch --root DIR` "
                        f"to download the VOC 2007 tars.")
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for member in members:
                problem = _member_problem(member)
                if problem:
                    raise UserError(f"Refusing to extract {tar_path}: member {member.name!r} is unsafe ({problem}); "
                                    f"delete the file and download it again from a trusted source.")
            dest.mkdir(parents=True, exist_ok=True)
            # The "data" filter (Python >= 3.10.12) re-checks every member against the real paths on disk.
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=tqdm(members, desc=f"extract {tar_path.name}", unit="file",
                                              disable=not progress, leave=False), **options)
    except (tarfile.ReadError, EOFError) as exc:
        raise UserError(f"{tar_path} is not a readable tar file: delete it and download it again.") from exc
    except tarfile.TarError as exc:  # FilterError and friends from the data filter
        raise UserError(f"Refusing to extract {tar_path}: {exc}; delete the file and download it again "
                        f"from a trusted source.") from exc
    except OSError as exc:
        raise UserError(f"Could not extract {tar_path} into {dest} ({exc}): free some disk space or fix the "
                        f"folder's permissions, then run the command again.") from exc


def _marker_md5(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("md5")
    except (OSError, ValueError, AttributeError):
        return None


def fetch_voc(root, progress: bool = True, urls=None, tars=None, timeout: float = 60.0) -> Path:
    """Download and extract VOC 2007 trainval and test into root/VOCdevkit/VOC2007, skipping finished steps."""
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the data folder {root} ({exc}): pass a writable --root.") from exc
    for tar in VOC_TARS if tars is None else tars:
        marker = root / f".{tar.name}.extracted.json"
        if _marker_md5(marker) == tar.md5:
            if progress:
                tqdm.write(f"{tar.name}: already downloaded and extracted in {root}")
            continue
        # urls (mirror base URLs) replace each tar's own list, e.g. to use a local mirror.
        tar_urls = tar.urls if urls is None else [base.rstrip("/") + "/" + tar.name for base in urls]
        tar_path = download(tar_urls, root / tar.name, tar.md5, progress=progress, timeout=timeout)
        safe_extract(tar_path, root, progress=progress)
        atomic_write_json(marker, {"tar": tar.name, "md5": tar.md5})
    return root / "VOCdevkit"
