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
"""
from __future__ import annotations

from dataclasses import dataclass
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

    def close(self) -> None:
        """Stop background work (waiting for it to end) and free what the engine holds; safe to call twice."""


# Members a conforming class must have, for checks that go beyond isinstance (which only sees the names).
ATTRIBUTES = ("name", "device", "image_size", "config_hash", "weights_id", "align_corners")
METHODS = ("detect", "encode", "render", "forward_full", "between_frames", "status", "observe", "close")


class EngineBase:
    """The optional half of the protocol for engines that have nothing to switch, say, report or stop: no
    replacement between frames, no status, events dropped unless observed, nothing to close, align_corners True.
    Also a context manager (closes on exit)."""

    _notify: Callable[[str], None] | None = None
    _record: Callable[[str, float], None] | None = None
    align_corners: bool = True  # what the published checkpoints were trained with (FOMMEngine says its own)

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
