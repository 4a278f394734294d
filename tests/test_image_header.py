"""engines.image_header: declared sizes are read from the bytes of every accepted format, and images over the
budget are refused before any decoding."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from engines.image_header import ImageRejected, check_header, decode_checked, read_header


def encoded(ext, image, params=()):
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


def png_declaring(width, height, depth=8, colour=2):
    """A tiny PNG whose header declares any size (a decompression bomb needs no more than that)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


rng = np.random.default_rng(0)
COLOUR = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext,params,fmt,channels,bps", [
    (".png", (), "png", 3, 1),
    (".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90), "jpeg", 3, 1),
    (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg", 3, 1),
    (".bmp", (), "bmp", 3, 1),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "webp", 3, 1),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "webp", 4, 1),   # quality > 100: lossless (VP8L)
    (".tif", (), "tiff", 3, 1),
])
def test_the_header_of_every_accepted_format_gives_the_true_size(ext, params, fmt, channels, bps):
    header = read_header(encoded(ext, COLOUR, params))
    assert (header.format, header.width, header.height, header.bytes_per_sample) == (fmt, 53, 37, bps)
    assert header.channels == channels


def test_depth_and_channels_of_16_bit_and_alpha_images():
    rgba16 = rng.integers(0, 65536, (9, 11, 4), dtype=np.uint16)
    header = read_header(encoded(".png", rgba16))
    assert (header.width, header.height, header.channels, header.bytes_per_sample) == (11, 9, 4, 2)
    assert header.decoded_bytes == 11 * 9 * 4 * 2
    gray = read_header(encoded(".png", COLOUR[..., 0]))
    assert (gray.channels, gray.decoded_bytes) == (1, 53 * 37 * 3)  # gray decodes to 3 channels in colour mode


def test_a_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 200
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageRejected, match="20000x20000"):
        decode_checked(bomb)
    with pytest.raises(ImageRejected, match="MiB decoded"):  # within the pixel limit, over the byte budget
        check_header(png_declaring(7000, 7000, depth=16, colour=6))


def test_side_limits_and_format_allow_list():
    data = encoded(".png", COLOUR)
    with pytest.raises(ImageRejected, match="too small"):
        check_header(data, min_side=64)
    with pytest.raises(ImageRejected, match="too large"):
        check_header(data, max_side=50)
    with pytest.raises(ImageRejected, match="not accepted"):
        check_header(encoded(".bmp", COLOUR), formats=("png", "jpeg"))


@pytest.mark.parametrize("data,why", [
    (b"", "empty"),
    (b"v/1\x01" + b"\0" * 64, "not a PNG"),            # OpenEXR magic: OpenCV would decode it
    (b"PF\n1 1\n-1\n" + b"\0" * 12, "not a PNG"),     # PFM
    (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"),
])
def test_unknown_or_truncated_data_is_refused_in_one_line(data, why):
    with pytest.raises(ImageRejected, match=why) as info:
        read_header(data)
    assert "\n" not in str(info.value)


def test_decode_checked_decodes_once_and_refuses_a_lying_header():
    image, header = decode_checked(encoded(".png", COLOUR))
    assert image.shape == (37, 53, 3) and np.array_equal(image, COLOUR)
    lying = bytearray(encoded(".png", COLOUR))
    lying[16:24] = struct.pack(">II", 10, 10)  # header says 10x10 (the CRC no longer matches: OpenCV refuses)
    with pytest.raises(ImageRejected):
        decode_checked(bytes(lying))
    with pytest.raises(ImageRejected, match="corrupt"):
        decode_checked(encoded(".jpg", COLOUR)[:300])
