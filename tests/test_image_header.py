"""engines.image_header: declared sizes are read from the bytes of every accepted format, and images over the
budget are refused before any decoding."""
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.files import FileRefused
from engines.image_header import (ImageRejected, check_header, decode_checked, quiet_decoder, read_header,
                                  read_image_file)


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


# --- the reader agrees with the decoder: each file below got past it and cost hundreds of MB -------------------
def jpeg_with_a_hidden_frame(big=12000):
    """A real JPEG whose frame header says big x big, hidden from a naive marker walk: it starts with FF 00 (a
    stuffed byte, skipped as garbage by libjpeg) followed by a "length" that jumps over the real stream to a
    16x16 frame header at the end."""
    small = encoded(".jpg", np.zeros((16, 16, 3), np.uint8))
    sof = small.index(b"\xff\xc0")
    real = bytearray(small)
    real[sof + 5:sof + 9] = struct.pack(">HH", big, big)
    decoy = small[sof:sof + 2 + struct.unpack(">H", small[sof + 2:sof + 4])[0]]
    body = bytes(real[2:])
    return b"\xff\xd8\xff\x00" + struct.pack(">H", len(body) + 2) + body + decoy


def tiff_file(entries, payload=b""):
    """A little-endian TIFF with one directory of (tag, type, count, value) entries (in the order given), then
    `payload`; the value PAYLOAD stands for the payload's offset."""
    start = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        value = start if value == "PAYLOAD" else value
        out += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind,
                                                                                               count, value)
    return out + struct.pack("<I", 0) + payload


def tiff_with_two_sizes(side=12000):
    """Width and height given twice, big first: libtiff keeps the first, a reader of the entries in file order
    the last (16x16). One deflate strip of zeros: 140 KB that decode to side^2 bytes and more."""
    strip = zlib.compress(b"\0" * (side * side), 9)
    return tiff_file([(256, 4, 1, side), (256, 4, 1, 16), (257, 4, 1, side), (257, 4, 1, 16), (258, 3, 1, 8),
                      (259, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, "PAYLOAD"), (277, 3, 1, 1), (278, 4, 1, side),
                      (279, 4, 1, len(strip)), (284, 3, 1, 1)], strip)


def tiff_in_one_huge_tile(side=256, tile=11264):
    return tiff_file([(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                      (277, 3, 1, 1), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, "PAYLOAD"),
                      (325, 4, 1, 64), (339, 3, 1, 1)], b"\0" * 64)


def os2_bmp(width=16000, height=0xFFFF):
    """An OS/2 BMP (12-byte header): 16-bit sizes, unsigned for the decoder."""
    return (b"BM" + struct.pack("<IHHI", 26 + 64, 0, 0, 26) + struct.pack("<IHHHH", 12, width, height, 1, 24)
            + b"\0" * 64)


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_chunk(kind, size, side=64):
    rows = b"".join(b"\0" + b"\x80" * (3 * side) for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + png_chunk(kind, size) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def sparse_png_with_a_private_chunk(path, chunk_bytes=240 << 20, side=256):
    """A 256x256 PNG carrying a 240 MB private chunk, written sparse (it costs no disk)."""
    rows = b"".join(b"\0" + b"\x80" * (3 * side) for _ in range(side))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)))
        f.write(struct.pack(">I", chunk_bytes) + b"prVt")
        f.seek(chunk_bytes + 4, 1)  # the zeros of the chunk and its CRC
        f.write(png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    return path


def test_a_frame_header_hidden_behind_bytes_libjpeg_skips_is_refused(monkeypatch):
    data = jpeg_with_a_hidden_frame()
    assert len(data) < 1000
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageRejected, match="corrupt"):
        read_header(data)
    with pytest.raises(ImageRejected):  # the render server's avatar upload takes the same path
        decode_checked(data, formats=("png", "jpeg"), max_side=8192)


