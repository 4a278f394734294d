"""GPU backend without TensorRT: torch CUDA, fp16 autocast on the per-frame generator, torch.compile + CUDA graphs.

The keypoint detector stays fp32 (its temperature-0.1 softmax over 3364 logits turns fp16 rounding of the logits
into visible keypoint jitter; it is ~3% of the per-frame FLOPs). The renderer runs under torch.autocast(float16):
convolutions in fp16, while autocast keeps softmax/exp/pow in fp32.

NOT RUN in this task (no GPU machine was lent): written against torch 2.13's documented CUDA/compile APIs; the
tests in tests/test_gpu.py exercise it where CUDA exists.
"""
from __future__ import annotations

import torch

from ..engine import FOMMEngine
from ..generator import FrameRenderer
from .common import DTYPES, AcceleratedEngine, check_precision, describe_error

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
            return self.renderer(*inputs).float()


class _Graph:
    """Calls the compiled graph; falls back to eager once if compilation fails, and records why.

    With CUDA graphs the output lives in a buffer the next replay overwrites, so it is cloned before returning.
    """

    def __init__(self, name: str, eager, compiled, clone_outputs: bool):
        self.name, self.eager, self.compiled, self.clone_outputs = name, eager, compiled, clone_outputs
        self.error: str | None = None

    def __call__(self, *inputs):
        if self.compiled is not None and self.error is None:
            try:
                if self.clone_outputs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = self.compiled(*inputs)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eager
                self.error = describe_error(error)
            else:
                if self.clone_outputs:
                    out = tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()
                return out
        return self.eager(*inputs)


def build_cuda_engine(base: FOMMEngine, *, precision: str | None = None, compile_mode: str | None = None,
                      use_compile: bool = True, warm_up: bool = True):
    """(engine, notices). `base` must already live on a CUDA device."""
    if base.device.type != "cuda":
        raise ValueError("the CUDA backend needs an engine on a CUDA device")
    precision, notices = check_precision(precision, SUPPORTED_PRECISIONS, DEFAULT_PRECISION)
    mode = compile_mode or DEFAULT_COMPILE_MODE
    dtype = None if precision == "fp32" else DTYPES[precision]
    renderer = _AutocastRenderer(FrameRenderer(base.generator).eval(), dtype)  # autocast leaves the weights fp32
    detector = base.kp_detector
    clone = mode == "reduce-overhead"
    if use_compile:
        detector_fn = _Graph("keypoint detector", detector, torch.compile(detector, mode=mode, fullgraph=True), clone)
        renderer_fn = _Graph("renderer", renderer, torch.compile(renderer, mode=mode, fullgraph=True), clone)
    else:
        detector_fn = _Graph("keypoint detector", detector, None, False)
        renderer_fn = _Graph("renderer", renderer, None, False)
    suffix = f"+compile({mode})" if use_compile else ""
    engine = AcceleratedEngine(base, name=f"torch-cuda-{precision}{suffix}", detector=detector_fn,
                               renderer=renderer_fn, precision=precision,
                               details={"backend": "cuda", "precision": precision, "detector": "fp32",
                                        "compile_mode": mode if use_compile else None,
                                        "gpu": torch.cuda.get_device_name(base.device)})
    if warm_up:
        engine.warm_up()  # compiles and captures the CUDA graphs now rather than on the first live frame
        for graph in (detector_fn, renderer_fn):
            if graph.error:
                notices.append(f"torch.compile failed for the {graph.name} ({graph.error}): running it eager")
        if any(graph.error for graph in (detector_fn, renderer_fn)):
            engine.name = f"torch-cuda-{precision}"
    return engine, notices
