"""The keypoint representation shared by the engine, calibration and the live loop."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Keypoints:
    """FOMM keypoints for a batch.

    value:    [B, K, 2] (x, y) in normalised coordinates, -1..1 = first..last pixel centre.
    jacobian: [B, K, 2, 2] local affine motion per keypoint (row-major, acts on column vectors (x, y)^T).
    """

    value: torch.Tensor
    jacobian: torch.Tensor

    def to(self, *args, **kwargs) -> "Keypoints":
        return Keypoints(self.value.to(*args, **kwargs), self.jacobian.to(*args, **kwargs))

    def detach(self) -> "Keypoints":
        return Keypoints(self.value.detach(), self.jacobian.detach())

    def clone(self) -> "Keypoints":
        return Keypoints(self.value.clone(), self.jacobian.clone())

    @property
    def num_kp(self) -> int:
        return int(self.value.shape[1])
