"""Image headers read before decoding: an image is refused for its declared size, never after the memory is spent.

A 0.4 MB PNG can declare 20000x20000 pixels (1.2 GB once decoded, more at 16 bits per sample), so every image that
comes from outside (avatar files, driving image folders, avatars uploaded to the render server, frames the server
sends back) goes through `decode_checked` (or `read_image_file` for a file): the header's width, height, channels,
sample depth and the decoder's working buffers are read from the bytes themselves, checked against a budget, and
only then handed to OpenCV, once.

A budget is only as good as the agreement between this reader and the decoder, so the readers take the same field
the decoder takes and refuse whatever the two could read differently:
- JPEG: markers are walked the way libjpeg walks them up to the frame header, and bytes libjpeg would skip as
  garbage (where another frame header could hide), unknown or misplaced markers are refused;
- TIFF: a tag given twice or out of order is refused (libtiff keeps the first, a naive reader the last); the tile
  or strip buffer OpenCV allocates (RGBA, whatever the image size) is budgeted too;
- BMP: the OS/2 header's 16-bit sizes are unsigned, as the decoder reads them;
- PNG: every chunk is walked before decoding: a truncated file, an ancillary chunk larger than libpng accepts, or
  more metadata than MAX_METADATA_BYTES is refused, and an APNG frame must lie inside the canvas.
Behind the readers OpenCV enforces a pixel cap of its own: `cap_decoder_pixels` (called by engines/__init__.py,
before anything of ours imports cv2) sets OPENCV_IO_MAX_IMAGE_PIXELS, which OpenCV reads once when it loads and
checks against the size its decoder found, before allocating. A value the user set is kept.

A file is read with `read_image_file`: opened like every small file (engines/files.py: regular files only, never
blocking), its header checked from the first bytes, its size checked against what such an image can honestly take
(`ImageHeader.max_file_bytes`), and only then read, once, into one buffer.

While OpenCV decodes, its own log lines ([ WARN ...]) and what libpng/libjpeg print straight to stderr are kept off
the terminal: a failed decode becomes our one-line ImageRejected, naming the decoder's reason.

Formats: PNG, JPEG, BMP, WebP and TIFF (the ones the avatar loader accepts). Anything else, or a header that is cut
short, is refused with one line: OpenCV would otherwise guess the format itself (EXR, PFM, HDR, ...) and decode
what it finds.
"""
from __future__ import annotations

import io
import os
import re
import struct
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass

MAX_PIXELS = 64 * 1024 * 1024          # ~67 MP: above every phone camera's full-resolution photo
MAX_DECODED_BYTES = 256 * 1024 * 1024  # what one decoded image may cost: 8-bit RGB to the pixel limit, 16-bit to ~44 MP
HEAD_BYTES = 1 << 20                   # every header lies in the first MB (JPEG: after EXIF, at most ~64 KB each)
MAX_METADATA_BYTES = 16 * 1024 * 1024  # EXIF, ICC profiles, XMP and text a file may carry beyond its pixels
MAX_FILE_BYTES = MAX_DECODED_BYTES + MAX_METADATA_BYTES
MIN_BUFFER_ALLOWANCE = 16 * 1024 * 1024  # a decoder buffer (TIFF tile/strip) may cost this much even for a tiny image
PNG_CHUNK_LIMIT = 8_000_000            # libpng's cap on one ancillary chunk (PNG_USER_CHUNK_MALLOC_MAX): refused above
MAX_PNG_CHUNKS = 200_000               # a 256 MB PNG in libpng's 8 KB IDAT chunks has ~32k: the walk stays bounded
DECODER_PIXEL_CAP = "OPENCV_IO_MAX_IMAGE_PIXELS"


class ImageRejected(ValueError):
    """The image is not a supported format, is truncated, or declares more than the budget allows (one line)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str              # png | jpeg | bmp | webp | tiff
    width: int
    height: int
    channels: int            # samples per pixel as stored (1 gray, 2 gray+alpha, 3 colour, 4 with alpha)
    bytes_per_sample: int    # 1 for 8 bit and below, 2 for 16 bit, 4 for 32-bit samples
    buffer_bytes: int = 0    # the decoder's largest working buffer besides the image (a TIFF tile or strip)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """What OpenCV's decoded array will hold (at least 3 channels: colour decoding expands gray)."""
        return self.pixels * max(3, self.channels) * self.bytes_per_sample

    @property
    def max_file_bytes(self) -> int:
        """The largest file such an image honestly is: its pixels stored without compression (JPEG or LZW-TIFF of
        noise reach 1.4x the decoded bytes) plus metadata. A larger file is padding, read for nothing."""
        return min(MAX_FILE_BYTES, 2 * self.decoded_bytes + MAX_METADATA_BYTES)


