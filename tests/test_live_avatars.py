import cv2
import numpy as np
import pytest

from live.pipeline.avatars import IMAGE_EXTENSIONS, list_avatar_paths, load_avatar
from live.errors import AvatarError, UserError
from tests.support import gray_png_bomb


def _write(path, img):
    assert cv2.imwrite(str(path), img), path
    return path


def test_list_single_file(tmp_path):
    f = _write(tmp_path / "face.png", np.zeros((8, 8, 3), np.uint8))
    assert list_avatar_paths(f) == [f]
    assert list_avatar_paths(str(f)) == [f]


def test_list_folder_sorted_images_only(tmp_path):
    for name in ["b.jpg", "A.png", "c.PNG"]:
        _write(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._b.png").write_bytes(b"\0\0")  # macOS resource fork: not an image
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_avatar_paths(tmp_path)] == ["A.png", "b.jpg", "c.PNG"]


def test_list_missing_path(tmp_path):
    with pytest.raises(AvatarError, match="avatar not found: .*nope"):
        list_avatar_paths(tmp_path / "nope")


def test_list_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(AvatarError, match="no avatar images in folder"):
        list_avatar_paths(tmp_path)
    assert issubclass(AvatarError, UserError)


def test_extensions_are_lowercase_with_dot():
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert ".png" in IMAGE_EXTENSIONS and ".jpg" in IMAGE_EXTENSIONS


def test_load_color_is_rgb(tmp_path):
    bgr = np.zeros((64, 64, 3), np.uint8)
    bgr[:] = (255, 0, 0)  # pure blue in BGR
    out = load_avatar(_write(tmp_path / "blue.png", bgr), size=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[16, 16]) == (0, 0, 255)


def test_load_grayscale(tmp_path):
    gray = np.full((50, 50), 77, np.uint8)
    out = load_avatar(_write(tmp_path / "g.png", gray), size=50)
    assert out.shape == (50, 50, 3)
    assert (out == 77).all()


def test_load_16bit(tmp_path):
    img = np.full((40, 40, 3), 65535, np.uint16)
    img[:, :, 0] = 0
    img[:, :, 1] = 257 * 128
    out = load_avatar(_write(tmp_path / "deep.png", img), size=40)
    assert out.dtype == np.uint8
    assert tuple(out[0, 0]) == (255, 128, 0)  # BGR (0, 128, 255) -> RGB


def test_load_rgba_composited_over_white(tmp_path):
    bgra = np.zeros((20, 20, 4), np.uint8)
    bgra[:, :10] = (0, 0, 255, 255)  # opaque red on the left
    bgra[:, 10:] = (0, 0, 0, 0)      # fully transparent (black underneath) on the right
    out = load_avatar(_write(tmp_path / "cut.png", bgra), size=20)
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 17]) == (255, 255, 255)


def test_load_half_transparent_blends(tmp_path):
    bgra = np.zeros((10, 10, 4), np.uint8)
    bgra[..., 3] = 128
    out = load_avatar(_write(tmp_path / "half.png", bgra), size=10)
    assert abs(int(out[5, 5, 0]) - 127) <= 1


def test_non_square_centre_crop(tmp_path):
    # 100 wide x 50 high: left/right quarters red/blue, centre half green -> the crop keeps only the green.
    bgr = np.zeros((50, 100, 3), np.uint8)
    bgr[:, :25] = (0, 0, 255)
    bgr[:, 25:75] = (0, 255, 0)
    bgr[:, 75:] = (255, 0, 0)
    out = load_avatar(_write(tmp_path / "wide.png", bgr), size=50)
    assert out.shape == (50, 50, 3)
    assert (out == (0, 255, 0)).all()

    tall = np.ascontiguousarray(bgr.transpose(1, 0, 2))
    out = load_avatar(_write(tmp_path / "tall.png", tall), size=25)
    assert out.shape == (25, 25, 3)
    assert (out == (0, 255, 0)).all()


