"""Cameras by name: listing from a fake sysfs tree with fake V4L2 probes, the V4L2 ioctls against a fake driver,
`--camera N|NAME` resolution, virtual cameras marked, and the stable id the calibration is saved under."""
import ctypes
import os

import numpy as np
import pytest

from live.devices import cameras as C
from live.devices.cameras import Camera, CameraList, V4l2Info, camera_spec, choose_camera, format_listing
from live.errors import CaptureError


def make_node(sysfs, index, name, usb=None):
    node = sysfs / f"video{index}"
    node.mkdir(parents=True)
    (node / "name").write_text(name + "\n")
    if usb is not None:  # a USB webcam: device -> the interface folder, whose parent has the ids
        port = sysfs.parent / "devices" / f"usb-{index}"
        iface = port / f"{index}-1:1.0"
        iface.mkdir(parents=True)
        (port / "idVendor").write_text(usb[0] + "\n")
        (port / "idProduct").write_text(usb[1] + "\n")
        os.symlink(iface, node / "device")
    return node


@pytest.fixture
def machine(tmp_path):
    """video0 a C920 (with a metadata node video1), video2 our v4l2loopback output, video3 OBS, video4 a webcam
    the probe cannot open (permissions), video5 a second 'USB Camera'-like name."""
    sysfs, dev = tmp_path / "sys" / "video4linux", tmp_path / "dev"
    dev.mkdir()
    make_node(sysfs, 0, "HD Pro Webcam C920", usb=("046d", "082d"))
    make_node(sysfs, 1, "HD Pro Webcam C920", usb=("046d", "082e"))
    make_node(sysfs, 2, "live avatar")
    make_node(sysfs, 3, "OBS Virtual Camera")
    make_node(sysfs, 4, "USB Camera", usb=("1234", "5678"))
    make_node(sysfs, 5, "HD USB Camera", usb=("abcd", "ef01"))
    by_id = dev / "v4l" / "by-id"
    by_id.mkdir(parents=True)
    for i in range(6):
        (dev / f"video{i}").write_text("")
    os.symlink(dev / "video0", by_id / "usb-046d_HD_Pro_Webcam_C920_8F2C6B1F-video-index0")
    os.symlink(dev / "video1", by_id / "usb-046d_HD_Pro_Webcam_C920_8F2C6B1F-video-index1")
    infos = {
        "video0": V4l2Info("uvcvideo", "HD Pro Webcam C920", True, ((1920, 1080), (1280, 720), (640, 480))),
        "video1": V4l2Info("uvcvideo", "HD Pro Webcam C920", False),
        "video2": V4l2Info("v4l2 loopback", "live avatar", True, ((1280, 720),)),
        "video3": V4l2Info("v4l2 loopback", "OBS Virtual Camera", True),
        "video5": V4l2Info("uvcvideo", "HD USB Camera", True, (), "320x240..1920x1080"),
    }
    listing = C.linux_cameras(sysfs, dev, probe=lambda path: infos.get(path.name))
    return listing, dev


def test_listing_from_sysfs(machine):
    listing, dev = machine
    assert [c.index for c in listing.cameras] == [0, 2, 3, 4, 5]  # the metadata node is left out
    c920, ours, obs, usb, hd = listing.cameras
    assert (c920.name, c920.driver, c920.virtual, c920.path) == ("HD Pro Webcam C920", "uvcvideo", None,
                                                                 str(dev / "video0"))
    assert c920.sizes_text() == "1920x1080 1280x720 640x480"
    assert ours.virtual == "this tool's output" and obs.virtual == "v4l2loopback"
    assert usb.virtual is None and usb.driver is None and usb.sizes == ()  # probe failed: still listed
    assert hd.sizes_text() == "320x240..1920x1080"
    # stable ids: the by-id link (serial), else name + USB ids, else the name
    assert c920.stable_id == "usb-046d_HD_Pro_Webcam_C920_8F2C6B1F-video-index0"
    assert usb.stable_id == "USB Camera [1234:5678]"
    assert ours.stable_id == "live avatar"


