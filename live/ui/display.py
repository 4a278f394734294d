"""Can a preview window be opened? Check BEFORE the first cv2.imshow.

OpenCV's Qt/GTK backends abort the whole process (SIGABRT, uncatchable) when there is no display to connect to,
so on Linux/BSD we ask a throwaway child process to open a window: if it dies, only the child dies. Windows and
macOS always have a desktop for a GUI program, so they count as having a display.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from live.errors import DisplayError

PROBE_TIMEOUT_S = 10.0
_PROBE_CODE = ("import cv2\n"
               "cv2.namedWindow('live-avatar display probe', cv2.WINDOW_NORMAL)\n"
               "cv2.destroyAllWindows()\n")
# The answer depends on these; keyed so a changed environment (or a test) is probed afresh.
_cache: dict[tuple, str | None] = {}


def _probe() -> str | None:
    """Open and close a window in a child process; None if that worked, else why not."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE_CODE], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"opening a test window did not finish within {PROBE_TIMEOUT_S:g} s"
    except OSError as e:
        return f"cannot start the display check: {e}"
    if done.returncode == 0:
        return None
    err = done.stderr or ""
    if "not implemented" in err.lower():
        return "OpenCV was built without GUI support (opencv-python-headless?)"
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    detail = next((line for line in lines if "connect" in line.lower()), lines[0] if lines else "")
    return f"a test window could not be opened: {detail or f'exit status {done.returncode}'}"


def display_problem() -> str | None:
    """None if a preview window can be shown, else a short reason."""
    system = platform.system()
    if system in ("Windows", "Darwin"):
        return None
    x11, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    if not x11 and not wayland:
        return "DISPLAY and WAYLAND_DISPLAY are not set"
    key = (system, x11, wayland, _PROBE_CODE)
    if key not in _cache:
        _cache[key] = _probe()
    return _cache[key]


def has_display() -> bool:
    return display_problem() is None


def require_display() -> None:
    """Raise DisplayError (one line) when no preview window can be opened."""
    problem = display_problem()
    if problem is not None:
        raise DisplayError(f"no display: cannot open the preview window ({problem}); use --no-preview to run "
                           f"headless")
