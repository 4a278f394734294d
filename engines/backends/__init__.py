"""Backend selection: `create_engine(backend=auto|tensorrt|torch, device=auto|cuda|cpu)` with printed fallbacks."""
from __future__ import annotations

import torch

from ..engine import FOMMEngine

BACKENDS = ("auto", "tensorrt", "torch")
DEVICES = ("auto", "cuda", "cpu")


def _base_engine(device, checkpoint, deterministic_weights, align_corners) -> FOMMEngine:
    if deterministic_weights:
        return FOMMEngine.from_deterministic_weights(device=device, align_corners=align_corners)
    if checkpoint is None:
        raise ValueError("a checkpoint path is required unless deterministic_weights=True")
    return FOMMEngine.from_checkpoint(checkpoint, device=device, align_corners=align_corners)


def create_engine(*, backend: str = "auto", device: str = "auto", checkpoint=None, deterministic_weights=False,
                  align_corners: bool = True):
    """Return (engine, notices). Never fails because an accelerator is missing: it falls back and says so."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    notices = []
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        notices.append("CUDA requested but not available: running on the CPU (slow)")
    resolved = "cuda" if has_cuda and device in ("auto", "cuda") else "cpu"
    engine = _base_engine(resolved, checkpoint, deterministic_weights, align_corners)
    if backend == "tensorrt":
        notices.append("TensorRT backend is not available in this build: using the torch backend")
    return engine, notices