def test_listing_lines_mark_virtual_cameras(machine):
    listing, _ = machine
    lines = format_listing(listing)
    assert len(lines) == 5
    assert lines[0].split()[:2] == ["0", "HD"] and "1920x1080 1280x720 640x480" in lines[0]
    assert "VIRTUAL (this tool's output)" in lines[1] and "VIRTUAL (v4l2loopback)" in lines[2]
    assert "VIRTUAL" not in lines[0] + lines[3] + lines[4]
    assert "resolutions not listed" in lines[3]


def test_no_video4linux_at_all(tmp_path):
    listing = C.linux_cameras(tmp_path / "missing", tmp_path, probe=lambda p: None)
    assert listing.cameras == [] and listing.complete
    assert format_listing(listing) == [f"no cameras found (looked in {tmp_path / 'missing'})"]


def test_a_sysfs_node_without_hardware_is_virtual(tmp_path):
    make_node(tmp_path / "v4l", 7, "Some Cam")
    listing = C.linux_cameras(tmp_path / "v4l", tmp_path, probe=lambda p: None)
    assert listing.cameras[0].virtual == "virtual camera"


@pytest.mark.parametrize("spec, index", [("c920", 0), ("HD PRO", 0), ("usb camera", 4), ("hd usb", 5),
                                         ("obs", 3), ("2", 2), (2, 2), ("Live Avatar", 2)])
def test_camera_by_index_or_name(machine, spec, index):
    listing, _ = machine
    assert choose_camera(spec, listing).index == index


def test_ambiguous_name_lists_the_matches(machine):
    listing, _ = machine
    with pytest.raises(CaptureError) as e:
        choose_camera("camera", listing)  # OBS Virtual Camera, USB Camera, HD USB Camera
    message = str(e.value)
    assert "matches 3 cameras" in message and "\n" not in message
    for label in ("3 'OBS Virtual Camera' (virtual)", "4 'USB Camera'", "5 'HD USB Camera'"):
        assert label in message
    assert "C920" not in message


def test_unknown_name_lists_what_exists(machine):
    listing, _ = machine
    with pytest.raises(CaptureError, match=r"'logitech' matches no camera; cameras here: 0 'HD Pro Webcam C920', "
                                           r"2 'live avatar' \(virtual\)"):
        choose_camera("logitech", listing)


def test_an_index_not_on_a_complete_list_is_refused(machine):
    listing, _ = machine
    with pytest.raises(CaptureError, match=r"cannot open camera 1: there is no such camera \(--camera 1\); "
                                            r"cameras here: 0 "):
        choose_camera(1, listing)  # the metadata node


def test_index_only_platforms_pass_the_index_through():
    listing = CameraList(where="asked Media Foundation/DirectShow", notice="names need cv2-enumerate-cameras")
    camera = choose_camera(3, listing)
    assert (camera.index, camera.stable_id) == (3, "camera 3")  # the id calibrations were saved under before
    with pytest.raises(CaptureError, match="matches no camera: names need cv2-enumerate-cameras"):
        choose_camera("logi", listing)
    assert choose_camera(0, CameraList(where="x", complete=True)).index == 0  # nothing found: OpenCV tries


def test_camera_spec():
    import argparse
    assert camera_spec(" 2 ") == 2 and camera_spec("Logitech C920") == "Logitech C920"
    with pytest.raises(argparse.ArgumentTypeError):
        camera_spec("  ")  # would match every name


def test_own_output_is_refused_and_other_virtual_cameras_noticed(machine):
    listing, dev = machine
    ours, webcam = listing.cameras[1], listing.cameras[0]
    with pytest.raises(CaptureError, match="the avatar would drive itself"):
        C.check_not_own_output(ours, str(dev / "video2"))
    assert "is a virtual camera (this tool's output)" in C.check_not_own_output(ours, None)
    assert C.check_not_own_output(webcam, str(dev / "video2")) is None
    logged = []
    assert C.camera_for_run("avatar", None, logged.append, listing=listing).index == 2
    assert logged and logged[0].startswith("notice: camera 2 'live avatar' (virtual) is a virtual camera")


