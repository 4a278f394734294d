"""Backend selection: `create_engine(backend=..., device=...)` -> (engine, notices), never failing for want of an
accelerator: it falls back and says why in the notices.

backend
  auto      TensorRT if torch_tensorrt imports and CUDA is present, else the compiled CUDA backend; without CUDA
            (or with --device cpu) OpenVINO if it imports, else the CPU one
  tensorrt  torch-tensorrt engines (fp16 renderer, fp32 detector), cached on disk       [tensorrt_backend.py]
  cuda      torch CUDA, fp16 autocast renderer + torch.compile (CUDA graphs)            [cuda_backend.py]
  openvino  OpenVINO on the CPU (or an Intel GPU/NPU): bf16 where measured faster than fp32 on this CPU, else
            fp32; under auto the int8 renderer too, where the float frame is slower than real time and int8
            passes a quality gate on the user's avatars (int8_gate.py)                  [openvino_backend.py]
  cpu       eager on the CPU, bf16 autocast where measured faster                       [cpu_backend.py]
  torch     the plain eager fp32 FOMMEngine on the chosen device (the reference)
  (mps)     torch on the Apple GPU: fp16 renderer, fp32 detector                        [mps_backend.py]
device: auto | cuda | cpu | gpu | npu | mps. cpu forces the CPU whatever the backend; gpu/npu are OpenVINO's
Intel GPU (iGPU/Arc) and NPU devices, mps the Apple GPU. Without CUDA, auto also builds each accelerator present
and keeps the fastest by one measured frame (cached); one that fails to compile falls back with one line.
"""
from __future__ import annotations

import torch

from ..engine import FOMMEngine
from ..progress import Progress, step, to_stderr
from .common import PRECISIONS, describe_error

BACKENDS = ("auto", "tensorrt", "cuda", "openvino", "cpu", "torch")
DEVICES = ("auto", "cuda", "cpu", "gpu", "npu", "mps")
ACCELERATORS = ("gpu", "npu", "mps")  # devices auto considers without CUDA, when present
PRECISION_CHOICES = ("auto", *PRECISIONS, "int8")  # int8: the OpenVINO renderer only


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
    """What the CPU offers OpenVINO (bf16 measured against f32): replaced in tests to play other CPUs."""
    from .openvino_backend import probe_cpu
    return probe_cpu()


def openvino_devices() -> tuple[str, ...]:
    """OpenVINO's available devices, e.g. ('CPU', 'GPU', 'NPU') (replaced in tests: no GPU/NPU here)."""
    try:
        import openvino as ov
        return tuple(ov.Core().available_devices)
    except Exception:  # noqa: BLE001
        return ()


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def present_accelerators(ov_ok: bool) -> tuple[str, ...]:
    """Which of gpu, npu, mps this machine has (GPU.0/GPU.1 count as gpu)."""
    devices = openvino_devices() if ov_ok else ()
    found = [name for name, prefix in (("gpu", "GPU"), ("npu", "NPU")) if any(d.startswith(prefix) for d in devices)]
    if mps_available():
        found.append("mps")
    return tuple(found)


# --- selection (pure) -------------------------------------------------------------------------------------------
def plan(backend: str, device: str, *, has_cuda: bool, tensorrt: tuple[bool, str],
         openvino: tuple[bool, str] = (False, "not probed"), accelerators: tuple = ()) -> tuple[str, list[str]]:
    """(one of 'tensorrt', 'cuda', 'openvino', 'openvino-gpu', 'openvino-npu', 'mps', 'cpu', 'torch-cuda',
    'torch-mps', 'torch-cpu', notices) for the requested backend/device. `openvino`: (usable, reason) of the
    OpenVINO runtime; `accelerators`: which of gpu, npu, mps are present."""
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
    if device in ("gpu", "npu"):
        label = "Intel GPU" if device == "gpu" else "NPU"
        if backend not in ("auto", "openvino"):
            notices.append(f"--device {device} runs through OpenVINO, not --backend {backend}: using {cpu_name}")
            device = "cpu"
        elif not ov_ok:
            notices.append(f"--device {device} needs OpenVINO ({ov_reason}): using the CPU backend")
            device = "cpu"
        elif device not in accelerators:
            notices.append(f"no OpenVINO {label} device here: using {cpu_name}")
            device = "cpu"
        else:
            return f"openvino-{device}", notices
    if device == "mps":
        if backend not in ("auto", "torch", "cpu"):
            notices.append(f"--device mps runs torch, not --backend {backend}: using {cpu_name}")
        elif "mps" not in accelerators:
            notices.append(f"MPS (Apple GPU) not available here: using {cpu_name if backend == 'auto' else 'the CPU'}")
        else:
            return ("torch-mps" if backend == "torch" else "mps"), notices
        device = "cpu"
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


