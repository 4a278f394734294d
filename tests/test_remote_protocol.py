"""The remote wire format (remote/protocol.py) on its own: no server, no Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from remote import protocol as P


def test_keypoints_round_trip_and_size():
    rng = np.random.default_rng(0)
    value = rng.uniform(-1, 1, (1, 10, 2)).astype(np.float32)
    jacobian = rng.normal(size=(1, 10, 2, 2)).astype(np.float32)
    message = P.pack_keypoints(7, 3, value, jacobian)
    assert len(message) == P.keypoints_size(10) == 252  # "~240 bytes" per frame
    kind, ident, payload = P.unpack(message)
    assert (kind, ident) == (P.KIND_KEYPOINTS, 7)
    slot, v, j = P.unpack_keypoints(payload, 10)
    assert slot == 3 and np.array_equal(v, value) and np.array_equal(j, jacobian)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m[:-4], "expected"),                                  # truncated
    (lambda m: m + b"\0" * 4, "expected"),                           # padded
    (lambda m: b"XX" + m[2:], "magic"),
    (lambda m: m[:2] + bytes([9]) + m[3:], "protocol version"),
    (lambda m: m[:3] + bytes([99]) + m[4:], "unknown binary message kind"),
    (lambda m: m[:-4] + np.float32(np.nan).tobytes(), "NaN"),
    (lambda m: m[:-4] + np.float32(1e9).tobytes(), "out of range"),
    (lambda m: m[:3], "shorter than"),
])
def test_malformed_keypoints_are_refused(mutate, match):
    good = P.pack_keypoints(1, 0, np.zeros((10, 2)), np.zeros((10, 2, 2)))
    with pytest.raises(P.ProtocolError, match=match):
        kind, _, payload = P.unpack(mutate(good))
        P.unpack_keypoints(payload, 10)


def test_wrong_keypoint_count_is_refused():
    message = P.pack_keypoints(1, 0, np.zeros((5, 2)), np.zeros((5, 2, 2)))
    with pytest.raises(P.ProtocolError):
        P.unpack_keypoints(P.unpack(message)[2], 10)


def test_png16_carries_floats_to_1e_4_and_png_is_lossless():
    rng = np.random.default_rng(1)
    frame = rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)
    back = P.decode_image(P.encode_image(frame, "png16"), float_output=True)
    assert np.abs(back - frame).max() <= 1e-4
    rgb = (frame * 255).astype(np.uint8)
    assert np.array_equal(P.decode_image(P.encode_image(rgb, "png")), rgb)
    jpeg = P.decode_image(P.encode_image(rgb, "jpeg", 95))
    assert jpeg.shape == rgb.shape and jpeg.dtype == np.uint8


def test_invalid_image_is_a_protocol_error():
    with pytest.raises(P.ProtocolError, match="not a readable image"):
        P.decode_image(b"definitely not a png")


def test_hello_validation():
    hello = P.Hello.parse(json.loads(P.Hello(token="t0ken-123", fmt="png16", quality=80).to_text()))
    assert (hello.token, hello.fmt, hello.quality) == ("t0ken-123", "png16", 80)
    for bad, match in [({"type": "frame"}, "first message"),
                       ({"type": "hello", "version": 99}, "protocol version"),
                       ({"type": "hello", "version": 1, "format": "gif"}, "unknown frame format"),
                       ({"type": "hello", "version": 1, "quality": 0}, "quality"),
                       ({"type": "hello", "version": 1, "token": 5}, "token")]:
        with pytest.raises(P.ProtocolError, match=match):
            P.Hello.parse(bad)
    with pytest.raises(P.ProtocolError, match="not JSON"):
        P.loads("{nope")
    with pytest.raises(P.ProtocolError, match="limit"):
        P.loads("x" * (P.MAX_TEXT_BYTES + 1))


def test_detector_blob_round_trip_without_pickle(deterministic_engine):
    detector = deterministic_engine.kp_detector
    blob = P.detector_blob(detector)
    assert b"\x80\x02" not in blob[:16]  # not a pickle stream
    state = P.blob_to_tensors(blob)
    reference = detector.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    assert P.digest(P.tensors_to_blob(state)) == P.digest(blob)
    with pytest.raises(ValueError, match="truncated"):
        P.blob_to_tensors(blob[:-10])


def test_loopback_detection():
    assert P.is_loopback("127.0.0.1") and P.is_loopback("::1") and P.is_loopback("localhost")
    assert not P.is_loopback("0.0.0.0") and not P.is_loopback("192.168.1.4") and not P.is_loopback("example.com")


def test_remote_engine_refuses_bad_urls():
    from remote.client import RemoteError, check_url

    assert check_url("wss://gpu.example:443") == "wss://gpu.example:443"
    for bad in ("http://x:1", "gpu:8765", "ws://"):
        with pytest.raises(RemoteError, match="expected ws://"):
            check_url(bad)