def cap_decoder_pixels(environ=None) -> bool:
    """Make MAX_PIXELS OpenCV's own hard cap (OPENCV_IO_MAX_IMAGE_PIXELS, unless set already): OpenCV reads it once
    when cv2 loads and refuses a larger size found by its decoder before allocating anything. True when it is in
    time, i.e. cv2 is not loaded yet in this process (child processes inherit the variable either way)."""
    environ = os.environ if environ is None else environ
    environ.setdefault(DECODER_PIXEL_CAP, str(MAX_PIXELS))
    return "cv2" not in sys.modules


# --- per-format header readers --------------------------------------------------------------------------------
# valid PNG bit depths per colour type (libpng refuses the rest)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}  # palette: may carry transparency (tRNS), OpenCV then gives 4


def _png(data: bytes) -> ImageHeader:
    # signature, then the IHDR chunk (libpng requires it first, 13 bytes): width, height, bit depth, colour type
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageRejected("truncated PNG header")
    (length,) = struct.unpack(">I", data[8:12])
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if length != 13 or not (0 < width < 1 << 31 and 0 < height < 1 << 31):
        raise ImageRejected("corrupt PNG header")
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageRejected(f"PNG with an invalid colour type {colour} / bit depth {depth}")
    return ImageHeader("png", width, height, _PNG_CHANNELS[colour], 2 if depth == 16 else 1)


# JPEG markers as libjpeg's marker reader (jdmarker.c) takes them before the first scan:
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers (size)
_SEGMENTS = {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE} | set(range(0xE0, 0xF0))  # DHT DAC DQT DNL DRI COM APPn: skipped
_PARAMETERLESS = {0x01} | set(range(0xD0, 0xD8))                             # TEM, RST0-7


def _jpeg(data: bytes) -> ImageHeader:
    i = 2
    while True:
        if i + 2 > len(data):
            raise ImageRejected("truncated JPEG header (no frame size found)")
        if data[i] != 0xFF:
            # libjpeg skips such bytes as garbage and looks for the next marker: a frame header hidden after
            # them would be the decoder's, not ours
            raise ImageRejected("corrupt JPEG: bytes between segments")
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes before a marker
            i += 1
        if i + 2 > len(data):
            raise ImageRejected("truncated JPEG header (no frame size found)")
        marker = data[i + 1]
        if marker in _PARAMETERLESS:
            i += 2
            continue
        if marker not in _SOF and marker not in _SEGMENTS:
            # 0x00 (a stuffed byte: garbage to libjpeg), SOI again, EOI or a scan before any frame, reserved ones
            raise ImageRejected(f"corrupt or unsupported JPEG (marker 0x{marker:02X} before the frame header)")
        if i + 4 > len(data):
            raise ImageRejected("truncated JPEG header (no frame size found)")
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise ImageRejected("corrupt JPEG: bad segment length")
        if marker in _SOF:
            if length < 8 or i + 10 > len(data):
                raise ImageRejected("truncated JPEG frame header")
            precision, height, width, components = struct.unpack(">BHHB", data[i + 4:i + 10])
            if width == 0 or height == 0 or components == 0:
                # height 0 means "defined later by a DNL marker": refuse rather than trust the decoder
                raise ImageRejected("JPEG without a declared size")
            return ImageHeader("jpeg", width, height, components, 2 if precision > 8 else 1)
        i += 2 + length


