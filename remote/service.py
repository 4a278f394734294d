"""The render service, free of Ray: per-replica state (the engine, each connection's avatars) and the WebSocket
protocol of one connection. `remote.deployment` wraps it into a Serve deployment; `remote.server` is the command
line that starts it. Kept apart from both so that neither imports the other.
"""
from __future__ import annotations

import asyncio
import hmac
import secrets
import sys
import time
from collections import Counter, OrderedDict, deque
from itertools import count

import numpy as np

from remote import protocol as P

DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_MS = 4.0
DEFAULT_MAX_IN_FLIGHT = 4       # per connection; the client keeps at most 2
DEFAULT_MAX_CLIENTS = 64        # per replica: connections that said hello
DEFAULT_MAX_UNAUTHENTICATED = 16  # per replica: connections still waiting for their hello (counted apart)
HELLO_TIMEOUT_S = 3.0           # a real client says hello at once; a silent peer frees its slot quickly
AVATAR_DECODES = 2              # avatar images decoded at once per replica (each within MAX_AVATAR_DECODED_BYTES)
CLOSE_TRY_AGAIN = 1013          # RFC 6455: try again later
CLOSE_INTERNAL = 1011


def read_token(path) -> str:
    """The shared secret from a file (stripped); ValueError with a one-line reason. The server also refuses short
    tokens."""
    token = P.read_token(path)
    if len(token) < 8:
        raise ValueError(f"{path}: token is shorter than 8 characters; use e.g. `openssl rand -hex 16`")
    return token


def _make_engine(settings: dict):
    from engines.backends import create_engine

    engine, notices = create_engine(backend=settings.get("backend", "auto"), device=settings.get("device", "auto"),
                                    checkpoint=settings.get("checkpoint"),
                                    deterministic_weights=bool(settings.get("deterministic_weights")),
                                    align_corners=bool(settings.get("align_corners", True)),
                                    precision=settings.get("precision"), int8_check="off")
    return engine, notices


