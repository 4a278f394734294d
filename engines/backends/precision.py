"""Which float precision a CPU runs fastest, decided by timing it, and the small on-disk store for such decisions.

The name of oneDNN's kernel cannot decide: `brgconv_avx512_bf16` is 2x fp32 on an AMD Zen 4 (native VDPBF16PS)
and 0.74x fp32 on an Intel Xeon with AMX hidden. So where a bf16 kernel exists, a probe of three 3x3
convolutions shaped like the renderer's (64 channels at 64x64, 128 at 32x32) is compiled in both precisions and
timed interleaved (the minimum of each, robust against other processes on a shared CPU); bf16 is taken only if it
is at least `BF16_MIN_SPEEDUP` x faster. The same probe runs through OpenVINO (`openvino_bf16_probe`) and through
eager torch with bf16 autocast (`torch_bf16_probe`, for the `cpu` backend).

Decisions are cached (engines/cache.py `DecisionStore`) as one JSON file each under $LIVE_AVATAR_CACHE/decisions,
keyed by everything they depend on (CPU model and flags, ONEDNN_MAX_CPU_ISA, threads, runtime version and whatever
the caller adds), written atomically and checked on read: a file that is not a small regular JSON file, names
other fields or holds impossible figures is set aside and measured again.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..cache import DecisionStore, number_within

BF16_MIN_SPEEDUP = 1.25   # bf16 must be clearly faster: a few % would not survive another machine's noise
PROBE_ROUNDS = 12         # interleaved f32/bf16 rounds; each round is a few ms
# The probe: (in channels, out channels, spatial side, stride) of each 3x3 convolution, chained.
PROBE_LAYERS = ((64, 64, 64, 1), (64, 128, 64, 2), (128, 128, 32, 1))


def probe_flops() -> float:
    """Floating-point operations (2 per multiply-add) of one probe run."""
    total = 0.0
    for cin, cout, side, stride in PROBE_LAYERS:
        out = side // stride
        total += 2.0 * cin * cout * 9 * out * out
    return total


@dataclass(frozen=True)
class Bf16Measurement:
    f32_ms: float
    bf16_ms: float

    @property
    def speedup(self) -> float:
        return self.f32_ms / self.bf16_ms if self.bf16_ms > 0 else 0.0

    @property
    def precision(self) -> str:
        return "bf16" if self.speedup >= BF16_MIN_SPEEDUP else "fp32"

    @property
    def reason(self) -> str:
        if self.precision == "bf16":
            return f"measured {self.speedup:.1f}x fp32 on this CPU"
        return f"bf16 measured {self.speedup:.2f}x fp32 on this CPU, below {BF16_MIN_SPEEDUP}x"


def interleaved_minimum(runs: dict[str, Callable[[], object]], rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """{name: min ms} timing each callable once per round, in turn, after one untimed call each."""
    for _ in range(2):  # the first calls create the kernels
        for run in runs.values():
            run()
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], (time.perf_counter() - start) * 1000.0)
    return best


def openvino_probe_model():
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    cin, _, side, _ = PROBE_LAYERS[0]
    x = ops.parameter([1, cin, side, side], np.float32, name="x")
    y = x
    for cin, cout, _, stride in PROBE_LAYERS:
        weights = ops.constant((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32))
        y = ops.relu(ops.convolution(y, weights, [stride, stride], [1, 1], [1, 1], [1, 1]))
    return ov.Model([y], [x], "precision-probe")


def openvino_bf16_probe(core, threads: int, device: str = "CPU", rounds: int = PROBE_ROUNDS) -> Bf16Measurement:
    """Time the probe compiled by OpenVINO with f32 and with bf16 inference precision (~0.2-0.5 s)."""
    model = openvino_probe_model()
    data = np.random.default_rng(1).random(tuple(model.input(0).shape), dtype=np.float32)
    requests = {}
    for name, hint in (("f32", "f32"), ("bf16", "bf16")):
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": threads}
        request = core.compile_model(model, device, config).create_infer_request()
        requests[name] = (lambda r=request: r.infer([data]))
    best = interleaved_minimum(requests, rounds)
    return Bf16Measurement(f32_ms=best["f32"], bf16_ms=best["bf16"])


def torch_bf16_probe(rounds: int = PROBE_ROUNDS) -> Bf16Measurement:
    """Time the probe in eager torch: fp32 against torch.autocast(cpu, bfloat16), what the `cpu` backend runs."""
    import torch

    generator = torch.Generator().manual_seed(0)
    layers = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, 1), torch.nn.ReLU())
                                   for cin, cout, _, stride in PROBE_LAYERS]).eval()
    cin, _, side, _ = PROBE_LAYERS[0]
    x = torch.rand(1, cin, side, side, generator=generator)

    def fp32():
        with torch.inference_mode():
            layers(x)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            layers(x)

    best = interleaved_minimum({"f32": fp32, "bf16": bf16}, rounds)
    return Bf16Measurement(f32_ms=best["f32"], bf16_ms=best["bf16"])


# --- what a decision depends on ----------------------------------------------------------------------------------
def cpu_identity() -> dict:
    """The CPU as the kernels see it: model name, a digest of its feature flags, the oneDNN ISA cap, threads."""
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        import platform
        model, flags = platform.processor() or platform.machine(), platform.platform()
    try:
        threads = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        threads = os.cpu_count() or 1
    return {"cpu_model": model, "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "threads": threads}


MAX_PROBE_MS = 60_000.0  # a probe run of a minute is no measurement: the record is damaged


def _valid_measurement(result: dict) -> bool:
    return all(number_within(result.get(k), 1e-6, MAX_PROBE_MS) for k in ("f32_ms", "bf16_ms"))


def cached_measurement(kind: str, fields: dict, measure: Callable[[], Bf16Measurement],
                       store: DecisionStore | None = None) -> tuple[Bf16Measurement, bool]:
    """(measurement, from_cache): the stored one for these fields, else `measure()` (then stored)."""
    store = store or DecisionStore()
    fields = {**cpu_identity(), **fields}
    found = store.load(kind, fields, _valid_measurement)
    if found is not None:
        return Bf16Measurement(float(found["f32_ms"]), float(found["bf16_ms"])), True
    measurement = measure()
    store.save(kind, fields, asdict(measurement))
    return measurement, False


def torch_bf16_decision(store: DecisionStore | None = None) -> Bf16Measurement:
    """The eager `cpu` backend's measured bf16-autocast speedup on this CPU (cached per CPU and torch version)."""
    import torch

    fields = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return cached_measurement("torch-bf16", fields, torch_bf16_probe, store)[0]
