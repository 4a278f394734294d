"""Checkpoint resolution against a local HTTP server on 127.0.0.1 (never the internet)."""

import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

from engines import weights
from live.errors import UserError, WeightsError
from engines.weights import (CACHE_ENV, DEFAULT_URL, KNOWN_CHECKPOINTS, MARKER_SUFFIX, URL_ENV, cache_dir,
                          resolve_checkpoint)

PAYLOAD = os.urandom(300_000) + b"end"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FILENAME = KNOWN_CHECKPOINTS["vox-cpk"]["filename"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` with Range support; `cut_after` drops the connection after that many body bytes."""

    files: dict = {}
    requests: list = []
    cut_after: int | None = None
    ignore_range = False

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not self.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(chunk[:self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a CI proxy must not intercept the local server
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(URL_ENV, raising=False)

    class Handler(_Handler):
        files = {"/vox.bin": PAYLOAD, "/wrong.bin": PAYLOAD[::-1]}
        requests = []

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, Handler
    httpd.shutdown()
    httpd.server_close()


def _resolve(cache, url, **kw):
    kw.setdefault("sha256", PAYLOAD_SHA)
    kw.setdefault("size", len(PAYLOAD))
    return resolve_checkpoint(cache=cache, url=url, progress=False, **kw)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_the_readme_states_the_checksum_and_size_the_code_verifies():
    """The published digest lives in the code and in the docs (the weights section of docs/engine.md); a user
    checking a file by hand reads the latter."""
    from tests.conftest import REPO

    readme = (REPO / "docs" / "engine.md").read_text()
    entry = KNOWN_CHECKPOINTS["vox-cpk"]
    assert entry["filename"] == "vox-cpk.pth.tar" and entry["url"] == DEFAULT_URL
    assert entry["sha256"] in readme
    assert f"{entry['filename']}` ({entry['size'] / 2 ** 20:.0f} MiB" in readme
    assert DEFAULT_URL.startswith("https://")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == Path.home() / ".cache" / "live-avatar"


def test_explicit_path(tmp_path):
    f = tmp_path / "my.pth.tar"
    f.write_bytes(b"x")
    assert resolve_checkpoint(f) == f
    assert resolve_checkpoint(str(f)) == f
    with pytest.raises(WeightsError, match=r"^checkpoint not found: .*nope.pth.tar$"):
        resolve_checkpoint(tmp_path / "nope.pth.tar")
    with pytest.raises(WeightsError, match="not a file"):
        resolve_checkpoint(tmp_path)
    assert issubclass(WeightsError, UserError)


def test_unknown_name(tmp_path):
    with pytest.raises(WeightsError, match="unknown checkpoint 'vox-xl'"):
        resolve_checkpoint(name="vox-xl", cache=tmp_path)


def test_download_verified_then_cached(server, tmp_path, monkeypatch):
    base, handler = server
    cache = tmp_path / "cache"
    got = _resolve(cache, f"{base}/vox.bin")
    assert got == cache / FILENAME
    assert got.read_bytes() == PAYLOAD
    assert not (cache / (FILENAME + ".part")).exists()
    marker = cache / (FILENAME + MARKER_SUFFIX)
    assert marker.read_text().startswith(PAYLOAD_SHA)
    assert len(handler.requests) == 1

    # Second start: no network at all (a dead URL proves it), and the marker spares the re-hash.
    hashed = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda *a, **k: hashed.append(a) or real(*a, **k))
    again = _resolve(cache, f"http://127.0.0.1:{_closed_port()}/vox.bin")
    assert again == got and hashed == [] and len(handler.requests) == 1


def test_cached_file_without_marker_is_verified_once(server, tmp_path):
    cache = tmp_path
    (cache / FILENAME).write_bytes(PAYLOAD)  # e.g. copied in by hand, as the offline message says
    dead = f"http://127.0.0.1:{_closed_port()}/vox.bin"
    assert _resolve(cache, dead) == cache / FILENAME
    assert (cache / (FILENAME + MARKER_SUFFIX)).exists()


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_hostile_marker_costs_a_verification_never_a_hang(server, tmp_path, kind):
    """The .sha256-ok marker as a FIFO (a plain read or write would block every start) or a symlink to /dev/zero
    (would grow without end): the checkpoint is verified again and a real marker replaces it."""
    import os
    import threading

    cache = tmp_path
    (cache / FILENAME).write_bytes(PAYLOAD)
    marker = cache / (FILENAME + MARKER_SUFFIX)
    os.mkfifo(marker) if kind == "fifo" else marker.symlink_to("/dev/zero")
    found = []
    worker = threading.Thread(target=lambda: found.append(_resolve(cache, f"http://127.0.0.1:{_closed_port()}/x")),
                              daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "blocked on the marker"
    assert found == [cache / FILENAME]
    assert marker.is_file() and not marker.is_symlink() and marker.read_text().startswith(PAYLOAD_SHA)


def test_replaced_cached_file_is_verified_again(server, tmp_path):
    base, handler = server
    target = _resolve(tmp_path, f"{base}/vox.bin")
    corrupted = bytearray(PAYLOAD)
    corrupted[10] ^= 0xFF
    target.write_bytes(bytes(corrupted))
    os.utime(target, ns=(1, 1))  # a different mtime invalidates the marker
    # The bad copy is detected, removed and downloaded again.
    assert _resolve(tmp_path, f"{base}/vox.bin").read_bytes() == PAYLOAD
    assert len(handler.requests) == 2


def test_checksum_mismatch_deletes_download(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsError) as e:
        _resolve(tmp_path, f"{base}/wrong.bin")
    msg = str(e.value)
    assert "checksum mismatch" in msg and PAYLOAD_SHA in msg and "\n" not in msg
    assert str(tmp_path / FILENAME) in msg
    assert list(tmp_path.iterdir()) == []  # neither the .part nor a target is left behind


def test_server_down_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{_closed_port()}/vox.bin"
    cache = tmp_path / "offline"
    with pytest.raises(WeightsError) as e:
        _resolve(cache, url)
    msg = str(e.value)
    assert msg.startswith(f"cannot download the vox-cpk checkpoint from {url}: ")
    assert "refused" in msg.lower()
    assert f"put it at {cache / FILENAME}" in msg
    assert weights.OFFICIAL_SOURCE in msg and "--checkpoint" in msg and URL_ENV in msg
    assert "\n" not in msg


def test_http_404(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsError, match="HTTP 404"):
        _resolve(tmp_path, f"{base}/missing.bin")


def test_wrong_size_on_server_is_refused_early(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsError, match="offers .* bytes, expected"):
        _resolve(tmp_path, f"{base}/vox.bin", size=len(PAYLOAD) + 1)


def test_interrupted_download_resumes(server, tmp_path):
    base, handler = server
    handler.cut_after = 100_000
    with pytest.raises(WeightsError, match="run again to resume") as e:
        _resolve(tmp_path, f"{base}/vox.bin")
    assert str(tmp_path / FILENAME) in str(e.value)
    part = tmp_path / (FILENAME + ".part")
    assert part.stat().st_size == 100_000 and not (tmp_path / FILENAME).exists()

    handler.cut_after = None
    got = _resolve(tmp_path, f"{base}/vox.bin")
    assert got.read_bytes() == PAYLOAD and not part.exists()
    assert handler.requests[-1] == ("/vox.bin", "bytes=100000-")


def test_resume_when_server_ignores_range(server, tmp_path):
    base, handler = server
    handler.ignore_range = True
    (tmp_path / (FILENAME + ".part")).write_bytes(b"stale junk")
    assert _resolve(tmp_path, f"{base}/vox.bin").read_bytes() == PAYLOAD


def test_complete_part_file_needs_no_network(tmp_path):
    (tmp_path / (FILENAME + ".part")).write_bytes(PAYLOAD)
    got = _resolve(tmp_path, f"http://127.0.0.1:{_closed_port()}/vox.bin")
    assert got.read_bytes() == PAYLOAD


def test_url_from_environment(server, tmp_path, monkeypatch):
    base, handler = server
    monkeypatch.setenv(URL_ENV, f"{base}/vox.bin")
    got = resolve_checkpoint(cache=tmp_path, progress=False, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert got.read_bytes() == PAYLOAD and handler.requests[0][0] == "/vox.bin"


def test_cache_from_environment_and_file_url(tmp_path, monkeypatch):
    src = tmp_path / "mirror.bin"
    src.write_bytes(PAYLOAD)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "envcache"))
    got = resolve_checkpoint(url=src.as_uri(), progress=False, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert got == tmp_path / "envcache" / FILENAME and got.read_bytes() == PAYLOAD


def test_verify_false_skips_hash(server, tmp_path):
    base, _ = server
    got = _resolve(tmp_path, f"{base}/wrong.bin", verify=False)
    assert got.exists() and not (tmp_path / (FILENAME + MARKER_SUFFIX)).exists()


def test_unwritable_cache_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WeightsError, match=f"cannot create the checkpoint cache folder .*{CACHE_ENV}"):
        _resolve(blocker / "cache", "http://127.0.0.1:9/vox.bin")


def test_progress_bar_goes_to_stderr(server, tmp_path, capfd):
    base, _ = server
    resolve_checkpoint(cache=tmp_path, url=f"{base}/vox.bin", sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    captured = capfd.readouterr()
    assert "downloading vox-cpk.pth.tar" in captured.err and captured.out == ""
