"""Image headers read before decoding: an image is refused for its declared size, never after the memory is spent.

A 0.4 MB PNG can declare 20000x20000 pixels (1.2 GB once decoded, more at 16 bits per sample), so every image that
comes from outside (avatar files, avatars uploaded to the render server, frames the server sends back) goes through
`decode_checked`: the header's width, height, channels and sample depth are read from the bytes themselves, checked
against a budget, and only then handed to OpenCV, once.

Formats: PNG, JPEG, BMP, WebP and TIFF (the ones the avatar loader accepts). Anything else, or a header that is cut
short, is refused with one line: OpenCV would otherwise guess the format itself (EXR, PFM, HDR, ...) and decode
what it finds.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAX_PIXELS = 64 * 1024 * 1024          # ~67 MP: above every phone camera's full-resolution photo
MAX_DECODED_BYTES = 256 * 1024 * 1024  # what one decoded image may cost: 8-bit RGB to the pixel limit, 16-bit to ~44 MP


class ImageRejected(ValueError):
    """The image is not a supported format, is truncated, or declares more than the budget allows (one line)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str              # png | jpeg | bmp | webp | tiff
    width: int
    height: int
    channels: int            # samples per pixel as stored (1 gray, 2 gray+alpha, 3 colour, 4 with alpha)
    bytes_per_sample: int    # 1 for 8 bit and below, 2 for 16 bit, 4 for 32-bit samples

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """What OpenCV's decoded array will hold (at least 3 channels: colour decoding expands gray)."""
        return self.pixels * max(3, self.channels) * self.bytes_per_sample


