"""Where the animated avatar goes: a virtual camera, a video file, nowhere, or several of these at once.

Every sink takes uint8 RGB HxWx3 frames through ``send`` and is finished with ``close`` (also a context manager,
and close() is safe to call twice). Sinks with a fixed output size place the square avatar on a canvas first.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import cv2
import numpy as np

from live.errors import SinkError

CANVAS_MODES = ("fit", "fill")
DEFAULT_CANVAS_COLOR = (32, 32, 32)  # RGB dark grey: calmer than black bars, reads as "background" in calls


def _check_rgb(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"expected a uint8 HxWx3 RGB frame, got shape {shape} dtype {dtype}")


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    # AREA to shrink (no aliasing); LINEAR to enlarge: every frame goes through here, cubic costs too much at 720p.
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interp)


def place_on_canvas(frame: np.ndarray, width: int, height: int, mode: str = "fit",
                    color=DEFAULT_CANVAS_COLOR) -> np.ndarray:
    """Fit an RGB frame into width x height.

    fit: largest size that fits, centred, borders in `color`; fill: scale to cover, centre-crop.
    """
    _check_rgb(frame)
    if mode not in CANVAS_MODES:
        raise ValueError(f"unknown canvas mode {mode!r} (use one of {', '.join(CANVAS_MODES)})")
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas size must be positive, got {width}x{height}")
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(frame)
    if mode == "fit":
        scale = min(width / w, height / h)
        new_w, new_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    else:
        scale = max(width / w, height / h)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    scaled = _resize(frame, new_w, new_h)
    if mode == "fill":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(scaled[top:top + height, left:left + width])
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = color
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = scaled
    return canvas


class Sink:
    """Base class: send(frame_rgb) and close(); usable as a context manager."""

    name = "sink"

    def __init__(self):
        self.frames_sent = 0

    def send(self, frame_rgb: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class NullSink(Sink):
    """Discards frames (benchmarks, headless runs with only a preview)."""

    name = "null"

    def send(self, frame_rgb: np.ndarray) -> None:
        _check_rgb(frame_rgb)
        self.frames_sent += 1


def install_hint(system: str | None = None) -> str:
    """One sentence on how to get a virtual camera driver for this OS (platform.system() names)."""
    system = system or platform.system()
    if system == "Linux":
        return ('install and load v4l2loopback: sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback '
                'devices=1 exclusive_caps=1 card_label="live avatar" (see README "Virtual camera setup")')
    if system == "Windows":
        return ('install OBS Studio >= 26.1 and click "Start Virtual Camera" once, or install Unity Capture '
                '(backend "unitycapture"); see README "Virtual camera setup"')
    if system == "Darwin":
        return ('install OBS Studio >= 26.1 (macOS 13+: OBS 30+), click "Start Virtual Camera" once and allow the '
                'system extension; see README "Virtual camera setup"')
    return f"pyvirtualcam has no virtual camera backend for {system or 'this OS'} (write to a video file instead)"


class VirtualCameraSink(Sink):
    """Sends frames to a virtual camera through pyvirtualcam (RGB), placed on a width x height canvas.

    pace=False: send() returns at once and the caller paces the loop; pace=True also sleeps until the next frame
    is due at `fps` (pyvirtualcam's adaptive sleep).
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30, mode: str = "fit",
                 device: str | None = None, backend: str | None = None, *, pace: bool = False,
                 color=DEFAULT_CANVAS_COLOR):
        super().__init__()
        if mode not in CANVAS_MODES:
            raise ValueError(f"unknown canvas mode {mode!r} (use one of {', '.join(CANVAS_MODES)})")
        if width <= 0 or height <= 0 or fps <= 0:
            raise SinkError(f"invalid virtual camera format {width}x{height} @ {fps} fps: all must be positive")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.mode, self.color, self.pace = mode, color, pace
        self._cam = None
        self._device_name = device or "virtual camera"
        try:
            import pyvirtualcam
            from pyvirtualcam.camera import BACKENDS
        except Exception as e:  # noqa: BLE001 - ImportError or a broken native module
            raise SinkError(f"pyvirtualcam is not usable ({e}): pip install pyvirtualcam") from None
        if backend is not None and backend not in BACKENDS:
            # Checked here: pyvirtualcam raises a bare KeyError and then prints a __del__ traceback.
            known = ", ".join(sorted(BACKENDS)) or "none on this OS"
            raise SinkError(f"unknown virtual camera backend {backend!r} (available: {known})")
        try:
            self._cam = pyvirtualcam.Camera(self.width, self.height, self.fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                            device=device, backend=backend)
        except Exception as e:  # noqa: BLE001 - backends raise RuntimeError, native ones sometimes other types
            # pyvirtualcam joins one line per backend tried; keep them all, on one line.
            reasons = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            target = f"virtual camera {device}" if device else "a virtual camera"
            raise SinkError(f"cannot open {target} ({reasons or 'no virtual camera backend available'}); "
                            f"{install_hint()}") from None

    @property
    def name(self) -> str:
        """The device name pyvirtualcam reports (e.g. /dev/video2, 'OBS Virtual Camera')."""
        return self._device_name if self._cam is None else self._cam.device

    @property
    def backend(self) -> str | None:
        return self._cam.backend if self._cam is not None else None

    def send(self, frame_rgb: np.ndarray) -> None:
        if self._cam is None:
            raise RuntimeError("VirtualCameraSink.send() after close()")
        canvas = place_on_canvas(frame_rgb, self.width, self.height, self.mode, self.color)
        try:
            self._cam.send(canvas)
        except Exception as e:  # noqa: BLE001
            raise SinkError(f"virtual camera {self.name} stopped accepting frames: {e}".replace("\n", " ")) from None
        self.frames_sent += 1
        if self.pace:
            self._cam.sleep_until_next_frame()

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            self._device_name = cam.device
            cam.close()


