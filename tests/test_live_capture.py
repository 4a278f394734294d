import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import carphone_path
from live.devices import capture
from live.devices.capture import CapturedFrame, FrameSource, LatestFrameReader, open_source, to_bgr
from live.errors import CaptureError, UserError




def _frame(value: int, h=24, w=32) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = value % 256
    return img


class FakeCapture:
    """cv2.VideoCapture stand-in. script: frames (ndarray) or None (a failed read); after it, `tail` repeats."""

    def __init__(self, script=(), *, tail="fail", opened=True, fps=0.0, delay=0.0):
        self.script = list(script)
        self.tail = tail
        self.opened = opened
        self.fps = fps
        self.delay = delay
        self.reads = 0
        self.released = False
        self.props = {}
        self.counter = 0

    def isOpened(self):
        return self.opened

    def read(self):
        if self.delay:
            time.sleep(self.delay)
        self.reads += 1
        if self.script:
            item = self.script.pop(0)
        elif self.tail == "count":  # an endless camera: a new frame each read
            self.counter += 1
            item = _frame(self.counter)
        else:
            item = None
        return (item is not None), item

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released = True


def _factory(cap):
    return lambda target: cap


# ---------------------------------------------------------------- conversions

def test_to_bgr_variants():
    gray = np.full((4, 5), 7, np.uint8)
    assert to_bgr(gray).shape == (4, 5, 3) and (to_bgr(gray) == 7).all()
    assert to_bgr(gray[:, :, None]).shape == (4, 5, 3)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0] = 200
    out = to_bgr(bgra)
    assert out.shape == (4, 5, 3) and (out[..., 0] == 200).all()
    deep = np.full((4, 5, 3), 0xABCD, np.uint16)
    assert (to_bgr(deep) == 0xAB).all() and to_bgr(deep).dtype == np.uint8
    with pytest.raises(CaptureError, match="unsupported frame"):
        to_bgr(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(CaptureError, match="unsupported frame pixel type"):
        to_bgr(np.zeros((4, 5, 3), np.float32))


def test_camera_gray_and_bgra_frames_become_bgr():
    gray = np.full((6, 8), 50, np.uint8)
    bgra = np.zeros((6, 8, 4), np.uint8)
    bgra[..., 2] = 99
    src = open_source(3, capture_factory=_factory(FakeCapture([gray, bgra], tail="count")))
    a, b = src.read(), src.read()
    assert a.shape == b.shape == (6, 8, 3) and a.dtype == np.uint8
    assert (a == 50).all() and (b[..., 2] == 99).all() and (b[..., :2] == 0).all()


# ---------------------------------------------------------------- video files

def test_real_clip_reads_every_frame_then_none():
    path = carphone_path()
    with open_source(str(path)) as src:
        assert isinstance(src, FrameSource)
        assert not src.is_live
        assert src.name == path.name
        assert src.fps == pytest.approx(29.97, abs=0.01)
        assert src.frame_count == 120
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
        assert len(frames) == 120
        assert all(f.shape == (144, 176, 3) and f.dtype == np.uint8 for f in frames)
        assert src.read() is None


def test_real_clip_loop_restarts():
    path = carphone_path()
    with open_source(path, loop=True) as src:
        frames = [src.read() for _ in range(125)]
    assert all(f is not None for f in frames)
    # Frame 120 is frame 0 again after the restart.
    assert np.array_equal(frames[120], frames[0])


def _write_video(path: Path, n: int, fps=20.0, size=(32, 24)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert w.isOpened()
    for i in range(n):
        w.write(_frame(i * 40, h=size[1], w=size[0]))
    w.release()
    return path


def test_synthetic_video_and_fps_override(tmp_path):
    path = _write_video(tmp_path / "clip.mp4", 5, fps=20.0)
    src = open_source(path)
    assert src.fps == pytest.approx(20.0) and src.frame_count == 5
    n = 0
    while src.read() is not None:
        n += 1
    assert n == 5
    src.close()
    assert src.read() is None  # closed: no crash, just the end
    assert open_source(path, fps=12).fps == 12.0


def test_missing_video(tmp_path):
    with pytest.raises(CaptureError, match="driving video not found: .*nope.mp4"):
        open_source(tmp_path / "nope.mp4")


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 20])
def test_unreadable_video(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(CaptureError, match="cannot read video file .*bad.mp4") as e:
        open_source(bad)
    assert "\n" not in str(e.value)
    assert issubclass(CaptureError, UserError)


def test_unreadable_video_prints_no_ffmpeg_noise(tmp_path):
    """FFmpeg reads its log level once per process, so check in a fresh process as the app would run."""
    import subprocess
    import sys

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(range(256)) * 20)
    code = ("import sys; from live.devices.capture import open_source\n"
            "try:\n    open_source(sys.argv[1])\nexcept Exception as e:\n    print(e)")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=repo, capture_output=True, text=True)
    assert "cannot read video file" in result.stdout
    assert "moov atom" not in result.stderr


