"""remote.client.RemoteEngine against a lying server: a small `websockets` server on 127.0.0.1 in a thread follows a
script (a welcome without fields, a detector chunk where a frame belongs, bad magic, a frame that is no image or
declares 12000x12000 pixels, error text with escape codes, an error for every frame). Each is one RemoteError line
(run_live.py: one `error:` line, exit 2), never a traceback, and costs no more memory than its size."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from remote import protocol as P
from tests.conftest import REPO, carphone_path
from tests.test_image_header import png_declaring

ws_server = pytest.importorskip("websockets.sync.server")


@pytest.fixture(scope="module")
def digest():
    from engines.config import VOX_256
    from engines.deterministic_weights import load_deterministic_weights
    from engines.keypoint_detector import KeypointDetector

    detector = KeypointDetector(VOX_256)
    load_deterministic_weights(detector, "kp_detector")
    return P.digest(P.detector_blob(detector))


def welcome(digest, **changes) -> dict:
    message = {"type": "welcome", "version": P.PROTOCOL_VERSION, "engine": "fake", "device": "cpu",
               "image_size": 256, "num_kp": 10, "config_hash": "fake", "weights_id": "fake",
               "detector_digest": digest, "detector_bytes": 1 << 20, "max_in_flight": 4}
    message.update(changes)
    return {k: v for k, v in message.items() if v is not ...}


def good_frame(frame_id: int) -> bytes:
    return P.pack_frame(frame_id, P.encode_image(np.full((256, 256, 3), 128, np.uint8), "jpeg"), 1, 1.0, 7)


class FakeServer:
    """Serves `script`: welcome(dict or raw text) and frame(frame_id) -> the messages sent for each keypoints."""

    def __init__(self, hello_reply, frame=good_frame):
        self.hello_reply, self.frame = hello_reply, frame
        self.server = ws_server.serve(self.handle, "127.0.0.1", 0, compression=None, max_size=2 ** 24)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, ws) -> None:
        try:
            ws.recv(timeout=10)  # hello
            reply = self.hello_reply
            ws.send(reply if isinstance(reply, (str, bytes)) else json.dumps(reply))
            while True:
                message = ws.recv(timeout=30)
                if isinstance(message, str):
                    continue
                kind, ident, _ = P.unpack(message)
                if kind == P.KIND_AVATAR:
                    ws.send(json.dumps({"type": "avatar", "slot": ident,
                                        "kp": {"value": [0.0] * 20, "jacobian": [1.0, 0.0, 0.0, 1.0] * 10}}))
                elif kind == P.KIND_KEYPOINTS:
                    for answer in self.frame(ident):
                        ws.send(answer)
        except Exception:  # noqa: BLE001 - the client went away
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def fake():
    servers = []

    def start(*args, **kwargs) -> FakeServer:
        servers.append(FakeServer(*args, **kwargs))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def engine(url, tmp_path, **kwargs):
    from remote.client import RemoteEngine

    kwargs.setdefault("max_in_flight", 1)
    kwargs.setdefault("frame_timeout", 10)
    return RemoteEngine(url, deterministic_weights=True, connect_timeout=5, cache_dir=tmp_path,
                        log=lambda m: None, **kwargs)


def render_once(client):
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    state = client.encode(image)
    kp = client.detect(image)
    return client.render(state, kp).image


@pytest.mark.parametrize("changes, match", [
    (dict(image_size=...), "image_size"),
    (dict(num_kp="10"), "num_kp"),
    (dict(detector_digest=...), "detector_digest"),
    (dict(engine=None), "engine"),
    (dict(version=1), "version"),
])
def test_malformed_welcome_is_one_line(fake, digest, tmp_path, changes, match):
    from remote.client import RemoteError

    server = fake(welcome(digest, **changes))
    with pytest.raises(RemoteError, match=match) as error:
        engine(server.url, tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("hello_reply", [b"LA\x02\x02\0\0\0\0", "[1, 2]", "not json"])
def test_a_welcome_that_is_no_welcome_is_one_line(fake, tmp_path, hello_reply):
    from remote.client import RemoteError

    with pytest.raises(RemoteError, match="did not answer the hello"):
        engine(fake(hello_reply).url, tmp_path)


LIES = {
    "detector chunk as frame": (lambda i: [P.pack_detector_chunk(0, b"x" * 64, 5)], "where a frame was expected"),
    "bad magic": (lambda i: [b"XX" + good_frame(i)[2:]], "magic"),
    "frame that is no image": (lambda i: [P.pack_frame(i, b"GIF89a" + b"\0" * 100, 1, 1.0, 1)], "not a PNG"),
    "frame of another size": (lambda i: [P.pack_frame(i, P.encode_image(np.zeros((64, 64, 3), np.uint8),
                                                                         "jpeg"), 1, 1.0, 1)], "too small"),
    "12000x12000 frame": (lambda i: [P.pack_frame(i, png_declaring(12000, 12000), 1, 1.0, 1)], "too large"),
    "frame too short": (lambda i: [P.pack(P.KIND_FRAME, i, b"\0")], "too short"),
    "busy with a list id": (lambda i: [json.dumps({"type": "busy", "id": [i]})], "malformed"),
}


@pytest.mark.parametrize("name", list(LIES))
def test_lying_frames_are_one_line_never_a_traceback(fake, digest, tmp_path, name):
    from remote.client import RemoteError

    frame, match = LIES[name]
    server = fake(welcome(digest), frame)
    client = engine(server.url, tmp_path, fmt="png" if "12000" in name else "jpeg")
    import psutil

    before = psutil.Process().memory_info().rss
    try:
        with pytest.raises(RemoteError, match=match) as error:
            render_once(client)
    finally:
        client.close()
    grown = psutil.Process().memory_info().rss - before
    assert "\n" not in str(error.value) and "malformed message" in str(error.value)
    if "12000" in name:
        print(f"12000x12000 frame PNG: refused, client RSS +{grown / 2**20:.1f} MiB")
    assert grown < 100 * 2**20


HOSTILE = "\x1b[2J\x1b[1;31mpwned\x1b[0m\x07\r" + "A" * 3000


def test_server_error_text_is_sanitised_and_cut_live(fake, digest, tmp_path):
    server = fake(welcome(digest), lambda i: [P.error_message(HOSTILE, "render", id=i)])
    client = engine(server.url, tmp_path)
    messages = []
    client.observe(messages.append)
    start = time.monotonic()
    try:
        frame = render_once(client)
    finally:
        client.close()
    assert time.monotonic() - start < 5           # the frame's error ends the wait for it
    assert frame.shape == (1, 3, 256, 256)         # live: the avatar at rest, the session goes on
    shown = [m for m in messages if "server error" in m]
    assert shown and all("\x1b" not in m and "\x07" not in m and len(m) <= 240 for m in shown)
    assert "pwned" in shown[0]


def test_offline_client_fails_at_the_first_server_error(fake, digest, tmp_path):
    from remote.client import RemoteError

    server = fake(welcome(digest), lambda i: [P.error_message(HOSTILE, "render", id=i)])
    client = engine(server.url, tmp_path, reconnect_wait=60)
    start = time.monotonic()
    try:
        with pytest.raises(RemoteError, match="failed: pwned") as error:
            render_once(client)
    finally:
        client.close()
    assert time.monotonic() - start < 5 and len(str(error.value)) < 300 and "\x1b" not in str(error.value)


def test_offline_client_does_not_skip_a_frame_the_server_never_answers(fake, digest, tmp_path):
    from remote.client import RemoteError

    client = engine(fake(welcome(digest), lambda i: []).url, tmp_path, reconnect_wait=60, frame_timeout=1)
    try:
        with pytest.raises(RemoteError, match="did not answer frame 0"):
            render_once(client)
    finally:
        client.close()


@pytest.mark.slow
def test_run_live_offline_against_a_server_that_errors_on_every_frame_exits_2(fake, digest, tmp_path):
    server = fake(welcome(digest), lambda i: [P.error_message("\x1b[31mout of memory", "render", id=i)])
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    out = tmp_path / "out.mp4"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "run_live.py", "--avatar", str(face), "--remote", server.url, "--deterministic-weights",
         "--driving", str(carphone_path()), "--output", str(out), "--no-vcam", "--no-preview", "--max-frames", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "out of memory" in errors[0] and "\x1b" not in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - start < 60   # not 30 s per frame


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX only")
def test_run_live_with_a_fifo_as_token_file_exits_2_at_once(tmp_path):
    import os
    fifo = tmp_path / "token"
    os.mkfifo(fifo)  # this used to hang the run forever, waiting for a writer
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.full((64, 64, 3), 90, np.uint8))
    result = subprocess.run(
        [sys.executable, "run_live.py", "--avatar", str(face), "--remote", "ws://127.0.0.1:9", "--token-file",
         str(fifo), "--driving", str(face), "--no-vcam", "--no-preview", "--max-frames", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "FIFO" in errors[0] and "Traceback" not in result.stderr


# --- the frame's motion comes along: the client composites the same frame a local engine would --------------------
def test_remote_and_local_composite_the_same_frame(fake, digest, tmp_path):
    from engines.composite import Compositor
    from engines.framing import Canvas
    from engines.image import to_model_input
    from engines.keypoints import Keypoints
    from live.pipeline.avatars import FaceFraming, frame_avatar
    from remote.service import RenderService
    from skimage.data import astronaut

    service = RenderService({"backend": "torch", "deterministic_weights": True})  # the server's own render path
    loaded = frame_avatar(astronaut()[..., ::-1].copy(), 256, canvas=Canvas(480, 320), framing=FaceFraming())
    avatar = to_model_input(loaded.crop)
    state = service.engine.encode(avatar)
    kp = Keypoints(state.kp.value + torch.tensor([0.04, -0.03]), state.kp.jacobian.clone())
    [(image, batch, render_ms, motion)] = service.render_batch(
        [(state, kp.value.numpy(), kp.jacobian.numpy(), "png16", 90)])  # 16-bit: the image arrives as sent
    server = fake(welcome(digest, align_corners=True),
                  frame=lambda i: [P.pack_frame(i, image, batch, render_ms, 7, motion)])
    client = engine(server.url, tmp_path, fmt="png16")
    remote_frame = client.render(client.encode(avatar), kp)
    local_frame = service.engine.render(state, kp)
    assert remote_frame.fresh and client.align_corners is True
    assert (remote_frame.deformation - local_frame.deformation).abs().max() < 1e-4  # int16 offsets: 1/8192
    pictures = []
    for frame in (local_frame, remote_frame):
        compositor = Compositor((480, 320), 256, align_corners=True)
        plate = compositor.plate("a", loaded.photo.backdrop, loaded.photo.layout, loaded.crop)
        pictures.append(compositor.compose(plate, frame).astype(int))
    difference = np.abs(pictures[0] - pictures[1])
    # the same picture up to the wire's rounding (occlusion in 1/255 steps, the field in 1/8192)
    assert difference.max() <= 3 and difference.mean() < 0.05
    assert not np.array_equal(pictures[0], loaded.photo.backdrop), "the frame moved the face"
    client.close()


def test_the_client_detects_like_a_local_run_would(fake, digest, tmp_path):
    """--remote on a machine without a GPU (the point of --remote): its keypoints come from the detector a local run
    would pick (OpenVINO on a CPU), equal to the eager detector's; its report says so, with the server's engine as
    the welcome described it (cleaned of escape codes)."""
    pytest.importorskip("openvino")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: its detector runs there")
    server = fake(welcome(digest, summary="\x1b[31mOpenVINO on the CPU, bf16\x1b[0m", precision="bf16"))
    client = engine(server.url, tmp_path)
    try:
        report = client.report()
        assert report.backend == "remote" and report.fact("detector_backend") == "openvino on cpu"
        assert report.renderer == "bf16" and report.fact("server_summary") == "OpenVINO on the CPU, bf16"
        image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
        with torch.inference_mode():
            eager_value, _ = client.kp_detector(image)
        value = client.detect(image).value
        tolerance = 1e-4 if report.detector == "fp32" else 0.02  # bf16 only where measured no shakier
        assert float((value - eager_value).abs().max()) <= tolerance
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["fifo", "zero", "damaged"])
def test_a_hostile_cached_detector_is_set_aside_and_fetched_again(tmp_path, kind):
    """The client's cache of the server's detector weights: a FIFO, a symlink to /dev/zero or bytes that do not
    match the digest are set aside with one notice (then fetched again), never read without bound."""
    import os

    from remote.client import RemoteEngine

    digest = "ab" * 32
    client = RemoteEngine.__new__(RemoteEngine)  # only the cache, no connection
    client.cache_dir, said = tmp_path, []
    client.log = said.append
    path = client._cache_path(digest)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(b"not the weights")
    assert client._cached_detector(digest) is None
    (notice,) = said
    assert "cached detector weights unusable" in notice and "set aside" in notice
    assert not os.path.lexists(path) and [p for p in tmp_path.iterdir() if ".bad-" in p.name]
