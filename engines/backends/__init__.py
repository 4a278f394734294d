"""Backend selection: `create_engine(backend=..., device=...)` -> (engine, notices), never failing for want of an
accelerator: it falls back and says why, in the notices and in the engine's report (`engine.report().fell_back`).

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
and keeps the fastest by one measured frame (remembered); one that fails to compile falls back with one line.

How: `planner.plan` (pure) orders the candidates from the request and what the machine has; `build_first` builds
them in that order and keeps the first that works, recording why each one before it was ruled out or failed;
`race.fastest` times the accelerators auto races; `int8_gate` brings in the int8 renderer on top. The notices are
made from those records; the engine's report carries them.
"""
from __future__ import annotations

import time

import torch

from ..cache import DecisionStore
from ..progress import Progress, to_stderr
from ..protocol import Fallback
from .builders import Settings, Weights, build
from .common import describe_error
from .planner import ACCELERATORS, BACKENDS, DEVICES, PRECISION_CHOICES, Candidate, Machine, Request, once, plan
from .race import Built, fastest, remembered

__all__ = ["ACCELERATORS", "BACKENDS", "DEVICES", "PRECISION_CHOICES", "Candidate", "Machine", "Request",
           "build_first", "create_engine", "plan", "survey"]

INT8_CHECKS = ("background", "now", "off")


# --- probes: what this machine has (module-level so tests can play other machines) -------------------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


def tensorrt_status() -> tuple[bool, str]:
    from .tensorrt_backend import tensorrt_status as probe
    return probe()


def openvino_status() -> tuple[bool, str]:
    from .openvino_backend import openvino_status as probe
    return probe()


def cpu_capabilities(store=None, progress=None):
    """What the CPU offers OpenVINO (bf16 measured against f32)."""
    from .openvino_backend import probe_cpu
    return probe_cpu(store=store, progress=progress)


def torch_bf16(store=None):
    """The eager CPU backend's bf16 measurement (cached)."""
    from .precision import torch_bf16_decision
    return torch_bf16_decision(store)


def openvino_devices() -> tuple[str, ...]:
    """OpenVINO's available devices, e.g. ('CPU', 'GPU', 'NPU')."""
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
    return tuple(found) + (("mps",) if mps_available() else ())


def survey(weights: Weights | None, store: DecisionStore, int8_passed=False) -> Machine:
    """This machine, each fact probed when the planner first needs it (what auto's device race found at an earlier
    start needs the weights: without them, nothing is remembered)."""
    def remembered_device(primary, contenders):
        return None if weights is None else remembered(store, weights.base("cpu").config_hash, primary, contenders)
    openvino = once(openvino_status)
    return Machine(cuda=cuda_available, tensorrt=tensorrt_status, openvino=openvino,
                   accelerators=lambda: present_accelerators(openvino()[0]),
                   remembered_device=remembered_device, int8_passed=int8_passed)


# --- the one fallback loop ---------------------------------------------------------------------------------------
def build_first(candidates, make, base) -> Built:
    """The first candidate that builds. `base(candidate)` gives its weights (errors there are the user's and pass
    through); `make(candidate, base)` -> (engine, notices) builds it (an error there is the candidate's failure,
    recorded). Candidates the plan ruled out are recorded without building."""
    records = []
    for candidate in candidates:
        if candidate.skip is not None:
            records.append(Fallback(candidate.label, candidate.skip))
            continue
        weights = base(candidate)
        try:
            engine, notices = make(candidate, weights)
        except Exception as error:  # noqa: BLE001 - a failed build must not stop the app: the next one is tried
            records.append(Fallback(candidate.label, describe_error(error), tried=True))
            continue
        if candidate.why:
            engine.amend_report(why=candidate.why)
        return Built(engine, candidate, tuple(records), tuple(notices))
    raise RuntimeError("no engine could be built: " + "; ".join(r.describe() for r in records))


