"""Test helpers with state (kept out of conftest.py, which pytest imports under a second module name)."""
from __future__ import annotations

import cv2
import numpy as np


def read_video(path) -> tuple[list, float]:
    """(every BGR frame, fps) of a video file, read back with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


class MemoryCamera:
    """An in-memory pyvirtualcam backend: frames arrive here through the real pyvirtualcam.Camera API.

    Devices 'mem0' (the default) and 'mem1' exist; any other name fails like a missing device does."""

    instances = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        if device not in (None, "mem0", "mem1"):
            raise RuntimeError(f"Device {device} does not exist.")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "mem0"
        self.frames = []
        self.closed = 0
        MemoryCamera.instances.append(self)

    def send(self, frame):
        self.frames.append(np.asarray(frame).reshape(self.height, self.width, 3).copy())

    def device(self):
        return self._device

    def native_fourcc(self):
        return None

    def close(self):
        self.closed += 1


MEMORY_BACKEND = "memory-test"