@pytest.mark.parametrize("name, driver, kind", [
    ("Integrated Camera", "uvcvideo", None), ("Dummy video device (0x0000)", None, "v4l2loopback"),
    ("Whatever", "v4l2 loopback", "v4l2loopback"), ("Unity Video Capture", None, "Unity Capture"),
    ("OBS Virtual Camera", None, "OBS Virtual Camera"), ("live avatar", "v4l2 loopback", "this tool's output")])
def test_virtual_kinds(name, driver, kind):
    assert C.virtual_kind(name, driver) == kind


# --- the ioctls against a fake driver ---------------------------------------------------------------------------
class FakeDriver:
    """Answers QUERYCAP / ENUM_FMT / ENUM_FRAMESIZES like a V4L2 driver: EINVAL past the last entry."""

    def __init__(self, caps=C.CAP_VIDEO_CAPTURE, formats=None):
        self.caps = caps
        self.formats = formats if formats is not None else {
            0x47504A4D: [(1, (1280, 720)), (1, (640, 480))],   # MJPG
            0x56595559: [(1, (640, 480)), (1, (1920, 1080))],  # YUYV
        }
        self.closed = []

    def ioctl(self, fd, request, arg, mutate):
        assert fd == 42 and mutate
        if request == C.VIDIOC_QUERYCAP:
            arg.driver, arg.card = b"uvcvideo", b"Fake Cam"
            arg.capabilities = C.CAP_DEVICE_CAPS | 0xFFFF
            arg.device_caps = self.caps
            return 0
        fourccs = list(self.formats)
        if request == C.VIDIOC_ENUM_FMT:
            assert arg.type == C.BUF_TYPE_VIDEO_CAPTURE
            if arg.index >= len(fourccs):
                raise OSError(22, "Invalid argument")
            arg.pixelformat = fourccs[arg.index]
            return 0
        if request == C.VIDIOC_ENUM_FRAMESIZES:
            sizes = self.formats[arg.pixel_format]
            if arg.index >= len(sizes):
                raise OSError(22, "Invalid argument")
            kind, values = sizes[arg.index]
            arg.type = kind
            for i, v in enumerate(values):
                arg.size[i] = v
            return 0
        raise AssertionError(f"unexpected ioctl {request:#x}")


def test_ioctl_numbers_and_struct_sizes_match_videodev2():
    assert (ctypes.sizeof(C._Capability), ctypes.sizeof(C._FormatDesc), ctypes.sizeof(C._FrameSize)) == (104, 64, 44)
    assert (C.VIDIOC_QUERYCAP, C.VIDIOC_ENUM_FMT, C.VIDIOC_ENUM_FRAMESIZES) == (0x80685600, 0xC0405602, 0xC02C564A)


def test_probe_reads_driver_and_sizes(monkeypatch):
    driver = FakeDriver()
    monkeypatch.setattr(C.os, "close", driver.closed.append)
    info = C.probe_v4l2("/dev/video0", ioctl=driver.ioctl, opener=lambda path: 42)
    assert info == V4l2Info("uvcvideo", "Fake Cam", True, ((1920, 1080), (1280, 720), (640, 480)))
    assert driver.closed == [42]


def test_probe_stepwise_metadata_and_unopenable(monkeypatch):
    monkeypatch.setattr(C.os, "close", lambda fd: None)
    stepwise = FakeDriver(formats={1: [(3, (160, 1920, 8, 120, 1080, 8))]})
    assert C.probe_v4l2("x", ioctl=stepwise.ioctl, opener=lambda p: 42).size_range == "160x120..1920x1080"
    metadata = FakeDriver(caps=0x00800000)  # V4L2_CAP_META_CAPTURE only
    assert C.probe_v4l2("x", ioctl=metadata.ioctl, opener=lambda p: 42).captures is False

    def denied(path):
        raise PermissionError(13, "Permission denied")
    assert C.probe_v4l2("x", ioctl=stepwise.ioctl, opener=denied) is None


def test_probe_on_a_file_that_is_not_a_device(tmp_path):
    plain = tmp_path / "video0"
    plain.write_bytes(b"")
    assert C.probe_v4l2(plain) is None  # ENOTTY from the real ioctl