def create_engine(*, backend: str = "auto", device: str = "auto", checkpoint=None, deterministic_weights=False,
                  align_corners: bool = True, precision: str | None = None, cache_dir=None, warm_up: bool = True,
                  calibration_images=None, int8_check: str = "background", progress: Progress | None = None):
    """Return (engine, notices); the engine's report (`engine.report()`) says what runs, why, what it fell back
    from, and its gate. Close it (or use it as a context manager): that stops its background work.

    precision: None/'auto' = the backend's default (TensorRT and CUDA fp16; OpenVINO and the eager CPU backend:
    bf16 where it was measured >= 1.25x faster than fp32 on this CPU, else fp32; GPU/NPU/MPS fp16); 'fp32', 'fp16'
    or 'bf16' where the backend supports it (else its default, with a notice); 'int8' (OpenVINO CPU only: int8
    renderer, its quality gate reported).
    int8_check: under auto, where the OpenVINO CPU engine is slower than real time, the int8 renderer is calibrated
    on `calibration_images` and gated (int8_gate.consider_int8): 'background' (a child process, while the returned
    SwitchingEngine serves the float engine), 'now' (here, before returning) or 'off' (never: the doctor).
    cache_dir: where TensorRT engines / OpenVINO models are kept (default $LIVE_AVATAR_CACHE/trt or .../openvino).
    warm_up: compile/capture at creation so the first live frame is not the slow one.
    progress: one line before each slow step (loading weights, converting, compiling, quantizing) and its elapsed
    time after it; default: printed to stderr.
    """
    started, request = time.perf_counter(), Request(backend, device, precision)
    if int8_check not in INT8_CHECKS:
        raise ValueError(f"unknown int8_check {int8_check!r}; choose one of {', '.join(INT8_CHECKS)}")
    notices, say = [], progress or to_stderr
    store = DecisionStore(notify=notices.append)
    weights = Weights(checkpoint=checkpoint, deterministic_weights=deterministic_weights, align_corners=align_corners,
                      progress=say)
    settings = Settings(cache_dir=cache_dir, warm_up=warm_up, calibration_images=calibration_images, progress=say,
                        store=store, cpu_capabilities=lambda: cpu_capabilities(store, say),
                        torch_bf16=lambda: torch_bf16(store))
    int8 = Int8Context(weights, settings, request, int8_check)
    chosen = plan(request, survey(weights, store, int8.passed_before))
    built = build_first(chosen.candidates, lambda c, base: build(c, base, settings),
                        lambda c: weights.base(c.base_device))
    notices += [*chosen.notes, *(f"{f.describe()}: using the {built.candidate.label}" for f in built.fell_back),
                *built.notices]
    if chosen.race:
        built, more = fastest(built, chosen.race, lambda c: build(c, weights.base(c.base_device), settings), store,
                              weights.base("cpu").config_hash)
        notices += more
    engine, more = int8.on_top(built)
    engine.amend_report(fell_back=built.fell_back, startup_s=round(time.perf_counter() - started, 2))
    return engine, [*notices, *more, f"backend: {engine.report().summary()}"]


class Int8Context:
    """The int8 renderer around the selection: whether its gate passed before (the planner then tries it first),
    and, once an engine is chosen, the gate's report (forced int8), the earlier verdict, or the check (auto)."""

    def __init__(self, weights: Weights, settings: Settings, request: Request, check: str):
        from . import openvino_backend
        from .openvino_int8 import calibration_id

        self.weights, self.settings, self.request, self.check = weights, settings, request, check
        self.samples = openvino_backend.DEFAULT_CALIBRATION_SAMPLES
        self.calibration = calibration_id(settings.calibration_images, self.samples)
        self.verdict = None

    def passed_before(self) -> bool:
        from .int8_gate import cached_verdict, decision_fields, slower_before

        if self.check == "off":
            return False
        store = self.settings.store
        fields = decision_fields(self.weights.base("cpu"), self.settings.calibration_images, self.calibration)
        self.verdict = cached_verdict(store, fields)
        if self.verdict is None or not self.verdict.passed:
            return False
        # a pass that was no faster than the float engine here is not built first (int8_gate.consider_int8 says so)
        return slower_before(store, fields) is None

    def build_int8(self, cancelled=None, *, quiet: bool = False):
        from .openvino_backend import build_openvino_engine

        progress = (lambda line: None) if quiet else self.settings.progress
        return build_openvino_engine(self.weights.base("cpu"), precision="int8", cache_dir=self.settings.cache_dir,
                                     capabilities=self.settings.cpu_capabilities(),
                                     calibration_images=self.settings.calibration_images,
                                     calibration_samples=self.samples, cancelled=cancelled, progress=progress,
                                     store=self.settings.store)

    def on_top(self, built: Built):
        """(engine, notices) after the selection."""
        from . import int8_gate

        engine, candidate = built.engine, built.candidate
        if (candidate.backend, candidate.device) != ("openvino", "cpu"):
            return engine, []
        base, images, store = self.weights.base("cpu"), self.settings.calibration_images, self.settings.store
        if candidate.precision == "int8" and self.request.precision == "int8":
            return engine, [int8_gate.report_forced(engine, base, images, calibration=self.calibration, store=store)]
        if candidate.precision == "int8":  # the planner tried it first: its gate passed at an earlier start
            return engine, [int8_gate.passed_before(engine, self.verdict)]
        if self.request.precision is not None or self.check == "off":
            return engine, []
        background = None
        if self.check == "background":
            background = int8_gate.in_child(
                {"checkpoint": None if self.weights.checkpoint is None else str(self.weights.checkpoint),
                 "deterministic_weights": self.weights.deterministic, "align_corners": self.weights.align_corners,
                 "cache_dir": None if self.settings.cache_dir is None else str(self.settings.cache_dir),
                 "decisions": str(store.directory), "samples": self.samples, "calibration": self.calibration},
                images)
        build_int8 = (lambda cancelled=None: self.build_int8(cancelled, quiet=True)) if background else self.build_int8
        return int8_gate.consider_int8(engine, base, build_int8=build_int8, images=images,
                                       calibration=self.calibration, store=store, background=background)
