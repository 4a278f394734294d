"""Small export-friendly geometry helpers (no torch.inverse, no data-dependent control flow)."""
from __future__ import annotations

import torch


def inverse_2x2(m: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of [..., 2, 2] matrices: [[d, -b], [-c, a]] / (ad - bc).

    torch.inverse has no ONNX/TensorRT equivalent; this is plain elementwise arithmetic and matches LAPACK to ~1 ulp.
    """
    a, b = m[..., 0, 0], m[..., 0, 1]
    c, d = m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    row0 = torch.stack([d, -b], dim=-1)
    row1 = torch.stack([-c, a], dim=-1)
    return torch.stack([row0, row1], dim=-2) / det[..., None, None]


def coordinate_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[H, W, 2] grid of (x, y); pixel centres of the first/last column/row sit exactly at -1/+1."""
    xs = torch.arange(width, dtype=dtype, device=device)
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = 2 * (xs / (width - 1)) - 1
    ys = 2 * (ys / (height - 1)) - 1
    grid_x = xs.view(1, -1).expand(height, width)
    grid_y = ys.view(-1, 1).expand(height, width)
    return torch.stack([grid_x, grid_y], dim=-1)