# --- Windows / macOS through cv2-enumerate-cameras ------------------------------------------------------------------
def test_other_platforms_use_the_package_or_say_index_only():
    listing = C.other_cameras("Windows", lambda system: [(0, "Integrated Webcam", r"\\?\usb#vid_0c45&pid_6713"),
                                                         (1, "OBS Virtual Camera", None)])
    assert [c.label for c in listing.cameras] == ["0 'Integrated Webcam'", "1 'OBS Virtual Camera' (virtual)"]
    assert listing.cameras[0].stable_id == r"\\?\usb#vid_0c45&pid_6713" and not listing.complete
    assert choose_camera(5, listing).index == 5  # an incomplete list does not refuse an index

    def missing(system):
        raise ImportError("No module named 'cv2_enumerate_cameras'")
    lines = format_listing(C.other_cameras("Darwin", missing))
    assert lines == ["notice: camera names on Darwin need the cv2-enumerate-cameras package (pip install "
                     "cv2-enumerate-cameras); without it --camera takes an index: 0, 1, ...",
                     "no cameras found (asked AVFoundation)"]


# --- the app: --list-cameras, --camera NAME, the calibration keyed by the stable id --------------------------------
def fake_listing():
    return CameraList([Camera(0, "Integrated Camera", "/dev/video0", "uvcvideo", ((1280, 720),), None, None,
                              "usb-Integrated_Camera-video-index0"),
                       Camera(2, "live avatar", "/dev/video2", "v4l2 loopback", (), None, "this tool's output",
                              "live avatar")], where="looked in /sys/class/video4linux", complete=True)


