"""RemoteEngine: the engine protocol of the live loop, with rendering on a remote server (`run_live.py --remote`).

The client keeps capture, crop, keypoint detection, calibration and smoothing (cheap, and the calibration key stays
instant); `encode` uploads the avatar image once (the server keeps its encoding with the connection) and `render`
sends only the normalised keypoints (~250 bytes) and gets the frame back. Wire format: remote/protocol.py.

- detector weights: the server announces the digest of its keypoint detector; without a local checkpoint the client
  fetches those weights once (tensors only, checked against the digest, cached under the project cache); a local
  checkpoint whose detector differs is refused in one line (keypoints of one detector drive another's generator
  wrongly).
- each frame comes with the generator's motion (deformation and occlusion, remote/protocol.py): the client holds
  the avatar's photo and composites there (engines/composite.py), exactly as it would locally.
- up to `max_in_flight` frames in flight (2 live: the round trip hides behind the next frame; 1 offline, so frame i of
  the output is the render of input i); answers older than the newest shown are dropped.
- faults: when the connection drops, `render` returns the last frame (or the avatar at rest), reconnects with
  backoff, uploads the avatars again and says so through the `notify` it is observed with (`observe`).
- the server is not trusted more than it trusts us: the welcome's fields are type-checked, every message must be of
  the kind expected, a frame's image header must declare the agreed size and format before it is decoded, and
  server texts are printed without control characters and cut. A malformed message stops the client with one
  line; so does a server error in an offline render (reconnect_wait > 0), where a skipped frame would be wrong.
"""
from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import torch

from engines.config import VOX_256
from engines.keypoint_detector import KeypointDetector
from engines.keypoints import Keypoints
from engines.backends.common import describe_error
from engines.backends.detector import create_detector
from engines.storage import cache_root
from engines.errors import UserError
from engines.files import FileRefused, read_bounded, set_aside
from engines.image_header import ImageRejected
from engines.protocol import EngineBase, EngineReport, RenderedFrame, identity_motion
from remote import protocol as P

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)   # between reconnection attempts; the last one repeats


class RemoteError(UserError):
    """The render server cannot be reached, refused us, or serves other weights."""


class ServerWeightsChanged(RemoteError):
    """The server came back after a restart with other weights (the client's keypoints no longer fit it) or other
    render options (its frames would no longer be the local render's)."""


@dataclass
class RemoteState:
    """What `encode` returns: the avatar as the loop sees it (source keypoints from the server's encoding) plus the
    server-side slot that holds its encoding."""

    image: torch.Tensor
    kp: Keypoints
    slot: int
    png: bytes = field(repr=False, default=b"")


def read_token_file(path) -> str:
    try:
        return P.read_token(path)
    except ValueError as exc:
        raise RemoteError(str(exc)) from None


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise RemoteError(f"--remote {url!r}: expected ws://HOST:PORT or wss://HOST:PORT")
    return url


