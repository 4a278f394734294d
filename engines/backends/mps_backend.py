"""Apple GPU backend (torch `mps`): the renderer under fp16 autocast, the keypoint detector eager fp32 (its
temperature-0.1 softmax turns fp16 rounding into jitter), the avatar encoder eager fp32.

Operators MPS lacks run on the CPU when PYTORCH_ENABLE_MPS_FALLBACK=1 was set before torch was imported (torch
reads it once, at import): run_live.py sets it on macOS; the build says whether it is on. Not run on Apple
hardware by this project's tests: they build it on the CPU device, where autocast has the same API.
"""
from __future__ import annotations

import os

from ..engine import FOMMEngine
from ..protocol import EngineReport
from .common import AcceleratedEngine, check_precision
from .cpu_backend import CpuOptions, CpuRenderer

SUPPORTED_PRECISIONS = ("fp16", "fp32")
FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"


def fallback_notice(environ=None) -> str:
    environ = os.environ if environ is None else environ
    if environ.get(FALLBACK_ENV, "") not in ("", "0"):
        return f"operators MPS lacks run on the CPU ({FALLBACK_ENV}=1)"
    return f"{FALLBACK_ENV} is not set: an operator MPS lacks would stop the run (set it to 1 before starting)"


def build_mps_engine(base: FOMMEngine, *, precision: str | None = None, warm_up: bool = True):
    """(engine, notices) on base.device (mps; the tests use the CPU)."""
    chosen, notices = check_precision(precision, SUPPORTED_PRECISIONS, "fp16")
    options = CpuOptions(precision=chosen)
    renderer = CpuRenderer(base.generator, options, device_type=base.device.type) if chosen != "fp32" else None
    why = "the Apple GPU runs fp16" if precision in (None, "auto") or notices else "requested"
    report = EngineReport(backend="mps", device=base.device.type, detector="fp32", renderer=chosen, why=why,
                          facts=((FALLBACK_ENV, os.environ.get(FALLBACK_ENV, "")),))
    engine = AcceleratedEngine(base, name=f"torch-{base.device.type}-{chosen}", renderer=renderer, report=report)
    notices.append(fallback_notice())
    if warm_up:
        engine.warm_up(runs=1)
        engine.amend_report(frame_ms=round(engine.frame_ms(runs=2), 1))
    return engine, notices
