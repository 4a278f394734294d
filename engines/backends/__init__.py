"""Backend selection: `create_engine(backend=..., device=...)` -> (engine, notices), never failing for want of an
accelerator: it falls back and says why in the notices.

backend
  auto      TensorRT if torch_tensorrt imports and CUDA is present, else the compiled CUDA backend; without CUDA
            (or with --device cpu) OpenVINO if it imports, else the CPU one
  tensorrt  torch-tensorrt engines (fp16 renderer, fp32 detector), cached on disk       [tensorrt_backend.py]
  cuda      torch CUDA, fp16 autocast renderer + torch.compile (CUDA graphs)            [cuda_backend.py]
  openvino  OpenVINO on the CPU: bf16 where AMX is present, else fp32; int8 renderer on request
                                                                                        [openvino_backend.py]
  cpu       eager fp32 on the CPU; measured speed options opt-in (README)               [cpu_backend.py]
  torch     the plain eager fp32 FOMMEngine on the chosen device (the reference)
device: auto | cuda | cpu (cpu forces the CPU whatever the backend).
"""
from __future__ import annotations

import torch

from ..engine import FOMMEngine
from ..progress import Progress, step, to_stderr
from .common import describe_error

BACKENDS = ("auto", "tensorrt", "cuda", "openvino", "cpu", "torch")
DEVICES = ("auto", "cuda", "cpu")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16", "int8")  # int8: the OpenVINO renderer only


# --- probes (module-level so tests can replace them) ------------------------------------------------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


def tensorrt_status() -> tuple[bool, str]:
    from .tensorrt_backend import tensorrt_status as probe
    return probe()


def openvino_status() -> tuple[bool, str]:
    from .openvino_backend import openvino_status as probe
    return probe()


def cpu_capabilities():
    """What the CPU offers OpenVINO (bf16 on AMX or not): replaced in tests to play other CPUs."""
    from .openvino_backend import probe_cpu
    return probe_cpu()


