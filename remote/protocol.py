"""The wire format between a live-avatar client and a render server: WebSocket messages, no pickle.

Text messages are JSON objects with a "type"; binary messages start with an 8-byte header

    magic b"LA" | protocol version u8 | kind u8 | id u32 (little-endian)

followed by a payload that depends on the kind:

    KEYPOINTS  client -> server  id = frame id; payload: avatar slot u16, K u16, receipt u32, K*2 float32 values,
                                 K*4 float32 jacobians (row-major 2x2) = 256 bytes in all for K=10 (fixed size per K)
    FRAME      server -> client  id = frame id; payload: batch size u16, server render ms float32, receipt u32,
                                 the motion (below), image bytes (JPEG, PNG or 16-bit PNG as asked in hello,
                                 image_size x image_size)
               motion: h u16, w u16 (0, 0: none sent), then the generator's deformation as h*w*2 int16 (x, y: its
                       offset from the identity grid in 1/MOTION_SCALE units, +-4 in grid_sample coordinates) and
                       its occlusion as h*w uint8 (0..255 for 0..1): 20 KB for vox's 64x64, what the client needs to
                       composite the frame into the avatar's photo (engines/composite.py)
    AVATAR     client -> server  id = avatar slot; payload: an encoded image (PNG/JPEG, at most MAX_AVATAR_BYTES)
    DETECTOR   server -> client  id = chunk index; payload: receipt u32, a slice of the detector weights blob

Conversation:
    client: {"type": "hello", "version": 2, "token": "...", "format": "jpeg"|"png"|"png16", "quality": 90}
    server: {"type": "welcome", ...server facts: image_size, num_kp, config_hash, weights_id, detector_digest,
             align_corners (the render options: a client whose run asks for others refuses the server)...}
            or {"type": "error", "code": "auth"|"version"|..., "message": "..."} and a close
    client: {"type": "get_detector"}  (optional, once per connection) -> {"type": "detector", "size", "chunks",
            "digest"} + chunks, each answered by {"type": "receipt", "receipt": r}
    client: AVATAR(slot) -> server: {"type": "avatar", "slot": n, "kp": {"value": [...], "jacobian": [...]}}
    client: KEYPOINTS(frame id, slot) ... -> server: FRAME(frame id) or {"type": "busy", "id": n} when the client
            has more than max_in_flight frames in flight on the server (the frame is dropped, not queued)
Any malformed message gets {"type": "error", ...} and the connection is closed (code 1008, 1009 for too big,
1013 try again later, 1011 for anything unexpected on the server).
A render that fails gets {"type": "error", "code": "render", "id": frame id, ...}; the connection stays.

Flow control: every FRAME and DETECTOR message carries a random receipt; the client echoes the receipt of the newest
one it has read (in each KEYPOINTS message, or {"type": "receipt", "receipt": r} while it reads detector chunks).
Only a peer that has read a message can know its receipt, so the server knows how many of the bytes it sent are
still unread and never lets that exceed MAX_UNREAD_BYTES per connection: the detector is sent as fast as the client
reads it, and a peer that asks for frames while not reading them is dropped.

The detector blob (weights without pickle): u32 header length | JSON header {"tensors": [[name, dtype, shape],
...]} | raw little-endian tensor bytes in header order. Its sha256 is the detector digest the server announces.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from engines.terminal_text import printable  # noqa: F401 - the shared sanitiser, P.printable to remote/

PROTOCOL_VERSION = 3  # 3: FRAME carries the deformation and occlusion
MAGIC = b"LA"
HEADER = struct.Struct("<2sBBI")
KIND_KEYPOINTS, KIND_FRAME, KIND_AVATAR, KIND_DETECTOR = 1, 2, 3, 4
KINDS = {KIND_KEYPOINTS: "keypoints", KIND_FRAME: "frame", KIND_AVATAR: "avatar", KIND_DETECTOR: "detector"}
KP_PREFIX = struct.Struct("<HHI")       # slot, K, receipt
FRAME_PREFIX = struct.Struct("<HfI")    # batch size, render ms, receipt
MOTION_PREFIX = struct.Struct("<HH")    # motion field height, width
RECEIPT = struct.Struct("<I")
MOTION_SCALE = 8192.0                   # deformation offsets: 1/8192 of a grid_sample unit = 0.016 px of 256
MAX_MOTION_SIDE = 256                   # vox sends 64x64

MAX_AVATAR_BYTES = 10 * 1024 * 1024
MAX_AVATAR_SIDE = 8192
MIN_AVATAR_SIDE = 16
MAX_AVATAR_DECODED_BYTES = 96 * 1024 * 1024  # decoded avatar (4096^2 RGB at 16 bits fits); refused from the header
MAX_UNREAD_BYTES = 8 * 1024 * 1024  # per connection: sent but not yet confirmed read (a few frames, 8 detector chunks)
MIN_JACOBIAN_DET = 1e-6            # |det| below this: the renderer's 2x2 inverse blows up (NaN frames)
MAX_TEXT_BYTES = 4096              # control messages are small; a long one is an attack or a bug
MAX_AVATARS = 16                   # avatar slots per connection (keys 1-9 need 9)
MAX_KEYPOINTS = 64
MAX_TOKEN_CHARS = 1024             # the shared secret (hello and token file)
MAX_TOKEN_FILE_BYTES = 4096        # a token file holds one line; anything larger is not one
DETECTOR_CHUNK_BYTES = 1 << 20
FORMATS = ("jpeg", "png", "png16")
DEFAULT_PORT = 8765

CLOSE_POLICY = 1008                # RFC 6455: policy violation (bad token, malformed message)
CLOSE_TOO_BIG = 1009


class ProtocolError(ValueError):
    """A malformed or disallowed message; the text is sent to the peer in one line."""

    def __init__(self, message: str, code: str = "malformed", close_code: int = CLOSE_POLICY):
        super().__init__(message)
        self.code = code
        self.close_code = close_code


# --- binary messages --------------------------------------------------------------------------------------------
def pack(kind: int, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, ident & 0xFFFFFFFF) + payload


def unpack(message: bytes) -> tuple[int, int, memoryview]:
    """(kind, id, payload) of a binary message; ProtocolError when the header is wrong."""
    if len(message) < HEADER.size:
        raise ProtocolError(f"binary message of {len(message)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, ident = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError("binary message without the live-avatar magic bytes")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}", code="version")
    if kind not in KINDS:
        raise ProtocolError(f"unknown binary message kind {kind}")
    return kind, ident, memoryview(message)[HEADER.size:]


def keypoints_size(num_kp: int) -> int:
    return HEADER.size + KP_PREFIX.size + num_kp * 6 * 4


def pack_keypoints(frame_id: int, slot: int, value: np.ndarray, jacobian: np.ndarray, receipt: int = 0) -> bytes:
    """value [K,2] (or [1,K,2]), jacobian [K,2,2] (or [1,K,2,2]) -> a KEYPOINTS message; receipt: that of the
    newest FRAME or DETECTOR message read (0 before any)."""
    value = np.asarray(value, dtype="<f4").reshape(-1, 2)
    num_kp = value.shape[0]
    jacobian = np.asarray(jacobian, dtype="<f4").reshape(num_kp, 2, 2)
    return pack(KIND_KEYPOINTS, frame_id, KP_PREFIX.pack(slot, num_kp, receipt) + value.tobytes()
                + jacobian.tobytes())


def unpack_keypoints(payload: memoryview, num_kp: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """(slot, value [1,K,2], jacobian [1,K,2,2], receipt) float32; ProtocolError unless exactly K finite keypoints
    with invertible jacobians."""
    expected = keypoints_size(num_kp) - HEADER.size
    if len(payload) != expected:
        raise ProtocolError(f"keypoints message of {len(payload)} payload bytes, expected {expected} "
                            f"({num_kp} keypoints)", close_code=CLOSE_TOO_BIG if len(payload) > expected
                            else CLOSE_POLICY)
    slot, count, receipt = KP_PREFIX.unpack_from(payload)
    if count != num_kp:
        raise ProtocolError(f"{count} keypoints sent, the server's model has {num_kp}")
    data = np.frombuffer(payload, dtype="<f4", offset=KP_PREFIX.size)
    if not np.all(np.isfinite(data)):
        raise ProtocolError("keypoints contain NaN or infinity")
    if np.abs(data).max(initial=0.0) > 1e3:
        raise ProtocolError("keypoint values out of range (|x| > 1000)")
    value = data[:num_kp * 2].reshape(1, num_kp, 2).astype(np.float32)
    jacobian = data[num_kp * 2:].reshape(1, num_kp, 2, 2).astype(np.float32)
    det = (jacobian[..., 0, 0].astype(np.float64) * jacobian[..., 1, 1]
           - jacobian[..., 0, 1].astype(np.float64) * jacobian[..., 1, 0])
    if np.abs(det).min() < MIN_JACOBIAN_DET:
        raise ProtocolError(f"singular keypoint jacobian (|det| = {np.abs(det).min():.2g} < {MIN_JACOBIAN_DET:g})")
    return slot, value, jacobian, receipt


def _identity_grid(height: int, width: int) -> np.ndarray:
    """[h, w, 2] float32 (x, y): the deformation of "nothing moves" (engines/protocol.py identity_motion)."""
    y, x = np.meshgrid(np.linspace(-1.0, 1.0, height, dtype=np.float32),
                       np.linspace(-1.0, 1.0, width, dtype=np.float32), indexing="ij")
    return np.stack([x, y], axis=-1)


def pack_motion(deformation: np.ndarray | None, occlusion: np.ndarray | None) -> bytes:
    """The motion part of a FRAME: deformation [h,w,2] (or [1,h,w,2]) and occlusion [h,w] (or [1,1,h,w]), both
    finite; None for none."""
    if deformation is None or occlusion is None:
        return MOTION_PREFIX.pack(0, 0)
    deformation = np.asarray(deformation, dtype=np.float32)
    height, width = deformation.shape[-3:-1]
    if not (1 <= height <= MAX_MOTION_SIDE and 1 <= width <= MAX_MOTION_SIDE):
        raise ValueError(f"a {height}x{width} motion field cannot be sent")
    offset = (deformation.reshape(height, width, 2) - _identity_grid(height, width)) * MOTION_SCALE
    quantized = np.clip(np.rint(offset), -32767, 32767).astype("<i2")
    occlusion = np.asarray(occlusion, dtype=np.float32).reshape(height, width)
    levels = np.clip(np.rint(occlusion * 255.0), 0, 255).astype(np.uint8)
    return MOTION_PREFIX.pack(height, width) + quantized.tobytes() + levels.tobytes()


def unpack_motion(payload: memoryview, offset: int = 0):
    """((deformation [h,w,2], occlusion [h,w]) float32 or None when none was sent, offset after it);
    ProtocolError for a field size out of range or a payload too short for it. Every value is in range by
    construction (int16 offsets, uint8 levels)."""
    if len(payload) < offset + MOTION_PREFIX.size:
        raise ProtocolError("frame message too short for its motion")
    height, width = MOTION_PREFIX.unpack_from(payload, offset)
    offset += MOTION_PREFIX.size
    if (height, width) == (0, 0):
        return None, offset
    if not (1 <= height <= MAX_MOTION_SIDE and 1 <= width <= MAX_MOTION_SIDE):
        raise ProtocolError(f"frame with a {height}x{width} motion field (1..{MAX_MOTION_SIDE} per side)")
    count = height * width
    if len(payload) < offset + count * 5:
        raise ProtocolError(f"frame message too short for its {height}x{width} motion field")
    quantized = np.frombuffer(payload, dtype="<i2", count=count * 2, offset=offset).reshape(height, width, 2)
    levels = np.frombuffer(payload, dtype=np.uint8, count=count, offset=offset + count * 4).reshape(height, width)
    deformation = quantized.astype(np.float32) / MOTION_SCALE + _identity_grid(height, width)
    return (deformation, levels.astype(np.float32) / 255.0), offset + count * 5


def pack_frame(frame_id: int, image: bytes, batch_size: int, render_ms: float, receipt: int = 0,
               motion: tuple | None = None) -> bytes:
    """A FRAME message; `motion` = (deformation, occlusion) of the frame (None: none, the client assumes rest)."""
    return pack(KIND_FRAME, frame_id, FRAME_PREFIX.pack(min(batch_size, 0xFFFF), render_ms, receipt)
                + pack_motion(*(motion or (None, None))) + image)


def unpack_frame(payload: memoryview) -> tuple[int, float, int, bytes, tuple | None]:
    """(batch size, server render ms, receipt, image bytes, (deformation [h,w,2], occlusion [h,w]) or None)."""
    if len(payload) < FRAME_PREFIX.size:
        raise ProtocolError("frame message too short")
    batch, render_ms, receipt = FRAME_PREFIX.unpack_from(payload)
    motion, offset = unpack_motion(payload, FRAME_PREFIX.size)
    return batch, render_ms, receipt, bytes(payload[offset:]), motion


def pack_detector_chunk(index: int, chunk: bytes, receipt: int) -> bytes:
    return pack(KIND_DETECTOR, index, RECEIPT.pack(receipt) + chunk)


def unpack_detector_chunk(payload: memoryview) -> tuple[int, bytes]:
    """(receipt, slice of the blob)."""
    if len(payload) < RECEIPT.size:
        raise ProtocolError("detector message too short")
    return RECEIPT.unpack_from(payload)[0], bytes(payload[RECEIPT.size:])


# --- images -----------------------------------------------------------------------------------------------------
def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """uint8 HxWx3 RGB (or float in [0,1] for png16) -> JPEG / PNG / 16-bit PNG bytes."""
    import cv2

    if fmt == "png16":
        array = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
        bgr = (array[..., ::-1] * 65535.0 + 0.5).astype(np.uint16)
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt == "png":
        ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt == "jpeg":
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not ok:
        raise ValueError(f"could not encode a {fmt} image")
    return data.tobytes()


def decode_image(data: bytes, *, float_output: bool = False, **budget) -> np.ndarray:
    """Encoded PNG or JPEG -> RGB: uint8 HxWx3, or float32 in [0,1] (exact for 16-bit PNG) when float_output.
    The header is checked against `budget` (engines.image_header.check_header: max_side, min_side,
    max_decoded_bytes, ...) before anything is decoded; ProtocolError("bad-image") when it fails."""
    import cv2

    from engines.image_header import ImageRejected, decode_checked

    budget.setdefault("formats", ("png", "jpeg"))
    try:
        array, _ = decode_checked(np.frombuffer(data, dtype=np.uint8), **budget)
    except ImageRejected as exc:
        raise ProtocolError(f"not a readable image (PNG or JPEG expected): {exc}", code="bad-image") from None
    if array.ndim not in (2, 3):
        raise ProtocolError("not a readable image (PNG or JPEG expected)", code="bad-image")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[..., :3]  # transparency is dropped: the avatar is shown on its own background
    if array.shape[2] != 3:
        raise ProtocolError(f"image with {array.shape[2]} channels", code="bad-image")
    rgb = np.ascontiguousarray(array[..., ::-1])
    scale = 65535.0 if rgb.dtype == np.uint16 else 255.0
    if float_output:
        return rgb.astype(np.float32) / scale
    # 16 -> 8 bits without float temporaries (a big 16-bit avatar would need several times its size)
    return rgb if rgb.dtype == np.uint8 else cv2.convertScaleAbs(rgb, alpha=255.0 / 65535.0)


# --- text messages ----------------------------------------------------------------------------------------------
def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> dict:
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(f"control message of {len(text)} characters (limit {MAX_TEXT_BYTES})",
                            close_code=CLOSE_TOO_BIG)
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: a few thousand nested brackets
        raise ProtocolError("control message is not JSON (or nested too deeply)") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('control message must be a JSON object with a "type"')
    return message


def error_message(text: str, code: str = "malformed", **extra) -> str:
    return dumps({"type": "error", "code": code, "message": text, **extra})


@dataclass(frozen=True)
class Hello:
    token: str = ""
    fmt: str = "jpeg"
    quality: int = 90

    def to_text(self) -> str:
        return dumps({"type": "hello", "version": PROTOCOL_VERSION, "token": self.token, "format": self.fmt,
                      "quality": self.quality})

    @classmethod
    def parse(cls, message: dict) -> "Hello":
        if message.get("type") != "hello":
            raise ProtocolError('the first message must be {"type": "hello", ...}')
        if message.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(f"client speaks protocol version {message.get('version')!r}, the server "
                                f"{PROTOCOL_VERSION}: update the older side", code="version")
        token, fmt, quality = message.get("token", ""), message.get("format", "jpeg"), message.get("quality", 90)
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise ProtocolError("token must be a string", code="auth")
        try:
            token.encode("utf-8")  # a lone surrogate (JSON "\\ud800") parses, but is no UTF-8 text
        except UnicodeEncodeError:
            raise ProtocolError("token is not valid UTF-8 text", code="auth") from None
        if fmt not in FORMATS:
            raise ProtocolError(f"unknown frame format {fmt!r}; one of {', '.join(FORMATS)}")
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
            raise ProtocolError("quality must be an integer 1..100")
        return cls(token=token, fmt=fmt, quality=quality)


# What the client needs from the welcome, with the type each field must have (the server may send more)
WELCOME_FIELDS = {"version": int, "engine": str, "device": str, "image_size": int, "num_kp": int,
                  "config_hash": str, "weights_id": str, "detector_digest": str, "detector_bytes": int}
MAX_DETECTOR_BYTES = 256 * 1024 * 1024  # the vox detector is ~57 MB
# Options the welcome states that change the rendered pixels, with the value a server renders when it does not say:
# the client refuses a server whose options differ from its own run's (remote/client.py)
RENDER_OPTIONS = {"align_corners": True}


def render_option(welcome: dict, name: str):
    """A render option of the server's welcome (its default where the welcome does not say)."""
    return welcome.get(name, RENDER_OPTIONS[name])


