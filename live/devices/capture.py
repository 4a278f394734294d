"""Driving frames: open a webcam, video file or image folder, and read it without building up latency.

``open_source`` gives a FrameSource whose ``read()`` returns BGR uint8 frames (grayscale, BGRA and 16-bit frames
are converted). ``LatestFrameReader`` reads a source on a background thread and keeps only the newest frame, so a
consumer slower than the camera always works on a recent frame instead of an ever older queued one.

Ownership: the reader never closes its source; nest them so the reader stops first::

    with open_source(0) as source, LatestFrameReader(source) as reader:
        frame = reader.get()
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from live.devices.images import IMAGE_EXTENSIONS, decode_image, image_files
from live.errors import CaptureError

DEFAULT_FPS = 30.0
# A live camera may fail a read now and then (USB hiccup); only this many failures in a row mean it is gone.
CAMERA_MAX_FAILED_READS = 5
CAMERA_RETRY_DELAY_S = 0.02
# Webcams often need a moment after opening before the first frame (exposure, macOS permission prompt).
CAMERA_FIRST_FRAME_TIMEOUT_S = 3.0


@contextmanager
def _quiet_opencv():
    """Silence OpenCV/FFmpeg's multi-line stderr warnings while probing: we report failures in one line."""
    # FFmpeg reads this once at its first use; setdefault keeps a level the user chose for debugging.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    log = cv2.utils.logging
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(previous)


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """Any OpenCV frame (gray, gray+1 channel, BGR, BGRA; 8 or 16 bit) -> contiguous BGR uint8."""
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise CaptureError(f"unsupported frame pixel type {frame.dtype} (expected 8 or 16 bit)")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return np.ascontiguousarray(frame)
    raise CaptureError(f"unsupported frame shape {frame.shape} (expected gray, BGR or BGRA)")


class FrameSource:
    """A stream of BGR uint8 frames. ``read()`` returns None at the end (never for live or looping sources)."""

    is_live: bool = False
    name: str = "source"
    fps: float = DEFAULT_FPS
    frame_count: int | None = None

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} fps={self.fps:g} frames={self.frame_count}>"


def _reported_fps(cap, fallback: float) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    # Many webcams and some containers report 0 (or nonsense like 1000); the loop needs a sane rate.
    return float(fps) if fps and 1.0 <= fps <= 240.0 else float(fallback)


class _OpenCVSource(FrameSource):
    """A cv2.VideoCapture behind the FrameSource API: opened quietly, its first frame decoded at open (so a dead
    camera or a broken file fails at start, not mid-run) and handed out by the first read()."""

    _cap = None
    _pending: np.ndarray | None = None

    @staticmethod
    def _open_capture(factory, target):
        """The opened capture, or None (released) when OpenCV cannot open `target`."""
        # OpenCV's FFmpeg reader gives up after 4096 packets of other streams in a row: a clip whose sound goes on
        # for minutes after the picture lost its last frames. A file ends (EOF) anyway, so a large bound costs
        # at most reading the file. Read once per process, at the first frame: set before any capture opens.
        os.environ.setdefault("OPENCV_FFMPEG_READ_ATTEMPTS", str(1 << 22))
        with _quiet_opencv():
            cap = factory(target)
            opened = cap is not None and cap.isOpened()
        if opened:
            return cap
        if cap is not None:
            cap.release()
        return None

    def _next_frame(self) -> np.ndarray | None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._cap is None:
            return None
        return self._next_frame()

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class CameraSource(_OpenCVSource):
    is_live = True

    def __init__(self, index: int, *, width=None, height=None, fps=None, capture_factory=None):
        self.index = index
        self.name = f"camera {index}"
        cap = self._open_capture(capture_factory or cv2.VideoCapture, index)
        if cap is None:
            other = 1 if index == 0 else 0
            raise CaptureError(
                f"cannot open camera {index}: no such device, it is in use by another program, or camera access "
                f"is blocked by the OS privacy settings (try --camera {other}; --list-cameras lists them; or "
                f"--driving FILE)")
        self._cap = cap
        # Driver-side buffering adds latency on top of ours; ask for the smallest buffer (ignored where unsupported).
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        if fps:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        self.fps = _reported_fps(cap, fps or DEFAULT_FPS)
        self._pending = self._first_frame()

    def _first_frame(self) -> np.ndarray:
        deadline = time.perf_counter() + CAMERA_FIRST_FRAME_TIMEOUT_S
        while True:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return to_bgr(frame)
            if time.perf_counter() >= deadline:
                self.close()
                raise CaptureError(
                    f"{self.name} opened but delivers no frames (in use by another program, or camera access is "
                    f"blocked by the OS privacy settings; try another --camera or --driving FILE)")
            time.sleep(CAMERA_RETRY_DELAY_S * 5)

    def _next_frame(self) -> np.ndarray:
        for _ in range(CAMERA_MAX_FAILED_READS):
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return to_bgr(frame)
            time.sleep(CAMERA_RETRY_DELAY_S)
        raise CaptureError(f"{self.name} stopped delivering frames (unplugged?)")


