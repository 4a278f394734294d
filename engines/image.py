"""Conversions between camera/avatar images (uint8 HxWx3 RGB) and model tensors ([1,3,S,S] float in [0,1])."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def to_model_input(rgb: np.ndarray, size: int = 256, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (or float in [0,1]) HxWx3 RGB -> [1,3,size,size]; resizes with area averaging when shrinking."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.shape[0] != size or rgb.shape[1] != size:
        shrinking = rgb.shape[0] > size or rgb.shape[1] > size
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if rgb.dtype == np.uint8:
        array = rgb.astype(np.float32) / 255.0
    else:
        array = np.clip(rgb.astype(np.float32), 0.0, 1.0)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    return tensor.to(device=device, dtype=dtype)


def to_uint8_image(tensor: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] (or [3,H,W]) float in [0,1] -> uint8 HxWx3 RGB."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (array * 255.0 + 0.5).astype(np.uint8)