def test_list_cameras_needs_no_avatar(capsys, monkeypatch):
    from live.cli.app import main
    monkeypatch.setattr(C, "list_cameras", fake_listing)
    assert main(["--list-cameras"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["0", "Integrated", "Camera", "1280x720", "[/dev/video0]"]
    assert "VIRTUAL (this tool's output)" in out[1]


class FakeCapture:
    opened = []

    def __init__(self, index):
        FakeCapture.opened.append(index)
        self.frames = 0

    def isOpened(self):
        return True

    def set(self, *a):
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        self.frames += 1
        return True, np.full((120, 160, 3), 90, np.uint8)

    def release(self):
        pass


def test_camera_by_name_through_the_app_keys_the_calibration_by_stable_id(capsys, monkeypatch, tmp_path):
    import cv2
    import calibration.persistence as persistence
    from live.cli.app import main
    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "list_cameras", fake_listing)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    keys = []
    real = persistence.default_calibration_path
    monkeypatch.setattr(persistence, "default_calibration_path", lambda key: keys.append(key) or real(key))
    avatar = tmp_path / "face.png"
    cv2.imwrite(str(avatar), np.full((64, 64, 3), 128, np.uint8))
    FakeCapture.opened = []
    code = main(["--avatar", str(avatar), "--camera", "integrated", "--no-vcam", "--no-preview",
                 "--deterministic-weights", "--backend", "torch", "--max-frames", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert FakeCapture.opened == [0]
    assert keys == ["usb-Integrated_Camera-video-index0"]

    code = main(["--avatar", str(avatar), "--camera", "webcam", "--no-vcam", "--no-preview"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "'webcam' matches no camera; cameras here: 0 'Integrated Camera', 2 'live avatar' (virtual)" in err


def test_a_run_refuses_to_drive_from_the_virtual_camera_it_writes_to(capsys, monkeypatch, tmp_path):
    """pyvirtualcam picks the first free loopback device: if that is the --camera device, the run stops."""
    import cv2
    import live.devices.sinks
    from live.cli.app import main
    loopback = tmp_path / "video0"
    loopback.write_text("")
    listing = CameraList([Camera(0, "Dummy video device (0x0000)", str(loopback), "v4l2 loopback",
                                 virtual="v4l2loopback", stable_id="dummy")], where="test", complete=True)
    monkeypatch.setattr(C, "list_cameras", lambda: listing)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    closed = []

    class FakeVirtualCamera:
        def __init__(self, *args, **kwargs):
            self.name = str(loopback)

        def close(self):
            closed.append(self.name)
    monkeypatch.setattr(live.devices.sinks, "VirtualCameraSink", FakeVirtualCamera)
    avatar = tmp_path / "face.png"
    cv2.imwrite(str(avatar), np.full((64, 64, 3), 128, np.uint8))
    code = main(["--avatar", str(avatar), "--camera", "0", "--vcam", "--no-preview", "--deterministic-weights",
                 "--backend", "torch", "--max-frames", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    assert f"camera 0 'Dummy video device (0x0000)' (virtual) is the virtual camera this run writes to " \
           f"({loopback}): the avatar would drive itself" in err
    assert "notice: camera 0 'Dummy video device (0x0000)' (virtual) is a virtual camera" in err
    assert closed == [str(loopback)]


# --- device names are text from outside: one safe line wherever they are printed --------------------------------
FORGED = "Cam\x1b[2J\x1b]0;owned\x07\nerror: forged line\r\u202e"


def test_names_from_sysfs_and_v4l2_are_printable_lines(tmp_path):
    sysfs, dev = tmp_path / "sys" / "video4linux", tmp_path / "dev"
    dev.mkdir()
    make_node(sysfs, 0, FORGED, usb=("046d", "082d"))
    make_node(sysfs, 1, "")  # no sysfs name: the V4L2 card name is used
    (sysfs / "video2").mkdir()
    (sysfs / "video2" / "name").symlink_to("/dev/zero")  # never read without end
    infos = {"video0": V4l2Info("uvc\x1b[31mvideo", "x", True), "video1": V4l2Info("uvcvideo", FORGED, True)}
    listing = C.linux_cameras(sysfs, dev, probe=lambda path: infos.get(path.name))
    assert [c.index for c in listing.cameras] == [0, 1, 2]
    for camera in listing.cameras:
        assert camera.name.isprintable() and "\x1b" not in camera.name and "\n" not in camera.name
    assert listing.cameras[0].name == listing.cameras[1].name == "Cam error: forged line"
    assert listing.cameras[0].driver == "uvcvideo" and listing.cameras[2].name == "video2"
    lines = format_listing(listing)
    assert len(lines) == 3 and not any(line.startswith("error:") for line in lines)
    assert all(line.isprintable() for line in lines)
    # --camera NAME matches the text the listing shows, and the refusals print it as safely
    with pytest.raises(CaptureError, match="matches 2 cameras") as info:
        choose_camera("error: forged", listing)
    assert str(info.value).isprintable()


def test_names_from_other_systems_are_printable_lines():
    listing = C.other_cameras("Windows", enumerate_=lambda system: [(0, FORGED, "\\\\?\\usb#vid\x1b[0m"),
                                                                    (1, "\x1b[2J", None)])
    assert [c.name for c in listing.cameras] == ["Cam error: forged line", "camera 1"]
    assert all(line.isprintable() for line in format_listing(listing))

    def broken(system):
        raise OSError("driver said:\x1b[31m\nerror: forged")
    notice = C.other_cameras("Windows", enumerate_=broken).notice
    assert notice.isprintable() and "\n" not in notice


def test_the_virtual_camera_notice_shows_a_printable_name(tmp_path, capsys):
    import cv2
    import pyvirtualcam
    from pyvirtualcam.camera import BACKENDS

    from live.cli.app import main
    from tests.support import MemoryCamera

    class ForgedName(MemoryCamera):
        def device(self):
            return FORGED

    pyvirtualcam.register_backend("forged-test", ForgedName)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.full((64, 64, 3), 90, np.uint8))
    try:
        code = main(["--avatar", str(face), "--driving", str(face), "--vcam", "--vcam-backend", "forged-test",
                     "--no-preview", "--max-frames", "1", "--deterministic-weights", "--backend", "torch",
                     "--device", "cpu"])
    finally:
        BACKENDS.pop("forged-test", None)
    err = capsys.readouterr().err
    assert code == 0, err
    [notice] = [line for line in err.splitlines() if line.startswith("virtual camera:")]
    assert "Cam error: forged line" in notice and notice.isprintable()
    assert not any(line.startswith("error:") for line in err.splitlines()) and "\x1b" not in err