class VideoFileSink(Sink):
    """Writes an mp4 (mp4v) with cv2.VideoWriter. size=(width, height), or taken from the first frame.

    Frames of another size are placed on the canvas with `mode`. close() finalises the file (safe twice); use it
    as a context manager so an exception in the loop still leaves a playable file with every frame written.
    """

    def __init__(self, path, fps: float, size: tuple[int, int] | None = None, *, fourcc: str = "mp4v",
                 mode: str = "fit", color=DEFAULT_CANVAS_COLOR):
        super().__init__()
        self._closed = True  # until fully open: __del__ must not finalise a half-built sink
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        if not fps or fps <= 0:
            raise SinkError(f"cannot write video file {self.path}: fps must be positive, got {fps}")
        if size is not None and (len(size) != 2 or size[0] <= 0 or size[1] <= 0):
            raise SinkError(f"cannot write video file {self.path}: invalid size {size}")
        self.fps, self.size, self.mode, self.color = float(fps), size, mode, color
        self._fourcc = fourcc
        self._writer = None
        self._created = False
        self._check_writable()
        if size is not None:
            self._open(int(size[0]), int(size[1]))
        self._closed = False

    def _check_writable(self) -> None:
        parent = self.path.parent
        if self.path.is_dir():
            raise SinkError(f"cannot write video file {self.path}: it is a folder")
        if not parent.is_dir():
            raise SinkError(f"cannot write video file {self.path}: folder {parent} does not exist")
        # Probe with a real open: os.access lies for root and for read-only mounts.
        self._created = not self.path.exists()
        try:
            with open(self.path, "ab"):
                pass
        except OSError as e:
            raise SinkError(f"cannot write video file {self.path}: {e.strerror or e}") from None

    def _open(self, width: int, height: int) -> None:
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self._fourcc), self.fps, (width, height))
        if not writer.isOpened():
            self._remove_if_unused()
            raise SinkError(f"cannot write video file {self.path}: OpenCV has no {self._fourcc} encoder for "
                            f"'{self.path.suffix or 'no extension'}' files (use a .mp4 name)")
        self._writer, self.size = writer, (width, height)

    def send(self, frame_rgb: np.ndarray) -> None:
        _check_rgb(frame_rgb)
        if self._closed:
            raise RuntimeError("VideoFileSink.send() after close()")
        if self._writer is None:
            self._open(frame_rgb.shape[1], frame_rgb.shape[0])
        frame = place_on_canvas(frame_rgb, self.size[0], self.size[1], self.mode, self.color)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames_sent += 1

    def _remove_if_unused(self) -> None:
        # Only a file this sink created and never wrote a frame into: nothing of the user's is lost.
        if self._created and self.frames_sent == 0:
            try:
                os.remove(self.path)
            except OSError:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()  # writes the mp4 index: without it the file does not play
        self._remove_if_unused()

    def __del__(self):
        # Last resort if the owner forgot close(): finalise what was written rather than leave a broken mp4.
        if not getattr(self, "_closed", True):
            self.close()


class MultiSink(Sink):
    """Sends every frame to several sinks; close() closes all of them even if some fail."""

    def __init__(self, sinks):
        super().__init__()
        self.sinks = list(sinks)
        self.name = " + ".join(s.name for s in self.sinks) or "none"

    def send(self, frame_rgb: np.ndarray) -> None:
        for sink in self.sinks:
            sink.send(frame_rgb)
        self.frames_sent += 1

    def close(self) -> None:
        first_error = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - keep closing the rest; report the first failure after
                first_error = first_error or e
        if first_error is not None:
            raise first_error
