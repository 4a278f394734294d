"""CPU backend: the eager fp32 networks plus optional speed options for the per-frame renderer.

Options (each measured by `python -m engines.bench --cpu-study`, figures in the README):
- channels_last: NHWC memory format for the generator's convolutions (oneDNN's preferred layout);
- precision bf16: torch.autocast(cpu, bfloat16) around the renderer, the default where it was measured >= 1.25x
  faster than fp32 on this CPU (precision.torch_bf16_decision, cached per CPU: 1.8x on an AMD Zen 4, slower on
  an Intel Xeon with AMX hidden);
- torch_compile: torch.compile (inductor) of the renderer.
The keypoint detector always runs eager fp32 (temperature-0.1 softmax; ~20 ms of the ~0.4 s frame).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..engine import FOMMEngine
from ..generator import FrameRenderer
from ..protocol import EngineReport
from .common import AcceleratedEngine, CompiledWithFallback, as_float, check_precision, log_fallback
from .precision import Bf16Measurement, torch_bf16_decision

SUPPORTED_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class CpuOptions:
    precision: str = "fp32"
    channels_last: bool = False
    torch_compile: bool = False

    @property
    def label(self) -> str:
        parts = [f"torch-cpu-{self.precision}"]
        if self.channels_last:
            parts.append("channels_last")
        if self.torch_compile:
            parts.append("compile")
        return "+".join(parts)


# What create_engine uses on a CPU, before the precision is measured: channels_last and torch.compile were within
# noise on the CPUs measured (bench --cpu-study), so they stay opt-in; the precision is the measured one.
DEFAULT_OPTIONS = CpuOptions(precision="fp32", channels_last=False, torch_compile=False)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class CpuRenderer(torch.nn.Module):
    """The per-frame renderer with the options applied; `device_type` names the autocast device (the MPS backend
    reuses it with fp16)."""

    def __init__(self, generator, options: CpuOptions, device_type: str = "cpu"):
        super().__init__()
        self.options = options
        self.device_type = device_type
        renderer = FrameRenderer(generator).eval()
        if options.channels_last:
            # A private copy: converting the shared generator would change the layout the eager encoder sees.
            renderer = FrameRenderer(copy.deepcopy(generator)).eval().to(memory_format=torch.channels_last)
        self.renderer = renderer

    def forward(self, features, *rest):
        if self.options.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        if self.options.precision in AUTOCAST_DTYPES:
            with torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.options.precision]):
                return as_float(self.renderer(features, *rest))
        return self.renderer(features, *rest)


def build_cpu_engine(base: FOMMEngine, *, precision: str | None = None, options: CpuOptions | None = None,
                     warm_up: bool = True, measure: Callable[[], Bf16Measurement] | None = None):
    """(engine, notices) on the CPU. `options` overrides DEFAULT_OPTIONS; `precision` overrides its precision.
    Without either, the precision is measured: `measure()` (default precision.torch_bf16_decision, cached)."""
    if base.device.type != "cpu":
        raise ValueError("the CPU backend needs an engine on the CPU")
    reason = "requested" if options is None else "chosen options"
    if options is None and precision in (None, "auto"):
        measurement = (measure or torch_bf16_decision)()
        options, reason = replace(DEFAULT_OPTIONS, precision=measurement.precision), measurement.reason
    options = options or DEFAULT_OPTIONS
    chosen, notices = check_precision(precision, SUPPORTED_PRECISIONS, options.precision)
    reason = "default" if notices else reason
    options = replace(options, precision=chosen)
    if options == CpuOptions(precision="fp32"):
        call = None  # nothing to change: the eager fp32 path itself
    else:
        renderer = CpuRenderer(base.generator, options)
        # While building, a compile failure becomes one of the returned notices; later ones are logged.
        call = (CompiledWithFallback("renderer", renderer, torch.compile(renderer), report=notices.append)
                if options.torch_compile else renderer)
    report = EngineReport(backend="cpu", device="cpu", detector="fp32", renderer=options.precision, why=reason,
                          facts=(("channels_last", options.channels_last), ("torch_compile", options.torch_compile)))
    engine = AcceleratedEngine(base, name=options.label, renderer=call, report=report)
    if warm_up and options.torch_compile:
        engine.warm_up(runs=1)  # compile now, not on the first live frame
        if call.fell_back:
            engine.name = replace(options, torch_compile=False).label
    if isinstance(call, CompiledWithFallback):
        call.report = log_fallback  # after the build nobody reads `notices` any more
    return engine, notices