@pytest.mark.parametrize("src", [16, 256, 700])
def test_resize_up_and_down(tmp_path, src):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (src, src, 3), dtype=np.uint8)
    out = load_avatar(_write(tmp_path / "r.png", img), size=256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    if src == 256:
        assert (out == img[:, :, ::-1]).all()  # same size: untouched apart from BGR->RGB


def test_load_missing_file(tmp_path):
    with pytest.raises(AvatarError, match="avatar not found: .*missing.png"):
        load_avatar(tmp_path / "missing.png")


def test_load_corrupt_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(AvatarError, match="cannot read avatar image .*broken.jpg") as e:
        load_avatar(bad)
    assert "\n" not in str(e.value)


def test_load_empty_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(AvatarError, match="empty.png"):
        load_avatar(empty)


def test_load_truncated_png(tmp_path):
    good = _write(tmp_path / "full.png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(AvatarError, match="cut.png"):
        load_avatar(cut)


def test_load_folder_is_not_a_file(tmp_path):
    with pytest.raises(AvatarError, match="not a file"):
        load_avatar(tmp_path)


def test_load_every_listed_extension(tmp_path):
    img = np.full((12, 12, 3), 200, np.uint8)
    for ext in IMAGE_EXTENSIONS:
        path = tmp_path / f"a{ext}"
        if not cv2.imwrite(str(path), img):
            continue  # this OpenCV build cannot write the format; reading is what matters
        out = load_avatar(path, size=12)
        assert out.shape == (12, 12, 3), ext
        assert abs(int(out.mean()) - 200) <= 3, ext


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "аватары"
    folder.mkdir()
    # cv2.imwrite has the same non-ASCII limitation on Windows, so write through imencode.
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), 9, np.uint8))
    f = folder / "лицо.png"
    buf.tofile(str(f))
    assert list_avatar_paths(folder) == [f]
    assert (load_avatar(f, size=8) == 9).all()


# --- hostile images: refused from the header, decoded once, converted without wide copies ------------------------
_WARM = """
import cv2, numpy as np
from live.pipeline.avatars import load_avatar
cv2.imwrite({warm!r}, np.zeros((8, 8, 3), np.uint8))
load_avatar({warm!r}, 256)  # codecs and the first allocations are not what is measured
"""


def _measure(tmp_path, avatar):
    from tests.support import peak_rss_growth_mb
    return peak_rss_growth_mb(_WARM.format(warm=str(tmp_path / "warm.png")),
                              f"out = load_avatar({str(avatar)!r}, 256)\nprint('loaded', out.shape)")


def test_a_png_bomb_is_refused_from_its_header_with_bounded_memory(tmp_path):
    bomb = gray_png_bomb(tmp_path / "bomb.png", 20000)
    assert bomb.stat().st_size < 1_000_000  # 0.4 MB on disk, 1.2 GB once decoded in colour
    growth, said = _measure(tmp_path, bomb)
    assert "raised AvatarError" in said and "20000x20000" in said and "limit" in said, said
    assert said.count("\n") == 0
    assert growth < 50, f"peak RSS grew by {growth:.0f} MB"


