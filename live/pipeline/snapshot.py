"""An avatar taken from the webcam: the face crop as the model sees it, written as a new PNG beside the avatars.

The file is created exclusively (O_EXCL): an existing file is never overwritten, not even one that appears between
choosing the name and writing it; the name carries the time and a counter (snapshot-20261201-101500.png, then
snapshot-20261201-101500-2.png, ...). A write that fails half way (full disk) removes its own partial file.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

MAX_NAME_TRIES = 1000  # snapshots in the same second; past that something else is filling the folder


def snapshot_folder(avatar_path) -> Path:
    """Where snapshots go: the --avatar folder itself, or the folder of a single --avatar file."""
    path = Path(avatar_path).expanduser()
    return path if path.is_dir() else path.parent


def save_snapshot(folder, rgb: np.ndarray, now: time.struct_time | None = None) -> Path:
    """Write `rgb` (uint8 RGB) as a new PNG in `folder`; returns its path. Raises OSError (read-only folder, full
    disk, folder gone); nothing is left behind then."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("the PNG encoder failed")
    stamp = time.strftime("%Y%m%d-%H%M%S", now or time.localtime())
    folder = Path(folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for n in range(1, MAX_NAME_TRIES + 1):
        path = folder / (f"snapshot-{stamp}.png" if n == 1 else f"snapshot-{stamp}-{n}.png")
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            continue
        try:
            data = memoryview(png.tobytes())
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)  # ours: created by the O_EXCL open above
            raise
        os.close(fd)
        return path
    raise FileExistsError(f"{MAX_NAME_TRIES} snapshots named snapshot-{stamp}*.png exist already")