def auto_candidates(backend: str, device: str, choice: str, accelerators: tuple) -> list[str]:
    """What `auto` builds and times besides `choice` (the CPU's best): every accelerator present, only where no
    CUDA engine was chosen and no device was named."""
    if backend != "auto" or device != "auto" or choice not in ("openvino", "cpu"):
        return []
    return [f"openvino-{a}" if a in ("gpu", "npu") else a for a in accelerators
            if a == "mps" or choice == "openvino"]


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


def _build_openvino(base, *, precision, cache_dir, warm_up, calibration_images=None, device="CPU", cancelled=None,
                    progress=None):
    from .openvino_backend import build_openvino_engine
    return build_openvino_engine(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up,
                                 capabilities=cpu_capabilities() if device == "CPU" else None,
                                 calibration_images=calibration_images, device=device, cancelled=cancelled,
                                 progress=progress)


def _build_mps(base, *, precision, warm_up):
    from .mps_backend import build_mps_engine
    return build_mps_engine(base, precision=precision, warm_up=warm_up)


def torch_bf16():
    """The eager CPU backend's bf16 measurement (cached): replaced in tests to play other CPUs."""
    from .precision import torch_bf16_decision
    return torch_bf16_decision()


def _build_cpu(base, *, precision, warm_up):
    from .cpu_backend import build_cpu_engine
    return build_cpu_engine(base, precision=precision, warm_up=warm_up,
                            measure=torch_bf16 if precision in (None, "auto") else None)


def describe_openvino(engine) -> str:
    """The one line naming what runs and why this precision (measured, cached or requested)."""
    details = getattr(engine, "details", {})
    where = "the CPU" if details.get("device", "CPU") == "CPU" else f"the {details['device']} ({details.get('cpu')})"
    text = f"backend: OpenVINO on {where}, {engine.precision}"
    if details.get("float_precision", engine.precision) != engine.precision:
        text += f" renderer ({details['float_precision']} elsewhere)"
    if details.get("precision_reason"):
        text += f" ({details['precision_reason']})"
    text += f", detector {details.get('detector', '?')}"
    if "frame_ms" in details:
        text += f"; {details['frame_ms']:.0f} ms per frame"
    if "startup_s" in details:
        text += f"; ready in {details['startup_s']:.1f} s"
    return text


def _device_of(choice: str) -> str:
    if choice in ("tensorrt", "cuda", "torch-cuda"):
        return "cuda"
    return "mps" if choice in ("mps", "torch-mps") else "cpu"


def _build_local(choice, base, *, precision, cache_dir, warm_up, calibration_images, progress=None):
    """(engine, notices) for one of openvino, openvino-gpu, openvino-npu, mps, cpu; raises when it fails."""
    if choice.startswith("openvino"):
        device = choice.split("-", 1)[1].upper() if "-" in choice else "CPU"
        engine, more = _build_openvino(base, precision=precision, cache_dir=cache_dir, warm_up=warm_up,
                                       calibration_images=calibration_images, device=device, progress=progress)
        return engine, [describe_openvino(engine)] + more
    if choice == "mps":
        return _build_mps(base, precision=precision, warm_up=warm_up)
    return _build_cpu(base, precision=precision, warm_up=warm_up)


