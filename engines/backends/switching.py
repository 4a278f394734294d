"""An engine that another, better engine can replace while it serves frames: the int8 renderer, calibrated in the
background, takes over from the float engine without a restart.

Any thread may `offer` a replacement; it takes effect only when the frame loop calls `between_frames()`, so one
frame is never detected by one engine and rendered by another. Replacements must accept the avatar states the
current engine encoded (the OpenVINO engines all do: one eager encoder, the same float detector).
"""
from __future__ import annotations

import threading


class SwitchingEngine:
    """Engine protocol, delegated to the current engine; `between_frames()` applies an offered switch and returns
    its notice (or None)."""

    def __init__(self, engine):
        self.current = engine
        self.job = None               # the background work that may offer a replacement (int8_gate.Int8Upgrade)
        self._offer = None
        self._lock = threading.Lock()
        self.switches = 0

    # --- what the live loop sees ----------------------------------------------------------------------------
    def __getattr__(self, name):     # name, device, image_size, config_hash, weights_id, precision, details ...
        if name in ("current", "_offer", "_lock"):
            raise AttributeError(name)
        return getattr(self.current, name)

    @property
    def name(self) -> str:
        return self.current.name

    def detect(self, image):
        return self.current.detect(image)

    def encode(self, image):
        return self.current.encode(image)

    def render(self, state, kp_driving):
        return self.current.render(state, kp_driving)

    def forward_full(self, source, kp_driving, kp_source=None):
        return self.current.forward_full(source, kp_driving, kp_source)

    # --- switching ------------------------------------------------------------------------------------------
    def offer(self, engine, notice: str) -> None:
        """From any thread: `engine` replaces the current one at the next frame boundary (None: only the notice)."""
        with self._lock:
            self._offer = (engine, notice)

    def between_frames(self) -> str | None:
        with self._lock:
            offer, self._offer = self._offer, None
        if offer is None:
            return None
        engine, notice = offer
        if engine is not None:
            self.current = engine
            self.switches += 1
        return notice
