"""remote.service.RenderService on its own: no Ray, no sockets. Fake WebSocket peers (the Starlette interface the
Serve deployment hands over) talk to `serve_connection` on one event loop, so hostile peers are deterministic and
fast: flow control, detector once per connection, error replies and close codes for every malformed message,
header-checked avatars, non-finite renders, the hello deadline and the cap on peers that have not said hello."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import torch

from remote import protocol as P
from tests.test_image_header import png_declaring

TOKEN = "service-token-0123"
IDENTITY = np.tile(np.eye(2, dtype=np.float32), (10, 1, 1))


@pytest.fixture(scope="module")
def service():
    from remote.service import RenderService

    torch.manual_seed(0)
    # eager fp32 (the cpu backend alone takes bf16 where it measures faster): frame sizes the limits are set by
    return RenderService({"token": TOKEN, "backend": "cpu", "precision": "fp32", "deterministic_weights": True})


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class FakeSocket:
    """A peer: the test puts messages in, the service's replies land in `sent`. `reads`: echo the receipt of every
    binary message as a client that reads would (detector chunks); otherwise the peer never confirms anything."""

    def __init__(self, reads: bool = False):
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list = []
        self.closed: int | None = None
        self.reads = reads
        self._news = asyncio.Event()

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def send_text(self, text: str) -> None:
        self.sent.append(text)
        self._news.set()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)
        self._news.set()
        if self.reads:
            kind, _, payload = P.unpack(data)
            receipt = (P.unpack_detector_chunk(payload)[0] if kind == P.KIND_DETECTOR
                       else P.unpack_frame(payload)[2])
            self.text({"type": "receipt", "receipt": receipt})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})
        self._news.set()

    # --- the test's side
    def text(self, message) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": message if isinstance(message, str)
                               else json.dumps(message)})

    def binary(self, data: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": data})

    def hello(self, **kw) -> None:
        self.text(P.Hello(token=TOKEN, **kw).to_text())

    def leave(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    def texts(self) -> list[dict]:
        return [json.loads(m) for m in self.sent if isinstance(m, str)]

    async def wait_for(self, predicate, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            for message in self.sent:
                if predicate(message):
                    return message
            if self.closed is not None or time.monotonic() > deadline:
                tail = [m if isinstance(m, str) else len(m) for m in self.sent][-5:]
                raise AssertionError(f"not sent (closed {self.closed}): {tail}")
            self._news.clear()
            try:
                await asyncio.wait_for(self._news.wait(), 0.5)
            except asyncio.TimeoutError:
                pass


def _is(kind: str):
    return lambda m: isinstance(m, str) and json.loads(m)["type"] == kind


def _render_with(service):
    async def render(request):
        return (await asyncio.to_thread(service.render_batch, [request]))[0]
    return render


def _connect(service, ws) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(service.serve_connection(ws, _render_with(service)))


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


async def _refused(task, ws, code: str, close_code: int) -> str:
    await asyncio.wait_for(task, 30)
    errors = [m for m in ws.texts() if m["type"] == "error"]
    assert errors and errors[-1]["code"] == code, ws.texts()
    assert ws.closed == close_code
    return errors[-1]["message"]


AVATAR = P.encode_image(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "png")


async def _with_avatar(service, ws, **hello):
    task = _connect(service, ws)
    ws.hello(**hello)
    ws.binary(P.pack(P.KIND_AVATAR, 0, AVATAR))
    reply = json.loads(await ws.wait_for(_is("avatar")))
    return task, np.array(reply["kp"]["value"]), np.array(reply["kp"]["jacobian"])


# --- flow control --------------------------------------------------------------------------------------------------
def test_detector_once_per_connection_and_never_more_than_the_unread_limit(service):
    async def main():
        ws = FakeSocket()          # never reads: confirms nothing
        before = _rss()
        task = _connect(service, ws)
        ws.hello()
        ws.text({"type": "get_detector"})
        await ws.wait_for(lambda m: isinstance(m, bytes))
        await asyncio.sleep(0.5)   # the transfer runs until the unread limit, then waits for receipts
        stalled = sum(len(m) for m in ws.sent)
        assert P.MAX_UNREAD_BYTES - P.DETECTOR_CHUNK_BYTES <= stalled <= P.MAX_UNREAD_BYTES + 16384
        for _ in range(24):        # the audit's 25 requests in all
            ws.text({"type": "get_detector"})
        message = await _refused(task, ws, "malformed", P.CLOSE_POLICY)
        assert "already sent" in message
        queued = sum(len(m) for m in ws.sent)
        # the first request got at most the unread limit (the 57 MB blob stops there); the others nothing
        assert queued <= P.MAX_UNREAD_BYTES + P.DETECTOR_CHUNK_BYTES + 16384, queued
        print(f"non-reading peer, 25 get_detector: {queued / 2**20:.1f} MiB queued, RSS "
              f"+{(_rss() - before) / 2**20:.0f} MiB")
        assert _rss() - before < 150 * 2**20
    run(main())


def test_a_reading_peer_gets_the_whole_detector(service):
    async def main():
        ws = FakeSocket(reads=True)
        task = _connect(service, ws)
        ws.hello()
        ws.text({"type": "get_detector"})
        header = json.loads(await ws.wait_for(_is("detector")))
        await ws.wait_for(lambda m: isinstance(m, bytes) and P.unpack(m)[1] == header["chunks"] - 1, 60)
        chunks = [P.unpack_detector_chunk(P.unpack(m)[2])[1] for m in ws.sent if isinstance(m, bytes)]
        assert P.digest(b"".join(chunks)) == header["digest"] == service.detector_digest
        ws.leave()
        await task
    run(main())


def test_a_peer_that_asks_for_frames_without_reading_them_is_dropped(service):
    async def main():
        service.max_unread, saved = 200_000, service.max_unread   # about one png16 frame
        try:
            ws = FakeSocket()
            task, value, jacobian = await _with_avatar(service, ws, fmt="png16")
            for frame_id in range(3):
                ws.binary(P.pack_keypoints(frame_id, 0, value, jacobian, receipt=0))
                if frame_id == 0:
                    await ws.wait_for(lambda m: isinstance(m, bytes))
            message = await _refused(task, ws, "slow-reader", P.CLOSE_POLICY)
            assert "does not read" in message
            assert sum(isinstance(m, bytes) for m in ws.sent) <= 2
        finally:
            service.max_unread = saved
    run(main())


def test_a_peer_that_echoes_receipts_keeps_getting_frames(service):
    async def main():
        service.max_unread, saved = 200_000, service.max_unread
        try:
            ws = FakeSocket()
            task, value, jacobian = await _with_avatar(service, ws, fmt="png16")
            receipt = 0
            for frame_id in range(3):   # each frame alone exceeds the limit: only receipts keep it going
                ws.binary(P.pack_keypoints(frame_id, 0, value, jacobian, receipt=receipt))
                frame = await ws.wait_for(lambda m: isinstance(m, bytes) and P.unpack(m)[1] == frame_id)
                receipt = P.unpack_frame(P.unpack(frame)[2])[2]
            ws.binary(P.pack_keypoints(9, 0, value, jacobian, receipt=12345))  # a receipt it never got
            assert "receipt" in await _refused(task, ws, "malformed", P.CLOSE_POLICY)
        finally:
            service.max_unread = saved
    run(main())


# --- malformed messages: an error reply and a close code, whatever breaks ------------------------------------------
AFTER_HELLO = [
    ("deep JSON", lambda ws: ws.text("[" * 2040 + "]" * 2040), "malformed", P.CLOSE_POLICY),
    ("empty avatar", lambda ws: ws.binary(P.pack(P.KIND_AVATAR, 0, b"")), "bad-image", P.CLOSE_POLICY),
    ("EXR avatar", lambda ws: ws.binary(P.pack(P.KIND_AVATAR, 0, b"v/1\x01" + b"\0" * 200)), "bad-image",
     P.CLOSE_POLICY),
    ("receipt of a list", lambda ws: ws.text({"type": "receipt", "receipt": [1]}), "malformed", P.CLOSE_POLICY),
    ("singular jacobian", lambda ws: ws.binary(P.pack_keypoints(1, 0, np.zeros((10, 2)), np.zeros((10, 2, 2)))),
     "malformed", P.CLOSE_POLICY),
]


@pytest.mark.parametrize("name, send, code, close_code", AFTER_HELLO, ids=[c[0] for c in AFTER_HELLO])
def test_malformed_messages_get_an_error_reply_and_a_close_code(service, name, send, code, close_code):
    async def main():
        ws = FakeSocket()
        task = _connect(service, ws)
        ws.hello()
        await ws.wait_for(_is("welcome"))
        send(ws)
        await _refused(task, ws, code, close_code)
    run(main())


def test_lone_surrogate_token_is_an_auth_refusal(service):
    async def main():
        ws = FakeSocket()
        task = _connect(service, ws)
        ws.text('{"type": "hello", "version": %d, "token": "\\udc80"}' % P.PROTOCOL_VERSION)
        await _refused(task, ws, "auth", P.CLOSE_POLICY)
    run(main())


def test_unexpected_failures_still_get_a_reply_and_a_close_code(service, monkeypatch):
    def broken(data):
        raise RuntimeError("\x1b[31mboom " + "x" * 5000)

    monkeypatch.setattr(service, "encode_avatar", broken)

    async def main():
        ws = FakeSocket()
        task = _connect(service, ws)
        ws.hello()
        ws.binary(P.pack(P.KIND_AVATAR, 0, AVATAR))
        message = await _refused(task, ws, "internal", 1011)
        assert "RuntimeError" in message and "\x1b" not in message and len(message) < 400
    run(main())


@pytest.mark.parametrize("bomb, match", [
    (png_declaring(20000, 20000), "too large"),               # 0.4 KB declaring 1.2 GB
    (png_declaring(6000, 6000, depth=16), "MiB decoded"),      # within 10 MB and 8192 px, 206 MiB decoded
])
def test_avatar_bombs_are_refused_before_decoding(service, bomb, match):
    async def main():
        ws = FakeSocket()
        task = _connect(service, ws)
        ws.hello()
        before, start = _rss(), time.perf_counter()
        ws.binary(P.pack(P.KIND_AVATAR, 0, bomb))
        assert match in await _refused(task, ws, "bad-image", P.CLOSE_POLICY)
        grown, took = _rss() - before, time.perf_counter() - start
        print(f"avatar bomb {match!r}: refused in {took * 1000:.0f} ms, RSS +{grown / 2**20:.1f} MiB")
        assert took < 2.0 and grown < 30 * 2**20
    run(main())


def test_non_finite_renders_are_never_sent(service, monkeypatch):
    import engines.batch
    from engines.protocol import RenderedFrame, identity_motion

    monkeypatch.setattr(engines.batch, "render_batch", lambda engine, states, kps: RenderedFrame(
        torch.full((len(states), 3, 256, 256), float("nan")), *identity_motion(len(states))))

    async def main():
        ws = FakeSocket()
        task, value, jacobian = await _with_avatar(service, ws)
        ws.binary(P.pack_keypoints(7, 0, value, jacobian))
        error = json.loads(await ws.wait_for(_is("error")))
        assert error["code"] == "render" and error["id"] == 7 and "non-finite" in error["message"]
        assert not any(isinstance(m, bytes) for m in ws.sent)
        assert ws.closed is None   # the connection goes on
        ws.leave()
        await task
    run(main())


# --- peers that have not said hello ----------------------------------------------------------------------------
def test_silent_peers_do_not_starve_a_real_client(service):
    async def main():
        service.hello_timeout, saved = 2.0, service.hello_timeout
        try:
            silent = [FakeSocket() for _ in range(64)]
            tasks = [_connect(service, ws) for ws in silent]
            await asyncio.sleep(0.1)
            dropped = [ws for ws in silent if ws.closed == 1013]   # the longest waiting ones, at once
            assert len(dropped) == 64 - service.max_unauthenticated and dropped == silent[:len(dropped)]
            start = time.perf_counter()
            real = FakeSocket()
            real_task = _connect(service, real)
            real.hello()
            await real.wait_for(_is("welcome"), 5)
            assert time.perf_counter() - start < 1.0
            await asyncio.wait_for(asyncio.gather(*tasks), 10)   # the rest: dropped at the hello deadline
            assert all(ws.closed in (1013, P.CLOSE_POLICY) for ws in silent)
            assert any("no hello within" in m["message"] for ws in silent for m in ws.texts())
            assert sum(ws.closed == 1013 for ws in silent) == len(dropped) + 1   # the newcomer took a turn
            assert service.waiting_hello == 0 and service.connections == 1
            real.leave()
            await real_task
            assert service.connections == 0
        finally:
            service.hello_timeout = saved
    run(main())


def test_clients_beyond_the_cap_are_told_to_try_again(service):
    async def main():
        service.max_clients, saved = 1, service.max_clients
        try:
            first, second = FakeSocket(), FakeSocket()
            tasks = [_connect(service, first), _connect(service, second)]
            first.hello()
            await first.wait_for(_is("welcome"))
            second.hello()
            assert "try again" in await _refused(tasks[1], second, "busy", 1013)
            first.leave()
            await tasks[0]
        finally:
            service.max_clients = saved
    run(main())