LABELS = {"openvino": "OpenVINO CPU backend", "openvino-gpu": "OpenVINO Intel GPU", "openvino-npu": "OpenVINO NPU",
          "mps": "Apple GPU (MPS) backend", "cpu": "CPU backend"}


def _frame_ms(engine) -> float:
    from .common import measure_frame_ms
    details = getattr(engine, "details", {})
    if "frame_ms" not in details:
        details["frame_ms"] = round(measure_frame_ms(engine, 2), 1)
    return details["frame_ms"]


def _fastest(primary, primary_choice, candidates, make_base, build, store=None):
    """(engine, notices): `primary` or the candidate device with the fastest measured frame. The winner is cached
    per CPU, weights and device list, so the next start builds only it (and the CPU engine, the fallback)."""
    from .precision import DecisionStore, cpu_identity

    store = store or DecisionStore()
    fields = {**cpu_identity(), "weights": primary.config_hash, "primary": primary_choice,
              "candidates": list(candidates), "torch": torch.__version__}
    cached = store.load("device-choice", fields, lambda r: r.get("choice") in [primary_choice, *candidates])
    notices, timed = [], {primary_choice: _frame_ms(primary)}
    best, best_choice = primary, primary_choice
    for choice in candidates if cached is None else [c for c in candidates if c == cached["choice"]]:
        try:
            engine, more = build(choice, make_base(choice))
        except Exception as error:  # noqa: BLE001 - a device that cannot compile must not stop the app
            notices.append(f"{LABELS[choice]} failed ({describe_error(error)}): keeping the "
                           f"{LABELS.get(best_choice, best_choice)}")
            continue
        notices += more
        timed[choice] = _frame_ms(engine)
        if timed[choice] < timed[best_choice]:
            best, best_choice = engine, choice
    if cached is None and len(timed) > 1:
        store.save("device-choice", fields, {"choice": best_choice, "frame_ms": timed})
    if len(timed) > 1 or cached is not None:
        figures = ", ".join(f"{LABELS.get(c, c)} {ms:.0f} ms" for c, ms in timed.items())
        notices.append(f"device: {LABELS.get(best_choice, best_choice)} is the fastest here ({figures} per frame"
                       + ("; chosen at an earlier start" if cached is not None else "") + ")")
    return best, best_choice, notices


