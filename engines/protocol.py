"""The interface every engine offers to the layers above (calibration, the live loop, remote front ends).

FOMMEngine, every backend's engine, the switching engine and the remote client implement it, and the tests' fake
engines are checked against it (tests/test_engine_protocol.py), so a fake cannot drift from what the real engines
offer. Everything the layers above use is declared here: nobody probes an engine with getattr or patches
attributes onto it from outside.

    with create_engine(...)[0] as engine:          # close() stops background work (the int8 check), frees sockets
        state = engine.encode(avatar)              # once per avatar
        kp = engine.detect(frame)                  # every frame
        frame = engine.render(state, kp)           # every frame: a RenderedFrame (image + the model's own motion)
        notice = engine.between_frames()           # between two frames: a prepared replacement takes over
        engine.report().summary()                  # what runs, why, how fast, what it fell back from
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from .keypoints import Keypoints


@dataclass(frozen=True)
class RenderedFrame:
    """One rendered frame and the motion the generator computed for it (batch B, usually 1).

    image        [B,3,S,S] float in [0,1]
    deformation  [B,h,w,2] float: for each output position (h x w, 64x64 for vox) the avatar position it was taken
                 from, in grid_sample coordinates ([-1,1], x then y; the engine's align_corners semantics)
    occlusion    [B,1,h,w] float in [0,1]: 1 where the output is the warped avatar, towards 0 where the generator
                 paints content the avatar does not show (an opened mouth, uncovered background)
    fresh        False when this is an earlier frame again (a remote engine while its server is away or has not
                 answered yet): FPS counts fresh frames only
    """

    image: torch.Tensor
    deformation: torch.Tensor
    occlusion: torch.Tensor
    fresh: bool = True


def identity_motion(batch: int, size: int = 64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(deformation, occlusion) of "nothing moved, nothing occluded": what a frame shown at rest carries."""
    axis = torch.linspace(-1.0, 1.0, size, device=device)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    deformation = torch.stack([x, y], dim=-1)[None].expand(batch, size, size, 2).contiguous()
    return deformation, torch.ones(batch, 1, size, size, device=device)


@dataclass(frozen=True)
class Fallback:
    """A candidate the selection did not end up with, and why."""

    candidate: str        # e.g. "TensorRT backend", "OpenVINO Intel GPU"
    reason: str           # one line: the probe's answer, the request that ruled it out, or the build's error
    tried: bool = False   # True: it was built and failed; False: not available or not applicable here

    def describe(self) -> str:
        return f"{self.candidate} {'failed' if self.tried else 'unavailable'} ({self.reason})"


@dataclass(frozen=True)
class GateVerdict:
    """The int8 renderer's quality gate: its worst held-out frame against the eager fp32 renderer's."""

    psnr_db: float
    ssim: float
    passed: bool
    enforced: bool = True   # False: --precision int8 keeps int8 whatever the figures (they are reported only)
    earlier: bool = False   # the verdict was measured at an earlier start (cached)

    def short(self) -> str:
        psnr = "inf" if math.isinf(self.psnr_db) else f"{self.psnr_db:.1f}"
        return (f"gate {'passed' if self.passed else 'failed'}: PSNR {psnr} dB, SSIM {self.ssim:.4f} vs fp32"
                + (" (at an earlier start)" if self.earlier else "") + ("" if self.enforced else ", not enforced"))


BACKEND_NAMES = {"tensorrt": "TensorRT", "cuda": "torch CUDA (fp16 autocast + torch.compile)", "openvino": "OpenVINO",
                 "cpu": "eager torch", "mps": "torch MPS", "torch": "plain eager torch", "remote": "a render server"}
DEVICE_NAMES = {"cpu": "the CPU", "cuda": "the NVIDIA GPU", "gpu": "the Intel GPU", "npu": "the NPU",
                "mps": "the Apple GPU"}


@dataclass(frozen=True)
class EngineReport:
    """What an engine is, typed: what the HUD, the doctor, the bench, the run's last line and the start-up notice
    read (nobody parses notice text). Immutable: the code that builds an engine adds what it learned through
    `EngineBase.amend_report`, which replaces the whole report."""

    backend: str                   # tensorrt | cuda | openvino | cpu | mps | torch | remote
    device: str                    # where the per-frame graphs run: cpu | cuda | gpu | npu | mps (remote: the server's)
    detector: str                  # precision of the keypoint detector
    renderer: str                  # precision of the per-frame renderer (the engine's headline precision)
    why: str = ""                  # why that precision: "measured 2.3x fp32 on this CPU", "requested", "default"
    frame_ms: float | None = None  # one frame (detect + render) timed at start
    startup_s: float | None = None  # building the engine: weights, conversion, compilation, warm-up
    fell_back: tuple[Fallback, ...] = ()  # the candidates tried or ruled out before this one, in order
    gate: GateVerdict | None = None  # the int8 renderer's quality gate, where one was measured
    int8_check: str | None = None  # a background int8 check that has not switched: "running", "stopped", ...
    facts: tuple[tuple[str, Any], ...] = ()  # backend facts (threads, CPU/GPU name, caches, versions) for the bench

    @property
    def precision(self) -> str:
        return self.renderer

    def fact(self, name: str, default=None):
        return dict(self.facts).get(name, default)

    def summary(self) -> str:
        """One line: what runs where, at which precision and why, how fast, what it fell back from."""
        where = DEVICE_NAMES.get(self.device, self.device)
        text = f"{BACKEND_NAMES.get(self.backend, self.backend)} on {where}, {self.renderer}"
        text += f" ({self.why})" if self.why else ""
        text += f", detector {self.detector}"
        if self.frame_ms is not None:
            text += f"; {self.frame_ms:.0f} ms per frame at start"
        if self.startup_s is not None:
            text += f"; built in {self.startup_s:.1f} s"
        if self.gate is not None:
            text += f"; int8 {self.gate.short()}"
        if self.int8_check:
            text += f"; int8 check {self.int8_check}"
        if self.fell_back:
            text += "; not used: " + ", ".join(f.describe() for f in self.fell_back)
        return text

    def brief(self) -> str:
        """A few words for the HUD: backend, device, precision, a running int8 check."""
        text = f"{self.backend} {self.device} {self.renderer}"
        return text + (f", int8 check {self.int8_check.split(' (')[0]}" if self.int8_check else "")

    def as_dict(self) -> dict:
        """JSON-able (the bench's rows)."""
        found = asdict(self)
        found["facts"] = dict(self.facts)
        return found


@runtime_checkable
class Engine(Protocol):
    name: str                 # shown to the user: backend and precision, e.g. "torch-cpu-fp32"
    device: torch.device
    image_size: int           # side of the square model input and output (256 for vox)
    config_hash: str          # identifies config + weights: saved keypoints are only valid under the same hash
    weights_id: str           # where the weights came from (file name and size, or "deterministic:<salt>")
    align_corners: bool       # grid_sample semantics of the deformation it renders with (and returns)

    def detect(self, image: torch.Tensor) -> Keypoints:
        """[1,3,S,S] float in [0,1] -> keypoints (fp32)."""

    def encode(self, image: torch.Tensor) -> Any:
        """Avatar image [1,3,S,S] -> its source state (keypoints in `.kp`), computed once per avatar."""

    def render(self, state: Any, kp_driving: Keypoints) -> RenderedFrame:
        """Source state + driving keypoints (already relative to the neutral pose) -> the frame and its motion."""

    def forward_full(self, source: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints | None = None) -> dict:
        """The original full generator forward (baseline for tests and benchmarks)."""

    def between_frames(self) -> str | None:
        """Called by the frame loop between two frames: a replacement prepared in the background (the int8
        renderer behind its quality gate) takes over here; returns its notice, or None when nothing changed."""

    def status(self) -> str | None:
        """A condition the user must keep seeing in the status line (the render server is unreachable), or None."""

    def observe(self, notify: Callable[[str], None] | None = None,
                record: Callable[[str, float], None] | None = None) -> None:
        """Where the engine reports while it runs: `notify(message)` for one-off events (connection lost and back),
        `record(stage, ms)` for timings of its own (the remote round trip, "rtt")."""

    def report(self) -> EngineReport:
        """What this engine is and how it was chosen (engines.protocol.EngineReport)."""

    def close(self) -> None:
        """Stop background work (waiting for it to end) and free what the engine holds; safe to call twice."""


# Members a conforming class must have, for checks that go beyond isinstance (which only sees the names).
ATTRIBUTES = ("name", "device", "image_size", "config_hash", "weights_id", "align_corners")
METHODS = ("detect", "encode", "render", "forward_full", "between_frames", "status", "observe", "report", "close")


class EngineBase:
    """The optional half of the protocol for engines that have nothing to switch, say or stop: no replacement
    between frames, no status, events dropped unless observed, nothing to close, align_corners True; the report the
    engine was given. Also a context manager (closes on exit)."""

    _notify: Callable[[str], None] | None = None
    _record: Callable[[str, float], None] | None = None
    align_corners: bool = True  # what the published checkpoints were trained with (FOMMEngine says its own)
    _report: EngineReport | None = None

    def report(self) -> EngineReport:
        if self._report is None:
            raise NotImplementedError(f"{type(self).__name__} was built without a report")
        return self._report

    def amend_report(self, **changes) -> None:
        """For the code that built this engine: what the selection learned about it (the candidates it fell back
        from, its start-up time, the int8 gate's verdict) replaces the report, which stays immutable."""
        self._report = replace(self.report(), **changes)

    def between_frames(self) -> str | None:
        return None

    def status(self) -> str | None:
        return None

    def observe(self, notify: Callable[[str], None] | None = None,
                record: Callable[[str, float], None] | None = None) -> None:
        self._notify, self._record = notify, record

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
