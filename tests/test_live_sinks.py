import glob
import platform

import numpy as np
import pytest
from pyvirtualcam.camera import BACKENDS

from live.errors import SinkError, UserError
from live.devices.sinks import (CANVAS_MODES, DEFAULT_CANVAS_COLOR, VideoFileSink,
                        VirtualCameraSink, install_hint, place_on_canvas)
from tests.support import MemoryCamera, read_video


def _avatar(size=256, color=(200, 50, 10)) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = color
    return img


# ---------------------------------------------------------------- canvas

def test_fit_letterboxes_centred():
    out = place_on_canvas(_avatar(), 1280, 720)
    assert out.shape == (720, 1280, 3) and out.dtype == np.uint8
    # 720x720 square in the middle: columns 280..999; grey bars on both sides.
    assert (out[:, 280:1000] == (200, 50, 10)).all()
    assert (out[:, :280] == DEFAULT_CANVAS_COLOR).all() and (out[:, 1000:] == DEFAULT_CANVAS_COLOR).all()


def test_fit_portrait_canvas_and_custom_colour():
    out = place_on_canvas(_avatar(100), 60, 100, color=(0, 0, 255))
    assert out.shape == (100, 60, 3)
    assert (out[20:80, :] == (200, 50, 10)).all()
    assert (out[:20] == (0, 0, 255)).all() and (out[80:] == (0, 0, 255)).all()


def test_fill_covers_and_crops():
    img = _avatar(100)
    img[:, :50] = (0, 255, 0)  # left half green, right half orange
    out = place_on_canvas(img, 200, 100, mode="fill")
    assert out.shape == (100, 200, 3)
    # Scaled to 200x200 then cropped vertically: both halves span the full height, no border colour.
    assert (out[:, :95] == (0, 255, 0)).all() and (out[:, 105:] == (200, 50, 10)).all()
    assert not (out == DEFAULT_CANVAS_COLOR).all(axis=2).any()


def test_identity_and_no_stretch_mode():
    with pytest.raises(ValueError, match="stretch"):  # never offered by --vcam-mode: a face is never distorted
        place_on_canvas(_avatar(64), 128, 32, mode="stretch")
    img = _avatar(64)
    assert np.array_equal(place_on_canvas(img, 64, 64), img)


def test_canvas_downscale_and_odd_sizes():
    for mode in CANVAS_MODES:
        out = place_on_canvas(_avatar(512), 321, 99, mode=mode)
        assert out.shape == (99, 321, 3), mode


def test_a_sink_places_frames_into_one_buffer_per_frame_size():
    from live.devices.sinks import CanvasBuffer
    for mode in CANVAS_MODES:
        canvas = CanvasBuffer(1280, 720, mode)
        first, second = _avatar(256), _avatar(256)
        second[:] = (1, 2, 3)
        out = canvas.place(first)
        assert np.array_equal(out, place_on_canvas(first, 1280, 720, mode))
        again = canvas.place(second)
        assert again is out and np.array_equal(again, place_on_canvas(second, 1280, 720, mode)), mode
        assert np.array_equal(canvas.place(_avatar(100)), place_on_canvas(_avatar(100), 1280, 720, mode))
    full = np.zeros((720, 1280, 3), np.uint8)
    assert np.shares_memory(CanvasBuffer(1280, 720).place(full), full), "a frame of the canvas' size goes as it is"


def test_canvas_bad_input():
    with pytest.raises(ValueError, match="unknown canvas mode"):
        place_on_canvas(_avatar(), 10, 10, mode="zoom")
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        place_on_canvas(np.zeros((8, 8), np.uint8), 10, 10)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        place_on_canvas(np.zeros((8, 8, 3), np.float32), 10, 10)
    with pytest.raises(ValueError, match="positive"):
        place_on_canvas(_avatar(), 0, 10)


# ---------------------------------------------------------------- virtual camera

def test_virtual_camera_receives_canvas_frames(memory_backend):
    with VirtualCameraSink(640, 360, fps=25, backend=memory_backend) as sink:
        assert sink.name == "mem0" and sink.backend == memory_backend
        sink.send(_avatar(256))
        sink.send(_avatar(256, color=(1, 2, 3)))
        assert sink.frames_sent == 2
    cam = MemoryCamera.instances[-1]
    assert (cam.width, cam.height, cam.fps) == (640, 360, 25)
    assert len(cam.frames) == 2 and cam.closed == 1
    first = cam.frames[0]
    assert first.shape == (360, 640, 3)
    assert (first[:, 140:500] == (200, 50, 10)).all()          # RGB order kept: no BGR swap on the way
    assert (first[:, :140] == DEFAULT_CANVAS_COLOR).all()
    assert (cam.frames[1][:, 140:500] == (1, 2, 3)).all()
    assert sink.name == "mem0"  # still known after close


def test_virtual_camera_modes_and_device(memory_backend):
    sink = VirtualCameraSink(200, 100, mode="fill", device="mem1", backend=memory_backend)
    assert sink.name == "mem1"
    sink.send(_avatar(50))
    assert MemoryCamera.instances[-1].frames[0].shape == (100, 200, 3)
    assert not (MemoryCamera.instances[-1].frames[0] == DEFAULT_CANVAS_COLOR).all(axis=2).any()
    sink.close()
    sink.close()  # safe twice
    assert MemoryCamera.instances[-1].closed == 1
    with pytest.raises(RuntimeError, match="after close"):
        sink.send(_avatar(50))


def test_virtual_camera_pace(memory_backend):
    import time
    sink = VirtualCameraSink(64, 64, fps=20, backend=memory_backend, pace=True)
    t = time.perf_counter()
    for _ in range(4):
        sink.send(_avatar(64))
    assert time.perf_counter() - t >= 0.1  # 4 frames at 20 fps, paced by pyvirtualcam
    sink.close()