def test_truncated_real_clip(tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(carphone_path().read_bytes()[:3000])
    with pytest.raises(CaptureError, match="cut.mp4"):
        open_source(cut)


def test_video_that_opens_but_decodes_nothing(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(b"x")
    cap = FakeCapture([])
    with pytest.raises(CaptureError, match="no decodable frames"):
        open_source(path, capture_factory=_factory(cap))
    assert cap.released


# ---------------------------------------------------------------- image folders

def test_image_folder_sorted_then_end(tmp_path):
    for name, value in [("b.png", 20), ("a.png", 10), ("c.jpg", 30)]:
        cv2.imwrite(str(tmp_path / name), _frame(value))
    (tmp_path / "notes.txt").write_text("not an image")
    cv2.imwrite(str(tmp_path / "d.png"), np.full((24, 32), 40, np.uint8))  # grayscale file
    src = open_source(tmp_path)
    assert src.frame_count == 4 and src.fps == 30.0 and not src.is_live
    values = [int(round(float(src.read().mean()))) for _ in range(4)]
    assert values == [10, 20, 30, 40]
    assert src.read() is None


def test_image_folder_loop(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), _frame(100 + i))
    src = open_source(str(tmp_path), loop=True, fps=10)
    assert src.fps == 10.0
    assert [int(src.read()[0, 0, 0]) for _ in range(5)] == [100, 101, 100, 101, 100]


def test_empty_folder(tmp_path):
    with pytest.raises(CaptureError, match="no images in driving folder"):
        open_source(tmp_path)


def test_corrupt_image_in_folder(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _frame(1))
    (tmp_path / "b.png").write_bytes(b"garbage")
    src = open_source(tmp_path)
    src.read()
    with pytest.raises(CaptureError, match="cannot read image .*b.png"):
        src.read()


def test_single_image_is_a_still(tmp_path):
    f = tmp_path / "still.jpg"
    cv2.imwrite(str(f), _frame(77))
    src = open_source(f)
    assert src.read() is not None and src.read() is None
    src = open_source(f, loop=True)
    assert all(src.read() is not None for _ in range(3))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(CaptureError, match="bad.png"):
        open_source(bad)


def test_empty_spec():
    with pytest.raises(CaptureError, match="no driving source"):
        open_source("")


# ---------------------------------------------------------------- cameras

@pytest.mark.parametrize("spec", [99, "99"])
def test_camera_that_cannot_open(spec, capfd):
    with pytest.raises(CaptureError) as e:
        open_source(spec)
    msg = str(e.value)
    assert msg.startswith("cannot open camera 99: no such device")
    assert "--camera 0" in msg and "--driving FILE" in msg and "\n" not in msg
    assert "VIDEOIO" not in capfd.readouterr().err  # OpenCV's multi-line warnings are silenced


def test_fake_camera_not_opened_is_released():
    cap = FakeCapture(opened=False)
    with pytest.raises(CaptureError, match=r"cannot open camera 0: .*--camera 1"):
        open_source("0", capture_factory=_factory(cap))
    assert cap.released


def test_camera_settings_and_fps_fallback():
    cap = FakeCapture(tail="count", fps=0.0)
    src = open_source(2, width=640, height=480, fps=25, capture_factory=_factory(cap))
    assert src.is_live and src.name == "camera 2" and src.frame_count is None
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 640
    assert cap.props[cv2.CAP_PROP_FRAME_HEIGHT] == 480
    assert cap.props[cv2.CAP_PROP_FPS] == 25
    assert src.fps == 25.0  # camera reports 0: use the requested rate
    assert open_source(0, capture_factory=_factory(FakeCapture(tail="count"))).fps == 30.0
    assert open_source(0, capture_factory=_factory(FakeCapture(tail="count", fps=15.0))).fps == 15.0
    src.close()
    assert cap.released


def test_camera_tolerates_a_few_failed_reads():
    script = [_frame(1), None, None, _frame(2), None, _frame(3)]
    src = open_source(0, capture_factory=_factory(FakeCapture(script, tail="count")))
    assert [int(src.read()[0, 0, 0]) for _ in range(3)] == [1, 2, 3]


def test_camera_dies_mid_run():
    cap = FakeCapture([_frame(1), _frame(2), _frame(3)])  # then fails forever: unplugged
    src = open_source(7, capture_factory=_factory(cap))
    assert [int(src.read()[0, 0, 0]) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(CaptureError, match=r"^camera 7 stopped delivering frames \(unplugged\?\)$"):
        src.read()


def test_camera_opens_but_never_delivers(monkeypatch):
    monkeypatch.setattr(capture, "CAMERA_FIRST_FRAME_TIMEOUT_S", 0.05)
    cap = FakeCapture([])
    with pytest.raises(CaptureError, match="camera 4 opened but delivers no frames"):
        open_source(4, capture_factory=_factory(cap))
    assert cap.released


# ---------------------------------------------------------------- latest-frame reader

def test_reader_reports_camera_death():
    cap = FakeCapture([_frame(1), _frame(2)])
    src = open_source(5, capture_factory=_factory(cap))
    with LatestFrameReader(src) as reader:
        deadline = time.time() + 5
        while reader.error is None and time.time() < deadline:
            time.sleep(0.01)
        assert reader.error == "camera 5 stopped delivering frames (unplugged?)"
        last = reader.get(timeout=0.1)
        assert last is not None and last.index == 1  # the newest good frame is still handed out once
        assert reader.get(timeout=0.1) is None
        assert not reader.finished


def test_slow_consumer_sees_only_recent_frames():
    cap = FakeCapture(tail="count", delay=0.002)  # a ~500 fps camera
    src = open_source(0, capture_factory=_factory(cap))
    with LatestFrameReader(src) as reader:
        assert not reader.realtime
        seen = []
        for _ in range(6):
            time.sleep(0.06)  # a consumer much slower than the camera
            got = reader.get(timeout=1.0)
            assert isinstance(got, CapturedFrame)
            # The frame handed out is the newest one read, not an old queued one.
            assert reader.frames_read - 1 - got.index <= 5  # a queue would lag ~30 frames here
            assert time.perf_counter() - got.timestamp < 0.1
            seen.append(got.index)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        dropped_mid = reader.dropped
        time.sleep(0.06)
        assert reader.dropped > dropped_mid > 10
        assert reader.error is None
    assert not reader.running
    # Every frame read was either returned or counted as dropped (at most one still waiting): no hidden queue.
    assert reader.frames_read - reader.dropped - len(seen) <= 1


def test_get_never_returns_the_same_frame_twice():
    cap = FakeCapture([_frame(1)], tail="fail")
    src = open_source(0, capture_factory=_factory(cap))
    src.read()  # pending first frame consumed; the next reads fail -> error after retries
    cap.script = [_frame(9)] + [None] * 100
    reader = LatestFrameReader(src).start()
    first = reader.get(timeout=1.0)
    assert first is not None and int(first.image[0, 0, 0]) == 9
    t = time.perf_counter()
    assert reader.get(timeout=0.2) is None
    assert time.perf_counter() - t < 1.0
    reader.stop()


def test_file_reader_finishes_and_paces_realtime(tmp_path):
    for i in range(10):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), _frame(i))
    src = open_source(tmp_path, fps=50)
    t0 = time.perf_counter()
    with LatestFrameReader(src) as reader:
        assert reader.realtime
        got = []
        while (f := reader.get(timeout=2.0)) is not None:
            got.append(f)
        elapsed = time.perf_counter() - t0
        assert reader.finished and reader.error is None
    # 10 frames at 50 fps span 9 periods = 0.18 s; a consumer this fast sees every one in order.
    assert elapsed >= 0.16
    assert [f.index for f in got] == list(range(10))
    assert [int(f.image[0, 0, 0]) for f in got] == list(range(10))
    gaps = np.diff([f.timestamp for f in got])
    assert gaps.mean() == pytest.approx(0.02, abs=0.01)


