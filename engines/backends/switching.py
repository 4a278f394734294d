"""An engine that another, better engine can replace while it serves frames: the int8 renderer, calibrated in the
background, takes over from the float engine without a restart.

Any thread may `offer` a replacement; it takes effect only when the frame loop calls `between_frames()`, so one
frame is never detected by one engine and rendered by another. Replacements must accept the avatar states the
current engine encoded (the OpenVINO engines all do: one eager encoder, the same float detector).
"""
from __future__ import annotations

import threading

from ..protocol import EngineBase


class SwitchingEngine(EngineBase):
    """Engine protocol, delegated to the current engine; `between_frames()` applies an offered switch and returns
    its notice (or None); `close()` stops the background job and closes every engine it held."""

    def __init__(self, engine):
        self.current = engine
        self.job = None               # the background work that may offer a replacement (int8_gate.Int8Upgrade)
        self._offer = None
        self._lock = threading.Lock()
        self._retired = []            # engines switched away from: closed with this one
        self.switches = 0

    # --- what the live loop sees ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.current.name

    @property
    def device(self):
        return self.current.device

    @property
    def image_size(self) -> int:
        return self.current.image_size

    @property
    def config_hash(self) -> str:
        return self.current.config_hash

    @property
    def weights_id(self) -> str:
        return self.current.weights_id

    @property
    def align_corners(self) -> bool:
        return self.current.align_corners

    @property
    def precision(self) -> str:
        return self.current.precision

    @property
    def details(self) -> dict:
        return self.current.details

    def detect(self, image):
        return self.current.detect(image)

    def encode(self, image):
        return self.current.encode(image)

    def render(self, state, kp_driving):
        return self.current.render(state, kp_driving)

    def forward_full(self, source, kp_driving, kp_source=None):
        return self.current.forward_full(source, kp_driving, kp_source)

    def status(self) -> str | None:
        return self.current.status()

    def close(self) -> None:
        """Stop the background job (waiting for its thread), then close the engines."""
        if self.job is not None:
            self.job.cancel()
        with self._lock:
            offer, self._offer = self._offer, None
        for engine in [self.current, *self._retired, *([offer[0]] if offer and offer[0] is not None else [])]:
            engine.close()

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
            self._retired.append(self.current)
            self.current = engine
            self.switches += 1
        return notice
