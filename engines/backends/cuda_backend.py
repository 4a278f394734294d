"""GPU backend without TensorRT: torch CUDA, fp16 autocast on the per-frame generator, torch.compile + CUDA graphs.

The keypoint detector stays fp32 (its temperature-0.1 softmax over 3364 logits turns fp16 rounding of the logits
into visible keypoint jitter; it is ~3% of the per-frame FLOPs). The renderer runs under torch.autocast(float16):
convolutions in fp16, while autocast keeps softmax/exp/pow in fp32. tests/test_gpu.py checks it where CUDA exists
(what has been run where: docs/gpu.md "Benchmark").
"""
from __future__ import annotations

import torch

from ..engine import FOMMEngine
from ..generator import FrameRenderer
from ..protocol import EngineReport
from .common import DTYPES, AcceleratedEngine, CompiledWithFallback, as_float, check_precision, log_fallback

SUPPORTED_PRECISIONS = ("fp16", "bf16", "fp32")
DEFAULT_PRECISION = "fp16"
DEFAULT_COMPILE_MODE = "reduce-overhead"  # CUDA graphs: removes the per-kernel launch overhead of ~150 small ops


class _AutocastRenderer(torch.nn.Module):
    def __init__(self, renderer: FrameRenderer, dtype: torch.dtype | None):
        super().__init__()
        self.renderer = renderer
        self.dtype = dtype

    def forward(self, *inputs):
        if self.dtype is None:
            return self.renderer(*inputs)
        with torch.autocast("cuda", dtype=self.dtype):
            return as_float(self.renderer(*inputs))


def build_cuda_engine(base: FOMMEngine, *, precision: str | None = None, compile_mode: str | None = None,
                      use_compile: bool = True, warm_up: bool = True):
    """(engine, notices). `base` must already live on a CUDA device."""
    if base.device.type != "cuda":
        raise ValueError("the CUDA backend needs an engine on a CUDA device")
    why = "default" if precision in (None, "auto") else "requested"
    precision, notices = check_precision(precision, SUPPORTED_PRECISIONS, DEFAULT_PRECISION)
    why = "default" if notices else why
    mode = compile_mode or DEFAULT_COMPILE_MODE
    dtype = None if precision == "fp32" else DTYPES[precision]
    renderer = _AutocastRenderer(FrameRenderer(base.generator).eval(), dtype)  # autocast leaves the weights fp32
    detector = base.kp_detector
    clone = use_compile and mode == "reduce-overhead"

    def graph(name, module):  # while building, a compile failure becomes one of the returned notices
        compiled = torch.compile(module, mode=mode, fullgraph=True) if use_compile else None
        return CompiledWithFallback(name, module, compiled, clone_outputs=clone, report=notices.append)

    detector_fn, renderer_fn = graph("keypoint detector", detector), graph("renderer", renderer)
    suffix = f"+compile({mode})" if use_compile else ""
    report = EngineReport(backend="cuda", device="cuda", detector="fp32", renderer=precision, why=why,
                          facts=(("compile_mode", mode if use_compile else None),
                                 ("gpu", torch.cuda.get_device_name(base.device))))
    engine = AcceleratedEngine(base, name=f"torch-cuda-{precision}{suffix}", detector=detector_fn,
                               renderer=renderer_fn, report=report)
    if warm_up:
        engine.warm_up()  # compiles and captures the CUDA graphs now rather than on the first live frame
        if detector_fn.fell_back or renderer_fn.fell_back:
            engine.name = f"torch-cuda-{precision}"
    for fn in (detector_fn, renderer_fn):
        fn.report = log_fallback  # after the build nobody reads `notices` any more
    return engine, notices
