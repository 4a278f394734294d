"""An engine that another, better engine can replace while it serves frames: the int8 renderer, calibrated in the
background, takes over from the float engine without a restart.

Any thread may `offer` a replacement; it takes effect only when the frame loop calls `between_frames()`, so one
frame is never detected by one engine and rendered by another. Replacements must accept the avatar states the
current engine encoded (the OpenVINO engines all do: one eager encoder, the same float detector).
"""
from __future__ import annotations

import threading
from dataclasses import replace

from ..protocol import EngineBase, EngineReport


class SwitchingEngine(EngineBase):
    """Engine protocol, delegated to the current engine; `between_frames()` applies an offered switch and returns
    its notice (or None); `close()` stops the background job (killing its child process, joining its thread) and
    closes every engine it held. The job is the SwitchingEngine's own: set once by the code that made both."""

    def __init__(self, engine):
        self.current = engine
        self._job = None              # the background work that may offer a replacement (int8_gate.Int8Upgrade)
        self._offer = None
        self._lock = threading.Lock()
        self._retired = []            # engines switched away from: closed with this one
        self.switches = 0

    # --- the background job ---------------------------------------------------------------------------------
    @property
    def job(self):
        return self._job

    def attach(self, job, *, start: bool = True):
        """Own `job` (it offers its replacement through `offer`): started here unless told otherwise, cancelled and
        joined by close(). Returns the job."""
        self._job = job
        return job.start() if start else job

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

    def report(self) -> EngineReport:
        """The current engine's report; until a switch, with the background check's state and any verdict."""
        report = self.current.report()
        if self._job is None or self.switches:
            return report
        verdict = self._job.result.verdict() if self._job.result is not None else report.gate
        return replace(report, gate=verdict, int8_check=self._job.status())

    def amend_report(self, **changes) -> None:
        """What the selection learned (fallbacks, start-up time) belongs to the engine serving now."""
        self.current.amend_report(**changes)

    def close(self) -> None:
        """Stop the background job (its child killed, its thread joined: well under a second), then close the
        engines."""
        if self._job is not None:
            self._job.cancel()
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