class VideoFileSource(_OpenCVSource):
    def __init__(self, path: Path, *, loop=False, fps=None, capture_factory=None):
        self.path = path
        self.name = path.name
        self.loop = loop
        self._factory = capture_factory or cv2.VideoCapture
        self._open()
        self.fps = float(fps) if fps else _reported_fps(self._cap, DEFAULT_FPS)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        # Decode the first frame now so an unreadable file fails at open, not in the middle of the loop.
        self._pending = self._read_raw()
        if self._pending is None:
            self.close()
            raise CaptureError(f"cannot read video file {path}: it has no decodable frames (corrupt, or an "
                               f"unsupported codec)")

    def _open(self) -> None:
        cap = self._open_capture(self._factory, str(self.path))
        if cap is None:
            raise CaptureError(f"cannot read video file {self.path}: not a video, or corrupt / unsupported codec")
        self._cap = cap

    def _read_raw(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        return to_bgr(frame) if ok and frame is not None else None

    def _next_frame(self) -> np.ndarray | None:
        frame = self._read_raw()
        if frame is None and self.loop:
            # Reopen rather than seek to 0: seeking is unreliable for some containers/codecs.
            self._cap.release()
            self._open()
            frame = self._read_raw()
            if frame is None:
                raise CaptureError(f"cannot restart video file {self.path} for --loop")
        return frame


class ImageFolderSource(FrameSource):
    def __init__(self, paths: list[Path], *, name: str, loop=False, fps=None):
        self.paths = paths
        self.name = name
        self.loop = loop
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.frame_count = len(paths)
        self._next = 0
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed:
            return None
        if self._next >= len(self.paths):
            if not self.loop:
                return None
            self._next = 0
        path = self.paths[self._next]
        self._next += 1
        return to_bgr(decode_image(path))

    def close(self) -> None:
        self._closed = True


def _is_camera_spec(spec) -> bool:
    if isinstance(spec, bool):
        return False
    if isinstance(spec, (int, np.integer)):
        return True
    return isinstance(spec, str) and spec.strip().isdigit()


def open_source(spec, *, loop=False, width=None, height=None, fps=None,
                capture_factory: Callable | None = None) -> FrameSource:
    """Open a driving source.

    spec: camera index (int or digit string), video file, image file (a still), or folder of images (by name).
    loop: restart files/folders at the end instead of returning None.
    width/height: requested camera resolution (cameras pick the nearest they support; ignored for files).
    fps: requested camera rate; for files/folders it overrides the rate used for realtime pacing.
    capture_factory: cv2.VideoCapture-like constructor (tests inject fakes here).
    """
    if _is_camera_spec(spec):
        index = int(spec)
        return CameraSource(index, width=width, height=height, fps=fps, capture_factory=capture_factory)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise CaptureError("no driving source given (use --camera N or --driving FILE)")
    path = Path(spec).expanduser()
    if not path.exists():
        raise CaptureError(f"driving video not found: {path}")
    if path.is_dir():
        images = image_files(path)
        if not images:
            raise CaptureError(f"no images in driving folder {path} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return ImageFolderSource(images, name=path.name or str(path), loop=loop, fps=fps)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        source = ImageFolderSource([path], name=path.name, loop=loop, fps=fps)
        decode_image(path)  # an unreadable still fails now, not on the first frame
        return source
    return VideoFileSource(path, loop=loop, fps=fps, capture_factory=capture_factory)


@dataclass(frozen=True)
class CapturedFrame:
    image: np.ndarray   # BGR uint8 HxWx3
    index: int          # 0-based count of frames read from the source (keeps counting across --loop restarts)
    timestamp: float    # time.perf_counter() when the frame became available


class LatestFrameReader:
    """Reads a FrameSource on a background thread, keeping only the newest frame (bounded latency).

    realtime: pace file/folder sources to their fps so they behave like a camera (default: True for non-live
    sources). Live cameras are paced by the device and never slowed down here.
    """

    def __init__(self, source: FrameSource, *, realtime: bool | None = None):
        self.source = source
        self.realtime = (not source.is_live) if realtime is None else bool(realtime)
        self._cond = threading.Condition()
        self._latest: CapturedFrame | None = None
        self._latest_taken = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.finished = False
        self.dropped = 0
        self.frames_read = 0

    @property
    def fps(self) -> float:
        return self.source.fps

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "LatestFrameReader":
        if self._thread is not None:
            raise RuntimeError("LatestFrameReader already started")
        self._thread = threading.Thread(target=self._run, name=f"capture {self.source.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.source.fps if self.source.fps > 0 else 1.0 / DEFAULT_FPS
        t0 = time.perf_counter()
        paced = 0
        try:
            while not self._stop.is_set():
                image = self.source.read()
                if image is None:
                    with self._cond:
                        self.finished = True
                        self._cond.notify_all()
                    return
                if self.realtime:
                    due = t0 + paced * period
                    now = time.perf_counter()
                    if now - due > 0.5:
                        # Far behind (slow decode or a stall): restart the clock instead of bursting to catch up.
                        t0, paced, due = now, 0, now
                    if self._stop.wait(max(0.0, due - now)):
                        return
                    paced += 1
                frame = CapturedFrame(image, self.frames_read, time.perf_counter())
                with self._cond:
                    if not self._latest_taken:
                        self.dropped += 1
                    self._latest, self._latest_taken = frame, False
                    self.frames_read += 1
                    self._cond.notify_all()
        except CaptureError as e:
            self._fail(str(e))
        except Exception as e:  # noqa: BLE001 - any failure must reach the loop as a message, not a dead thread
            self._fail(f"{self.source.name}: {type(e).__name__}: {e}".replace("\n", " "))

    def _fail(self, message: str) -> None:
        with self._cond:
            self.error = message
            self._cond.notify_all()

    def get(self, timeout: float | None = 1.0) -> CapturedFrame | None:
        """The newest frame not returned before; None on timeout, at end of file, after an error or stop()."""
        if self._thread is None:
            raise RuntimeError("LatestFrameReader.get() before start()")
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while self._latest_taken:
                if self.finished or self.error is not None or self._stop.is_set():
                    return None
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            self._latest_taken = True
            return self._latest

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and join the thread (the source stays open: its owner closes it)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self):
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
