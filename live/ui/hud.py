"""HUD: per-stage timings, FPS and end-to-end latency of the live loop, and drawing them onto the preview.

All times come from time.perf_counter() (the clock the capture thread stamps frames with).
- FPS counts the *new* frames sent over a sliding window of `window` seconds: (frames - 1) / (time between the
  first and the last of them). A repeat (the remote engine showing its last frame while the server is away, the
  avatar at rest) is sent but not counted: the pipeline says which frames are fresh. An average of 1/interval
  overstates the rate whenever intervals vary, and lags for seconds after the fast uncalibrated start.
- Stage times and the capture->sent latency are EMAs of the same frames: whenever the set of stages that run
  changes (calibrated, passthrough, a NaN frame) every average restarts from that frame, so the latency is never
  below the sum of the stages it contains. A stage that did not run in the current or the previous frame is not
  shown. `wait` (for the next camera frame, partly before its capture) and `rtt` (the round trip of an earlier
  frame answered now) overlap other frames, so they do not decide the mode and are not part of that sum.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager

import cv2
import numpy as np

LATENCY_HISTORY = 2000  # frames whose latency recent_latencies() can return (over a minute at 30 fps)
STAGES = ("wait", "crop", "detect", "normalize", "render", "rtt", "composite", "sinks")  # rtt: --remote round trip
OVERLAPPING = frozenset({"wait", "rtt"})  # not inside the capture->sent time of the frame they are recorded in


class Timings:
    """Smoothed per-stage milliseconds, frames per second and capture->sent latency."""

    def __init__(self, alpha: float = 0.1, clock=time.perf_counter, window: float = 3.0):
        self.alpha = alpha
        self.clock = clock
        self.window = window
        self.stage_ms: dict[str, float] = {}
        self.latency_ms: float | None = None
        self.frames = 0                          # every frame_done(): stages' "ran recently" counts these
        self.fresh_frames = 0                    # new frames only: what FPS counts
        self._frame_ms: dict[str, float] = {}    # this frame's own stage times, for a restart
        self._mode: frozenset | None = None      # the stages (minus OVERLAPPING) of the previous frame
        self._stage_frame: dict[str, int] = {}   # index of the frame during which each stage last ran
        self._sent: deque[float] = deque()        # frame_done() times within the window (at least the last two)
        self._first_sent: float | None = None
        self._last_sent: float | None = None
        self._latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_HISTORY)  # (sent time, ms)
        self._latency_lock = threading.Lock()  # the audio thread reads them (lip sync)

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def record(self, stage: str, ms: float) -> None:
        # a stage that did not run in the previous frame starts afresh: its old average describes another mode
        old = self.stage_ms.get(stage) if self._ran_recently(stage) else None
        self.stage_ms[stage] = self._ema(old, ms)
        self._stage_frame[stage] = self.frames
        self._frame_ms[stage] = ms

    def _ran_recently(self, stage: str) -> bool:
        return self._stage_frame.get(stage, -2) >= self.frames - 1

    @contextmanager
    def stage(self, name: str):
        start = self.clock()
        try:
            yield
        finally:
            self.record(name, (self.clock() - start) * 1000.0)

    def frame_done(self, capture_timestamp: float | None = None, fresh: bool = True) -> None:
        """Call once per frame after it was sent: updates FPS and latency. `fresh`: a newly made frame, not a
        repeat of an earlier one (repeats count for neither)."""
        now = self.clock()
        mode = frozenset(self._frame_ms) - OVERLAPPING
        if self._mode is not None and mode != self._mode:  # another mode: every average restarts here
            self.stage_ms = {name: ms for name, ms in self._frame_ms.items()}
            self.latency_ms = None
        self._mode, self._frame_ms = mode, {}
        if fresh:
            self._sent.append(now)
            while len(self._sent) > 2 and self._sent[0] < now - self.window:
                self._sent.popleft()
            if self._first_sent is None:
                self._first_sent = now
            self._last_sent = now
            self.fresh_frames += 1
            if capture_timestamp is not None:
                self.latency_ms = self._ema(self.latency_ms, (now - capture_timestamp) * 1000.0)
                with self._latency_lock:
                    self._latencies.append((now, (now - capture_timestamp) * 1000.0))
        self.frames += 1

    def recent_latencies(self, seconds: float) -> list[float]:
        """Capture -> sent latencies (ms) of the frames sent in the last `seconds`; safe from any thread."""
        since = self.clock() - seconds
        with self._latency_lock:
            return [ms for sent, ms in self._latencies if sent >= since]

    @property
    def fps(self) -> float | None:
        """New frames sent per second over the last `window` seconds (over the last two when slower); None once no
        new frame came for longer than the window and two of those intervals (only repeats are sent: a stall)."""
        if len(self._sent) < 2 or self._sent[-1] <= self._sent[0]:
            return None
        if self._stalled():
            return None
        return (len(self._sent) - 1) / (self._sent[-1] - self._sent[0])

    def _stalled(self) -> bool:
        """No new frame for longer than the window and two of the recent intervals: only repeats go out."""
        if not self._sent:
            return False
        interval = (self._sent[-1] - self._sent[0]) / max(1, len(self._sent) - 1)
        return self.clock() - self._sent[-1] > max(self.window, 2 * interval)

    @property
    def average_fps(self) -> float | None:
        """New frames sent per second over the whole run."""
        if self.fresh_frames < 2 or self._last_sent <= self._first_sent:
            return None
        return (self.fresh_frames - 1) / (self._last_sent - self._first_sent)

    def recent_stages(self) -> dict[str, float]:
        """Stage -> ms for the stages that ran in the current or the previous frame, in pipeline order."""
        names = [n for n in STAGES if n in self.stage_ms] + [n for n in self.stage_ms if n not in STAGES]
        return {n: self.stage_ms[n] for n in names if self._ran_recently(n)}

    def _lines(self, fps: float | None, latency_ms: float | None) -> list[str]:
        fps_text = f"{fps:5.1f}" if fps is not None else "  -  "
        latency = f"{latency_ms:4.0f} ms" if latency_ms is not None else "-"
        stages = " ".join(f"{name} {ms:.0f}" for name, ms in self.recent_stages().items())
        return [f"FPS {fps_text}  latency {latency}", f"ms: {stages}" if stages else "ms: -"]

    def lines(self) -> list[str]:
        return self._lines(self.fps, None if self._stalled() else self.latency_ms)

    def summary(self) -> str:
        """One line for the terminal at exit (FPS averaged over the whole run)."""
        return " | ".join(self._lines(self.average_fps, self.latency_ms))


def draw_text_lines(image: np.ndarray, lines, origin=(8, 8), scale: float = 0.5,
                    color=(255, 255, 255)) -> np.ndarray:
    """Draw lines of text in place with a dark backing box so they stay legible on any background."""
    if not lines:
        return image
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = 1
    sizes = [cv2.getTextSize(line, font, scale, thickness)[0] for line in lines]
    line_h = max(h for _, h in sizes) + 8
    width = max(w for w, _ in sizes) + 12
    x, y = origin
    x1, y1 = min(image.shape[1], x + width), min(image.shape[0], y + line_h * len(lines) + 4)
    if x1 > x and y1 > y:
        region = image[y:y1, x:x1]
        region[:] = (region * 0.35).astype(image.dtype)  # darken instead of a solid box: the picture stays visible
    for i, line in enumerate(lines):
        baseline_y = y + 4 + line_h * (i + 1) - 6
        cv2.putText(image, line, (x + 6, baseline_y), font, scale, color, thickness, cv2.LINE_AA)
    return image