def create_engine(*, backend: str = "auto", device: str = "auto", checkpoint=None, deterministic_weights=False,
                  align_corners: bool = True, precision: str | None = None, cache_dir=None, warm_up: bool = True,
                  calibration_images=None, int8_in_background: bool = True, progress: Progress | None = None):
    """Return (engine, notices).

    precision: None/'auto' = the backend's default (TensorRT and CUDA fp16; OpenVINO and the eager CPU backend:
    bf16 where it was measured >= 1.25x faster than fp32 on this CPU, else fp32; GPU/NPU/MPS fp16); 'fp32', 'fp16'
    or 'bf16' where the backend supports it (else its default, with a notice); 'int8' (OpenVINO CPU only: int8
    renderer, its quality gate reported).
    Under auto on the OpenVINO CPU backend, a float frame slower than real time brings in the int8 renderer
    behind a quality gate (int8_gate.consider_int8): calibrated on `calibration_images` in the background
    (`int8_in_background`; else here) while the returned SwitchingEngine serves the float engine.
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
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    has_cuda = cuda_available()
    # Probe TensorRT only where it could be used: importing it is slow and may print warnings.
    wants_trt = device in ("auto", "cuda") and has_cuda and backend in ("auto", "tensorrt")
    trt = tensorrt_status() if wants_trt else (False, "no CUDA GPU" if not has_cuda else "not requested")
    wants_ov = (backend == "openvino" or device in ("gpu", "npu")
                or (backend in ("auto", "tensorrt", "cuda") and (device in ("cpu", "mps") or not has_cuda)))
    ov = openvino_status() if wants_ov else (False, "not requested")
    wants_accelerators = device in ACCELERATORS or (device == "auto" and not has_cuda and backend == "auto")
    accelerators = present_accelerators(ov[0]) if wants_accelerators else ()
    choice, notices = plan(backend, device, has_cuda=has_cuda, tensorrt=trt, openvino=ov, accelerators=accelerators)
    if precision == "int8" and choice != "openvino":
        notices.append(f"int8 is an OpenVINO backend option (on the CPU): the {choice} backend uses its default "
                       "precision")
        precision = None

    def make_base(choice_):
        return _base_engine(_device_of(choice_), checkpoint, deterministic_weights, align_corners)

    weights = "generating the test weights" if deterministic_weights else f"loading the checkpoint {checkpoint}"
    with step(progress, weights):
        base = make_base(choice)
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

    def build(choice_, base_):
        return _build_local(choice_, base_, precision=precision, cache_dir=cache_dir, warm_up=warm_up,
                            calibration_images=calibration_images, progress=progress)

    candidates = auto_candidates(backend, device, choice, accelerators)
    from . import openvino_backend
    from .openvino_int8 import calibration_id
    calibration = calibration_id(calibration_images, openvino_backend.DEFAULT_CALIBRATION_SAMPLES)

    def build_int8(reason, cancelled=None):
        engine_, more_ = _build_openvino(base, precision="int8", cache_dir=cache_dir, warm_up=True,
                                         calibration_images=calibration_images, cancelled=cancelled,
                                         progress=progress)
        engine_.details["precision_reason"] = reason
        return engine_, [describe_openvino(engine_)] + more_

    if choice == "openvino" and precision in (None, "auto") and not candidates:
        from . import int8_gate
        verdict = int8_gate.cached_pass(base, calibration_images, calibration)
        if verdict is not None:  # int8 passed its gate at an earlier start: no float engine to build first
            try:
                engine, more = build_int8("auto: passed the quality gate at an earlier start")
                return engine, notices + more + [int8_gate.passed_before(engine, verdict)]
            except Exception as error:  # noqa: BLE001 - the float engine is the fallback
                notices.append(f"int8 renderer failed ({describe_error(error)}): using the float precision")

    # The local chain: an accelerator, else OpenVINO on the CPU, else the eager CPU backend, else plain torch.
    chain = {"openvino-gpu": "openvino", "openvino-npu": "openvino", "mps": "openvino" if ov[0] else "cpu",
             "openvino": "cpu"}
    engine = None
    while engine is None:
        try:
            engine, more = build(choice, base)
            notices += more
        except Exception as error:  # noqa: BLE001 - a failed build must not stop the app
            fallback = chain.get(choice)
            if fallback is None:
                notices.append(f"CPU backend failed ({describe_error(error)}): using the plain torch CPU engine")
                return (base if base.device.type == "cpu" else make_base("cpu")), notices
            notices.append(f"{LABELS[choice]} failed ({describe_error(error)}): using the {LABELS[fallback]}")
            if precision == "int8":
                precision = None
            if _device_of(fallback) != base.device.type:
                base = make_base(fallback)
            choice = fallback
    if candidates:
        engine, choice, more = _fastest(engine, choice, candidates, make_base, build)
        notices += more
    details = getattr(engine, "details", {})
    if choice == "openvino" and details.get("device") == "CPU":
        from . import int8_gate

        if engine.precision == "int8":
            notices.append(int8_gate.report_forced(engine, base, calibration_images, calibration=calibration))
        elif precision in (None, "auto"):
            reason = (f"auto: {engine.name} took {details.get('frame_ms', 0):.0f} ms per frame, int8 behind the "
                      "quality gate")
            engine, more = int8_gate.consider_int8(engine, base, build_int8=lambda cancelled=None: build_int8(reason, cancelled),
                                                   images=calibration_images, calibration=calibration,
                                                   background=int8_in_background)
            notices += more
    return engine, notices
