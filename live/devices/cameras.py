"""Which cameras this machine has, and which one `--camera N|NAME` means.

Per camera: the index OpenCV opens it by (what `--camera N` takes), the device name, the resolutions it offers,
whether it is a virtual camera (v4l2loopback, OBS Virtual Camera, Unity Capture, ours) - so nobody drives the
avatar with its own output - and a stable id the saved calibration is kept under (the index changes when cameras
are plugged in another order; the device does not).

Linux: /sys/class/video4linux (name, the USB vendor:product, /dev/v4l/by-id for the stable id) and V4L2 ioctls on
/dev/videoN (driver, whether it captures video at all - UVC webcams add a metadata node -, frame sizes).
Windows (Media Foundation, the order OpenCV opens them in; DirectShow when that finds none) and macOS
(AVFoundation): names through the cv2-enumerate-cameras package, no resolutions; without it, index only.

Every name is text from outside (a device's USB descriptor, a driver, another program's virtual camera): it is
made one safe line (engines.terminal_text.printable: no terminal escapes, no forged extra lines) where it is read,
so the listing, `--camera NAME` matching and every message show the same harmless text. sysfs attributes are read
bounded, like every small file (engines/files.py).
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engines.files import FileRefused, read_bounded
from engines.terminal_text import printable
from live.errors import CaptureError

SYSFS = Path("/sys/class/video4linux")
DEV = Path("/dev")
SIZES_SHOWN = 6  # the largest ones; the rest is counted
MAX_NAME_CHARS = 80  # a V4L2 card name has 31 bytes; other systems' names are longer, never this long honestly
SYSFS_ATTRIBUTE_BYTES = 4096  # the kernel's page: no sysfs attribute is longer

# Device names that are virtual cameras (lower case substring -> what it is). "live avatar" is the card_label the
# README's v4l2loopback line gives our own output device.
VIRTUAL_NAMES = (
    ("live avatar", "this tool's output"),
    ("obs virtual camera", "OBS Virtual Camera"),
    ("obs-camera", "OBS Virtual Camera"),
    ("unity video capture", "Unity Capture"),
    ("dummy video device", "v4l2loopback"),  # v4l2loopback's default card name
    ("loopback", "v4l2loopback"),
    ("virtual", "virtual camera"),
)
LOOPBACK_DRIVERS = ("v4l2 loopback", "v4l2loopback")


@dataclass(frozen=True)
class Camera:
    index: int
    name: str
    path: str | None = None          # /dev/videoN, a Windows device path, a macOS unique id
    driver: str | None = None        # Linux: the V4L2 driver (uvcvideo, v4l2 loopback)
    sizes: tuple = ()                # ((w, h), ...) largest first
    size_range: str | None = None    # a stepwise/continuous device: "320x240..1920x1080"
    virtual: str | None = None       # what kind of virtual camera it is, None for a real one
    stable_id: str = ""              # the saved calibration's key

    @property
    def label(self) -> str:
        return f"{self.index} '{self.name}'" + (" (virtual)" if self.virtual else "")

    def sizes_text(self) -> str:
        if self.size_range:
            return self.size_range
        if not self.sizes:
            return ""
        shown = " ".join(f"{w}x{h}" for w, h in self.sizes[:SIZES_SHOWN])
        more = len(self.sizes) - SIZES_SHOWN
        return shown + (f" (+{more} more)" if more > 0 else "")


@dataclass
class CameraList:
    cameras: list = field(default_factory=list)
    where: str = ""                  # where they were looked for, for "none found" lines
    notice: str | None = None        # why names are missing here (index only)
    complete: bool = False           # every camera OpenCV can open is listed (Linux), so an unlisted index is wrong

    def summary(self) -> str:
        return ", ".join(c.label for c in self.cameras) or f"none found ({self.where})"


def virtual_kind(name: str, driver: str | None = None) -> str | None:
    if driver and driver.strip().lower() in LOOPBACK_DRIVERS:
        lowered = name.lower()
        return "this tool's output" if "live avatar" in lowered else "v4l2loopback"
    lowered = name.lower()
    return next((kind for needle, kind in VIRTUAL_NAMES if needle in lowered), None)


# --- Linux: sysfs + V4L2 ioctls -------------------------------------------------------------------------------
class _Capability(ctypes.Structure):  # struct v4l2_capability (linux/videodev2.h)
    _fields_ = [("driver", ctypes.c_char * 16), ("card", ctypes.c_char * 32), ("bus_info", ctypes.c_char * 32),
                ("version", ctypes.c_uint32), ("capabilities", ctypes.c_uint32), ("device_caps", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32 * 3)]


class _FormatDesc(ctypes.Structure):  # struct v4l2_fmtdesc
    _fields_ = [("index", ctypes.c_uint32), ("type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("description", ctypes.c_char * 32), ("pixelformat", ctypes.c_uint32),
                ("mbus_code", ctypes.c_uint32), ("reserved", ctypes.c_uint32 * 3)]


class _FrameSize(ctypes.Structure):  # struct v4l2_frmsizeenum (the union as six u32: discrete uses two)
    _fields_ = [("index", ctypes.c_uint32), ("pixel_format", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("size", ctypes.c_uint32 * 6), ("reserved", ctypes.c_uint32 * 2)]


def _iowr(nr: int, size: int, read_only: bool = False) -> int:
    direction = 2 if read_only else 3  # _IOC_READ (| _IOC_WRITE)
    return (direction << 30) | (size << 16) | (ord("V") << 8) | nr


VIDIOC_QUERYCAP = _iowr(0, ctypes.sizeof(_Capability), read_only=True)
VIDIOC_ENUM_FMT = _iowr(2, ctypes.sizeof(_FormatDesc))
VIDIOC_ENUM_FRAMESIZES = _iowr(74, ctypes.sizeof(_FrameSize))
CAP_VIDEO_CAPTURE, CAP_DEVICE_CAPS = 0x00000001, 0x80000000
BUF_TYPE_VIDEO_CAPTURE = 1
FRMSIZE_DISCRETE = 1
MAX_ENUM = 64  # formats / sizes asked per device: a broken driver must not keep us looping


@dataclass(frozen=True)
class V4l2Info:
    driver: str
    card: str
    captures: bool                   # offers video capture (a UVC metadata node does not)
    sizes: tuple = ()
    size_range: str | None = None


def probe_v4l2(path, *, ioctl: Callable | None = None, opener: Callable | None = None) -> V4l2Info | None:
    """Driver, capture capability and frame sizes of a V4L2 device, or None when it cannot be opened/queried
    (permissions, not a V4L2 node). Opening for a query does not take the camera from a program using it."""
    if ioctl is None:
        import fcntl
        ioctl = fcntl.ioctl
    opener = opener or (lambda p: os.open(p, os.O_RDONLY | os.O_NONBLOCK))
    try:
        fd = opener(str(path))
    except OSError:
        return None
    try:
        cap = _Capability()
        try:
            ioctl(fd, VIDIOC_QUERYCAP, cap, True)
        except OSError:
            return None
        caps = cap.device_caps if cap.capabilities & CAP_DEVICE_CAPS else cap.capabilities
        driver, card = (printable(v.decode("utf-8", "replace"), MAX_NAME_CHARS) for v in (cap.driver, cap.card))
        if not caps & CAP_VIDEO_CAPTURE:
            return V4l2Info(driver, card, captures=False)
        sizes, ranges = set(), []
        for f in range(MAX_ENUM):
            fmt = _FormatDesc(index=f, type=BUF_TYPE_VIDEO_CAPTURE)
            try:
                ioctl(fd, VIDIOC_ENUM_FMT, fmt, True)
            except OSError:
                break  # EINVAL: no more formats
            for s in range(MAX_ENUM):
                size = _FrameSize(index=s, pixel_format=fmt.pixelformat)
                try:
                    ioctl(fd, VIDIOC_ENUM_FRAMESIZES, size, True)
                except OSError:
                    break
                if size.type == FRMSIZE_DISCRETE:
                    sizes.add((int(size.size[0]), int(size.size[1])))
                else:  # stepwise / continuous: min_w, max_w, step_w, min_h, max_h, step_h
                    ranges.append(f"{size.size[0]}x{size.size[3]}..{size.size[1]}x{size.size[4]}")
                    break
        ordered = tuple(sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh[0]), reverse=True))
        return V4l2Info(driver, card, True, ordered, None if ordered or not ranges else ranges[0])
    finally:
        try:
            os.close(fd)
        except (OSError, TypeError):
            pass


def _read(path: Path) -> str | None:
    """A sysfs attribute as one safe line; None when it cannot be read."""
    try:
        return printable(read_bounded(path, SYSFS_ATTRIBUTE_BYTES).decode("utf-8", "replace"), MAX_NAME_CHARS)
    except FileRefused:
        return None


def _usb_id(node: Path) -> str | None:
    """vendor:product of the USB device behind a sysfs video node (the interface's parent holds them)."""
    device = node / "device"
    if not device.exists():
        return None
    for folder in (device, device.resolve().parent):
        vendor, product = _read(folder / "idVendor"), _read(folder / "idProduct")
        if vendor and product:
            return f"{vendor}:{product}"
    return None


def _by_id_links(dev: Path) -> dict[str, str]:
    """videoN -> its /dev/v4l/by-id link name (vendor, product and serial: stable across ports and reboots)."""
    links = {}
    try:
        entries = sorted((dev / "v4l" / "by-id").iterdir())
    except OSError:
        return links
    for link in entries:
        try:
            target = os.path.basename(os.path.realpath(link))
        except OSError:
            continue
        if target.startswith("video"):
            links.setdefault(target, link.name)
    return links


def linux_cameras(sysfs: Path = SYSFS, dev: Path = DEV, probe: Callable = probe_v4l2) -> CameraList:
    listing = CameraList(where=f"looked in {sysfs}", complete=True)
    try:
        nodes = [p for p in sysfs.iterdir() if re.fullmatch(r"video\d+", p.name)]
    except OSError:
        return listing
    by_id = _by_id_links(dev)
    for node in sorted(nodes, key=lambda p: int(p.name[5:])):
        index = int(node.name[5:])
        info = probe(dev / node.name)
        if info is not None and not info.captures:
            continue  # a metadata node of a webcam: not something OpenCV can capture from
        # probe_v4l2 cleans what it reads already; a probe of another kind (tests, a future one) may not
        name = printable(_read(node / "name") or (info.card if info else ""), MAX_NAME_CHARS) or node.name
        driver = printable(info.driver, MAX_NAME_CHARS) if info else None
        virtual = virtual_kind(name, driver)
        if virtual is None and not (node / "device").exists():
            virtual = "virtual camera"  # no hardware behind it (v4l2loopback and friends live in devices/virtual)
        usb = _usb_id(node)
        stable = by_id.get(node.name) or (f"{name} [{usb}]" if usb else name)
        listing.cameras.append(Camera(index, name, str(dev / node.name), driver, info.sizes if info else (),
                                      info.size_range if info else None, virtual, stable))
    return listing


# --- Windows / macOS: cv2-enumerate-cameras --------------------------------------------------------------------
def _enumerate_with_package(system: str):
    """[(index, name, path)] from cv2-enumerate-cameras, in the order OpenCV's default backend opens them."""
    import cv2
    from cv2_enumerate_cameras import enumerate_cameras
    backends = {"Windows": ("CAP_MSMF", "CAP_DSHOW"), "Darwin": ("CAP_AVFOUNDATION",)}.get(system, ())
    for backend in backends:
        found = [(c.index, c.name, c.path) for c in enumerate_cameras(getattr(cv2, backend))]
        if found:
            return found
    return []


def other_cameras(system: str, enumerate_: Callable | None = None) -> CameraList:
    where = {"Windows": "Media Foundation/DirectShow", "Darwin": "AVFoundation"}.get(system, system)
    listing = CameraList(where=f"asked {where}")
    try:
        found = (enumerate_ or _enumerate_with_package)(system)
    except ImportError:
        listing.notice = (f"camera names on {system} need the cv2-enumerate-cameras package (pip install "
                          "cv2-enumerate-cameras); without it --camera takes an index: 0, 1, ...")
        return listing
    except Exception as exc:  # noqa: BLE001 - a native enumeration failure: fall back to indices, say why
        listing.notice = (f"cannot list the cameras on {system} ({type(exc).__name__}: {printable(exc)}); --camera "
                          "takes an index")
        return listing
    for index, name, path in found:
        name = printable(name or f"camera {index}", MAX_NAME_CHARS) or f"camera {index}"
        listing.cameras.append(Camera(int(index), name, printable(path, 200) if path else path,
                                      virtual=virtual_kind(name), stable_id=str(path or name)))
    return listing


def list_cameras(system: str | None = None, **linux) -> CameraList:
    system = system or platform.system()
    return linux_cameras(**linux) if system == "Linux" else other_cameras(system)


def format_listing(listing: CameraList) -> list[str]:
    """The lines `--list-cameras` prints."""
    lines = [f"notice: {listing.notice}"] if listing.notice else []
    if not listing.cameras:
        return lines + [f"no cameras found ({listing.where})"]
    width = max(len(c.name) for c in listing.cameras)
    for c in listing.cameras:
        if c.virtual:
            what = f"VIRTUAL ({c.virtual}): another program's output, not a webcam"
        else:
            what = c.sizes_text() or "resolutions not listed"
        lines.append(f"{c.index:>3}  {c.name:<{width}}  {what}" + (f"  [{c.path}]" if c.path and
                                                                   c.path.startswith("/dev/") else ""))
    return lines


def print_cameras() -> int:
    """`--list-cameras`: the listing on stdout; exit status 0 also when there is no camera."""
    for line in format_listing(list_cameras()):
        print(line)
    return 0


# --- --camera N|NAME ---------------------------------------------------------------------------------------------
def camera_spec(text: str):
    """argparse type of --camera: an index (int) or a name to look up (str)."""
    text = text.strip()
    if not text:
        import argparse
        raise argparse.ArgumentTypeError("expected a camera index or part of its name (--list-cameras lists them)")
    return int(text) if text.isdigit() else text


def choose_camera(spec, listing: CameraList) -> Camera:
    """The camera --camera names: an index, or a case-insensitive substring of one camera's name (an exact name
    wins). Raises CaptureError (one line) for a name that matches none or several."""
    if isinstance(spec, int) or str(spec).strip().isdigit():
        index = int(spec)
        for camera in listing.cameras:
            if camera.index == index:
                return camera
        if listing.complete and listing.cameras:  # this index is not on a full list
            raise CaptureError(f"cannot open camera {index}: there is no such camera (--camera {index}); cameras "
                               f"here: {listing.summary()}")
        return Camera(index, f"camera {index}", stable_id=f"camera {index}")  # index only: opened as given
    wanted = str(spec).strip().lower()
    if not listing.cameras:
        why = listing.notice or f"no cameras found ({listing.where})"
        raise CaptureError(f"--camera {spec!r} matches no camera: {why}; an index (--camera 0) is opened as given")
    matches = ([c for c in listing.cameras if c.name.lower() == wanted]
               or [c for c in listing.cameras if wanted in c.name.lower()])
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CaptureError(f"--camera {spec!r} matches no camera; cameras here: {listing.summary()}")
    raise CaptureError(f"--camera {spec!r} matches {len(matches)} cameras: "
                       f"{', '.join(c.label for c in matches)}; give more of the name, or the index")


def is_device(camera: Camera, device: str | None) -> bool:
    """Is `device` (a path such as /dev/video2) this camera?"""
    return bool(device and camera.path and os.path.realpath(camera.path) == os.path.realpath(device))


def own_output_error(camera: Camera, device: str) -> CaptureError:
    return CaptureError(f"camera {camera.label} is the virtual camera this run writes to ({printable(device)}): "
                        "the avatar would drive itself; pick a webcam (--list-cameras)")


def check_not_own_output(camera: Camera, vcam_device: str | None) -> str | None:
    """CaptureError when the camera is the virtual camera this run writes to; a notice for another virtual one."""
    if is_device(camera, vcam_device):
        raise own_output_error(camera, f"--vcam-device {vcam_device}")
    if camera.virtual:
        return (f"camera {camera.label} is a virtual camera ({camera.virtual}), not a webcam: if it shows this "
                "tool's output the avatar drives itself (--list-cameras lists the webcams)")
    return None


def camera_for_run(spec, vcam_device: str | None = None, log: Callable[[str], None] = print,
                   listing: CameraList | None = None) -> Camera:
    """--camera resolved against the cameras here, with a notice when it is a virtual one."""
    camera = choose_camera(spec, listing if listing is not None else list_cameras())
    notice = check_not_own_output(camera, vcam_device)
    if notice:
        log(f"notice: {notice}")
    return camera
