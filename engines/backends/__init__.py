"""Backend selection: `create_engine(backend=..., device=...)` -> (engine, notices), never failing for want of an
accelerator: it falls back and says why in the notices.

backend
  auto      TensorRT if torch_tensorrt imports and CUDA is present, else the compiled CUDA backend, else the CPU one
  tensorrt  torch-tensorrt engines (fp16 renderer, fp32 detector), cached on disk       [tensorrt_backend.py]
  cuda      torch CUDA, fp16 autocast renderer + torch.compile (CUDA graphs)            [cuda_backend.py]
  cpu       eager fp32 on the CPU; measured speed options opt-in (README)               [cpu_backend.py]
  torch     the plain eager fp32 FOMMEngine on the chosen device (the reference)
device: auto | cuda | cpu (cpu forces the CPU whatever the backend).
"""
from __future__ import annotations

import torch

from ..engine import FOMMEngine
from .common import describe_error

BACKENDS = ("auto", "tensorrt", "cuda", "cpu", "torch")
DEVICES = ("auto", "cuda", "cpu")


# --- probes (module-level so tests can replace them) ------------------------------------------------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


def tensorrt_status() -> tuple[bool, str]:
    from .tensorrt_backend import tensorrt_status as probe
    return probe()


# --- selection (pure) -------------------------------------------------------------------------------------------
def plan(backend: str, device: str, *, has_cuda: bool, tensorrt: tuple[bool, str]) -> tuple[str, list[str]]:
    """(one of 'tensorrt', 'cuda', 'cpu', 'torch-cuda', 'torch-cpu', notices) for the requested backend/device."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    notices = []
    trt_ok, trt_reason = tensorrt
    if device == "cpu":
        if backend in ("tensorrt", "cuda"):
            notices.append(f"the {backend} backend needs a CUDA GPU and --device cpu was given: using the CPU backend")
        return ("torch-cpu" if backend == "torch" else "cpu"), notices
    if not has_cuda:
        if device == "cuda":
            notices.append("CUDA requested but not available: running on the CPU (slow)")
        if backend == "tensorrt":
            notices.append(f"TensorRT backend unavailable ({trt_reason}): using the CPU backend")
        elif backend == "cuda":
            notices.append("CUDA backend unavailable (no CUDA GPU): using the CPU backend")
        return ("torch-cpu" if backend == "torch" else "cpu"), notices
    # A CUDA device is present and allowed.
    if backend == "torch":
        return "torch-cuda", notices
    if backend == "cpu":
        if device == "cuda":
            notices.append("--backend cpu runs on the CPU although --device cuda was given")
        return "cpu", notices
    if backend in ("auto", "tensorrt"):
        if trt_ok:
            return "tensorrt", notices
        if backend == "tensorrt":
            notices.append(f"TensorRT backend unavailable ({trt_reason}): using the CUDA backend "
                           "(torch fp16 + torch.compile)")
        else:
            notices.append(f"TensorRT not available ({trt_reason}): using torch CUDA fp16 + torch.compile")
    return "cuda", notices


# --- construction -----------------------------------------------------------------------------------------------
def _base_engine(device, checkpoint, deterministic_weights, align_corners) -> FOMMEngine:
    if deterministic_weights:
        return FOMMEngine.from_deterministic_weights(device=device, align_corners=align_corners)
    if checkpoint is None:
        raise ValueError("a checkpoint path is required unless deterministic_weights=True")
    return FOMMEngine.from_checkpoint(checkpoint, device=device, align_corners=align_corners)


def _build_tensorrt(base, *, precision, cache_dir, warm_up):
    from .tensorrt_backend import build_tensorrt_engine
    return build_tensorrt_engine(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up)


def _build_cuda(base, *, precision, warm_up):
    from .cuda_backend import build_cuda_engine
    return build_cuda_engine(base, precision=precision, warm_up=warm_up)


def _build_cpu(base, *, precision, warm_up):
    from .cpu_backend import build_cpu_engine
    return build_cpu_engine(base, precision=precision, warm_up=warm_up)


def create_engine(*, backend: str = "auto", device: str = "auto", checkpoint=None, deterministic_weights=False,
                  align_corners: bool = True, precision: str | None = None, cache_dir=None, warm_up: bool = True):
    """Return (engine, notices).

    precision: None/'auto' = the backend's default (TensorRT and CUDA fp16, CPU per the README's measurements);
    'fp32', 'fp16' or 'bf16' where the backend supports it (else its default, with a notice).
    cache_dir: where TensorRT engines are kept (default $LIVE_AVATAR_CACHE/trt or ~/.cache/live-avatar/trt).
    warm_up: compile/capture at creation so the first live frame is not the slow one.
    """
    if precision not in (None, "auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, fp32, fp16, bf16")
    has_cuda = cuda_available()
    # Probe TensorRT only where it could be used: importing it is slow and may print warnings.
    wants_trt = device != "cpu" and has_cuda and backend in ("auto", "tensorrt")
    trt = tensorrt_status() if wants_trt else (False, "no CUDA GPU" if not has_cuda else "not requested")
    choice, notices = plan(backend, device, has_cuda=has_cuda, tensorrt=trt)

    base = _base_engine("cuda" if choice in ("tensorrt", "cuda", "torch-cuda") else "cpu", checkpoint,
                        deterministic_weights, align_corners)
    if choice.startswith("torch-"):
        if precision not in (None, "auto", "fp32"):
            notices.append(f"the torch backend runs fp32 only: ignoring precision {precision}")
        return base, notices
    if choice == "tensorrt":
        try:
            engine, more = _build_tensorrt(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up)
            return engine, notices + more
        except Exception as error:  # noqa: BLE001 - a failed TensorRT build must not stop the app
            notices.append(f"TensorRT build failed ({describe_error(error)}): using the CUDA backend")
            choice = "cuda"
    if choice == "cuda":
        try:
            engine, more = _build_cuda(base, precision=precision, warm_up=warm_up)
            return engine, notices + more
        except Exception as error:  # noqa: BLE001
            notices.append(f"CUDA backend failed ({describe_error(error)}): using the plain torch CUDA engine")
            return base, notices
    try:
        engine, more = _build_cpu(base, precision=precision, warm_up=warm_up)
        return engine, notices + more
    except Exception as error:  # noqa: BLE001
        notices.append(f"CPU backend failed ({describe_error(error)}): using the plain torch CPU engine")
        return base, notices
