"""CPU backend: the eager fp32 networks plus optional speed options for the per-frame renderer.

Options (each measured by `python -m engines.bench --cpu-study`, figures in the README):
- channels_last: NHWC memory format for the generator's convolutions (oneDNN's preferred layout);
- precision bf16: torch.autocast(cpu, bfloat16) around the renderer (AVX512-BF16/AMX);
- torch_compile: torch.compile (inductor) of the renderer.
The keypoint detector always runs eager fp32 (temperature-0.1 softmax; ~20 ms of the ~0.4 s frame).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ..engine import FOMMEngine
from ..generator import FrameRenderer
from .common import AcceleratedEngine, CompiledWithFallback, check_precision, log_fallback

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


# What create_engine uses on a CPU. An option becomes the default only if it is >= 5% faster than fp32 eager on both
# the median and the minimum of the same round-robin run, with PSNR >= 40 dB and max |diff| <= 8/255 vs fp32.
# Measured on the 2-vCPU Xeon (AVX512-BF16, no AMX exposed) this project is developed on, none qualified
# (README, "GPU engines and benchmarks"): bf16 autocast is ~1.5x slower, channels_last and torch.compile are
# within noise. So the CPU default stays eager fp32; the options remain for other CPUs (bench --cpu-study).
DEFAULT_OPTIONS = CpuOptions(precision="fp32", channels_last=False, torch_compile=False)


class CpuRenderer(torch.nn.Module):
    def __init__(self, generator, options: CpuOptions):
        super().__init__()
        self.options = options
        renderer = FrameRenderer(generator).eval()
        if options.channels_last:
            # A private copy: converting the shared generator would change the layout the eager encoder sees.
            renderer = FrameRenderer(copy.deepcopy(generator)).eval().to(memory_format=torch.channels_last)
        self.renderer = renderer

    def forward(self, features, *rest):
        if self.options.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        if self.options.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.renderer(features, *rest).float()
        return self.renderer(features, *rest)


def build_cpu_engine(base: FOMMEngine, *, precision: str | None = None, options: CpuOptions | None = None,
                     warm_up: bool = True):
    """(engine, notices) on the CPU. `options` overrides DEFAULT_OPTIONS; `precision` overrides its precision."""
    if base.device.type != "cpu":
        raise ValueError("the CPU backend needs an engine on the CPU")
    options = options or DEFAULT_OPTIONS
    chosen, notices = check_precision(precision, SUPPORTED_PRECISIONS, options.precision)
    options = replace(options, precision=chosen)
    if options == CpuOptions(precision="fp32"):
        call = None  # nothing to change: the eager fp32 path itself
    else:
        renderer = CpuRenderer(base.generator, options)
        # While building, a compile failure becomes one of the returned notices; later ones are logged.
        call = (CompiledWithFallback("renderer", renderer, torch.compile(renderer), report=notices.append)
                if options.torch_compile else renderer)
    engine = AcceleratedEngine(base, name=options.label, renderer=call, precision=options.precision,
                               details={"backend": "cpu", "precision": options.precision, "detector": "fp32",
                                        "channels_last": options.channels_last,
                                        "torch_compile": options.torch_compile})
    if warm_up and options.torch_compile:
        engine.warm_up(runs=1)  # compile now, not on the first live frame
        if call.fell_back:
            engine.name = replace(options, torch_compile=False).label
    if isinstance(call, CompiledWithFallback):
        call.report = log_fallback  # after the build nobody reads `notices` any more
    return engine, notices