def test_a_50000_pixel_avatar_is_one_line_through_the_app(tmp_path, capsys):
    from live.cli.app import main
    bomb = gray_png_bomb(tmp_path / "huge.png", 50000)
    assert main(["--avatar", str(bomb), "--deterministic-weights", "--device", "cpu", "--no-vcam",
                 "--no-preview", "--driving", str(tmp_path / "none.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "50000x50000" in err, err


def test_a_16_bit_alpha_avatar_costs_little_more_than_its_decoded_size(tmp_path):
    image = np.zeros((2500, 2500, 4), np.uint16)
    image[..., 1], image[..., 3] = 40000, 65535
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    decoded_mb = image.nbytes / 2**20  # 48 MB
    growth, said = _measure(tmp_path, path)
    assert "loaded (256, 256, 3)" in said, said
    # decoded once, converted strip by strip: no second decode, no uint32 or float copy of the whole image
    # (measured: ~2x the decoded size with the 8-bit result and the decoder's own buffers; 6x before)
    assert growth < 2.5 * decoded_mb, f"peak RSS grew by {growth:.0f} MB for a {decoded_mb:.0f} MB image"


def test_the_file_is_decoded_once(tmp_path, monkeypatch):
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a[1]) or real(*a))
    load_avatar(_write(tmp_path / "c.jpg", np.full((30, 30, 3), 90, np.uint8)), size=16)
    load_avatar(_write(tmp_path / "a.png", np.full((30, 30, 4), 90, np.uint8)), size=16)
    assert len(calls) == 2


def _exif_jpeg(path, image, orientation: int):
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag."""
    import struct
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1,
                                                                                    orientation, 0) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = jpeg.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


def test_exif_orientation_is_applied_with_one_decode(tmp_path):
    bgr = np.zeros((40, 80, 3), np.uint8)  # 80 wide, 40 high: the left half red, the right half blue
    bgr[:, :40] = (0, 0, 255)
    bgr[:, 40:] = (255, 0, 0)
    # orientation 6: the camera was turned 90 degrees clockwise; shown upright, the left half ends up on top
    out = load_avatar(_exif_jpeg(tmp_path / "phone.jpg", bgr, 6), size=40)
    top, bottom = out[5, 20].astype(int), out[35, 20].astype(int)
    assert top[0] > 200 and top[2] < 60, top          # red (RGB)
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue


# --- any photo is an avatar: the square around the face, the photo kept on the output canvas ---------------------
KNOWN_FACE = (175, 65, 97, 97)  # the astronaut's face in scikit-image's 512-px picture: brows to chin, measured by eye


def _scene(tmp_path, face_side=300, at=(900, 380)):
    """The astronaut, small and off-centre, in a 1280x720 picture of a room (a gradient with some texture)."""
    from skimage.data import astronaut
    rng = np.random.default_rng(0)
    room = (np.linspace(40, 200, 1280)[None, :, None] + rng.normal(0, 6, (720, 1280, 3))).clip(0, 255)
    room = room.astype(np.uint8)
    x, y = at
    room[y:y + face_side, x:x + face_side] = cv2.resize(astronaut(), (face_side, face_side),
                                                        interpolation=cv2.INTER_AREA)
    scale = face_side / 512
    fx, fy, fw, fh = KNOWN_FACE
    face = (x + fx * scale, y + fy * scale, fw * scale)
    return _write(tmp_path / "room.png", cv2.cvtColor(room, cv2.COLOR_RGB2BGR)), face


def test_a_small_off_centre_face_gets_the_square_around_it(tmp_path):
    from engines.framing import Canvas
    from live.pipeline.avatars import FaceFraming, load_avatar_image
    path, (fx, fy, side) = _scene(tmp_path)
    loaded = load_avatar_image(path, 256, canvas=Canvas(1280, 720), framing=FaceFraming())
    assert loaded.face_found and loaded.notice is None
    x0, y0, x1, y1 = loaded.photo.layout.crop_rect  # the canvas is the photo's own size here
    assert (x0 + x1) / 2 == pytest.approx(fx + side / 2, abs=0.15 * side)
    assert (y0 + y1) / 2 == pytest.approx(fy + side / 2, abs=0.15 * side)
    assert x1 - x0 == pytest.approx(1.8 * side, rel=0.25), "the head fills the square like the vox crops"
    assert np.array_equal(loaded.photo.backdrop, load_avatar_image(path, 256, canvas=Canvas(1280, 720)).photo.backdrop)
    # without a canvas (--composite off) the model gets the same square, cut from the file
    alone = load_avatar_image(path, 256, framing=FaceFraming())
    assert alone.photo is None and np.abs(alone.crop.astype(int) - loaded.crop.astype(int)).mean() < 2
    # --crop-scale frames it tighter or wider
    wide = load_avatar_image(path, 256, canvas=Canvas(1280, 720), framing=FaceFraming(scale=2.5))
    assert wide.photo.layout.crop_rect[2] - wide.photo.layout.crop_rect[0] > 1.3 * (x1 - x0)


def test_a_photo_without_a_face_animates_its_centre_square_with_a_notice(tmp_path):
    from engines.framing import Canvas
    from live.pipeline.avatar_set import load_avatars
    from live.pipeline.avatars import FaceFraming
    path = _write(tmp_path / "wall.png", np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (120, 1, 3)))
    notices = []
    [avatar] = load_avatars(path, 64, on_skip=notices.append, canvas=Canvas(320, 240), framing=FaceFraming())
    assert avatar.face_found is False and len(notices) == 1 and "no face found in wall.png" in notices[0]
    # today's centre square (cut from the photo at its canvas size: the same square, resampled once more)
    assert np.abs(avatar.image.astype(int) - load_avatar(path, 64).astype(int)).mean() < 1.5
    assert avatar.photo.layout.crop_rect == (64.0, 24.0, 256.0, 216.0)  # 320x192 on the canvas: its centre


def test_an_avatar_framed_like_the_crop_keeps_working_as_before(tmp_path):
    from skimage.data import astronaut
    from engines.framing import Canvas
    from live.pipeline.avatars import FaceFraming, load_avatar_image
    fx, fy, fw, _ = KNOWN_FACE
    side = int(1.8 * fw)
    cx, cy = fx + fw // 2, fy + fw // 2
    face = cv2.resize(astronaut()[cy - side // 2:cy + side // 2, cx - side // 2:cx + side // 2], (256, 256),
                      interpolation=cv2.INTER_AREA)
    path = _write(tmp_path / "face.png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    for canvas in (None, Canvas(1280, 720)):
        loaded = load_avatar_image(path, 256, canvas=canvas, framing=FaceFraming())
        assert loaded.face_found and np.array_equal(loaded.crop, load_avatar(path, 256)), "the whole square"
    layout = loaded.photo.layout
    assert layout.region() == layout.photo_rect == (280, 0, 1000, 720) and not any(layout.feathered_sides())


@pytest.mark.parametrize("mode, rect", [("fit", (160, 0, 1120, 720)), ("fill", (0, 0, 1280, 720))])
def test_the_photo_is_kept_at_its_size_on_the_canvas_never_larger(tmp_path, mode, rect):
    from engines.framing import Canvas
    from live.pipeline.avatars import load_avatar_image
    big = np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), np.uint8)
    path = _write(tmp_path / "big.png", big)
    loaded = load_avatar_image(path, 256, canvas=Canvas(1280, 720, mode))
    assert loaded.photo.backdrop.shape == (720, 1280, 3) and loaded.photo.layout.photo_rect == rect
    x0, y0, x1, y1 = loaded.photo.layout.crop_rect
    assert all(float(v).is_integer() for v in (x0, y0, x1 - x0)), "the square lies on whole canvas pixels"


def test_a_transparent_photo_is_put_over_white_on_the_canvas(tmp_path):
    from engines.framing import Canvas
    from live.pipeline.avatars import load_avatar_image
    bgra = np.zeros((60, 80, 4), np.uint8)
    bgra[..., 2], bgra[:, :40, 3] = 255, 255  # red, the right half transparent
    loaded = load_avatar_image(_write(tmp_path / "cut.png", bgra), 32, canvas=Canvas(160, 120))
    backdrop = loaded.photo.backdrop
    assert tuple(backdrop[60, 20]) == (255, 0, 0) and tuple(backdrop[60, 140]) == (255, 255, 255)