def _bmp(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise ImageRejected("truncated BMP header")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes, as OpenCV reads them
        width, height, _, bits = struct.unpack("<HHHH", data[18:26])
    elif header_size in (40, 52, 56, 64, 108, 124):  # Windows headers (and OS/2 2.x): signed 32-bit
        width, height, _, bits = struct.unpack("<iiHH", data[18:30])
        height = abs(height)  # negative: stored top-down
    else:
        raise ImageRejected(f"BMP with an unknown header of {header_size} bytes")
    if width <= 0 or height <= 0 or bits not in (1, 4, 8, 16, 24, 32):
        raise ImageRejected(f"BMP with an invalid size or depth ({width}x{height}, {bits} bits)")
    return ImageHeader("bmp", width, height, 4 if bits == 32 else 3, 1)


def _webp(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise ImageRejected("truncated WebP header")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 / height-1
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        animated = bool(data[20] & 0x02)
        # an animation is composed on a second RGBA canvas (the previous frame), beside the one returned
        return ImageHeader("webp", width, height, 4, 1, buffer_bytes=width * height * 4 if animated else 0)
    if chunk == b"VP8L":  # lossless: 14-bit width-1, 14-bit height-1 after the 0x2f signature
        if data[20] != 0x2F:
            raise ImageRejected("corrupt lossless WebP header")
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), 4, 1)
    if chunk == b"VP8 ":  # lossy: frame tag, start code 9d 01 2a, 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageRejected("corrupt lossy WebP header")
        width, height = struct.unpack("<HH", data[26:30])
        if not width & 0x3FFF or not height & 0x3FFF:
            raise ImageRejected("WebP without a size")
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 3, 1)
    raise ImageRejected("unknown WebP chunk")


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_BITS, _TIFF_SAMPLES = 256, 257, 258, 277
_TIFF_ROWS_PER_STRIP, _TIFF_TILE_WIDTH, _TIFF_TILE_HEIGHT = 278, 322, 323
_TIFF_SINGLE = (_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_SAMPLES, _TIFF_ROWS_PER_STRIP, _TIFF_TILE_WIDTH, _TIFF_TILE_HEIGHT)
_TIFF_MAX_ENTRIES = 1024


def _tiff_values(data: bytes, order: str, entry: int, kind: int, count: int) -> list[int]:
    code, size = _TIFF_TYPES[kind]
    count = min(count, 64)  # per-sample lists (BitsPerSample) are short; nothing we read needs more
    where = entry + 8 if count * size <= 4 else struct.unpack(order + "I", data[entry + 8:entry + 12])[0]
    if where + count * size > len(data):
        raise ImageRejected("truncated TIFF directory")
    return list(struct.unpack(order + code * count, data[where:where + count * size]))