class RemoteEngine(EngineBase):
    def __init__(self, url: str, *, token: str = "", checkpoint=None, deterministic_weights: bool = False,
                 align_corners: bool = True, fmt: str = "jpeg", quality: int = 90, max_in_flight: int = 2,
                 connect_timeout: float = 10.0,
                 frame_timeout: float = 30.0, reconnect_wait: float = 0.0, cache_dir=None,
                 log: Callable[[str], None] | None = None, detector_backend: str = "auto",
                 detector_device: str = "auto"):
        if fmt not in P.FORMATS:
            raise ValueError(f"unknown frame format {fmt!r}")
        self.url = check_url(url)
        self.hello = P.Hello(token=token, fmt=fmt, quality=quality)
        self.max_in_flight = max(1, int(max_in_flight))
        self.connect_timeout, self.frame_timeout = connect_timeout, frame_timeout
        self.reconnect_wait = float(reconnect_wait)  # > 0: render() waits this long for a lost server (offline)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "remote"
        self.log = log or print
        self.device = torch.device("cpu")   # where the client's tensors (detector, keypoints) live
        self._ws = None
        self._next_id = 0
        self._in_flight: OrderedDict[int, float] = OrderedDict()   # frame id -> send time
        self._latest_id = -1
        self._latest: torch.Tensor | None = None
        self._latest_motion: tuple[torch.Tensor, torch.Tensor] | None = None  # (deformation, occlusion) of it
        self._states: dict[int, RemoteState] = {}
        self._slots: OrderedDict[int, int] = OrderedDict()   # uploaded avatar -> server slot, least recent first
        self._retry_at = 0.0
        self._receipt = 0                   # of the newest frame/detector chunk read: echoed (flow control)
        self._failures = 0
        self.round_trip_ms: float | None = None
        self.server_render_ms: float | None = None  # of the newest frame: the rest of the round trip is overhead
        self.batch_sizes: Counter = Counter()
        self.dropped = 0                    # stale or refused (busy) answers
        self.reconnects = 0
        self._lost_at: float | None = None  # monotonic time the connection was lost; None while connected

        self._requested_align_corners = bool(align_corners)  # this run's: the server must render the same
        self.server = self._connect()       # first connection: failures here are errors, later ones are retried
        try:
            self._check_model(self.server)
            self._check_render_options(self.server)
            self.name = f"remote:{self.server['engine']}@{urlparse(url).hostname}"
            self.weights_id = self.server["weights_id"]
            self._config_hash = self.server["config_hash"]
            self.kp_detector = self._detector(checkpoint, deterministic_weights)
            # detection runs here every frame: on the backend a local run would pick for it (OpenVINO on a CPU)
            self._detect, notices = create_detector(self.kp_detector, self.image_size, backend=detector_backend,
                                                    device=detector_device, progress=self.log)
            for notice in notices:
                self.log(f"notice: {notice}")
        except BaseException:
            self.close()
            raise

    # --- engine protocol ------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.server["image_size"])

    @property
    def config_hash(self) -> str:
        return self._config_hash

    @property
    def align_corners(self) -> bool:
        """The server's grid_sample semantics (its deformation is in them; checked to be this run's at connect)."""
        return P.render_option(self.server, "align_corners")

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def detect(self, image: torch.Tensor) -> Keypoints:
        return self._detect(image)

    def report(self) -> EngineReport:
        """backend 'remote': the server's engine, device and precision as its welcome said, the local detector's
        backend and precision."""
        detector = self._detect.report
        return EngineReport(
            backend="remote", device=f"{self.server['device']} at {urlparse(self.url).hostname}",
            detector=detector.detector, renderer=str(self.server.get("precision", "?")),
            why=f"rendered by {self.server['engine']} on the server", fell_back=detector.fell_back,
            facts=(("server", self.url), ("server_engine", self.server["engine"]),
                   ("server_summary", self.server.get("summary", "")),
                   ("detector_backend", f"{detector.backend} on {detector.device}"), *detector.facts))

    def encode(self, image: torch.Tensor) -> RemoteState:
        """Upload the avatar ([1,3,S,S] in [0,1], lossless PNG) into a server slot; the server's encoding stays
        there with this connection."""
        rgb = (image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        png = P.encode_image(rgb, "png")
        if len(png) > P.MAX_AVATAR_BYTES:
            raise RemoteError(f"avatar image is {len(png):,} bytes as PNG (the server takes {P.MAX_AVATAR_BYTES:,})")
        slot = len(self._states)
        # source keypoints from the local detector (the server's weights) until the server's own arrive, so an
        # avatar picked while the server is away still calibrates; the upload then happens on its first frame
        state = RemoteState(image=image.detach().cpu(), kp=self.detect(image), slot=slot, png=png)
        self._states[slot] = state
        if self._ws is not None:
            try:
                self._upload(state)
            except Exception as exc:  # noqa: BLE001 - a lost connection is retried; anything else propagates
                if not _is_connection_error(exc):
                    raise
                self._lost(exc)
        return state

    def render(self, state: RemoteState, kp_driving: Keypoints) -> RenderedFrame:
        """The newest frame the server has answered ([1,3,S,S] in [0,1], one frame behind with 2 in flight).
        While the server is unreachable: live (reconnect_wait 0) the last frame or the avatar at rest at once;
        offline, wait up to reconnect_wait seconds for it to come back and render this frame then. `fresh` says
        whether the frame is a new answer or a repeat."""
        newest_before = self._latest_id
        image = self._render(state, kp_driving)
        if image is self._latest and self._latest_motion is not None:
            deformation, occlusion = self._latest_motion
        else:  # the avatar at rest (nothing answered yet), or a server that sent no motion: nothing moves
            deformation, occlusion = identity_motion(image.shape[0])
        return RenderedFrame(image, deformation, occlusion, fresh=self._latest_id != newest_before)

    def observe(self, notify: Callable[[str], None] | None = None,
                record: Callable[[str, float], None] | None = None) -> None:
        """Connection events (lost, back, a frame skipped) go to `notify` (default: the log); the round trip to
        `record` as "rtt"."""
        super().observe(notify, record)

    def _say(self, message: str) -> None:
        (self._notify or self.log)(message)

    def status(self) -> str | None:
        """While the server is away, what the status line keeps saying (engines/protocol.py)."""
        if self._lost_at is None:
            return None
        retry = max(0.0, self._retry_at - time.monotonic())
        return (f"RENDER SERVER UNREACHABLE for {time.monotonic() - self._lost_at:.0f} s: reconnecting "
                f"(next try in {retry:.0f} s), showing the last frame")

    def _render(self, state: RemoteState, kp_driving: Keypoints) -> torch.Tensor:
        self._receive_ready()
        give_up = time.monotonic() + self.reconnect_wait
        while True:
            if self._ws is not None or self._reconnect():
                if self._send_and_wait(state, kp_driving) or time.monotonic() >= give_up:
                    return self._fallback(state)
                continue  # lost while rendering: offline runs try this frame again after reconnecting
            if time.monotonic() >= give_up:
                if self.reconnect_wait > 0:
                    raise RemoteError(f"the render server at {self.url} stayed unreachable for "
                                      f"{self.reconnect_wait:.0f} s")
                return self._fallback(state)
            time.sleep(min(max(self._retry_at - time.monotonic(), 0.05), max(give_up - time.monotonic(), 0.0)))

    def _send_and_wait(self, state: RemoteState, kp_driving: Keypoints) -> bool:
        """Send one frame and wait while max_in_flight frames are out; False when the connection was lost."""
        try:
            if state.slot not in self._slots:
                self._upload(state)
            self._slots.move_to_end(state.slot)
            frame_id = self._next_id
            self._next_id += 1
            kp = kp_driving.to("cpu", torch.float32)
            self._ws.send(P.pack_keypoints(frame_id, self._slots[state.slot], kp.value.numpy(),
                                           kp.jacobian.numpy(), self._receipt))
            self._in_flight[frame_id] = time.perf_counter()
            deadline = time.monotonic() + self.frame_timeout
            while len(self._in_flight) >= self.max_in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    stale = self._in_flight.popitem(last=False)[0]  # give up on it: its answer will be dropped
                    self.dropped += 1
                    self._say(f"remote: frame {stale} took over {self.frame_timeout:.0f} s; skipped")
                    break
                self._handle(self._ws.recv(timeout=remaining))
        except TimeoutError:
            if self.reconnect_wait > 0 and self._in_flight:  # offline: a skipped frame is a wrong frame in the file
                raise RemoteError(f"the render server at {self.url} did not answer frame "
                                  f"{next(iter(self._in_flight))} within {self.frame_timeout:.0f} s") from None
        except Exception as exc:  # noqa: BLE001 - a lost connection is retried; anything else propagates
            if not _is_connection_error(exc):
                raise
            self._lost(exc)
            return False
        return True

    def forward_full(self, *args, **kwargs):
        raise NotImplementedError("RemoteEngine renders on the server only; forward_full (the whole generator, "
                                  "for tests and benchmarks) needs a local engine")

    def close(self) -> None:
        """Close the connection (the server frees this client's avatars)."""
        self._disconnect()

    def _disconnect(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - closing a dead socket
                pass
            self._ws = None

    # --- connection -----------------------------------------------------------------------------------------
    def _connect(self) -> dict:
        self._ws, welcome = open_session(self.url, self.hello, self.connect_timeout)
        self._receipt = 0
        return welcome

    def _reconnect(self) -> bool:
        """One attempt when the backoff allows; True when connected again with every avatar uploaded."""
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            welcome = self._connect()
            if welcome["detector_digest"] != self.server["detector_digest"]:
                self.close()
                raise ServerWeightsChanged("the render server came back with other model weights; restart the client")
            if P.render_option(welcome, "align_corners") != self._requested_align_corners:
                self.close()
                raise ServerWeightsChanged(self._render_options_differ(welcome))
            self._slots.clear()
            for state in list(self._states.values())[:P.MAX_AVATARS]:
                self._upload(state)
        except ServerWeightsChanged:
            raise
        except RemoteError:  # refused or unreachable this time: try again later
            self._back_off(now)
            return False
        except Exception as exc:  # noqa: BLE001 - dropped again during the re-upload
            if not _is_connection_error(exc):
                raise
            self._back_off(now)
            return False
        self._failures = 0
        self._lost_at = None
        self.reconnects += 1
        self._say(f"remote: render server back: reconnected to {self.url}; avatar sent again")
        return True

    def _back_off(self, now: float) -> None:
        """A reconnection attempt failed: wait longer before the next one (BACKOFF_S)."""
        self._failures += 1
        self._retry_at = now + BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1]
        self._disconnect()

    def _lost(self, exc) -> None:
        self._disconnect()
        self._in_flight.clear()
        self._slots.clear()
        self._failures = 1
        self._retry_at = time.monotonic() + BACKOFF_S[0]
        self._lost_at = time.monotonic()
        self._say(f"remote: connection lost ({P.printable(describe_error(exc, 160))}); showing the last frame, "
                  "reconnecting")

    # --- messages -------------------------------------------------------------------------------------------
    def _receive_ready(self) -> None:
        """Take the answers that already arrived without waiting (keeps the newest frame fresh)."""
        if self._ws is None:
            return
        try:
            while self._in_flight:
                self._handle(self._ws.recv(timeout=0))
        except TimeoutError:
            pass
        except Exception as exc:  # noqa: BLE001
            if not _is_connection_error(exc):
                raise
            self._lost(exc)

    def _handle(self, message) -> dict | None:
        """Apply one server message; returns control messages that are not frames. A message that breaks the
        protocol is a RemoteError (one line), never a traceback."""
        try:
            return self._apply(message)
        except RemoteError:
            raise
        except (P.ProtocolError, ImageRejected, KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"the render server at {self.url} sent a malformed message "
                              f"({P.printable(exc, 160)})") from None

    def _apply(self, message) -> dict | None:
        if isinstance(message, str):
            reply = P.loads(message)
            if reply["type"] == "busy":
                if self._in_flight.pop(reply.get("id"), None) is not None:
                    self.dropped += 1
            elif reply["type"] == "error":
                text = P.printable(reply.get("message"))
                if reply.get("code") == "auth":
                    raise RemoteError("the render server refused the token (check --token-file)")
                if self.reconnect_wait > 0:  # offline: a frame the server would not render cannot be skipped
                    raise RemoteError(f"the render server at {self.url} failed: {text}")
                if self._in_flight.pop(reply.get("id"), None) is not None:
                    self.dropped += 1  # that frame will not come: do not wait for it
                self._say(f"remote: server error: {text}")
            return reply
        kind, frame_id, payload = P.unpack(message)
        if kind != P.KIND_FRAME:
            raise P.ProtocolError(f"a {P.KINDS[kind]} message where a frame was expected")
        batch, render_ms, receipt, data, motion = P.unpack_frame(payload)
        self._receipt = receipt  # read, even if stale: the server may count it as delivered
        sent = self._in_flight.pop(frame_id, None)
        if sent is None or frame_id < self._latest_id:
            self.dropped += 1  # stale: a newer frame is already shown, or we gave up on it
            return None
        # the header must declare the agreed size and format before anything is decoded
        size = self.image_size
        rgb = P.decode_image(data, float_output=True, min_side=size, max_side=size,
                             formats=("jpeg",) if self.hello.fmt == "jpeg" else ("png",))
        self.server_render_ms = render_ms
        self._latest = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        self._latest_motion = None if motion is None else (torch.from_numpy(motion[0])[None],
                                                           torch.from_numpy(motion[1])[None, None])
        self._latest_id = frame_id
        self.batch_sizes[batch] += 1
        ms = (time.perf_counter() - sent) * 1000.0
        self.round_trip_ms = ms if self.round_trip_ms is None else self.round_trip_ms + 0.1 * (ms - self.round_trip_ms)
        if self._record is not None:
            self._record("rtt", ms)
        return None

    def _wait_for(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} reply within {timeout:.0f} s")
            reply = self._handle(self._ws.recv(timeout=remaining))
            if reply is None:
                continue
            if reply["type"] == kind:
                return reply
            if reply["type"] == "error":
                raise RemoteError(f"the render server refused: {P.printable(reply.get('message'))}")

    def _upload(self, state: RemoteState) -> None:
        # The server keeps MAX_AVATARS slots per connection: beyond that the least recently used avatar gives its
        # slot up (and is sent again when it is used again).
        used = set(self._slots.values())
        free = [slot for slot in range(P.MAX_AVATARS) if slot not in used]
        if free:
            server_slot = free[0]
        else:
            _, server_slot = self._slots.popitem(last=False)
        self._ws.send(P.pack(P.KIND_AVATAR, server_slot, state.png))
        reply = self._wait_for("avatar", max(self.frame_timeout, 30.0))
        num_kp = int(self.server["num_kp"])
        try:
            value = np.asarray(reply["kp"]["value"], dtype=np.float32).reshape(1, num_kp, 2)
            jacobian = np.asarray(reply["kp"]["jacobian"], dtype=np.float32).reshape(1, num_kp, 2, 2)
            if not (np.isfinite(value).all() and np.isfinite(jacobian).all()):
                raise ValueError("non-finite keypoints")
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"the render server at {self.url} sent a malformed avatar reply "
                              f"({P.printable(exc, 120)})") from None
        state.kp = Keypoints(torch.from_numpy(value), torch.from_numpy(jacobian))
        self._slots[state.slot] = server_slot

    def _fallback(self, state: RemoteState) -> torch.Tensor:
        return self._latest if self._latest is not None else state.image

    # --- weights --------------------------------------------------------------------------------------------
    def _check_model(self, welcome: dict) -> None:
        if welcome["image_size"] != VOX_256.image_size or welcome["num_kp"] != VOX_256.num_kp:
            raise RemoteError(f"the render server runs a {welcome['image_size']}px model with {welcome['num_kp']} "
                              f"keypoints; this client knows the {VOX_256.image_size}px vox model only")

    def _check_render_options(self, welcome: dict) -> None:
        """Every option that changes the rendered pixels must be the server's too: a remote render that differs
        from the local one without a word is a bug, not a preference."""
        if P.render_option(welcome, "align_corners") != self._requested_align_corners:
            raise RemoteError(self._render_options_differ(welcome))

    def _render_options_differ(self, welcome: dict) -> str:
        def flag(on: bool) -> str:
            return "--align-corners" if on else "--no-align-corners"
        server = flag(P.render_option(welcome, "align_corners"))
        return (f"the render server at {self.url} renders with {server} and this run asks for "
                f"{flag(self._requested_align_corners)}: its frames would differ from a local render; start the server "
                f"with {flag(self._requested_align_corners)}, or run this with {server}")

    def _detector(self, checkpoint, deterministic_weights: bool) -> KeypointDetector:
        """The keypoint detector whose weights match the server's generator (see the module docstring)."""
        expected = self.server["detector_digest"]
        detector = KeypointDetector(VOX_256)
        if checkpoint is not None or deterministic_weights:
            if deterministic_weights:
                from engines.deterministic_weights import load_deterministic_weights
                load_deterministic_weights(detector, "kp_detector")
                what = "the generated test weights"
            else:
                from engines.checkpoint import load_state, read_checkpoint
                load_state(detector, read_checkpoint(checkpoint)["kp_detector"], network="kp_detector",
                           path=checkpoint)
                what = f"{checkpoint}"
            local = P.digest(P.detector_blob(detector))
            if local != expected:
                raise RemoteError(f"the keypoint detector of {what} differs from the render server's "
                                  f"({local[:12]} vs {expected[:12]}); run without --checkpoint to use the server's")
            return detector.eval()
        blob = self._cached_detector(expected)
        if blob is None:
            blob = self._fetch_detector(expected)
        try:
            detector.load_state_dict(P.blob_to_tensors(blob), strict=True)
        except (ValueError, RuntimeError) as exc:
            raise RemoteError(f"the server's keypoint detector does not fit this client "
                              f"({describe_error(exc, 160)})") from None
        return detector.eval()

    def _cache_path(self, digest: str) -> Path:
        return self.cache_dir / f"kp_detector-{digest[:32]}.bin"

    def _cached_detector(self, expected: str) -> bytes | None:
        """The cached weights when they are a regular file of at most the protocol's size with the server's digest;
        anything else (a FIFO, a symlink to a device, a damaged file) is set aside and fetched again."""
        path = self._cache_path(expected)
        if not os.path.lexists(path):
            return None
        try:
            blob = read_bounded(path, P.MAX_DETECTOR_BYTES, what="cached detector weights")
            if P.digest(blob) == expected:
                return blob
            problem = "its digest differs from the server's"
        except FileRefused as exc:
            problem = str(exc)
        set_aside(path)
        self.log(f"notice: cached detector weights unusable ({problem}): set aside, fetching them again")
        return None

    def _fetch_detector(self, expected: str) -> bytes:
        self.log(f"fetching the keypoint detector weights from the server "
                 f"({self.server.get('detector_bytes', 0) / 2**20:.0f} MiB, once)")
        try:
            self._ws.send(P.dumps({"type": "get_detector"}))
            header = self._wait_for("detector", self.connect_timeout)
            size, chunks = header["size"], header["chunks"]
            if not (isinstance(size, int) and isinstance(chunks, int) and 0 < size <= P.MAX_DETECTOR_BYTES
                    and chunks == -(-size // P.DETECTOR_CHUNK_BYTES)):
                raise P.ProtocolError(f"detector header announcing {size!r} bytes in {chunks!r} chunks")
            parts, received = [], 0
            for index in range(chunks):
                message = self._ws.recv(timeout=self.connect_timeout)
                if not isinstance(message, bytes):
                    raise P.ProtocolError("a text message among the detector chunks")
                kind, ident, payload = P.unpack(message)
                if kind != P.KIND_DETECTOR or ident != index:
                    raise P.ProtocolError("detector chunks out of order")
                receipt, chunk = P.unpack_detector_chunk(payload)
                received += len(chunk)
                if received > size:
                    raise P.ProtocolError("more detector bytes than announced")
                parts.append(chunk)
                # the server sends the next chunks once it knows this one was read
                self._ws.send(P.dumps({"type": "receipt", "receipt": receipt}))
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RemoteError(f"fetching the keypoint detector from {self.url} failed "
                              f"({P.printable(describe_error(exc, 160))})") from None
        blob = b"".join(parts)
        if P.digest(blob) != expected:
            raise RemoteError("the keypoint detector weights from the server do not match its digest (damaged "
                              "in transit?); run again")
        path = self._cache_path(expected)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
            tmp.write_bytes(blob)
            os.replace(tmp, path)  # atomic: two clients fetching at once never see half a file
        except OSError as exc:
            self.log(f"notice: could not cache the detector weights in {path.parent} ({exc.strerror or exc})")
        return blob


def open_session(url: str, hello: P.Hello, timeout: float):
    """Connect and say hello: (websocket, the server's checked welcome). RemoteError (one line) when the server
    cannot be reached, refuses the token, speaks another protocol or sends a malformed welcome."""
    from websockets.sync.client import connect

    try:
        # entered like a context manager (websockets >= 17.1 deprecates bare connect()); close() ends it
        ws = connect(url, open_timeout=timeout, max_size=P.DETECTOR_CHUNK_BYTES + 4096,
                     compression=None, close_timeout=2).__enter__()
    except Exception as exc:  # noqa: BLE001 - refused, DNS, TLS, timeout, HTTP error: one line
        raise RemoteError(f"cannot reach the render server at {url} ({describe_error(exc, 160)})") from None
    try:
        ws.send(hello.to_text())
        text = ws.recv(timeout=timeout)
        if not isinstance(text, str):
            raise P.ProtocolError("a binary message instead of the welcome")
        reply = P.loads(text)
    except Exception as exc:  # noqa: BLE001
        ws.close()
        raise RemoteError(f"the render server at {url} did not answer the hello "
                          f"({P.printable(describe_error(exc, 160))})") from None
    if reply["type"] == "error":
        ws.close()
        if reply.get("code") == "auth":
            raise RemoteError(f"the render server at {url} refused the token (check --token-file)")
        raise RemoteError(f"the render server at {url} refused the connection: {P.printable(reply.get('message'))}")
    if reply["type"] != "welcome":
        ws.close()
        raise RemoteError(f"{url} does not speak the live-avatar protocol version {P.PROTOCOL_VERSION}")
    try:
        reply = P.parse_welcome(reply)
    except P.ProtocolError as exc:
        ws.close()
        raise RemoteError(f"the render server at {url} sent a malformed welcome: {exc}") from None
    return ws, reply


def probe_server(url: str, token_file=None, timeout: float = 5.0) -> dict:
    """Is the server reachable and is our token accepted? Its welcome (engine, device, ...), the connection closed
    again at once (`live-avatar doctor --remote`)."""
    token = read_token_file(token_file) if token_file else ""
    ws, welcome = open_session(check_url(url), P.Hello(token=token), timeout)
    ws.close()
    return welcome


def _is_connection_error(exc: BaseException) -> bool:
    """The server went away or the socket failed (closed, refused, reset, timed out): retried, never fatal."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    return isinstance(exc, (ConnectionClosed, InvalidHandshake, OSError, EOFError))


def load_engine(url: str, token_file=None, **kwargs) -> RemoteEngine:
    """The app's entry point: token from a file (required for non-loopback servers by the server itself)."""
    token = read_token_file(token_file) if token_file else ""
    return RemoteEngine(url, token=token, **kwargs)