@pytest.mark.parametrize("marker", [0x00, 0xD8, 0xD9, 0xDA, 0xC8, 0xF0, 0x02])
def test_markers_libjpeg_would_read_differently_before_the_frame_are_refused(marker):
    data = b"\xff\xd8\xff" + bytes([marker]) + b"\x00\x04\x00\x00" + encoded(".jpg", COLOUR)[2:]
    with pytest.raises(ImageRejected, match="JPEG"):
        read_header(data)


def test_fill_bytes_and_restart_markers_before_the_frame_are_walked_like_libjpeg():
    data = encoded(".jpg", COLOUR)
    header = read_header(data[:2] + b"\xff\xff\xff" + data[2:])  # fill bytes before a marker are allowed
    assert (header.width, header.height) == (53, 37)


def test_a_tiff_tag_given_twice_or_out_of_order_is_refused(monkeypatch):
    data = tiff_with_two_sizes()
    assert len(data) < 200_000
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageRejected, match="tag 256 twice"):
        read_header(data)
    unsorted = tiff_file([(257, 4, 1, 16), (256, 4, 1, 16), (258, 3, 1, 8)])
    with pytest.raises(ImageRejected, match="out of order"):
        read_header(unsorted)


def test_the_os2_bmp_height_is_unsigned_like_the_decoders():
    header = read_header(os2_bmp(16000, 0xFFFF))
    assert (header.width, header.height) == (16000, 65535)
    with pytest.raises(ImageRejected, match="16000x65535"):
        check_header(os2_bmp(16000, 0xFFFF))


def test_a_tile_or_strip_far_larger_than_the_image_is_refused():
    header = read_header(tiff_in_one_huge_tile())
    assert (header.width, header.height) == (256, 256) and header.buffer_bytes == 11264 * 11264 * 4
    with pytest.raises(ImageRejected, match="tiles or strips far larger"):
        check_header(tiff_in_one_huge_tile())
    strips = tiff_file([(256, 4, 1, 256), (257, 4, 1, 256), (258, 3, 1, 8), (278, 4, 1, 1 << 20)])
    with pytest.raises(ImageRejected, match="tiles or strips far larger"):
        check_header(strips)  # RowsPerStrip is not clamped to the height by OpenCV: 256 x 1M RGBA
    # what real writers do passes: a whole-image strip, "infinite" rows per strip, 16x16-aligned tiles
    for rows in (256, 0xFFFFFFFF):
        check_header(tiff_file([(256, 4, 1, 256), (257, 4, 1, 256), (258, 3, 1, 8), (278, 4, 1, rows)]))
    check_header(tiff_file([(256, 4, 1, 100), (257, 4, 1, 100), (258, 3, 1, 8), (322, 3, 1, 112), (323, 3, 1, 112)]))
    image, tiff = decode_checked(encoded(".tif", COLOUR))  # OpenCV's own TIFF
    assert image.shape == (37, 53, 3) and tiff.buffer_bytes > 0


def test_png_chunks_are_walked_and_budgeted_before_decoding(monkeypatch):
    ok, _ = decode_checked(png_with_chunk(b"prVt", b"\0" * 1000))
    assert ok.shape == (64, 64, 3)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageRejected, match="'prVt' chunk of 9 MiB"):  # libpng itself takes at most 8 MB
        decode_checked(png_with_chunk(b"prVt", b"\0" * (9 << 20)))
    full = encoded(".png", COLOUR)
    with pytest.raises(ImageRejected, match="truncated PNG"):
        decode_checked(full[:len(full) - 20])
    with pytest.raises(ImageRejected, match="truncated PNG"):
        decode_checked(full[:-12])  # no IEND
    frame = struct.pack(">IIIIIHHBB", 0, 100, 100, 0, 0, 1, 1, 0, 0)
    apng = full[:33] + png_chunk(b"acTL", struct.pack(">II", 1, 0)) + png_chunk(b"fcTL", frame) + full[33:]
    with pytest.raises(ImageRejected, match="outside the 53x37 canvas"):
        decode_checked(apng)


