"""Building blocks shared by the FOMM networks. Attribute names follow the official state_dict keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import coordinate_grid


class SameBlock(nn.Module):
    """conv -> BN -> ReLU at constant resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class DownBlock(nn.Module):
    """conv 3x3 -> BN -> ReLU -> 2x2 average pool: halves the resolution."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class UpBlock(nn.Module):
    """nearest x2 upsampling (legacy 'nearest': pixel (i, j) <- (i//2, j//2)) -> conv 3x3 -> BN -> ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(features, affine=True)
        self.norm2 = nn.BatchNorm2d(features, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


def _level_features(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * (2 ** level))


class Encoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            inputs = in_features if i == 0 else _level_features(block_expansion, max_features, i)
            blocks.append(DownBlock(inputs, _level_features(block_expansion, max_features, i + 1)))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """up_blocks[0] is the deepest level (the official key order)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for n, level in enumerate(reversed(range(num_blocks))):
            multiplier = 1 if n == 0 else 2
            inputs = multiplier * _level_features(block_expansion, max_features, level + 1)
            blocks.append(UpBlock(inputs, _level_features(block_expansion, max_features, level)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, encoder_outputs):
        skips = list(encoder_outputs)
        out = skips.pop()
        for block in self.up_blocks:
            out = block(out)
            out = torch.cat([out, skips.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style encoder/decoder; output has block_expansion + in_features channels at input resolution."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


def gaussian_kernel_1d(scale: float) -> torch.Tensor:
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1  # Python's round (half to even), as the original
    t = torch.arange(size, dtype=torch.float32)
    mean = (size - 1) / 2
    return torch.exp(-((t - mean) ** 2) / (2 * sigma ** 2))


class AntiAliasDownsample(nn.Module):
    """Band-limited downsampling: Gaussian blur then keep every (1/scale)-th pixel starting at 0.

    Implemented as one depthwise conv with stride 1/scale and zero padding, which equals pad + blur + slice.
    The kernel is a persistent buffer named `weight` because the official state_dict carries it.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.scale = scale
        self.channels = channels
        if scale == 1.0:
            self.register_buffer("weight", torch.ones(channels, 1, 1, 1))
            self.stride, self.padding = 1, 0
            return
        g = gaussian_kernel_1d(scale)
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        size = kernel.shape[0]
        self.register_buffer("weight", kernel.view(1, 1, size, size).repeat(channels, 1, 1, 1))
        self.stride = int(round(1.0 / scale))
        self.padding = size // 2  # odd kernel: left pad == right pad

    def forward(self, x):
        if self.scale == 1.0:
            return x
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.channels)


def keypoint_gaussians(kp_value: torch.Tensor, height: int, width: int, variance: float) -> torch.Tensor:
    """[B,K,2] keypoints -> [B,K,H,W] isotropic Gaussians exp(-0.5 |z - p|^2 / variance) on the normalised grid."""
    grid = coordinate_grid(height, width, dtype=kp_value.dtype, device=kp_value.device)
    diff = grid.view(1, 1, height, width, 2) - kp_value.view(kp_value.shape[0], kp_value.shape[1], 1, 1, 2)
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


def warp(image: torch.Tensor, grid: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear backward warp with zero padding (the only resampling FOMM uses)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