def test_file_reader_as_fast_as_possible(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), _frame(i))
    src = open_source(tmp_path, fps=1)  # realtime would take 2 s
    t0 = time.perf_counter()
    with LatestFrameReader(src, realtime=False) as reader:
        while not reader.finished:
            assert time.perf_counter() - t0 < 1.0
            time.sleep(0.005)
        assert reader.frames_read == 3
        last = reader.get(timeout=0.1)
        assert last.index == 2 and reader.dropped == 2
        assert reader.get(timeout=0.1) is None


def test_real_clip_through_reader_with_loop():
    src = open_source(carphone_path(), loop=True)
    with LatestFrameReader(src, realtime=False) as reader:
        deadline = time.time() + 10
        while reader.frames_read < 130 and time.time() < deadline:
            time.sleep(0.01)
        assert reader.frames_read >= 130 and not reader.finished
        assert reader.get(timeout=1.0).image.shape == (144, 176, 3)
    src.close()


def test_reader_stop_interrupts_pacing_and_wakes_getters(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _frame(1))
    src = open_source(tmp_path, loop=True, fps=0.5)  # 2 s between frames
    reader = LatestFrameReader(src).start()
    assert reader.get(timeout=1.0) is not None
    result = []
    waiter = threading.Thread(target=lambda: result.append(reader.get(timeout=None)))
    waiter.start()
    time.sleep(0.05)
    t = time.perf_counter()
    reader.stop()
    waiter.join(1.0)
    assert not waiter.is_alive() and result == [None]
    assert time.perf_counter() - t < 1.0 and not reader.running


def test_reader_unexpected_exception_becomes_one_line_error():
    class Broken(FrameSource):
        name = "broken"

        def read(self):
            raise RuntimeError("driver said\nno")

    with LatestFrameReader(Broken(), realtime=False) as reader:
        assert reader.get(timeout=1.0) is None
        assert reader.error == "broken: RuntimeError: driver said no"


def test_reader_misuse():
    reader = LatestFrameReader(open_source(0, capture_factory=_factory(FakeCapture(tail="count"))))
    with pytest.raises(RuntimeError, match="before start"):
        reader.get()
    reader.start()
    with pytest.raises(RuntimeError, match="already started"):
        reader.start()
    reader.stop()
    reader.stop()  # idempotent
