"""What each precision can reach on this CPU, and what a frame costs: `python -m engines.bench --bounds`.

- GFLOP/s per precision: the precision probe's three 3x3 convolutions (engines/backends/precision.py), compiled by
  OpenVINO in f32, bf16 and int8 (FakeQuantize on activations and weights, which OpenVINO's CPU plugin turns into
  u8/i8 kernels), timed interleaved, minimum of many rounds: a lower bound of the kernels' throughput on
  convolutions shaped like the renderer's.
- GFLOP per frame: torch's FLOP counter (2 per multiply-add, convolutions and matmuls) over one detect + render.
- Cores for 25 frames/s: frame GFLOP x 25 / (GFLOP/s per thread), i.e. assuming the measured per-thread rate
  scales with cores (it is an estimate; memory bandwidth and the non-convolution ops are not in it).
"""
from __future__ import annotations

import numpy as np
import torch

from .backends.precision import (PROBE_LAYERS, interleaved_minimum, openvino_probe_model, probe_flops)

TARGET_FPS = 25


def int8_probe_model():
    """The probe with FakeQuantize on every convolution's input (u8, 256 levels) and weights (i8, 255 levels), the
    pattern NNCF writes; compiled without a precision hint, OpenVINO runs it as u8/i8 convolutions."""
    import openvino as ov
    import openvino.opset13 as ops

    def fq(node, low, high, levels):
        c = [ops.constant(np.array(v, np.float32)) for v in (low, high, low, high)]
        return ops.fake_quantize(node, *c, levels)

    rng = np.random.default_rng(0)
    cin, _, side, _ = PROBE_LAYERS[0]
    x = ops.parameter([1, cin, side, side], np.float32, name="x")
    y = x
    for cin, cout, _, stride in PROBE_LAYERS:
        weights = fq(ops.constant((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32)), -0.2, 0.2, 255)
        y = ops.relu(ops.convolution(fq(y, 0.0, 4.0, 256), weights, [stride, stride], [1, 1], [1, 1], [1, 1]))
    return ov.Model([y], [x], "int8-probe")


def precision_gflops(threads: int, rounds: int = 30) -> dict:
    """{precision: GFLOP/s} of the probe via OpenVINO on the CPU with `threads` threads."""
    import openvino as ov

    core = ov.Core()
    base, quantized = openvino_probe_model(), int8_probe_model()
    data = np.random.default_rng(1).random(tuple(base.input(0).shape), dtype=np.float32)
    runs = {}
    for name, model, hint in (("fp32", base, "f32"), ("bf16", base, "bf16"), ("int8", quantized, None)):
        if name == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            continue
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        request = core.compile_model(model, "CPU", config).create_infer_request()
        runs[name] = lambda r=request: r.infer([data])
    best = interleaved_minimum(runs, rounds)
    return {name: probe_flops() / ms / 1e6 for name, ms in best.items()}


def frame_gflop(engine) -> float:
    """GFLOP of one frame (detect + render) of an eager engine, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    size = engine.image_size
    generator = torch.Generator().manual_seed(0)
    state = engine.encode(torch.rand(1, 3, size, size, generator=generator))
    frame = torch.rand(1, 3, size, size, generator=generator)
    with FlopCounterMode(display=False) as counter:
        engine.render(state, engine.detect(frame))
    return counter.get_total_flops() / 1e9


def bounds_report(engine, threads: int, rounds: int = 30) -> list[str]:
    gflop = frame_gflop(engine)
    rates = precision_gflops(threads, rounds)
    lines = [f"one frame (detect + render): {gflop:.1f} GFLOP (torch FLOP counter)",
             f"{'precision':10s} {'GFLOP/s':>9s} {'per thread':>11s} {'frame >= ms':>12s} "
             f"{'threads for ' + str(TARGET_FPS) + ' fps':>18s}"]
    for name, rate in rates.items():
        per_thread = rate / threads
        lines.append(f"{name:10s} {rate:9.0f} {per_thread:11.0f} {gflop / rate * 1000:12.0f} "
                     f"{gflop * TARGET_FPS / per_thread:18.1f}")
    lines.append(f"(OpenVINO probe convolutions on {threads} threads, minimum of {rounds} interleaved rounds; "
                 "frame >= ms = frame GFLOP / GFLOP/s, the bound at that precision)")
    return lines