# --- selection (pure) -------------------------------------------------------------------------------------------
def plan(backend: str, device: str, *, has_cuda: bool, tensorrt: tuple[bool, str],
         openvino: tuple[bool, str] = (False, "not probed")) -> tuple[str, list[str]]:
    """(one of 'tensorrt', 'cuda', 'openvino', 'cpu', 'torch-cuda', 'torch-cpu', notices) for the requested
    backend/device. `openvino`: (usable, reason) of the OpenVINO runtime."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    notices = []
    trt_ok, trt_reason = tensorrt
    ov_ok, ov_reason = openvino

    def best_cpu():  # the fastest CPU backend there is: OpenVINO when it imports
        if backend in ("cpu", "torch"):
            return "torch-cpu" if backend == "torch" else "cpu"
        if ov_ok:
            return "openvino"
        if backend == "openvino":
            notices.append(f"OpenVINO backend unavailable ({ov_reason}): using the CPU backend")
        return "cpu"

    cpu_name = "the OpenVINO CPU backend" if ov_ok else "the CPU backend"
    if device == "cpu":
        if backend in ("tensorrt", "cuda"):
            notices.append(f"the {backend} backend needs a CUDA GPU and --device cpu was given: using {cpu_name}")
        return best_cpu(), notices
    if not has_cuda:
        if device == "cuda":
            notices.append("CUDA requested but not available: running on the CPU (slow)")
        if backend == "tensorrt":
            notices.append(f"TensorRT backend unavailable ({trt_reason}): using {cpu_name}")
        elif backend == "cuda":
            notices.append(f"CUDA backend unavailable (no CUDA GPU): using {cpu_name}")
        return best_cpu(), notices
    # A CUDA device is present and allowed.
    if backend == "openvino":
        if device == "cuda":
            notices.append("--backend openvino runs on the CPU although --device cuda was given")
        return best_cpu(), notices
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


def _build_tensorrt(base, *, precision, cache_dir, warm_up, progress=None):
    from .tensorrt_backend import build_tensorrt_engine
    return build_tensorrt_engine(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up, progress=progress)


def _build_cuda(base, *, precision, warm_up):
    from .cuda_backend import build_cuda_engine
    return build_cuda_engine(base, precision=precision, warm_up=warm_up)


def _build_openvino(base, *, precision, cache_dir, warm_up, calibration_images=None, progress=None):
    from .openvino_backend import build_openvino_engine
    return build_openvino_engine(base, precision=precision, cache_dir=cache_dir, capabilities=cpu_capabilities(),
                                 warm_up=warm_up, calibration_images=calibration_images, progress=progress)


def _build_cpu(base, *, precision, warm_up):
    from .cpu_backend import build_cpu_engine
    return build_cpu_engine(base, precision=precision, warm_up=warm_up)


def create_engine(*, backend: str = "auto", device: str = "auto", checkpoint=None, deterministic_weights=False,
                  align_corners: bool = True, precision: str | None = None, cache_dir=None, warm_up: bool = True,
                  calibration_images=None, progress: Progress | None = None):
    """Return (engine, notices).

    precision: None/'auto' = the backend's default (TensorRT and CUDA fp16, OpenVINO per CPU: bf16 with AMX else
    fp32, CPU per the README's measurements); 'fp32', 'fp16' or 'bf16' where the backend supports it (else its
    default, with a notice); 'int8' (OpenVINO only: int8 renderer).
    cache_dir: where TensorRT engines / OpenVINO models are kept (default $LIVE_AVATAR_CACHE/trt or .../openvino,
    $LIVE_AVATAR_CACHE defaulting to ~/.cache/live-avatar).
    warm_up: compile/capture at creation so the first live frame is not the slow one.
    calibration_images: avatar images [1,3,S,S] the int8 renderer is calibrated on (default: generated ones).
    progress: called with one line before each slow step (loading weights, converting, compiling, quantizing) and
    with its elapsed time after it; default: printed to stderr.
    """
    progress = progress or to_stderr
    if precision is not None and precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    has_cuda = cuda_available()
    # Probe TensorRT only where it could be used: importing it is slow and may print warnings.
    wants_trt = device != "cpu" and has_cuda and backend in ("auto", "tensorrt")
    trt = tensorrt_status() if wants_trt else (False, "no CUDA GPU" if not has_cuda else "not requested")
    wants_ov = backend == "openvino" or (backend in ("auto", "tensorrt", "cuda") and (device == "cpu" or not has_cuda))
    ov = openvino_status() if wants_ov else (False, "not requested")
    choice, notices = plan(backend, device, has_cuda=has_cuda, tensorrt=trt, openvino=ov)
    if precision == "int8" and choice != "openvino":
        notices.append(f"int8 is an OpenVINO backend option: the {choice} backend uses its default precision")
        precision = None

    weights = "generating the test weights" if deterministic_weights else f"loading the checkpoint {checkpoint}"
    with step(progress, weights):
        base = _base_engine("cuda" if choice in ("tensorrt", "cuda", "torch-cuda") else "cpu", checkpoint,
                            deterministic_weights, align_corners)
    if choice.startswith("torch-"):
        if precision not in (None, "auto", "fp32"):
            notices.append(f"the torch backend runs fp32 only: ignoring precision {precision}")
        return base, notices
    if choice == "tensorrt":
        try:
            engine, more = _build_tensorrt(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up,
                                           progress=progress)
            return engine, notices + more
        except Exception as error:  # noqa: BLE001 - a failed TensorRT build must not stop the app
            notices.append(f"TensorRT build failed ({describe_error(error)}): using the CUDA backend")
            choice = "cuda"
    if choice == "cuda":
        try:
            # torch.compile traces and captures the graphs on the first calls: the warm-up, every start
            with step(progress if warm_up else (lambda _: None), "compiling the CUDA graphs (torch.compile)"):
                engine, more = _build_cuda(base, precision=precision, warm_up=warm_up)
            return engine, notices + more
        except Exception as error:  # noqa: BLE001
            notices.append(f"CUDA backend failed ({describe_error(error)}): using the plain torch CUDA engine")
            return base, notices
    if choice == "openvino":
        try:
            engine, more = _build_openvino(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up,
                                           calibration_images=calibration_images, progress=progress)
            details = getattr(engine, "details", {})
            # One line naming what runs, and why this precision (the CPU decides it unless asked).
            why = details.get("precision_reason", "")
            precision_text = str(getattr(engine, "precision", "?"))
            if details.get("float_precision", precision_text) != precision_text:
                precision_text += f" renderer, {details['float_precision']} detector"
            notices.append(f"backend: OpenVINO on the CPU, {precision_text}"
                           + (f" ({why})" if why else "")
                           + (f"; ready in {details['startup_s']:.1f} s" if "startup_s" in details else ""))
            return engine, notices + more
        except Exception as error:  # noqa: BLE001 - a failed OpenVINO build must not stop the app
            notices.append(f"OpenVINO backend failed ({describe_error(error)}): using the CPU backend")
            if precision == "int8":
                precision = None
    try:
        engine, more = _build_cpu(base, precision=precision, warm_up=warm_up)
        return engine, notices + more
    except Exception as error:  # noqa: BLE001
        notices.append(f"CPU backend failed ({describe_error(error)}): using the plain torch CPU engine")
        return base, notices
