"""The remote wire format (remote/protocol.py) on its own: no server, no Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from remote import protocol as P
from tests.test_image_header import jpeg_with_a_hidden_frame, png_declaring


def test_keypoints_round_trip_and_size():
    rng = np.random.default_rng(0)
    value = rng.uniform(-1, 1, (1, 10, 2)).astype(np.float32)
    jacobian = rng.normal(size=(1, 10, 2, 2)).astype(np.float32)
    message = P.pack_keypoints(7, 3, value, jacobian, receipt=0xDEADBEEF)
    assert len(message) == P.keypoints_size(10) == 256  # "~250 bytes" per frame
    kind, ident, payload = P.unpack(message)
    assert (kind, ident) == (P.KIND_KEYPOINTS, 7)
    slot, v, j, receipt = P.unpack_keypoints(payload, 10)
    assert slot == 3 and np.array_equal(v, value) and np.array_equal(j, jacobian) and receipt == 0xDEADBEEF


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
    good = P.pack_keypoints(1, 0, np.zeros((10, 2)), np.tile(np.eye(2), (10, 1, 1)))
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
    v = P.PROTOCOL_VERSION
    for bad, match in [({"type": "frame"}, "first message"),
                       ({"type": "hello", "version": 99}, "protocol version"),
                       ({"type": "hello", "version": v, "format": "gif"}, "unknown frame format"),
                       ({"type": "hello", "version": v, "quality": 0}, "quality"),
                       ({"type": "hello", "version": v, "token": 5}, "token")]:
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


# --- hostile input -------------------------------------------------------------------------------------------------
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_singular_jacobians_are_refused():
    jacobian = np.tile(np.eye(2), (10, 1, 1))
    jacobian[3] = [[1.0, 2.0], [0.5, 1.0]]  # det 0: the renderer's 2x2 inverse would give NaN frames
    with pytest.raises(P.ProtocolError, match="singular"):
        P.unpack_keypoints(P.unpack(P.pack_keypoints(1, 0, np.zeros((10, 2)), jacobian))[2], 10)
    with pytest.raises(P.ProtocolError, match="singular"):
        P.unpack_keypoints(P.unpack(P.pack_keypoints(1, 0, np.zeros((10, 2)), np.zeros((10, 2, 2))))[2], 10)


@pytest.mark.parametrize("text", [
    "[" * 2040 + "]" * 2040,                                    # RecursionError in json, within 4 KB
    '{"type": ' + "[" * 2000 + "]" * 2000 + "}",
])
def test_deeply_nested_json_is_a_protocol_error(text):
    with pytest.raises(P.ProtocolError, match="not JSON"):
        P.loads(text)


def test_lone_surrogate_token_is_refused_as_auth():
    message = P.loads('{"type": "hello", "version": %d, "token": "\\ud800"}' % P.PROTOCOL_VERSION)
    with pytest.raises(P.ProtocolError) as error:
        P.Hello.parse(message)
    assert error.value.code == "auth"


AVATAR_BUDGET = dict(min_side=P.MIN_AVATAR_SIDE, max_side=P.MAX_AVATAR_SIDE,
                     max_decoded_bytes=P.MAX_AVATAR_DECODED_BYTES)


@pytest.mark.parametrize("make, match", [
    (lambda: png_declaring(20000, 20000), "too large"),                     # 20000^2 RGB: 1.2 GB decoded
    (lambda: png_declaring(6000, 6000, depth=16), "MiB decoded"),           # 16 bit, sides allowed: 206 MiB
    (lambda: png_declaring(8, 8), "too small"),
    (lambda: b"", "empty"),
    (lambda: b"v/1\x01" + b"\0" * 64, "not a PNG"),                         # OpenEXR magic
    (lambda: __import__("cv2").imencode(".bmp", np.zeros((32, 32, 3), np.uint8))[1].tobytes(),
     "not accepted"),                                                       # a BMP: PNG/JPEG only on the wire
])
def test_avatar_bombs_and_foreign_formats_are_refused_from_the_header(make, match):
    data = make()
    assert len(data) < 1_000_000
    before, start = _rss(), __import__("time").perf_counter()
    with pytest.raises(P.ProtocolError, match=match) as error:
        P.decode_image(data, **AVATAR_BUDGET)
    assert error.value.code == "bad-image"
    assert __import__("time").perf_counter() - start < 0.5
    assert _rss() - before < 20 * 2**20   # nothing was decoded


def test_16_bit_avatar_is_converted_without_float_copies():
    rng = np.random.default_rng(3)
    big = rng.integers(0, 65536, (1024, 1024, 3), dtype=np.uint16)
    import cv2

    ok, data = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    rgb = P.decode_image(data.tobytes(), **AVATAR_BUDGET)
    assert rgb.dtype == np.uint8 and rgb.shape == (1024, 1024, 3)
    expected = np.round(big[..., ::-1] / 257.0)
    assert np.abs(rgb.astype(np.float64) - expected).max() <= 1


def test_frames_are_checked_against_the_agreed_size_before_decoding():
    frame = P.encode_image(np.zeros((256, 256, 3), np.uint8), "jpeg")
    assert P.decode_image(frame, float_output=True, min_side=256, max_side=256, formats=("jpeg",)).shape == \
        (256, 256, 3)
    for data, fmt, match in [(png_declaring(12000, 12000), "png", "too large"),   # 0.4 KB, 1.6 GB as float
                             (P.encode_image(np.zeros((128, 128, 3), np.uint8), "jpeg"), "jpeg", "too small"),
                             (P.encode_image(np.zeros((256, 256, 3), np.uint8), "png"), "jpeg", "not accepted"),
                             (b"GIF89a" + b"\0" * 30, "jpeg", "not a PNG")]:
        before = _rss()
        with pytest.raises(P.ProtocolError, match=match):
            P.decode_image(data, float_output=True, min_side=256, max_side=256, formats=(fmt,))
        assert _rss() - before < 20 * 2**20


def test_an_uploaded_avatar_hiding_its_real_size_is_refused_before_decoding(monkeypatch):
    """A 654-byte JPEG whose walkable frame header says 16x16 while libjpeg decodes a 20000x20000 one cost the
    server +790 MB; it is refused from its markers now, before OpenCV sees it."""
    import cv2
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a refused upload"))
    with pytest.raises(P.ProtocolError, match="marker 0x00") as info:
        P.decode_image(jpeg_with_a_hidden_frame(20000), **AVATAR_BUDGET)
    assert info.value.code == "bad-image"


def test_printable_strips_escapes_and_control_characters_and_cuts():
    hostile = "\x1b[2J\x1b[31mred\x1b[0m\x07 bell\r\nnew line\x1b]0;title\x07 " + "x" * 3000
    text = P.printable(hostile)
    assert len(text) <= 200 and text.startswith("red bell new line")
    assert all(c.isprintable() for c in text) and "\x1b" not in text and text.endswith("...")
    assert P.printable(None) == "None" and P.printable("fine") == "fine"


def _welcome(**changes) -> dict:
    welcome = {"type": "welcome", "version": P.PROTOCOL_VERSION, "engine": "cpu-fp32", "device": "cpu",
               "image_size": 256, "num_kp": 10, "config_hash": "abc", "weights_id": "w", "detector_digest": "0" * 64,
               "detector_bytes": 57_000_000}
    welcome.update(changes)
    return {k: v for k, v in welcome.items() if v is not ...}


def test_welcome_fields_are_type_checked():
    assert P.parse_welcome(_welcome(engine="\x1b[31mcpu"))["engine"] == "cpu"
    for changes, match in [(dict(image_size=...), "image_size"), (dict(image_size="256"), "image_size"),
                           (dict(num_kp=True), "num_kp"), (dict(detector_digest=None), "detector_digest"),
                           (dict(detector_digest="zz"), "sha256"), (dict(image_size=10**9), "impossible"),
                           (dict(detector_bytes=10**12), "detector weights"), (dict(version=1), "version"),
                           (dict(engine=["x"]), "engine")]:
        with pytest.raises(P.ProtocolError, match=match):
            P.parse_welcome(_welcome(**changes))


# --- token files: read through engines/files.py, never blocking, never unbounded -------------------------------
def _in_time(function, seconds=5.0):
    """function()'s result or exception, or a failure when it is still running after `seconds` (a hang)."""
    import threading
    outcome = []

    def run():
        try:
            outcome.append(("value", function()))
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(("error", exc))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    return outcome[0]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX only")
def test_a_fifo_as_token_file_is_refused_at_once(tmp_path):
    import os
    fifo = tmp_path / "token"
    os.mkfifo(fifo)  # opening it for reading used to wait for a writer forever
    kind, value = _in_time(lambda: P.read_token(fifo))
    assert kind == "error" and isinstance(value, ValueError) and "not a regular file (a FIFO)" in str(value)


