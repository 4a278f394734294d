"""HUD: per-stage timings, FPS and end-to-end latency of the live loop, and drawing them onto the preview.

All times come from time.perf_counter() (the clock the capture thread stamps frames with), averaged with an EMA so the
numbers are readable at 30 fps instead of flickering.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import cv2
import numpy as np

STAGES = ("wait", "crop", "detect", "normalize", "render", "rtt", "sinks")  # rtt: --remote round trip


class Timings:
    """Smoothed per-stage milliseconds, frames per second and capture->sent latency."""

    def __init__(self, alpha: float = 0.1, clock=time.perf_counter):
        self.alpha = alpha
        self.clock = clock
        self.stage_ms: dict[str, float] = {}
        self.fps: float | None = None
        self.latency_ms: float | None = None
        self.frames = 0
        self._last_frame_end: float | None = None

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def record(self, stage: str, ms: float) -> None:
        self.stage_ms[stage] = self._ema(self.stage_ms.get(stage), ms)

    @contextmanager
    def stage(self, name: str):
        start = self.clock()
        try:
            yield
        finally:
            self.record(name, (self.clock() - start) * 1000.0)

    def frame_done(self, capture_timestamp: float | None = None) -> None:
        """Call once per frame after it was sent: updates FPS (from the interval between frames) and latency."""
        now = self.clock()
        if self._last_frame_end is not None and now > self._last_frame_end:
            self.fps = self._ema(self.fps, 1.0 / (now - self._last_frame_end))
        self._last_frame_end = now
        if capture_timestamp is not None:
            self.latency_ms = self._ema(self.latency_ms, (now - capture_timestamp) * 1000.0)
        self.frames += 1

    def lines(self) -> list[str]:
        fps = f"{self.fps:5.1f}" if self.fps is not None else "  -  "
        latency = f"{self.latency_ms:4.0f} ms" if self.latency_ms is not None else "-"
        stages = " ".join(f"{name} {self.stage_ms[name]:.0f}" for name in STAGES if name in self.stage_ms)
        return [f"FPS {fps}  latency {latency}", f"ms: {stages}" if stages else "ms: -"]

    def summary(self) -> str:
        """One line for the terminal at exit."""
        return " | ".join(self.lines())


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