class RenderService:
    """The per-replica state and the WebSocket protocol, kept free of Ray so it can be read (and run) on its own;
    `deployment()` wraps it into a Serve deployment with a FastAPI ingress."""

    def __init__(self, settings: dict):
        import torch

        token = settings.get("token") or ""
        if not token and settings.get("token_file"):
            token = read_token(settings["token_file"])
        self.token = token
        self.engine, notices = _make_engine(settings)
        for notice in notices:
            print(f"notice: {notice}", file=sys.stderr, flush=True)
        self.max_in_flight = int(settings.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT))
        self.num_kp = self.engine.config.num_kp
        blob = P.detector_blob(self.engine.kp_detector)
        self.detector_blob, self.detector_digest = blob, P.digest(blob)
        self.max_clients = int(settings.get("max_clients", DEFAULT_MAX_CLIENTS))
        self.max_unauthenticated = int(settings.get("max_unauthenticated", DEFAULT_MAX_UNAUTHENTICATED))
        self.hello_timeout = float(settings.get("hello_timeout", HELLO_TIMEOUT_S))
        self.max_unread = int(settings.get("max_unread_bytes", P.MAX_UNREAD_BYTES))
        self.connections = 0            # every open connection
        self._waiting: OrderedDict[int, asyncio.Event] = OrderedDict()  # no hello yet, oldest first
        self._ids = count()
        self._avatar_decodes = None     # asyncio.Semaphore, made on the event loop
        self.frames = 0
        self.batches: Counter = Counter()
        self._torch = torch

    # --- facts the client needs -------------------------------------------------------------------------------
    def welcome(self) -> dict:
        e = self.engine
        return {"type": "welcome", "version": P.PROTOCOL_VERSION, "engine": e.name, "device": str(e.device),
                "image_size": e.image_size, "num_kp": self.num_kp, "config_hash": e.config_hash,
                "weights_id": e.weights_id, "detector_digest": self.detector_digest,
                "detector_bytes": len(self.detector_blob), "align_corners": e.align_corners,
                "max_in_flight": self.max_in_flight, "max_avatar_bytes": P.MAX_AVATAR_BYTES,
                "max_avatars": P.MAX_AVATARS, "precision": e.report().precision, "summary": e.report().summary()}

    def health(self) -> dict:
        return {"connections": self.connections, "waiting_hello": self.waiting_hello, "frames": self.frames,
                "engine": self.engine.name,
                "torch_threads": self._torch.get_num_threads(),
                "batches": {str(k): v for k, v in sorted(self.batches.items())}}

    # --- work (runs in a worker thread: the event loop keeps serving the other connections) -------------------
    def encode_avatar(self, data: bytes):
        from engines.image import to_model_input

        # the header is checked (16..8192 px per side, decoded size) before a single pixel is decoded
        rgb = P.decode_image(data, min_side=P.MIN_AVATAR_SIDE, max_side=P.MAX_AVATAR_SIDE,
                             max_decoded_bytes=P.MAX_AVATAR_DECODED_BYTES)
        size = self.engine.image_size
        return self.engine.encode(to_model_input(rgb, size, self.engine.device))

    def render_batch(self, requests: list) -> list:
        """[(state, value, jacobian, fmt, quality)] -> [(image bytes, batch size, render ms, (deformation,
        occlusion))]; image None for a frame that came out non-finite. The motion goes along so that the client
        can composite the frame into the avatar's photo (it holds the photo; the server only has the square)."""
        from engines.batch import render_batch
        from engines.keypoints import Keypoints

        torch = self._torch
        start = time.perf_counter()
        device = self.engine.device
        kps = [Keypoints(torch.from_numpy(v).to(device), torch.from_numpy(j).to(device))
               for _, v, j, _, _ in requests]
        rendered = render_batch(self.engine, [r[0] for r in requests], kps)
        frames = rendered.image.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        deformations = rendered.deformation.float().cpu().numpy()
        occlusions = rendered.occlusion.float().cpu().numpy()
        render_ms = (time.perf_counter() - start) * 1000.0
        self.batches[len(requests)] += 1
        self.frames += len(requests)
        out = []
        for frame, deformation, occlusion, (_, _, _, fmt, quality) in zip(frames, deformations, occlusions,
                                                                          requests):
            if not (np.isfinite(frame).all() and np.isfinite(deformation).all() and np.isfinite(occlusion).all()):
                out.append((None, len(requests), render_ms, None))  # never sent: NaN would arrive as black
                continue
            rgb = frame if fmt == "png16" else (frame * 255.0 + 0.5).astype(np.uint8)
            out.append((P.encode_image(rgb, fmt, quality), len(requests), render_ms, (deformation, occlusion)))
        return out

    @property
    def waiting_hello(self) -> int:
        return len(self._waiting)

    async def _hello(self, ws, key: int) -> dict:
        """The first message, within the hello deadline. Peers that have not said hello are capped apart from the
        clients: when the cap is reached the one that has waited longest is dropped, so a newcomer (a real client
        says hello at once) always gets its turn, however many silent peers keep connecting."""
        evicted = self._waiting[key] = asyncio.Event()
        if len(self._waiting) > self.max_unauthenticated:
            self._waiting.popitem(last=False)[1].set()
        receive = asyncio.ensure_future(ws.receive())
        evict = asyncio.ensure_future(evicted.wait())
        try:
            await asyncio.wait({receive, evict}, timeout=self.hello_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            evict.cancel()
            self._waiting.pop(key, None)
        if receive.done():
            return receive.result()
        receive.cancel()
        if evicted.is_set():
            raise P.ProtocolError(f"more than {self.max_unauthenticated} connections waiting to say hello; the "
                                  "longest waiting is dropped", code="busy", close_code=CLOSE_TRY_AGAIN)
        raise P.ProtocolError(f"no hello within {self.hello_timeout:g} s")

    # --- one connection ---------------------------------------------------------------------------------------
    async def serve_connection(self, ws, render) -> None:
        """The protocol on one accepted Starlette WebSocket; `render(request)` is the batched render coroutine."""
        out = Outbox(ws, self.max_unread)
        in_flight: set[asyncio.Task] = set()
        slots: dict[int, object] = {}
        detector: asyncio.Task | None = None
        self.connections += 1
        if self._avatar_decodes is None:
            self._avatar_decodes = asyncio.Semaphore(AVATAR_DECODES)

        async def answer(frame_id: int, request) -> None:
            try:
                image, batch, render_ms, motion = await render(request)
                if image is None:
                    await out.text(P.error_message("render produced non-finite values; frame not sent", "render",
                                                   id=frame_id))
                else:
                    await out.binary(lambda receipt: P.pack_frame(frame_id, image, batch, render_ms, receipt,
                                                                  motion))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the client hears why; the server goes on
                try:
                    await out.text(P.error_message(P.printable(f"render failed: {type(exc).__name__}: {exc}"),
                                                   "render", id=frame_id))
                except Exception:  # noqa: BLE001 - the client is gone
                    pass

        try:
            first = await self._hello(ws, next(self._ids))
            if first.get("type") == "websocket.disconnect":
                return
            if first.get("text") is None:
                raise P.ProtocolError('the first message must be the JSON hello')
            hello = P.Hello.parse(P.loads(first["text"]))
            if self.token and not hmac.compare_digest(hello.token.encode(), self.token.encode()):
                raise P.ProtocolError("wrong or missing token (see --token-file)", code="auth")
            if self.connections - self.waiting_hello > self.max_clients:
                raise P.ProtocolError(f"the server has its {self.max_clients} clients; try again later",
                                      code="busy", close_code=CLOSE_TRY_AGAIN)
            await out.text(P.dumps(self.welcome()))
            while True:
                message = await ws.receive()
                if message.get("type") == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    request = P.loads(message["text"])
                    if request["type"] == "receipt":
                        out.confirm(request.get("receipt"))
                    elif request["type"] == "get_detector":
                        if detector is not None:
                            raise P.ProtocolError("the detector weights were already sent on this connection")
                        detector = asyncio.create_task(self._send_detector(out))
                    else:
                        raise P.ProtocolError(f"unknown control message {request['type']!r}")
                    continue
                data = message.get("bytes") or b""
                if len(data) > P.HEADER.size + P.MAX_AVATAR_BYTES:
                    raise P.ProtocolError(f"message of {len(data):,} bytes (limit {P.MAX_AVATAR_BYTES:,} for an "
                                          "avatar image)", code="too-big", close_code=P.CLOSE_TOO_BIG)
                kind, ident, payload = P.unpack(data)
                if kind == P.KIND_KEYPOINTS:
                    slot, value, jacobian, receipt = P.unpack_keypoints(payload, self.num_kp)
                    out.confirm(receipt)
                    out.check_reading()
                    if slot not in slots:
                        raise P.ProtocolError(f"frame for avatar slot {slot}, which was not uploaded")
                    if len(in_flight) >= self.max_in_flight:
                        await out.text(P.dumps({"type": "busy", "id": ident}))  # dropped, not queued
                        continue
                    task = asyncio.create_task(answer(ident, (slots[slot], value, jacobian, hello.fmt,
                                                              hello.quality)))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                elif kind == P.KIND_AVATAR:
                    out.check_reading()
                    if ident >= P.MAX_AVATARS:
                        raise P.ProtocolError(f"avatar slot {ident} (0..{P.MAX_AVATARS - 1} allowed)")
                    async with self._avatar_decodes:
                        state = await asyncio.to_thread(self.encode_avatar, bytes(payload))
                    slots[ident] = state
                    await out.text(P.dumps({"type": "avatar", "slot": ident,
                                            "kp": {"value": state.kp.value.cpu().reshape(-1).tolist(),
                                                   "jacobian": state.kp.jacobian.cpu().reshape(-1).tolist()}}))
                else:
                    raise P.ProtocolError(f"{P.KINDS[kind]} messages only go from the server to the client")
        except P.ProtocolError as exc:
            await self._refuse(ws, out, exc)
        except Exception as exc:  # noqa: BLE001 - anything unexpected ends this connection only, with a reason
            if type(exc).__name__ not in ("WebSocketDisconnect", "ClientDisconnected", "CancelledError"):
                print(f"connection ended: {type(exc).__name__}: {P.printable(exc)}", file=sys.stderr, flush=True)
                await self._refuse(ws, out, P.ProtocolError(f"the server could not handle a message "
                                                            f"({type(exc).__name__})", code="internal",
                                                            close_code=CLOSE_INTERNAL))
        finally:
            for task in [*in_flight, *([detector] if detector is not None else [])]:
                task.cancel()
            slots.clear()  # the avatar states die with the connection
            self.connections -= 1

    async def _send_detector(self, out: "Outbox") -> None:
        """The detector blob in chunks, each sent only when the unread bytes leave room for it: a peer that stops
        reading stops the transfer (it costs at most MAX_UNREAD_BYTES), one that reads gets it at full speed."""
        blob, size = self.detector_blob, P.DETECTOR_CHUNK_BYTES
        chunks = (len(blob) + size - 1) // size
        try:
            await out.text(P.dumps({"type": "detector", "digest": self.detector_digest, "size": len(blob),
                                    "chunks": chunks}))
            for index in range(chunks):
                chunk = blob[index * size:(index + 1) * size]
                await out.room_for(len(chunk))
                await out.binary(lambda receipt: P.pack_detector_chunk(index, chunk, receipt))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the connection is gone; its handler cleans up
            pass

    @staticmethod
    async def _refuse(ws, out: "Outbox", exc: "P.ProtocolError") -> None:
        try:
            await out.text(P.error_message(P.printable(exc, 300), exc.code))
            await ws.close(code=exc.close_code, reason=exc.code)
        except Exception:  # noqa: BLE001 - the client may be gone already
            pass


class Outbox:
    """One connection's sending side: one message at a time, and a count of the bytes the peer has not confirmed
    reading. Every binary message carries a fresh random receipt; the peer echoes the newest one it read, which
    confirms that message and everything sent before it (the stream is ordered)."""

    def __init__(self, ws, limit: int = P.MAX_UNREAD_BYTES):
        self.ws, self.limit = ws, limit
        self.sent = 0                    # bytes sent on this connection
        self.confirmed = 0               # of those, confirmed read
        self._pending: deque = deque()   # (receipt, self.sent after it) of unconfirmed binary messages
        self._last = 0                   # the newest confirmed receipt (echoed again until a newer one is read)
        self._lock = asyncio.Lock()      # several frame tasks answer on one socket
        self._progress = asyncio.Event()

    @property
    def unread(self) -> int:
        return self.sent - self.confirmed

    async def text(self, text: str) -> None:
        async with self._lock:
            self.sent += len(text)
            await self.ws.send_text(text)

    async def binary(self, make) -> None:
        """Send make(receipt): the receipt is registered before the message leaves, so a quick echo is known."""
        async with self._lock:
            receipt = secrets.randbits(32) or 1
            data = make(receipt)
            self.sent += len(data)
            self._pending.append((receipt, self.sent))
            await self.ws.send_bytes(data)

    def confirm(self, receipt) -> None:
        if receipt in (0, self._last):
            return
        for index, (known, end) in enumerate(self._pending):
            if known == receipt:
                for _ in range(index + 1):
                    self._pending.popleft()
                self._last, self.confirmed = receipt, end
                self._progress.set()
                return
        raise P.ProtocolError("receipt of a message this server did not send (or already confirmed)")

    def check_reading(self) -> None:
        """A peer that keeps asking while it leaves more than the limit unread is dropped."""
        if self.unread > self.limit:
            raise P.ProtocolError(f"the client does not read what it is sent ({self.unread:,} bytes unread, "
                                  f"limit {self.limit:,})", code="slow-reader")

    async def room_for(self, size: int) -> None:
        """Wait until `size` more bytes keep the unread ones within the limit (always true on an idle line)."""
        while self.unread and self.unread + size > self.limit:
            self._progress.clear()
            await self._progress.wait()