def _tiff(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise ImageRejected("truncated TIFF header")
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset < 8 or offset + 2 > len(data):
        raise ImageRejected("truncated TIFF header")
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    if count > _TIFF_MAX_ENTRIES:
        raise ImageRejected(f"TIFF directory of {count} entries")
    tags: dict[int, list[int]] = {}
    previous = -1
    for k in range(count):
        entry = offset + 2 + 12 * k
        if entry + 12 > len(data):
            raise ImageRejected("truncated TIFF directory")
        tag, kind, n = struct.unpack(order + "HHI", data[entry:entry + 8])
        # libtiff keeps the first of two equal tags, reorders unsorted ones: either way not what a reader of the
        # entries in file order sees, so a directory like that is refused
        if tag <= previous:
            raise ImageRejected(f"TIFF directory with tag {tag} {'twice' if tag == previous else 'out of order'}")
        previous = tag
        if tag in _TIFF_SINGLE or tag == _TIFF_BITS:
            if kind not in _TIFF_TYPES or n < 1 or (tag in _TIFF_SINGLE and n != 1):
                raise ImageRejected(f"TIFF tag {tag} of an unexpected type or count")
            tags[tag] = _tiff_values(data, order, entry, kind, n)
    if _TIFF_WIDTH not in tags or _TIFF_HEIGHT not in tags:
        raise ImageRejected("TIFF without a declared size")
    width, height = tags[_TIFF_WIDTH][0], tags[_TIFF_HEIGHT][0]
    if width == 0 or height == 0:
        raise ImageRejected("TIFF without a declared size")
    channels = tags.get(_TIFF_SAMPLES, [1])[0]
    depth = max(1, (max(tags.get(_TIFF_BITS, [1])) + 7) // 8)
    # OpenCV reads a tile (or a strip: full width, RowsPerStrip rows - not clamped to the image) at a time into a
    # buffer of 4 samples (RGBA) per pixel for 8-bit output, of the stored samples otherwise
    if _TIFF_TILE_WIDTH in tags or _TIFF_TILE_HEIGHT in tags:
        tile_width, tile_height = tags.get(_TIFF_TILE_WIDTH, [0])[0], tags.get(_TIFF_TILE_HEIGHT, [0])[0]
        if tile_width == 0 or tile_height == 0:
            raise ImageRejected("tiled TIFF without a tile size")
    else:
        tile_width = width
        rows = tags.get(_TIFF_ROWS_PER_STRIP, [0])[0]
        tile_height = height if rows in (0, 0xFFFFFFFF) else rows
    buffer = tile_width * tile_height * max(4, channels) * depth
    return ImageHeader("tiff", width, height, channels, depth, buffer_bytes=buffer)


def read_header(data: bytes) -> ImageHeader:
    """The declared size of an encoded image, from its first bytes; ImageRejected for anything unsupported."""
    data = bytes(data[:HEAD_BYTES])
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
                            f"{header.decoded_bytes / 2**20:.0f} MiB decoded "
                            f"(limit {max_decoded_bytes / 2**20:.0f} MiB)")
    # the decoder's own buffer (a TIFF tile or strip, as RGBA): at most the whole image read as one tile (sides
    # rounded up to TIFF's tile multiple of 16), and the image and the buffer together within the budget
    whole = -(-w // 16) * 16 * -(-h // 16) * 16 * max(4, header.channels) * header.bytes_per_sample
    if header.buffer_bytes > max(whole, MIN_BUFFER_ALLOWANCE):
        raise ImageRejected(f"{header.format.upper()} image of {w}x{h} pixels with tiles or strips far larger than "
                            f"itself (a {header.buffer_bytes / 2**20:.0f} MiB decoding buffer)")
    if header.decoded_bytes + header.buffer_bytes > max_decoded_bytes:
        raise ImageRejected(f"image of {w}x{h} pixels would take {header.decoded_bytes / 2**20:.0f} MiB decoded "
                            f"and {header.buffer_bytes / 2**20:.0f} MiB of decoding buffer (limit "
                            f"{max_decoded_bytes / 2**20:.0f} MiB)")
    return header


def check_structure(data, header: ImageHeader) -> None:
    """What the decoder reads besides the header, checked on the whole encoded image: a PNG's chunks (complete up
    to IEND, no ancillary chunk above libpng's limit, at most MAX_METADATA_BYTES of them, APNG frames inside the
    canvas). ImageRejected otherwise."""
    if header.format == "png":
        _png_chunks(memoryview(data).cast("B"), header)


def _png_chunks(view: memoryview, header: ImageHeader) -> None:
    position, metadata = 8, 0
    for _ in range(MAX_PNG_CHUNKS):
        if position + 12 > len(view):
            raise ImageRejected("truncated PNG (it ends before its IEND chunk)")
        length, kind = struct.unpack_from(">I4s", view, position)
        name = kind.decode("latin-1")
        if length >= 1 << 31 or not kind.isalpha():
            raise ImageRejected("corrupt PNG chunk")
        if position + 12 + length > len(view):
            raise ImageRejected(f"truncated PNG (it ends inside a {name!r} chunk)")
        if kind == b"IEND":
            return
        if kind not in (b"IDAT", b"fdAT"):  # everything but pixel data is read into memory by the decoder
            if length > PNG_CHUNK_LIMIT:
                raise ImageRejected(f"PNG with a {name!r} chunk of {length / 2**20:.0f} MiB (the decoder takes at "
                                    f"most {PNG_CHUNK_LIMIT / 2**20:.1f} MiB)")
            metadata += length
            if metadata > MAX_METADATA_BYTES:
                raise ImageRejected(f"PNG with more than {MAX_METADATA_BYTES / 2**20:.0f} MiB of metadata chunks")
        if kind == b"fcTL":  # an APNG frame: sequence, width, height, x, y
            if length < 26:
                raise ImageRejected("corrupt APNG frame header")
            _, w, h, x, y = struct.unpack_from(">IIIII", view, position + 8)
            if w == 0 or h == 0 or x + w > header.width or y + h > header.height:
                raise ImageRejected(f"APNG frame of {w}x{h} at {x},{y} outside the {header.width}x{header.height} "
                                    "canvas")
        position += 12 + length
    raise ImageRejected(f"PNG of more than {MAX_PNG_CHUNKS} chunks")


# --- decoding --------------------------------------------------------------------------------------------------
# Lines the decoders print themselves (libpng, libjpeg; OpenCV's log lines start with "[ WARN" / "[ERROR")
_DECODER_LINE = re.compile(r"^(libpng|\[ ?(WARN|ERROR|INFO))|JPEG|Huffman|marker|quantization|progression",
                           re.IGNORECASE)
_quiet_lock = threading.Lock()
_capture = None  # a temporary file that takes fd 2 while a decoder runs (reused: one per process)


@contextmanager
def quiet_decoder():
    """Keep what OpenCV and the codec libraries print off the terminal for the block; yields a list that receives
    their lines afterwards (for our own message). Anything else printed meanwhile (another thread) is passed on
    to stderr at the end. One block at a time per process: fd 2 and OpenCV's log level are process-wide."""
    import cv2

    global _capture
    with _quiet_lock:
        log = cv2.utils.logging
        previous = log.getLogLevel()
        log.setLogLevel(log.LOG_LEVEL_SILENT)
        saved, lines = None, []
        try:
            if sys.stderr is not None:
                sys.stderr.flush()  # what Python buffered goes out before fd 2 is switched
            if _capture is None:
                import tempfile
                _capture = tempfile.TemporaryFile()
            saved = os.dup(2)
            os.dup2(_capture.fileno(), 2)
        except (OSError, ValueError):  # no fd 2 (a windowed app) or no temp folder: OpenCV's log is still quiet
            if saved is not None:
                os.close(saved)
            saved = None
        try:
            yield lines
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                others = _drain(_capture, lines)
                if others:
                    try:
                        os.write(2, others)
                    except OSError:
                        pass
            log.setLogLevel(previous)


def _drain(capture, lines: list[str]) -> bytes:
    """Move the captured decoder lines into `lines`; return the rest (not a decoder's) to be printed."""
    try:
        capture.seek(0)
        text = capture.read(64 * 1024)
        capture.seek(0)
        capture.truncate()
    except (OSError, ValueError):
        return b""
    others = []
    for line in text.decode("utf-8", "replace").splitlines():
        if _DECODER_LINE.search(line):
            lines.append(line.strip())
        elif line.strip():
            others.append(line)
    return "".join(f"{line}\n" for line in others).encode("utf-8")


def _reason(lines: list[str]) -> str:
    """The decoder's own words, one short line (OpenCV's log prefix and file position dropped)."""
    if not lines:
        return ""
    text = re.sub(r"^\[[^\]]*\]\s*(global\s+\S+\s+\S+\s+)?", "", lines[-1])
    text = " ".join(text.split())
    return f" ({text[:120]})" if text else ""


def decode_checked(data, flags: int | None = None, **budget):
    """(decoded array, header) of an encoded image whose header passed `check_header(**budget)` and whose
    structure passed `check_structure`; the decode runs once. ImageRejected when a check fails, or OpenCV cannot
    decode the bytes, or decodes another size."""
    import cv2
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    header = check_header(raw[:HEAD_BYTES].tobytes(), **budget)
    check_structure(raw, header)
    name = header.format.upper()
    with quiet_decoder() as said:
        try:
            image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED if flags is None else flags)
            error = None
        except cv2.error as exc:
            image, error = None, str(exc).strip().splitlines()[-1]
    if error is not None:
        raise ImageRejected(f"corrupt {name} image ({error})")
    if image is None or image.size == 0:
        raise ImageRejected(f"corrupt or truncated {name} image{_reason(said)}")
    # EXIF rotation (IMREAD_COLOR) may swap the sides; anything else means the header lied
    if sorted(image.shape[:2]) != sorted((header.height, header.width)):
        raise ImageRejected(f"{name} image decoded to {image.shape[1]}x{image.shape[0]}, not the "
                            f"declared {header.width}x{header.height}")
    return image, header


def read_image_file(path, *, what: str = "image", **budget):
    """(the encoded bytes as a uint8 array, header) of an image file, read once: a regular file (engines/files.py)
    whose header passes `check_header(**budget)` and whose size is within `header.max_file_bytes`, checked before
    the rest of it is read. FileRefused (naming the file) for what is not a readable regular file, ImageRejected
    for the contents."""
    import numpy as np

    from .files import FileRefused, open_regular

    with open_regular(path, what=what) as (fd, size):
        reader = io.FileIO(fd, closefd=False)
        try:
            head = reader.read(min(size, HEAD_BYTES))
            header = check_header(head, **budget)
            if size > header.max_file_bytes:
                raise ImageRejected(f"a file of {size / 2**20:.0f} MiB for a {header.width}x{header.height} image "
                                    f"(such an image takes at most {header.max_file_bytes / 2**20:.0f} MiB)")
            buffer = np.empty(size, np.uint8)
            buffer[:len(head)] = np.frombuffer(head, np.uint8)
            view, filled = memoryview(buffer), len(head)
            while filled < size:
                got = reader.readinto(view[filled:])
                if not got:
                    raise ImageRejected("the file got shorter while it was read")
                filled += got
            if reader.read(1):
                raise ImageRejected("the file grew while it was read")
        except OSError as error:
            raise FileRefused(f"cannot read {what} {path}: {error.strerror or error}") from None
    return buffer, header