def parse_welcome(message: dict) -> dict:
    """The server's welcome with every field the client uses checked (type, range); ProtocolError naming the first
    field that is missing or wrong. Texts the client prints are made printable."""
    for name, kind in WELCOME_FIELDS.items():
        value = message.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError(f"welcome without a valid {name!r} ({kind.__name__} expected)")
    if message["version"] != PROTOCOL_VERSION:
        raise ProtocolError(f"server speaks protocol version {message['version']}, this client "
                            f"{PROTOCOL_VERSION}: update the older side", code="version")
    if not 16 <= message["image_size"] <= 2048 or not 1 <= message["num_kp"] <= MAX_KEYPOINTS:
        raise ProtocolError(f"welcome with an impossible model ({message['image_size']} px, "
                            f"{message['num_kp']} keypoints)")
    if not re.fullmatch(r"[0-9a-f]{64}", message["detector_digest"]):
        raise ProtocolError("welcome with a detector digest that is no sha256")
    if not 0 < message["detector_bytes"] <= MAX_DETECTOR_BYTES:
        raise ProtocolError(f"welcome announcing {message['detector_bytes']:,} bytes of detector weights")
    # the render options that change pixels; a welcome without one is of a server that renders the default
    for name, default in RENDER_OPTIONS.items():
        if name in message and not isinstance(message[name], bool):
            raise ProtocolError(f"welcome without a valid {name!r} (bool expected)")
    welcome = {**RENDER_OPTIONS, **message}
    for name in ("engine", "device", "config_hash", "weights_id"):
        welcome[name] = printable(message[name], 120)
    for name, limit in (("precision", 16), ("summary", 300)):  # optional: what the server's engine report says
        if name in message:
            welcome[name] = printable(message[name], limit) if isinstance(message[name], str) else "?"
    return welcome


