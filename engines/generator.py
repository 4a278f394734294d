"""Occlusion-aware generator, split into an avatar-only encoder and a per-frame renderer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock, ResBlock, SameBlock, UpBlock, warp
from .config import VOX_256, FOMMConfig
from .dense_motion import DenseMotionNetwork


class OcclusionAwareGenerator(nn.Module):
    """Warps encoder features of the source with the dense motion, masks occluded parts, decodes.

    `align_corners` selects the grid_sample semantics of every warp: True reproduces torch 1.0, which the
    official checkpoints were trained with; False reproduces the original code on today's torch.
    """

    def __init__(self, config: FOMMConfig = VOX_256, align_corners: bool = True):
        super().__init__()
        c = config.generator
        self.dense_motion_network = DenseMotionNetwork(config, align_corners)
        self.first = SameBlock(config.num_channels, c.block_expansion, kernel_size=7, padding=3)
        down = []
        for i in range(c.num_down_blocks):
            down.append(DownBlock(min(c.max_features, c.block_expansion * 2 ** i),
                                  min(c.max_features, c.block_expansion * 2 ** (i + 1))))
        self.down_blocks = nn.ModuleList(down)
        up = []
        for i in range(c.num_down_blocks):
            up.append(UpBlock(min(c.max_features, c.block_expansion * 2 ** (c.num_down_blocks - i)),
                              min(c.max_features, c.block_expansion * 2 ** (c.num_down_blocks - i - 1))))
        self.up_blocks = nn.ModuleList(up)
        features = min(c.max_features, c.block_expansion * 2 ** c.num_down_blocks)
        self.bottleneck = nn.Sequential()
        for i in range(c.num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock(features))
        self.final = nn.Conv2d(c.block_expansion, config.num_channels, kernel_size=7, padding=3)
        self._align_corners = align_corners

    @property
    def align_corners(self) -> bool:
        return self._align_corners

    @align_corners.setter
    def align_corners(self, value: bool):
        self._align_corners = bool(value)
        self.dense_motion_network.align_corners = bool(value)

    # --- avatar-only part -------------------------------------------------------------------------------------
    def encode_source(self, source_image: torch.Tensor, kp_source_value: torch.Tensor):
        """Everything that depends only on the avatar: (features, downsampled source, source Gaussians)."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        small = self.dense_motion_network.down(source_image)
        gaussians = self.dense_motion_network.source_gaussians(kp_source_value, small.shape[2], small.shape[3])
        return out, small, gaussians

    # --- per-frame part ---------------------------------------------------------------------------------------
    def decode(self, features: torch.Tensor, deformation: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        if features.shape[2:] != deformation.shape[1:3]:
            deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=features.shape[2:], mode="bilinear",
                                        align_corners=False).permute(0, 2, 3, 1)
        out = warp(features, deformation, self._align_corners)
        if out.shape[2:] != occlusion.shape[2:]:
            occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=False)
        out = self.bottleneck(out * occlusion)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))

    def render(self, features, source_small, source_gaussians, kp_source_value, kp_source_jacobian,
               kp_driving_value, kp_driving_jacobian):
        """Per-frame path on cached avatar tensors -> (prediction, deformation, occlusion, mask, sparse_deformed).

        Arguments in the order of FrameRenderer.forward and of the exported graphs' inputs
        (engines.export.RENDERER_INPUTS): the avatar state (source keypoints included), then the driving keypoints.
        """
        deformation, occlusion, mask, sparse = self.dense_motion_network.forward_cached(
            source_small, source_gaussians, kp_driving_value, kp_driving_jacobian, kp_source_value,
            kp_source_jacobian)
        return self.decode(features, deformation, occlusion), deformation, occlusion, mask, sparse

    def forward(self, source_image, kp_driving_value, kp_driving_jacobian, kp_source_value, kp_source_jacobian):
        """The full forward of the original (driving before source, like the original's signature).

        Returns a dict with mask, sparse_deformed, occlusion_map, deformation, deformed and prediction.
        """
        features, small, gaussians = self.encode_source(source_image, kp_source_value)
        prediction, deformation, occlusion, mask, sparse = self.render(
            features, small, gaussians, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian)
        # `deformed` is visualisation only: the source warped by the field resized to full resolution.
        field = F.interpolate(deformation.permute(0, 3, 1, 2), size=source_image.shape[2:], mode="bilinear",
                              align_corners=False).permute(0, 2, 3, 1)
        deformed = warp(source_image, field, self._align_corners)
        return {"mask": mask, "sparse_deformed": sparse, "occlusion_map": occlusion, "deformation": deformation,
                "deformed": deformed, "prediction": prediction}


class FrameRenderer(nn.Module):
    """The per-frame generator as a plain-tensor graph: the avatar state enters as inputs, so one compiled graph
    (TensorRT, ONNX, torch.compile) serves every avatar without a rebuild. Returns (prediction [1,3,S,S],
    deformation [1,h,w,2], occlusion [1,1,h,w]): the frame and the motion behind it, which the compositing uses
    to move the avatar photo's own pixels (engines/protocol.py RenderedFrame).

    Input order (also the exported graphs' input order, engines.export.RENDERER_INPUTS): features, source_small,
    source_gaussians, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian.
    """

    def __init__(self, generator: OcclusionAwareGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, features, source_small, source_gaussians, kp_source_value, kp_source_jacobian,
                kp_driving_value, kp_driving_jacobian):
        prediction, deformation, occlusion, _, _ = self.generator.render(
            features, source_small, source_gaussians, kp_source_value, kp_source_jacobian, kp_driving_value,
            kp_driving_jacobian)
        return prediction, deformation, occlusion
