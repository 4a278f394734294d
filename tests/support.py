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



def peak_rss_growth_mb(setup: str, action: str, *, timeout: float = 120) -> tuple[float, str]:
    """(MB by which the peak RSS of a fresh interpreter grows while `action` runs, what it printed). `setup` runs
    first (imports, warm-up), so only `action` is measured.

    Linux keeps ru_maxrss across fork+exec, so a child of a big pytest process would start at the parent's peak:
    the peak is reset (/proc/self/clear_refs) and read as VmHWM where the kernel allows, else ru_maxrss."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = "\n".join([
        "import resource, sys", f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})",
        textwrap.dedent(setup),
        "def _status(key):",
        "    for line in open('/proc/self/status'):",
        "        if line.startswith(key):",
        "            return int(line.split()[1])",
        "try:",
        "    open('/proc/self/clear_refs', 'w').write('5')",
        "    _before, _peak = _status('VmRSS:'), lambda: _status('VmHWM:')",
        "except OSError:",
        "    _peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "    _before = _peak()",
        "try:", textwrap.indent(textwrap.dedent(action), "    "),
        "except Exception as _e:", "    print('raised', type(_e).__name__, _e)",
        "print('growth_kib', _peak() - _before)"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    growth = [int(line.split()[1]) for line in lines if line.startswith("growth_kib")][-1]
    return growth / 1024, "\n".join(line for line in lines if not line.startswith("growth_kib"))