# --- detector weights without pickle ----------------------------------------------------------------------------
_DTYPES = {"float32": np.float32, "int64": np.int64}


def tensors_to_blob(state: dict) -> bytes:
    """{name: tensor} -> the detector blob (sorted names, little-endian raw bytes)."""
    header, parts = [], []
    for name in sorted(state):
        array = state[name].detach().cpu().contiguous().numpy()
        dtype = str(array.dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {dtype} cannot be sent")
        header.append([name, dtype, list(array.shape)])
        parts.append(array.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
    head = json.dumps({"tensors": header}, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + b"".join(parts)


def blob_to_tensors(blob: bytes) -> dict:
    """Inverse of tensors_to_blob; ValueError for a truncated or inconsistent blob."""
    import torch

    if len(blob) < 4:
        raise ValueError("detector weights blob is truncated")
    (length,) = struct.unpack_from("<I", blob)
    try:
        header = json.loads(blob[4:4 + length])["tensors"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("detector weights blob has an unreadable header") from None
    offset, state = 4 + length, {}
    for name, dtype, shape in header:
        if dtype not in _DTYPES:
            raise ValueError(f"detector weights blob: unknown dtype {dtype}")
        count = int(math.prod(shape))
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(blob):
            raise ValueError("detector weights blob is truncated")
        array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)
        state[name] = torch.from_numpy(array.astype(_DTYPES[dtype]).reshape(shape))
        offset += size
    if offset != len(blob):
        raise ValueError("detector weights blob has trailing bytes")
    return state


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def detector_blob(kp_detector) -> bytes:
    """The blob of a KeypointDetector's weights: what the server sends and what a client with its own checkpoint
    hashes to compare with the server's digest."""
    return tensors_to_blob(kp_detector.state_dict())


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path) -> str:
    """The shared secret from a token file (one line, stripped); ValueError with a one-line reason. Server and
    client read the same file, so they read it the same way: through engines/files.py (a regular file of at most
    MAX_TOKEN_FILE_BYTES, opened without blocking - a FIFO or /dev/zero given as the file is refused at once)."""
    from engines.files import FileMissing, FileRefused, read_bounded

    try:
        data = read_bounded(path, MAX_TOKEN_FILE_BYTES, what="token file")
    except FileMissing:
        raise ValueError(f"{path}: token file not found") from None
    except FileRefused as exc:
        raise ValueError(str(exc)) from None
    try:
        token = data.decode("utf-8-sig").strip()  # a byte-order mark (Windows Notepad) is not part of it
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token file is not UTF-8 text") from None
    if not token:
        raise ValueError(f"{path}: token file is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"{path}: the token has {len(token)} characters, more than the {MAX_TOKEN_CHARS} a server "
                         "accepts")
    if not token.isprintable():
        raise ValueError(f"{path}: the token file holds more than one line or control characters (a token is one "
                         "line of text, e.g. from `openssl rand -hex 16`)")
    return token
