"""Keypoint detector: keypoints as heatmap centroids, plus a local 2x2 Jacobian per keypoint."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AntiAliasDownsample, Hourglass
from .config import VOX_256, FOMMConfig
from .geometry import coordinate_grid


class KeypointDetector(nn.Module):
    """forward(image [B,3,256,256]) -> (value [B,K,2], jacobian [B,K,2,2]).

    Returns a tuple (not a dict) so the graph traces and exports without special casing.
    """

    def __init__(self, config: FOMMConfig = VOX_256):
        super().__init__()
        c = config.kp_detector
        self.num_kp = config.num_kp
        self.temperature = c.temperature
        self.predictor = Hourglass(c.block_expansion, config.num_channels, c.num_blocks, c.max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, config.num_kp, kernel_size=7, padding=c.pad)
        self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * config.num_kp, kernel_size=7, padding=c.pad)
        # Untrained Jacobian head starts at the identity (matters only for freshly built networks).
        with torch.no_grad():
            self.jacobian.weight.zero_()
            self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(config.num_kp))
        self.down = AntiAliasDownsample(config.num_channels, c.scale_factor)

    def forward(self, image: torch.Tensor):
        features = self.predictor(self.down(image))
        logits = self.kp(features)
        batch, num_kp, height, width = logits.shape
        heatmap = F.softmax(logits.view(batch, num_kp, -1) / self.temperature, dim=2).view(logits.shape)

        grid = coordinate_grid(height, width, dtype=heatmap.dtype, device=heatmap.device)
        value = (heatmap.unsqueeze(-1) * grid.view(1, 1, height, width, 2)).sum(dim=(2, 3))

        jacobian_map = self.jacobian(features).view(batch, num_kp, 4, height, width)
        jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(batch, num_kp, 4, -1).sum(dim=-1)
        return value, jacobian.view(batch, num_kp, 2, 2)
