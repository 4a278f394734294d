"""Remote rendering end to end over loopback: `python -m remote.server` (Ray Serve, deterministic weights, 2 CPUs)
started once for the module, real clients (RemoteEngine, run_live.py --remote) and raw WebSocket peers.

The server runs in its own process group with a parent-death signal and is always killed at the end (no orphans).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.image import to_model_input
from tests.conftest import REPO, carphone_path
from tests.support import read_video

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (requirements-serve.txt)")
websockets_sync = pytest.importorskip("websockets.sync.client")

from remote import protocol as P  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "test-token-0123456789"
IDENTITY = np.tile(np.eye(2, dtype=np.float32), (10, 1, 1))  # invertible jacobians: refused only for what is tested
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # the server (and so Ray) gets SIGTERM if pytest itself dies
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    def __init__(self, port: int, token_file: Path, log_dir: Path, extra_args=()):
        self.port, self.token_file, self.log_dir = port, token_file, log_dir
        self.extra_args = list(extra_args)  # more server flags (tests/test_remote_render_options.py)
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"server-{self.starts}.log", "w")
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remote.server", "--host", "127.0.0.1", "--port", str(self.port),
             "--deterministic-weights", "--token-file", str(self.token_file), "--num-cpus", "2",
             "--batch-wait-ms", "20",
             # eager fp32: frames comparable with the local torch engine to 1e-4 and batches rendered in one call
             # (auto would pick OpenVINO on a CPU, and the cpu backend alone bf16 where it is measured faster)
             "--backend", "cpu", "--precision", "fp32", *self.extra_args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready" in line:
                threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep the pipe drained
                return
        self.kill()
        pytest.fail(f"server did not become ready: {''.join(lines)[-2000:]}\n"
                    f"{(self.log_dir / f'server-{self.starts}.log').read_text()[-3000:]}")

    def kill(self, sig=signal.SIGTERM, timeout: float = 60) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        self.process = None

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    srv = ServerProcess(_free_port(), token_file, folder)
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def clip():
    frames, _ = read_video(carphone_path())
    return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]


def _avatar(clip, flip=False) -> np.ndarray:
    crop = clip[60][:, 16:160]  # 144x144 around the face
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def _engine(server, cache, **kwargs):
    from remote.client import RemoteEngine

    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("fmt", "png16")
    return RemoteEngine(server.url, cache_dir=cache, log=lambda m: None, **kwargs)


def _drive(engine, local, avatar_rgb, frames, results, key, barrier=None):
    """Render frames remotely, then locally from the same keypoints; results[key] = (states, remote, local).
    The barrier lines the clients up before each frame, so their requests meet in one server batch."""
    state = engine.encode(to_model_input(avatar_rgb, engine.image_size))
    kps = [engine.detect(to_model_input(frame, engine.image_size)) for frame in frames]
    remote_out = []
    for kp in kps:
        if barrier is not None:
            barrier.wait(120)
        remote_out.append(engine.render(state, kp).image.clone())
    local_state = local.encode(to_model_input(avatar_rgb, local.image_size))
    results[key] = (state, local_state, remote_out, [local.render(local_state, kp).image for kp in kps])


# --- tests ------------------------------------------------------------------------------------------------------
def test_two_concurrent_clients_match_the_local_engine(server, cache, clip, deterministic_engine):
    local = deterministic_engine
    first = _engine(server, cache, max_in_flight=1)     # fetches the detector from the server
    cached = list(Path(cache).glob("kp_detector-*.bin"))
    assert len(cached) == 1 and P.digest(cached[0].read_bytes()) == first.server["detector_digest"]
    second = _engine(server, cache, max_in_flight=1)    # takes it from the cache, checked against the digest
    for name, tensor in local.kp_detector.state_dict().items():  # the detector the server uses, bit for bit
        assert torch.equal(first.kp_detector.state_dict()[name], tensor)
        assert torch.equal(second.kp_detector.state_dict()[name], tensor)
    assert first.config_hash == local.config_hash and first.image_size == 256
    frames = clip[0:48:8]
    results = {}
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=_drive, args=(e, local, _avatar(clip, i == 1), frames, results, i, barrier))
               for i, e in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {0, 1}
    for state, local_state, remote_out, local_out in results.values():
        # the server's encoding of the avatar: same source keypoints as the local one
        assert (state.kp.value - local_state.kp.value).abs().max().item() <= 1e-5
        assert len(remote_out) == len(frames)
        for remote, expected in zip(remote_out, local_out):
            assert (remote - expected).abs().max().item() <= 1e-4
    # two avatars, two different videos: the clients did not get each other's frames
    assert (results[0][2][-1] - results[1][2][-1]).abs().max().item() > 1e-2
    sizes = first.batch_sizes + second.batch_sizes
    assert max(sizes) > 1, f"no batch > 1 under concurrency: {dict(sizes)}"
    assert first.round_trip_ms is not None and first.round_trip_ms > 0
    first.close()
    second.close()


def test_two_frames_in_flight_answer_one_frame_behind(server, cache, clip, deterministic_engine):
    engine = _engine(server, cache, max_in_flight=2)
    state = engine.encode(to_model_input(_avatar(clip), 256))
    local_state = deterministic_engine.encode(to_model_input(_avatar(clip), 256))
    outputs, expected = [], []
    for frame in clip[0:40:10]:
        kp = engine.detect(to_model_input(frame, 256))
        outputs.append(engine.render(state, kp).image.clone())
        expected.append(deterministic_engine.render(local_state, kp).image)
    engine.close()
    assert torch.equal(outputs[0], state.image)  # nothing answered yet: the avatar at rest
    for i in range(1, len(outputs)):
        assert (outputs[i] - expected[i - 1]).abs().max().item() <= 1e-4


def test_switching_avatars_on_one_connection(server, cache, clip, deterministic_engine):
    engine = _engine(server, cache, max_in_flight=1)
    avatars = [_avatar(clip), _avatar(clip, flip=True)]
    states = [engine.encode(to_model_input(a, 256)) for a in avatars]
    local_states = [deterministic_engine.encode(to_model_input(a, 256)) for a in avatars]
    kp = engine.detect(to_model_input(clip[5], 256))
    for i in (0, 1, 0):  # keys 1, 2, 1: the uploaded encodings are selected per frame
        frame, local = engine.render(states[i], kp), deterministic_engine.render(local_states[i], kp)
        assert (frame.image - local.image).abs().max().item() <= 1e-4
        # and its motion, for compositing on the client: within the wire's steps (1/8192, 1/255)
        assert (frame.deformation - local.deformation).abs().max().item() <= 1e-4
        assert (frame.occlusion - local.occlusion).abs().max().item() <= 0.5 / 255 + 1e-6
    engine.close()


def test_local_checkpoint_detector_is_checked_against_the_server(server, cache, tmp_path):
    from engines.deterministic_weights import load_deterministic_weights
    from engines.keypoint_detector import KeypointDetector
    from remote.client import RemoteError

    def checkpoint(salt: str) -> Path:
        detector = KeypointDetector()
        load_deterministic_weights(detector, "kp_detector", salt)
        path = tmp_path / f"detector{salt}.pth.tar"
        torch.save({"kp_detector": detector.state_dict(), "generator": {}}, path)  # only the detector is read
        return path

    empty_cache = tmp_path / "no-cache"
    same = _engine(server, empty_cache, checkpoint=checkpoint(""))   # the server's detector: nothing fetched
    assert not empty_cache.exists()
    same.close()
    with pytest.raises(RemoteError, match="differs from the render server's") as error:
        _engine(server, empty_cache, checkpoint=checkpoint("vox-adv"))
    assert "\n" not in str(error.value)


def test_wrong_or_missing_token_is_refused(server, cache):
    from remote.client import RemoteError

    for token in ("wrong-token-000000", ""):
        with pytest.raises(RemoteError, match="refused the token"):
            _engine(server, cache, token=token)


def test_run_live_wrong_token_exits_2_with_one_line(server, tmp_path, clip):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.cvtColor(_avatar(clip), cv2.COLOR_RGB2BGR))
    token = tmp_path / "bad-token"
    token.write_text("not-the-token\n")
    result = subprocess.run(
        [sys.executable, "run_live.py", "--avatar", str(face), "--remote", server.url, "--token-file", str(token),
         "--driving", str(carphone_path()), "--output", str(tmp_path / "out.mp4"), "--no-vcam", "--no-preview",
         "--max-frames", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused the token" in errors[0]
    assert "Traceback" not in result.stderr


def _raw(server, hello=True):
    ws = websockets_sync.connect(server.url, max_size=2 ** 24, open_timeout=10).__enter__()  # closed by callers
    if hello:
        ws.send(P.Hello(token=TOKEN).to_text())
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
    return ws


def _expect_refusal(ws, code: str, close_code: int) -> str:
    from websockets.exceptions import ConnectionClosed

    reply = P.loads(ws.recv(timeout=30))
    assert reply["type"] == "error" and reply["code"] == code, reply
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
    return reply["message"]


def test_malformed_and_oversized_messages_close_only_that_connection(server, cache, clip):
    healthy = _engine(server, cache, max_in_flight=1)
    state = healthy.encode(to_model_input(_avatar(clip), 256))
    kp = healthy.detect(to_model_input(clip[0], 256))

    cases = [
        (lambda ws: ws.send(b"\x00" * 40), "malformed", P.CLOSE_POLICY),
        (lambda ws: ws.send("{not json"), "malformed", P.CLOSE_POLICY),
        (lambda ws: ws.send(json.dumps({"type": "launch-missiles"})), "malformed", P.CLOSE_POLICY),
        (lambda ws: ws.send(P.pack(P.KIND_AVATAR, 0, os.urandom(P.MAX_AVATAR_BYTES + 1))), "too-big",
         P.CLOSE_TOO_BIG),
        (lambda ws: ws.send(P.pack(P.KIND_AVATAR, 0, b"\x89PNG\r\n\x1a\n" + b"junk" * 100)), "bad-image",
         P.CLOSE_POLICY),
        (lambda ws: ws.send(P.pack_keypoints(1, 0, np.zeros((10, 2)), IDENTITY)), "malformed",
         P.CLOSE_POLICY),                                                 # frame for an avatar never uploaded
        (lambda ws: ws.send(P.pack(P.KIND_KEYPOINTS, 1, b"\0" * 400)), "malformed", P.CLOSE_TOO_BIG),
        (lambda ws: ws.send(P.pack(P.KIND_FRAME, 1, b"\0" * 10)), "malformed", P.CLOSE_POLICY),
    ]
    for send, code, close_code in cases:
        ws = _raw(server)
        send(ws)
        _expect_refusal(ws, code, close_code)
        ws.close()
    ws = _raw(server, hello=False)  # binary before the hello
    ws.send(P.pack_keypoints(1, 0, np.zeros((10, 2)), IDENTITY))
    _expect_refusal(ws, "malformed", P.CLOSE_POLICY)
    ws.close()
    # the server still serves the connection that behaved
    frame = healthy.render(state, kp).image
    assert healthy._latest_id >= 0 and frame.shape == (1, 3, 256, 256) and not torch.equal(frame, state.image)
    healthy.close()


def test_frames_in_flight_are_capped_per_connection(server, clip):
    ws = _raw(server)
    avatar = P.encode_image(_avatar(clip), "png")
    ws.send(P.pack(P.KIND_AVATAR, 0, avatar))
    reply = P.loads(ws.recv(timeout=60))
    value, jacobian = np.array(reply["kp"]["value"]), np.array(reply["kp"]["jacobian"])
    sent = 10
    for i in range(sent):
        ws.send(P.pack_keypoints(i, 0, value, jacobian))
    frames, busy = [], []
    while len(frames) + len(busy) < sent:
        message = ws.recv(timeout=120)
        if isinstance(message, str):
            assert P.loads(message)["type"] == "busy"
            busy.append(P.loads(message)["id"])
        else:
            frames.append(P.unpack(message)[1])
    ws.close()
    assert busy, "the server queued more frames than its per-connection cap"
    assert 1 <= len(frames) <= sent - len(busy) and sorted(frames + busy) == list(range(sent))


def test_closed_connections_free_their_state(server, cache, clip):
    deadline = time.monotonic() + 30
    baseline = server.health()["connections"]
    engine = _engine(server, cache)
    engine.encode(to_model_input(_avatar(clip), 256))
    assert server.health()["connections"] == baseline + 1
    engine.close()
    while server.health()["connections"] != baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.health()["connections"] == baseline


def _server_processes(server):
    import psutil

    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def _server_rss(server) -> int:
    import psutil

    total = 0
    for process in _server_processes(server):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def test_ray_listens_on_loopback_but_for_the_replicas_token_checked_grpc_port(server):
    """--host 127.0.0.1: GCS, raylet, workers, agents, metrics and the Serve proxy listen on loopback. What Ray
    2.60 does not let us bind, the Serve replica's inter-deployment gRPC server ("[::]:0" in its source), refuses
    calls without Ray's cluster token."""
    import ipaddress

    import grpc
    import psutil

    names = {}
    for process in _server_processes(server):
        try:
            names[process.pid] = process.name()
        except psutil.NoSuchProcess:
            pass
    listeners = sorted({(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN and c.pid in names})

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    assert ("127.0.0.1", server.port, "ray::ProxyActor") in listeners
    exposed = [item for item in listeners if not loopback(item[0])]
    print(f"{len(listeners)} listeners, {len(listeners) - len(exposed)} on loopback; beyond it: {exposed}")
    assert len(exposed) <= 1 and all("ServeReplica" in name for _, _, name in exposed), exposed
    for _, port, _ in exposed:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_client_that_never_reads_costs_a_bounded_amount_of_memory(server):
    """25 get_detector requests (57 MB each) from a client that stops reading: once per connection, and never more
    than the unread limit queued."""
    base = _server_rss(server)
    # max_queue=1: the client library stops reading the socket once one message waits: a peer that does not read
    ws = websockets_sync.connect(server.url, max_size=2 ** 24, open_timeout=10, max_queue=1).__enter__()
    try:
        ws.send(P.Hello(token=TOKEN).to_text())
        ws.send(json.dumps({"type": "get_detector"}))
        time.sleep(4)               # the transfer stops at the unread limit
        paced = _server_rss(server) - base
        for _ in range(24):         # the audit's 25 requests in all: refused, the connection closed
            ws.send(json.dumps({"type": "get_detector"}))
        time.sleep(3)
        during = _server_rss(server) - base
    finally:
        ws.close()
    time.sleep(3)
    after = _server_rss(server) - base
    print(f"non-reading client, 25 get_detector: server RSS +{paced / 2**20:.0f} MiB after the first, "
          f"+{during / 2**20:.0f} MiB after all, +{after / 2**20:.0f} MiB 3 s after it closed")
    assert paced < 200 * 2**20 and during < 200 * 2**20 and after < 200 * 2**20
    deadline = time.monotonic() + 10
    while server.health()["connections"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.health()["connections"] == 0


def test_silent_peers_do_not_starve_a_real_client(server):
    silent = [websockets_sync.connect(server.url, open_timeout=10).__enter__() for _ in range(64)]
    try:
        start = time.monotonic()
        ws = _raw(server)    # hello -> welcome
        took = time.monotonic() - start
        ws.close()
    finally:
        for peer in silent:
            peer.close()
    print(f"real client behind 64 silent peers: welcome after {took:.2f} s")
    assert took < 3.0


def test_run_live_two_concurrent_clients_write_12_frames(server, tmp_path, clip):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.cvtColor(_avatar(clip), cv2.COLOR_RGB2BGR))
    env = dict(os.environ, LIVE_AVATAR_CACHE=str(tmp_path / "cache"))  # no checkpoint, no cached detector
    runs = [subprocess.Popen(
        [sys.executable, "run_live.py", "--avatar", str(face), "--remote", server.url, "--token-file",
         str(server.token_file), "--driving", str(carphone_path()), "--output", str(tmp_path / f"out{i}.mp4"),
         "--no-vcam", "--no-preview", "--max-frames", "12"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [run.communicate(timeout=300) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
    for i, (run, (_, err)) in enumerate(zip(runs, outputs)):
        assert run.returncode == 0, err[-2000:]
        frames, _ = read_video(tmp_path / f"out{i}.mp4")
        assert len(frames) == 12
        assert "rendering on" in err
        assert "rtt" in err.splitlines()[-1]  # the round trip is one of the HUD's timings (final summary line)
    # Whether the pixels are the right ones is checked frame by frame in png16 mode by the two-client test above;
    # 12 frames of this quiet clip move the generated-weights avatar by less than the H.264 encoder's own drift.


def test_server_restart_client_reconnects_and_finishes(server, cache, clip, deterministic_engine):
    """Last in the module: it kills the module's server (SIGKILL: a crash) and starts it again."""
    messages = []
    engine = _engine(server, cache, max_in_flight=1, frame_timeout=30)
    engine.observe(messages.append)
    state = engine.encode(to_model_input(_avatar(clip), 256))
    local_state = deterministic_engine.encode(to_model_input(_avatar(clip), 256))
    # an offline render (run_live.py --driving --output) waits for the server instead of repeating frames
    offline = _engine(server, cache, max_in_flight=1, reconnect_wait=150)
    offline_state = offline.encode(to_model_input(_avatar(clip), 256))
    kp = engine.detect(to_model_input(clip[0], 256))
    before = engine.render(state, kp).image.clone()
    server.kill(signal.SIGKILL)
    # while the server is down the client keeps showing the last frame
    after_kill = engine.render(state, engine.detect(to_model_input(clip[20], 256)))
    assert torch.equal(after_kill.image, before)
    assert any("connection lost" in m for m in messages)
    assert not after_kill.fresh and engine.status().startswith("RENDER SERVER UNREACHABLE")
    # an avatar picked while the server is away: local source keypoints now, uploaded on its first frame
    late = engine.encode(to_model_input(_avatar(clip, flip=True), 256))
    late_local = deterministic_engine.encode(to_model_input(_avatar(clip, flip=True), 256))
    # the client's own detector: OpenVINO like a local run, bf16 where measured faster and no shakier
    tolerance = 1e-4 if engine.report().detector == "fp32" else 0.02
    assert (late.kp.value - late_local.kp.value).abs().max().item() <= tolerance
    offline_kp = offline.detect(to_model_input(clip[25], 256))
    waited = {}
    waiter = threading.Thread(target=lambda: waited.update(frame=offline.render(offline_state, offline_kp).image))
    waiter.start()
    server.start()
    waiter.join(180)
    assert not waiter.is_alive() and offline.reconnects == 1
    assert (waited["frame"] - deterministic_engine.render(local_state, offline_kp).image).abs().max().item() <= 1e-4
    offline.close()
    deadline = time.monotonic() + 60
    while not engine.connected and time.monotonic() < deadline:
        engine.render(state, kp)
        time.sleep(0.2)
    assert engine.connected and engine.reconnects == 1
    assert any("reconnected" in m and "avatar sent again" in m for m in messages)
    assert engine.status() is None
    kp = engine.detect(to_model_input(clip[30], 256))
    rendered = engine.render(state, kp)
    assert rendered.fresh
    expected = deterministic_engine.render(local_state, kp).image
    assert (rendered.image - expected).abs().max().item() <= 1e-4
    frame = engine.render(late, kp).image
    assert (frame - deterministic_engine.render(late_local, kp).image).abs().max().item() <= 1e-4
    engine.close()


def test_server_refuses_to_listen_on_other_interfaces_without_token():
    result = subprocess.run([sys.executable, "-m", "remote.server", "--host", "0.0.0.0", "--deterministic-weights"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "--token-file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_server_token_file_problems_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, match in ((tmp_path / "missing", "not found"), (empty, "empty")):
        result = subprocess.run([sys.executable, "-m", "remote.server", "--deterministic-weights", "--token-file",
                                 str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and match in result.stderr and "Traceback" not in result.stderr


def test_app_builder_for_serve_run_requires_token_and_weights(tmp_path):
    from remote.server import app_builder

    token = tmp_path / "token"
    token.write_text(TOKEN)
    with pytest.raises(ValueError, match="token_file"):
        app_builder({"checkpoint": "/models/vox-cpk.pth.tar"})
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        app_builder({"token_file": str(token)})
    app = app_builder({"token_file": str(token), "deterministic_weights": "true", "replicas": "2"})
    assert type(app).__name__ == "Application"