@pytest.mark.skipif(not __import__("os").path.exists("/dev/zero"), reason="no /dev/zero here")
def test_an_endless_device_as_token_file_is_refused_without_reading(tmp_path):
    link = tmp_path / "token"
    link.symlink_to("/dev/zero")  # read_text() used to grow by ~1 GB a second
    kind, value = _in_time(lambda: P.read_token(link))
    assert kind == "error" and "character device" in str(value)


@pytest.mark.parametrize("content, match", [
    (b"x" * (P.MAX_TOKEN_FILE_BYTES + 1), "more than the 4,096"),
    (b"a" * (P.MAX_TOKEN_CHARS + 1) + b"\n", "more than the 1024"),
    (b"first-line\nsecond-line\n", "more than one line"),
    (b"tab\tinside", "control characters"),
    (b"\xff\xfe\x00t", "not UTF-8"),
    (b" \n\t\n", "empty"),
])
def test_token_files_that_cannot_be_a_token_are_one_line(tmp_path, content, match):
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        P.read_token(path)
    assert "\n" not in str(info.value)


def test_a_token_saved_with_a_byte_order_mark_is_the_token(tmp_path):
    path = tmp_path / "token"
    path.write_bytes("\ufeffcorrect-horse-battery\r\n".encode("utf-8"))
    assert P.read_token(path) == "correct-horse-battery"