def test_virtual_camera_missing_device(memory_backend):
    with pytest.raises(SinkError) as e:
        VirtualCameraSink(64, 64, device="mem9", backend=memory_backend)
    assert "cannot open virtual camera mem9 ('memory-test' backend: Device mem9 does not exist.)" in str(e.value)


def test_unknown_backend_is_one_line(capfd):
    with pytest.raises(SinkError, match=r"unknown virtual camera backend 'nope' \(available: .*\)"):
        VirtualCameraSink(backend="nope")
    assert "Traceback" not in capfd.readouterr().err


def test_missing_driver_message_is_one_line(capfd):
    # On this machine (and CI) no v4l2loopback device exists, so the real default backend fails.
    if platform.system() == "Linux" and glob.glob("/dev/video*"):
        pytest.skip("video devices present: a v4l2loopback camera may really open here")
    try:
        sink = VirtualCameraSink(640, 480)
    except SinkError as e:
        msg = str(e)
        assert isinstance(e, UserError)
    else:
        sink.close()
        pytest.skip(f"a virtual camera is installed here ({sink.name})")
    assert "\n" not in msg
    assert msg.startswith("cannot open a virtual camera (")
    assert install_hint() in msg
    if platform.system() == "Linux":
        assert "No v4l2 loopback device found" in msg
        assert 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="live avatar"' in msg
        assert "v4l2loopback-dkms" in msg
    assert "Traceback" not in capfd.readouterr().err


def test_multi_backend_failure_is_joined_on_one_line(monkeypatch):
    class Refuses:
        def __init__(self, **kw):
            raise RuntimeError("first line\nsecond line")

    monkeypatch.setitem(BACKENDS, "refuses-test", Refuses)
    with pytest.raises(SinkError) as e:
        VirtualCameraSink(backend="refuses-test")
    assert "first line; second line" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("system, expected", [
    ("Linux", 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="live avatar"'),
    ("Windows", "OBS Studio >= 26.1"),
    ("Windows", "Unity Capture"),
    ("Darwin", "OBS Studio >= 26.1"),
    ("FreeBSD", "no virtual camera backend for FreeBSD"),
])
def test_install_hint_per_os(system, expected):
    hint = install_hint(system)
    assert expected in hint and "\n" not in hint


def test_virtual_camera_bad_format():
    with pytest.raises(SinkError, match="invalid virtual camera format"):
        VirtualCameraSink(0, 720)
    with pytest.raises(ValueError, match="unknown canvas mode"):
        VirtualCameraSink(mode="zoom")


# ---------------------------------------------------------------- video file

def test_video_file_roundtrip(tmp_path):
    path = tmp_path / "out.mp4"
    with VideoFileSink(path, fps=25) as sink:
        for i in range(12):
            sink.send(_avatar(64, color=(i * 20, 100, 200)))
        assert sink.size == (64, 64) and sink.frames_sent == 12
    frames, fps = read_video(path)
    assert len(frames) == 12 and fps == pytest.approx(25)
    assert frames[0].shape == (64, 64, 3)
    # Colour survives (stored BGR by OpenCV, so the RGB orange-ish blue reads back as B=200 R=0).
    assert abs(int(frames[0][32, 32, 0]) - 200) < 12 and abs(int(frames[0][32, 32, 2]) - 0) < 12


def test_video_file_fixed_size_places_frames(tmp_path):
    path = tmp_path / "wide.mp4"
    sink = VideoFileSink(str(path), fps=12, size=(160, 96))
    for _ in range(3):
        sink.send(_avatar(48))
    sink.close()
    sink.close()  # safe twice
    frames, fps = read_video(path)
    assert len(frames) == 3 and frames[0].shape == (96, 160, 3) and fps == pytest.approx(12)
    with pytest.raises(RuntimeError, match="after close"):
        sink.send(_avatar(48))


def test_video_file_survives_exception_in_loop(tmp_path):
    path = tmp_path / "crash.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoFileSink(path, fps=30) as sink:
            for i in range(7):
                sink.send(_avatar(32))
            raise KeyboardInterrupt  # the user pressed Ctrl+C mid-run
    frames, _ = read_video(path)
    assert len(frames) == 7


def test_video_file_finalised_by_garbage_collection(tmp_path):
    path = tmp_path / "forgot.mp4"
    sink = VideoFileSink(path, fps=30)
    for _ in range(4):
        sink.send(_avatar(32))
    del sink
    import gc
    gc.collect()
    assert len(read_video(path)[0]) == 4


def test_video_file_unwritable(tmp_path):
    with pytest.raises(SinkError, match="folder .*missing does not exist"):
        VideoFileSink(tmp_path / "missing" / "out.mp4", fps=30)
    with pytest.raises(SinkError, match="is a folder"):
        VideoFileSink(tmp_path, fps=30)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="cannot write video file"):
        VideoFileSink(blocker / "out.mp4", fps=30)
    with pytest.raises(SinkError, match="fps must be positive"):
        VideoFileSink(tmp_path / "a.mp4", fps=0)
    with pytest.raises(SinkError, match="invalid size"):
        VideoFileSink(tmp_path / "a.mp4", fps=30, size=(0, 10))


def test_video_file_unused_is_not_left_behind(tmp_path):
    path = tmp_path / "never.mp4"
    VideoFileSink(path, fps=30).close()
    assert not path.exists()


def test_video_file_bad_frame(tmp_path):
    with VideoFileSink(tmp_path / "a.mp4", fps=30) as sink:
        with pytest.raises(ValueError, match="uint8 HxWx3"):
            sink.send(np.zeros((4, 4), np.uint8))
