"""What the remote engine tells the live loop while its server is away (no server needed): every frame it returns
then is a repeat (not fresh, so the HUD does not count it), and the status line keeps saying so."""
import torch

from engines.config import VOX_256
from engines.deterministic_weights import load_deterministic_weights
from engines.keypoint_detector import KeypointDetector
from remote import protocol as P
from remote.client import RemoteEngine, RemoteError


class GoneSocket:
    """A connection whose peer has gone: every send fails like a reset TCP connection."""

    def send(self, message):
        raise ConnectionResetError("connection reset by peer")

    def recv(self, timeout=None):
        raise ConnectionResetError("connection reset by peer")

    def close(self):
        pass


def _welcome():
    detector = KeypointDetector(VOX_256)
    load_deterministic_weights(detector, "kp_detector")
    return {"type": "welcome", "version": P.PROTOCOL_VERSION, "engine": "fake", "device": "cpu",
            "weights_id": "deterministic", "config_hash": "x", "image_size": VOX_256.image_size,
            "num_kp": VOX_256.num_kp, "detector_digest": P.digest(P.detector_blob(detector))}


def test_while_the_server_is_away_frames_are_repeats_and_the_status_says_so(monkeypatch, tmp_path):
    def connect(self):
        self._ws = GoneSocket()
        return _welcome()

    monkeypatch.setattr(RemoteEngine, "_connect", connect)
    statuses = []
    engine = RemoteEngine("ws://127.0.0.1:9", deterministic_weights=True, cache_dir=tmp_path, log=statuses.append)
    assert engine.status() is None, "connected: nothing to say"
    image = torch.rand(1, 3, VOX_256.image_size, VOX_256.image_size)
    state = engine.encode(image)             # the upload fails: the connection is lost
    assert not engine.connected and any("connection lost" in s for s in statuses)

    def unreachable(self):
        raise RemoteError(f"cannot reach the render server at {self.url}")

    monkeypatch.setattr(RemoteEngine, "_connect", unreachable)
    engine._retry_at = 0.0  # try at once: the attempt fails, the client backs off and shows what it has
    frame = engine.render(state, engine.detect(image))
    assert torch.equal(frame.image, state.image), "the avatar at rest (no frame came yet)"
    assert frame.fresh is False
    assert engine.status().startswith("RENDER SERVER UNREACHABLE for ")
    assert "reconnecting" in engine.status()
    assert engine.status().startswith("RENDER SERVER UNREACHABLE")  # still, on the next frame too
    assert engine.render(state, engine.detect(image)).fresh is False


def test_a_new_answer_is_fresh_and_the_status_clears_when_the_server_is_back(monkeypatch, tmp_path):
    def connect(self):
        self._ws = GoneSocket()
        return _welcome()

    monkeypatch.setattr(RemoteEngine, "_connect", connect)
    engine = RemoteEngine("ws://127.0.0.1:9", deterministic_weights=True, cache_dir=tmp_path, log=lambda m: None)
    image = torch.rand(1, 3, VOX_256.image_size, VOX_256.image_size)
    state = engine.encode(image)
    assert engine.status() is not None

    def answered(self, state, kp):  # what the wire part does when the server's frame arrives
        self._latest_id += 1
        self._latest = torch.zeros(1, 3, 4, 4)
        return self._latest

    monkeypatch.setattr(RemoteEngine, "_render", answered)
    engine._lost_at = None  # as _reconnect() leaves it
    frame = engine.render(state, engine.detect(image))
    assert frame.fresh is True and engine.status() is None
