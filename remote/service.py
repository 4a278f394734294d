"""The render service, free of Ray: per-replica state (the engine, each connection's avatars) and the WebSocket
protocol of one connection. `remote.deployment` wraps it into a Serve deployment; `remote.server` is the command
line that starts it. Kept apart from both so that neither imports the other.
"""
from __future__ import annotations

import asyncio
import hmac
import sys
import time
from collections import Counter

import numpy as np

from remote import protocol as P

DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_MS = 4.0
DEFAULT_MAX_IN_FLIGHT = 4       # per connection; the client keeps at most 2
DEFAULT_MAX_CLIENTS = 64        # per replica
HELLO_TIMEOUT_S = 10.0


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
                                    precision=settings.get("precision"))
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
        self.connections = 0
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
                "max_avatars": P.MAX_AVATARS}

    def health(self) -> dict:
        return {"connections": self.connections, "frames": self.frames, "engine": self.engine.name,
                "torch_threads": self._torch.get_num_threads(),
                "batches": {str(k): v for k, v in sorted(self.batches.items())}}

    # --- work (runs in a worker thread: the event loop keeps serving the other connections) -------------------
    def encode_avatar(self, data: bytes):
        from engines.image import to_model_input

        rgb = P.decode_image(data)
        if min(rgb.shape[:2]) < 16 or max(rgb.shape[:2]) > 8192:
            raise P.ProtocolError(f"avatar image of {rgb.shape[1]}x{rgb.shape[0]} pixels (16..8192 allowed)",
                                  code="bad-image")
        size = self.engine.image_size
        return self.engine.encode(to_model_input(rgb, size, self.engine.device))

    def render_batch(self, requests: list) -> list:
        """[(state, value, jacobian, fmt, quality)] -> [(image bytes, batch size, render ms)]."""
        from engines.batch import render_batch
        from engines.keypoints import Keypoints

        torch = self._torch
        start = time.perf_counter()
        device = self.engine.device
        kps = [Keypoints(torch.from_numpy(v).to(device), torch.from_numpy(j).to(device))
               for _, v, j, _, _ in requests]
        frames = render_batch(self.engine, [r[0] for r in requests], kps)
        frames = frames.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        render_ms = (time.perf_counter() - start) * 1000.0
        self.batches[len(requests)] += 1
        self.frames += len(requests)
        out = []
        for frame, (_, _, _, fmt, quality) in zip(frames, requests):
            rgb = frame if fmt == "png16" else (frame * 255.0 + 0.5).astype(np.uint8)
            out.append((P.encode_image(rgb, fmt, quality), len(requests), render_ms))
        return out

    # --- one connection ---------------------------------------------------------------------------------------
    async def serve_connection(self, ws, render) -> None:
        """The protocol on one accepted Starlette WebSocket; `render(request)` is the batched render coroutine."""
        send_lock = asyncio.Lock()
        in_flight: set[asyncio.Task] = set()
        slots: dict[int, object] = {}
        self.connections += 1

        async def send(data) -> None:
            async with send_lock:  # several frame tasks answer on one socket
                if isinstance(data, str):
                    await ws.send_text(data)
                else:
                    await ws.send_bytes(data)

        async def answer(frame_id: int, request) -> None:
            try:
                image, batch, render_ms = await render(request)
                await send(P.pack_frame(frame_id, image, batch, render_ms))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the client hears why; the server goes on
                try:
                    await send(P.error_message(f"render failed: {type(exc).__name__}: {exc}", "render"))
                except Exception:  # noqa: BLE001 - the client is gone
                    pass

        try:
            try:
                first = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise P.ProtocolError(f"no hello within {HELLO_TIMEOUT_S:.0f} s") from None
            if first.get("type") == "websocket.disconnect":
                return
            if first.get("text") is None:
                raise P.ProtocolError('the first message must be the JSON hello')
            hello = P.Hello.parse(P.loads(first["text"]))
            if self.token and not hmac.compare_digest(hello.token.encode(), self.token.encode()):
                raise P.ProtocolError("wrong or missing token (see --token-file)", code="auth")
            await send(P.dumps(self.welcome()))
            while True:
                message = await ws.receive()
                if message.get("type") == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    request = P.loads(message["text"])
                    if request["type"] == "get_detector":
                        await self._send_detector(send)
                    else:
                        raise P.ProtocolError(f"unknown control message {request['type']!r}")
                    continue
                data = message.get("bytes") or b""
                if len(data) > P.HEADER.size + P.MAX_AVATAR_BYTES:
                    raise P.ProtocolError(f"message of {len(data):,} bytes (limit {P.MAX_AVATAR_BYTES:,} for an "
                                          "avatar image)", code="too-big", close_code=P.CLOSE_TOO_BIG)
                kind, ident, payload = P.unpack(data)
                if kind == P.KIND_KEYPOINTS:
                    slot, value, jacobian = P.unpack_keypoints(payload, self.num_kp)
                    if slot not in slots:
                        raise P.ProtocolError(f"frame for avatar slot {slot}, which was not uploaded")
                    if len(in_flight) >= self.max_in_flight:
                        await send(P.dumps({"type": "busy", "id": ident}))  # dropped, not queued
                        continue
                    task = asyncio.create_task(answer(ident, (slots[slot], value, jacobian, hello.fmt,
                                                              hello.quality)))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                elif kind == P.KIND_AVATAR:
                    if ident >= P.MAX_AVATARS:
                        raise P.ProtocolError(f"avatar slot {ident} (0..{P.MAX_AVATARS - 1} allowed)")
                    state = await asyncio.to_thread(self.encode_avatar, bytes(payload))
                    slots[ident] = state
                    await send(P.dumps({"type": "avatar", "slot": ident,
                                        "kp": {"value": state.kp.value.cpu().reshape(-1).tolist(),
                                               "jacobian": state.kp.jacobian.cpu().reshape(-1).tolist()}}))
                else:
                    raise P.ProtocolError(f"{P.KINDS[kind]} messages only go from the server to the client")
        except P.ProtocolError as exc:
            await self._refuse(ws, send, exc)
        except Exception as exc:  # noqa: BLE001 - disconnects and anything unexpected end this connection only
            if type(exc).__name__ not in ("WebSocketDisconnect", "ClientDisconnected", "CancelledError"):
                print(f"connection ended: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            for task in list(in_flight):
                task.cancel()
            slots.clear()  # the avatar states die with the connection
            self.connections -= 1

    async def _send_detector(self, send) -> None:
        blob, size = self.detector_blob, P.DETECTOR_CHUNK_BYTES
        chunks = (len(blob) + size - 1) // size
        await send(P.dumps({"type": "detector", "digest": self.detector_digest, "size": len(blob),
                            "chunks": chunks}))
        for index in range(chunks):
            await send(P.pack(P.KIND_DETECTOR, index, blob[index * size:(index + 1) * size]))

    @staticmethod
    async def _refuse(ws, send, exc: "P.ProtocolError") -> None:
        try:
            await send(P.error_message(str(exc), exc.code))
            await ws.close(code=exc.close_code, reason=exc.code)
        except Exception:  # noqa: BLE001 - the client may be gone already
            pass