# --- per-format header readers --------------------------------------------------------------------------------
def _png(data: bytes) -> ImageHeader:
    # signature, then the IHDR chunk: length, "IHDR", width, height, bit depth, colour type
    if len(data) < 29 or data[12:16] != b"IHDR":
        raise ImageRejected("truncated PNG header")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        raise ImageRejected(f"PNG with an invalid colour type {colour} / bit depth {depth}")
    if colour == 3:
        channels = 4  # palette images may carry transparency (tRNS): OpenCV then decodes 4 channels
    return ImageHeader("png", width, height, channels, 2 if depth == 16 else 1)


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4), JPG (C8), DAC (CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageHeader:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageRejected("corrupt JPEG: marker expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise ImageRejected("corrupt JPEG: bad segment length")
        if marker in _SOF:
            if i + 10 > len(data):
                break
            precision, height, width, components = struct.unpack(">BHHB", data[i + 4:i + 10])
            if width == 0 or height == 0:
                # height 0 means "defined later by a DNL marker": refuse rather than trust the decoder
                raise ImageRejected("JPEG without a declared size")
            return ImageHeader("jpeg", width, height, components, 2 if precision > 8 else 1)
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + length
    raise ImageRejected("truncated JPEG header (no frame size found)")


def _bmp(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise ImageRejected("truncated BMP header")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = struct.unpack("<HhHH", data[18:26])
    else:
        width, height, _, bits = struct.unpack("<iiHH", data[18:30])
    if width <= 0 or bits not in (1, 4, 8, 16, 24, 32):
        raise ImageRejected(f"BMP with an invalid size or depth ({width} wide, {bits} bits)")
    return ImageHeader("bmp", width, abs(height), 4 if bits == 32 else 3, 1)


def _webp(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise ImageRejected("truncated WebP header")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 / height-1
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return ImageHeader("webp", width, height, 4, 1)
    if chunk == b"VP8L":  # lossless: 14-bit width-1, 14-bit height-1 after the 0x2f signature
        if data[20] != 0x2F:
            raise ImageRejected("corrupt lossless WebP header")
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), 4, 1)
    if chunk == b"VP8 ":  # lossy: frame tag, start code 9d 01 2a, 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageRejected("corrupt lossy WebP header")
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 3, 1)
    raise ImageRejected("unknown WebP chunk")


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def _tiff(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise ImageRejected("truncated TIFF header")
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        raise ImageRejected("truncated TIFF header")
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    tags = {}
    for k in range(count):
        entry = offset + 2 + 12 * k
        if entry + 12 > len(data):
            raise ImageRejected("truncated TIFF directory")
        tag, kind, n = struct.unpack(order + "HHI", data[entry:entry + 8])
        if kind in _TIFF_TYPES and n >= 1:
            code, size = _TIFF_TYPES[kind]
            # one value fits in the entry; several (BitsPerSample per channel) lie at an offset: the first is enough
            where = entry + 8 if n * size <= 4 else struct.unpack(order + "I", data[entry + 8:entry + 12])[0]
            if where + size > len(data):
                raise ImageRejected("truncated TIFF directory")
            tags[tag] = struct.unpack(order + code, data[where:where + size])[0]
    if 256 not in tags or 257 not in tags:
        raise ImageRejected("TIFF without a declared size")
    bits = tags.get(258, 1)
    return ImageHeader("tiff", tags[256], tags[257], tags.get(277, 1), max(1, (bits + 7) // 8))


def read_header(data: bytes) -> ImageHeader:
    """The declared size of an encoded image, from its first bytes; ImageRejected for anything unsupported."""
    data = bytes(data[:1 << 20])  # every header above lies near the start (JPEG: after EXIF, at most ~64 KB each)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if not data:
        raise ImageRejected("empty file")
    raise ImageRejected("not a PNG, JPEG, BMP, WebP or TIFF image")


def check_header(data: bytes, *, max_pixels: int = MAX_PIXELS, max_decoded_bytes: int = MAX_DECODED_BYTES,
                 min_side: int = 1, max_side: int | None = None, formats=None) -> ImageHeader:
    """read_header, then the budget: ImageRejected with the declared figures when it is exceeded."""
    header = read_header(data)
    if formats is not None and header.format not in formats:
        raise ImageRejected(f"{header.format.upper()} images are not accepted here ({', '.join(formats)} only)")
    w, h = header.width, header.height
    if min(w, h) < min_side:
        raise ImageRejected(f"image of {w}x{h} pixels is too small (at least {min_side} per side)")
    if max_side is not None and max(w, h) > max_side:
        raise ImageRejected(f"image of {w}x{h} pixels is too large (at most {max_side} per side)")
    if header.pixels > max_pixels:
        raise ImageRejected(f"image declares {w}x{h} pixels ({header.pixels / 1e6:.0f} MP), above the limit of "
                            f"{max_pixels / 1e6:.0f} MP")
    if header.decoded_bytes > max_decoded_bytes:
        raise ImageRejected(f"image of {w}x{h} pixels at {8 * header.bytes_per_sample} bits would take "
                            f"{header.decoded_bytes / 2**20:.0f} MiB decoded (limit {max_decoded_bytes / 2**20:.0f} MiB)")
    return header


def decode_checked(data, flags: int | None = None, **budget) -> tuple[np.ndarray, ImageHeader]:
    """(decoded array, header) of an encoded image whose header passed `check_header(**budget)`; the decode runs
    once. ImageRejected when the header fails or OpenCV cannot decode the bytes, or decodes another size."""
    import cv2

    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    header = check_header(raw[:1 << 20].tobytes(), **budget)
    try:
        image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED if flags is None else flags)
    except cv2.error as error:
        raise ImageRejected(f"corrupt {header.format.upper()} image ({str(error).strip().splitlines()[-1]})") from None
    if image is None or image.size == 0:
        raise ImageRejected(f"corrupt or truncated {header.format.upper()} image")
    # EXIF rotation (IMREAD_COLOR) may swap the sides; anything else means the header lied
    if sorted(image.shape[:2]) != sorted((header.height, header.width)):
        raise ImageRejected(f"{header.format.upper()} image decoded to {image.shape[1]}x{image.shape[0]}, not the "
                            f"declared {header.width}x{header.height}")
    return image, header
