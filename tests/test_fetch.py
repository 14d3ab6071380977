"""Fetching VOC 2007 offline: a loopback HTTP server (with byte ranges) serving small tars built here."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from mp3kit.data import VOC_CLASSES, load_split
from mp3kit.fetch import VOC_TARS, VOCTar, download, fetch_voc, safe_extract
from mp3kit.util import UserError


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serve the state's files with Range support, optionally ignoring ranges or cutting a reply short."""

    def do_GET(self):
        state = self.server.state
        asked = self.headers.get("Range")
        state.requests.append((self.path, asked))
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
    """What the handler serves and what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


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
def refused_url() -> str:
    """A loopback URL on a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/VOCtrainval_06-Nov-2007.tar"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919 + i // 251) % 256 for i in range(n))


def tar_bytes(files: dict[str, bytes], links=()) -> bytes:
    """Build a tar in memory from {name: data} plus (name, kind, target) link members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def voc_tar(splits: dict[str, list[str]]) -> bytes:
    """A tiny tar shaped like an official one: VOCdevkit/VOC2007/{ImageSets/Main,JPEGImages}."""
    voc = "VOCdevkit/VOC2007/"
    files = {}
    for split, ids in splits.items():
        files[f"{voc}ImageSets/Main/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
        for c, cls in enumerate(VOC_CLASSES):
            files[f"{voc}ImageSets/Main/{cls}_{split}.txt"] = "".join(
                f"{i} {1 if (int(i) + c) % 5 == 0 else -1:>2}\n" for i in ids).encode()
        for i in ids:
            files[f"{voc}JPEGImages/{i}.jpg"] = jpeg_bytes()
    return tar_bytes(files)


@pytest.fixture
def voc_tars(server):
    """Serve a small trainval tar and a small test tar; return the VOCTar list pointing at them."""
    trainval = voc_tar({"train": ["000001", "000002"], "val": ["000003"], "trainval": ["000001", "000002", "000003"]})
    test = voc_tar({"test": ["000004", "000005"]})
    tars = []
    for name, data in (("VOCtrainval_06-Nov-2007.tar", trainval), ("VOCtest_06-Nov-2007.tar", test)):
        server.files[f"/voc/{name}"] = data
        tars.append(VOCTar(name, md5(data), (server.url(f"/missing/{name}"), server.url(f"/voc/{name}"))))
    return tars


def test_voc_tars_name_official_files_checksums_and_a_mirror():
    assert [t.name for t in VOC_TARS] == ["VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"]
    assert [t.md5 for t in VOC_TARS] == ["c52e279531787c972589f7e41ab4ae64", "b6e924de25625d8de591ea690078ad9f"]
    for tar in VOC_TARS:
        assert tar.urls[0] == f"http://host.robots.ox.ac.uk/pascal/VOC/voc2007/{tar.name}"
        assert len(tar.urls) >= 2 and all(url.endswith("/" + tar.name) for url in tar.urls)


def test_fetch_voc_downloads_verifies_and_extracts_both_tars_merged(server, voc_tars, tmp_path):
    devkit = fetch_voc(tmp_path, progress=False, tars=voc_tars, timeout=5)
    assert devkit == tmp_path / "VOCdevkit"
    train, test = load_split(tmp_path, "train"), load_split(tmp_path, "test")
    assert train.voc_dir == test.voc_dir == tmp_path / "VOCdevkit" / "VOC2007"
    assert train.ids == ["000001", "000002"] and test.ids == ["000004", "000005"]
    assert test.image_path(1).is_file() and train.targets.shape == (2, 20)
    assert all((tmp_path / tar.name).is_file() for tar in voc_tars)
    assert not list(tmp_path.glob("*.part"))


def test_second_fetch_skips_completed_work(server, voc_tars, tmp_path):
    fetch_voc(tmp_path, progress=False, tars=voc_tars, timeout=5)
    asked = len(server.requests)
    train_txt = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    train_txt.write_text("000001\n")  # a re-extraction would overwrite this
    for tar in voc_tars:
        (tmp_path / tar.name).unlink()  # even without the tars, the extraction markers say "done"
    fetch_voc(tmp_path, progress=False, tars=voc_tars, timeout=5)
    assert len(server.requests) == asked and train_txt.read_text() == "000001\n"


def test_verified_download_is_not_fetched_again(server, voc_tars, tmp_path):
    tar = voc_tars[1]
    download(tar.urls, tmp_path / tar.name, tar.md5, progress=False, timeout=5)
    asked = len(server.requests)
    fetch_voc(tmp_path, progress=False, tars=[tar], timeout=5)  # extracts the tar already there
    assert len(server.requests) == asked
    assert load_split(tmp_path, "test").ids == ["000004", "000005"]


def test_truncated_download_resumes_with_range(server, tmp_path):
    data = payload()
    server.files["/f.tar"] = data
    server.cut_once.add("/f.tar")
    path = download([server.url("/f.tar")], tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert path.read_bytes() == data
    assert server.requests == [("/f.tar", None), ("/f.tar", f"bytes={len(data) // 2}-")]


def test_existing_part_file_is_resumed(server, tmp_path):
    data = payload()
    server.files["/f.tar"] = data
    (tmp_path / "f.tar.part").write_bytes(data[:1000])
    download([server.url("/f.tar")], tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data
    assert server.requests == [("/f.tar", "bytes=1000-")] and not (tmp_path / "f.tar.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload()
    server.files["/f.tar"] = data
    server.ignore_range = True
    (tmp_path / "f.tar.part").write_bytes(b"x" * 5000)  # not even the right bytes: all must be replaced
    download([server.url("/f.tar")], tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data and len(server.requests) == 1


def test_complete_part_answered_416_is_verified_and_kept(server, tmp_path):
    data = payload()
    server.files["/f.tar"] = data
    (tmp_path / "f.tar.part").write_bytes(data)
    download([server.url("/f.tar")], tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data and len(server.requests) == 1


def test_stale_part_with_wrong_bytes_is_fetched_again_from_zero(server, tmp_path):
    data = payload()
    server.files["/f.tar"] = data
    (tmp_path / "f.tar.part").write_bytes(b"y" * 1000)
    download([server.url("/f.tar")], tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data
    assert server.requests == [("/f.tar", "bytes=1000-"), ("/f.tar", None)]


def test_wrong_checksum_falls_back_to_the_mirror(server, tmp_path):
    data = payload()
    server.files["/bad/f.tar"] = data[:-1] + b"!"
    server.files["/good/f.tar"] = data
    urls = [server.url("/bad/f.tar"), server.url("/good/f.tar")]
    download(urls, tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data
    assert [path for path, _ in server.requests] == ["/bad/f.tar", "/good/f.tar"]


def test_wrong_checksum_everywhere_is_a_user_error_and_leaves_nothing(server, tmp_path):
    server.files["/a/f.tar"] = server.files["/b/f.tar"] = payload()
    with pytest.raises(UserError, match=r"Could not download a good copy of f\.tar .*wrong MD5.*yourself into"):
        download([server.url("/a/f.tar"), server.url("/b/f.tar")], tmp_path / "f.tar", "0" * 32,
                 progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_failing_first_urls_fall_back_to_the_mirror(server, refused_url, tmp_path):
    data = payload()
    server.files["/mirror/f.tar"] = data
    urls = [refused_url, server.url("/nothing-here/f.tar"), server.url("/mirror/f.tar")]
    download(urls, tmp_path / "f.tar", md5(data), progress=False, timeout=5)
    assert (tmp_path / "f.tar").read_bytes() == data


def test_all_urls_failing_names_the_file_and_each_reason(server, refused_url, tmp_path):
    with pytest.raises(UserError, match=r"VOCtest_06-Nov-2007\.tar .*HTTP 404.*refused.*internet connection"):
        download([server.url("/x.tar"), refused_url], tmp_path / "VOCtest_06-Nov-2007.tar", "0" * 32,
                 progress=False, timeout=5)


def test_mirror_bases_replace_each_tars_urls(server, voc_tars, refused_url, tmp_path):
    fetch_voc(tmp_path, progress=False, tars=voc_tars, urls=[refused_url.rsplit("/", 1)[0], server.url("/voc/")],
              timeout=5)
    assert load_split(tmp_path, "trainval").ids == ["000001", "000002", "000003"]
    assert not any(path.startswith("/missing/") for path, _ in server.requests)


def test_progress_bar_shows_only_when_asked(server, tmp_path, capsys):
    data = payload()
    server.files["/f.tar"] = data
    download([server.url("/f.tar")], tmp_path / "quiet.tar", md5(data), progress=False, timeout=5)
    assert capsys.readouterr().err == ""
    download([server.url("/f.tar")], tmp_path / "loud.tar", md5(data), progress=True, timeout=5)
    assert "loud.tar" in capsys.readouterr().err


UNSAFE = {
    "parent": ({"../evil": b"x"}, ()),
    "nested parent": ({"VOCdevkit/../../evil": b"x"}, ()),
    "absolute": ({"/tmp/mp3kit-evil-absolute": b"x"}, ()),
    "symlink out": ({}, (("VOCdevkit/link", tarfile.SYMTYPE, "../../evil"),)),
    "absolute symlink": ({}, (("link", tarfile.SYMTYPE, "/etc/passwd"),)),
    "hardlink out": ({}, (("link", tarfile.LNKTYPE, "../evil"),)),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_safe_extract_refuses_members_outside_and_extracts_nothing(tmp_path, case):
    files, links = UNSAFE[case]
    tar_path = tmp_path / "evil.tar"
    # A harmless member first: refusing must happen before anything is written.
    tar_path.write_bytes(tar_bytes({"VOCdevkit/ok.txt": b"fine", **files}, links))
    dest = tmp_path / "box" / "root"
    with pytest.raises(UserError, match=r"Refusing to extract .*evil\.tar: member .* is unsafe"):
        safe_extract(tar_path, dest)
    assert not (tmp_path / "box" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/mp3kit-evil-absolute").exists()
    assert not dest.exists() or list(dest.rglob("*")) == []


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="needs tarfile's data filter (Python >= 3.10.12)")
def test_safe_extract_refuses_a_link_that_escapes_through_another_link(tmp_path):
    # Each target looks inside on paper; on disk "s" is VOCdevkit, so "w" would point two levels above dest.
    links = (("VOCdevkit/sub/s", tarfile.SYMTYPE, ".."),
             ("w", tarfile.SYMTYPE, "VOCdevkit/sub/s/../../../evil"))
    tar_path = tmp_path / "chain.tar"
    tar_path.write_bytes(tar_bytes({"VOCdevkit/sub/ok.txt": b"fine"}, links))
    with pytest.raises(UserError, match=r"Refusing to extract .*chain\.tar"):
        safe_extract(tar_path, tmp_path / "box" / "root")
    assert not (tmp_path / "box" / "root" / "w").exists()


def test_fetch_voc_refuses_a_tar_with_a_parent_member(server, tmp_path):
    data = tar_bytes({"VOCdevkit/VOC2007/ImageSets/Main/train.txt": b"000001\n", "../evil": b"x"})
    server.files["/VOCtrainval_06-Nov-2007.tar"] = data
    tar = VOCTar("VOCtrainval_06-Nov-2007.tar", md5(data), (server.url("/VOCtrainval_06-Nov-2007.tar"),))
    root = tmp_path / "root"
    with pytest.raises(UserError, match=r"'\.\./evil' is unsafe"):
        fetch_voc(root, progress=False, tars=[tar], timeout=5)
    assert not (tmp_path / "evil").exists() and not (root / "VOCdevkit").exists()
    assert not list(root.glob(".*extracted*"))


def test_safe_extract_keeps_links_that_stay_inside(tmp_path):
    tar_path = tmp_path / "ok.tar"
    tar_path.write_bytes(tar_bytes({"VOCdevkit/VOC2007/a.txt": b"inside"},
                                   (("VOCdevkit/link.txt", tarfile.SYMTYPE, "VOC2007/a.txt"),)))
    safe_extract(tar_path, tmp_path / "dest")
    assert (tmp_path / "dest" / "VOCdevkit" / "link.txt").read_bytes() == b"inside"


def test_safe_extract_of_a_corrupt_tar_names_it(tmp_path):
    tar_path = tmp_path / "VOCtest_06-Nov-2007.tar"
    tar_path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match=r"VOCtest_06-Nov-2007\.tar is not a readable tar.*download it again"):
        safe_extract(tar_path, tmp_path / "dest")


def test_safe_extract_of_a_missing_tar_names_it(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.tar does not exist"):
        safe_extract(tmp_path / "nothing.tar", tmp_path / "dest")


def test_unwritable_root_is_a_user_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match=r"Cannot create the data folder .*a-file"):
        fetch_voc(tmp_path / "a-file" / "voc", progress=False, tars=[])
