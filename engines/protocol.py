"""The interface every engine offers to the layers above (calibration, the live loop, remote front ends).

FOMMEngine and every backend's engine implement it, and the tests' fake engines are checked against it
(tests/test_engine_protocol.py), so a fake cannot drift from what the real engines offer.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .keypoints import Keypoints


@runtime_checkable
class Engine(Protocol):
    name: str                 # shown to the user: backend and precision, e.g. "torch-cpu-fp32"
    device: torch.device
    image_size: int           # side of the square model input and output (256 for vox)
    config_hash: str          # identifies config + weights: saved keypoints are only valid under the same hash
    weights_id: str           # where the weights came from (file name and size, or "deterministic:<salt>")

    def detect(self, image: torch.Tensor) -> Keypoints:
        """[1,3,S,S] float in [0,1] -> keypoints (fp32)."""

    def encode(self, image: torch.Tensor) -> Any:
        """Avatar image [1,3,S,S] -> its source state (keypoints in `.kp`), computed once per avatar."""

    def render(self, state: Any, kp_driving: Keypoints) -> torch.Tensor:
        """Source state + driving keypoints (already relative to the neutral pose) -> [1,3,S,S] in [0,1]."""

    def forward_full(self, source: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints | None = None) -> dict:
        """The original full generator forward (baseline for tests and benchmarks)."""


# Optional members, read through the two functions below so local engines need neither:
#   last_render_fresh: bool   False when the last render() answered with an earlier frame again (a remote engine
#                             while its server is away or has not answered yet)
#   status_line: str | None   a condition the user must keep seeing (the render server is unreachable)
def render_was_fresh(engine) -> bool:
    """Whether the engine's last render() made a new frame (local engines always do)."""
    return bool(getattr(engine, "last_render_fresh", True))


def engine_status(engine) -> str | None:
    """What the engine needs the status line to keep saying, or None."""
    return getattr(engine, "status_line", None)


# Members a conforming class must have, for checks that go beyond isinstance (which only sees the names).
ATTRIBUTES = ("name", "device", "image_size", "config_hash", "weights_id")
METHODS = ("detect", "encode", "render", "forward_full")
