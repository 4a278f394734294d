"""Dense motion network: combines per-keypoint affine motions into one dense flow plus an occlusion map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AntiAliasDownsample, Hourglass, keypoint_gaussians, warp
from .config import VOX_256, FOMMConfig
from .geometry import coordinate_grid, inverse_2x2


def sparse_motions(height: int, width: int, kp_driving_value, kp_driving_jacobian, kp_source_value,
                   kp_source_jacobian) -> torch.Tensor:
    """[B, K+1, H, W, 2]: T_0(z) = z (background), T_k(z) = Js_k inv(Jd_k) (z - d_k) + s_k.

    The 2x2 products are written out elementwise: no torch.inverse and no 6-D matmul, so the graph exports.
    """
    batch, num_kp = kp_driving_value.shape[:2]
    grid = coordinate_grid(height, width, dtype=kp_driving_value.dtype, device=kp_driving_value.device)
    grid = grid.view(1, 1, height, width, 2)
    relative = grid - kp_driving_value.view(batch, num_kp, 1, 1, 2)
    affine = torch.matmul(kp_source_jacobian, inverse_2x2(kp_driving_jacobian)).view(batch, num_kp, 1, 1, 2, 2)
    dx, dy = relative[..., 0], relative[..., 1]
    x = affine[..., 0, 0] * dx + affine[..., 0, 1] * dy
    y = affine[..., 1, 0] * dx + affine[..., 1, 1] * dy
    driving_to_source = torch.stack([x, y], dim=-1) + kp_source_value.view(batch, num_kp, 1, 1, 2)
    background = grid.expand(batch, 1, height, width, 2)
    return torch.cat([background, driving_to_source], dim=1)


class DenseMotionNetwork(nn.Module):
    def __init__(self, config: FOMMConfig = VOX_256, align_corners: bool = True):
        super().__init__()
        c = config.generator.dense_motion
        self.num_kp = config.num_kp
        self.kp_variance = c.kp_variance
        self.align_corners = align_corners
        in_features = (config.num_kp + 1) * (config.num_channels + 1)
        self.hourglass = Hourglass(c.block_expansion, in_features, c.num_blocks, c.max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, config.num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3)
        self.down = AntiAliasDownsample(config.num_channels, c.scale_factor)

    def source_gaussians(self, kp_source_value: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return keypoint_gaussians(kp_source_value, height, width, self.kp_variance)

    def forward_cached(self, source_small, source_gaussians, kp_driving_value, kp_driving_jacobian,
                       kp_source_value, kp_source_jacobian):
        """The per-frame part, given the downsampled source and the source Gaussians (both avatar-only).

        Returns (deformation [B,H,W,2], occlusion [B,1,H,W], mask [B,K+1,H,W], sparse_deformed [B,K+1,C,H,W]).
        """
        batch, channels, height, width = source_small.shape
        num_parts = self.num_kp + 1

        heatmaps = keypoint_gaussians(kp_driving_value, height, width, self.kp_variance) - source_gaussians
        heatmaps = torch.cat([torch.zeros_like(heatmaps[:, :1]), heatmaps], dim=1).unsqueeze(2)

        motions = sparse_motions(height, width, kp_driving_value, kp_driving_jacobian, kp_source_value,
                                 kp_source_jacobian)
        repeated = source_small.unsqueeze(1).expand(batch, num_parts, channels, height, width)
        deformed = warp(repeated.reshape(batch * num_parts, channels, height, width),
                        motions.reshape(batch * num_parts, height, width, 2), self.align_corners)
        deformed = deformed.view(batch, num_parts, channels, height, width)

        # Channel layout [heatmap_k, R_k, G_k, B_k] for k = 0..K: the order the checkpoint's first conv expects.
        features = self.hourglass(torch.cat([heatmaps, deformed], dim=2).view(batch, -1, height, width))

        mask = F.softmax(self.mask(features), dim=1)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)
        occlusion = torch.sigmoid(self.occlusion(features))
        return deformation, occlusion, mask, deformed

    def forward(self, source_image, kp_driving_value, kp_driving_jacobian, kp_source_value, kp_source_jacobian):
        source_small = self.down(source_image)
        gaussians = self.source_gaussians(kp_source_value, source_small.shape[2], source_small.shape[3])
        return self.forward_cached(source_small, gaussians, kp_driving_value, kp_driving_jacobian,
                                   kp_source_value, kp_source_jacobian)