# --- the frame's motion: the deformation and occlusion the client composites with ---------------------------------
def test_a_frames_motion_round_trips_within_its_quantization():
    from engines.protocol import identity_motion
    identity, _ = identity_motion(1)
    generator = torch.Generator().manual_seed(0)
    deformation = (identity + 0.3 * torch.randn(1, 64, 64, 2, generator=generator))[0].numpy()
    occlusion = torch.rand(64, 64, generator=generator).numpy()
    message = P.pack_frame(5, b"jpeg bytes", 2, 12.5, 99, (deformation, occlusion))
    kind, ident, payload = P.unpack(message)
    batch, render_ms, receipt, image, (got_deformation, got_occlusion) = P.unpack_frame(payload)
    assert (kind, ident, batch, render_ms, receipt, image) == (P.KIND_FRAME, 5, 2, 12.5, 99, b"jpeg bytes")
    assert np.abs(got_deformation - deformation).max() <= 0.5 / P.MOTION_SCALE + 1e-6
    assert np.abs(got_occlusion - occlusion).max() <= 0.5 / 255 + 1e-6
    assert len(message) - len(P.pack_frame(5, b"jpeg bytes", 2, 12.5, 99)) == 64 * 64 * 5  # 20 KB for vox
    # beyond +-4 the offsets are clipped (a field that far out samples the border anyway), never wrapped
    far = identity[0].numpy() + 100.0
    got, _ = P.unpack_frame(P.unpack(P.pack_frame(1, b"x", 1, 1.0, 1, (far, occlusion)))[2])[4]
    assert np.all(got > identity[0].numpy() + 3.9) and np.all(got < identity[0].numpy() + 4.0)


def test_a_frame_without_motion_says_none():
    assert P.unpack_frame(P.unpack(P.pack_frame(1, b"img", 1, 1.0, 1))[2])[3:] == (b"img", None)


@pytest.mark.parametrize("motion, match", [
    (b"\x00\x00\x40\x00", "0x64 motion field"),                 # one side empty
    (b"\x01\x01\x01\x01", "257x257 motion field"),              # larger than any model's field
    (b"\x40\x00\x40\x00" + b"\x00" * 100, "too short"),         # 64 x 64 declared, 100 bytes sent
    (b"\x40", "too short"),                                     # half a header
])
def test_a_malformed_motion_is_a_protocol_error(motion, match):
    payload = P.FRAME_PREFIX.pack(1, 1.0, 1) + motion
    with pytest.raises(P.ProtocolError, match=match):
        P.unpack_frame(memoryview(payload))