def test_a_file_far_larger_than_its_image_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = sparse_png_with_a_private_chunk(tmp_path / "padded.png")
    monkeypatch.setattr(np, "empty", lambda *a, **k: pytest.fail("read a refused file"))
    with pytest.raises(ImageRejected, match="for a 256x256 image"):
        read_image_file(path)


def test_a_fifo_or_device_is_not_read_as_an_image(tmp_path):
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.png")
        start = time.monotonic()
        with pytest.raises(FileRefused, match="FIFO"):
            read_image_file(tmp_path / "fifo.png")
        assert time.monotonic() - start < 1
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero.png").symlink_to("/dev/zero")
        with pytest.raises(FileRefused, match="character device"):
            read_image_file(tmp_path / "zero.png")


def test_what_the_decoders_print_stays_off_the_terminal(capfd):
    # an ICC profile chunk with a bad compression byte: libpng prints a warning itself and decodes the image
    profile = b"p\0\x07" + b"\0" * 100
    image, _ = decode_checked(png_with_chunk(b"iCCP", profile))
    assert image.shape == (64, 64, 3)
    assert capfd.readouterr().err == ""


def test_other_output_during_a_decode_is_passed_on():
    captured = []
    with quiet_decoder() as lines:
        os.write(2, b"libpng warning: iCCP: something\n")
        os.write(2, b"another thread says hello\n")
    captured.extend(lines)
    assert captured == ["libpng warning: iCCP: something"]


def test_other_output_reaches_stderr(capfd):
    with quiet_decoder():
        os.write(2, b"[ WARN:0@0.1] global grfmt_png.cpp:793 readFromStreamOrBuffer PNG input buffer is incomplete\n")
        os.write(2, b"another thread says hello\n")
    assert capfd.readouterr().err == "another thread says hello\n"


def test_opencv_enforces_our_pixel_limit_itself():
    """engines/__init__ sets OPENCV_IO_MAX_IMAGE_PIXELS before cv2 loads: a size our reader were to miss is still
    refused by OpenCV from its own header, before it allocates."""
    code = ("import engines, cv2, numpy as np, sys\n"
            f"data = np.frombuffer({png_declaring(9000, 9000)!r}, np.uint8)\n"
            "try:\n    cv2.imdecode(data, cv2.IMREAD_COLOR)\nexcept cv2.error as e:\n"
            "    print('refused', 'CV_IO_MAX_IMAGE_PIXELS' in str(e))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         cwd=Path(__file__).resolve().parents[1], check=False)
    assert out.stdout.strip() == "refused True", out.stdout + out.stderr


# --- the same files through the avatar loader, in a fresh interpreter: peak memory stays small ------------------
_WARM = """
import cv2, numpy as np
from live.pipeline.avatars import load_avatar
cv2.imwrite({warm!r}, np.zeros((8, 8, 3), np.uint8))
load_avatar({warm!r}, 256)
"""


@pytest.mark.parametrize("name, build", [
    ("hidden.jpg", lambda path: path.write_bytes(jpeg_with_a_hidden_frame(12000))),      # was +816 MB
    ("twice.tif", lambda path: path.write_bytes(tiff_with_two_sizes(12000))),            # was +688 MB
    ("tile.tif", lambda path: path.write_bytes(tiff_in_one_huge_tile())),                # was +486 MB
    ("chunk.png", sparse_png_with_a_private_chunk),                                      # was +452 MB
])
def test_hostile_avatars_are_refused_with_bounded_memory(tmp_path, name, build):
    from tests.support import peak_rss_growth_mb
    path = tmp_path / name
    build(path)
    growth, said = peak_rss_growth_mb(_WARM.format(warm=str(tmp_path / "warm.png")),
                                      f"load_avatar({str(path)!r}, 256)")
    assert said.startswith("raised AvatarError") and name in said and said.count("\n") == 0, said
    assert growth < 40, f"peak RSS grew by {growth:.0f} MB"
