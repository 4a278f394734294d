"""OpenVINO CPU backend: the keypoint detector and the per-frame renderer compiled by OpenVINO, precision per CPU.

- Graphs: `openvino.convert_model` of the same two modules engines/export.py exports (static 1x3x256x256, the
  avatar state as renderer inputs), so switching avatars needs no rebuild. `encode` stays eager fp32 (once per
  avatar); `forward_full` stays the eager fp32 baseline.
- Precision, decided by measuring this process's CPU (`probe_cpu`), never from kernel names or flags:
    bf16  where f32 and bf16 were timed on a small convolution probe (engines/backends/precision.py) and bf16 came
          out >= 1.25x faster: 2-7x with AMX on Intel Xeons, 2x on AMD Zen 4 (native AVX512-BF16); the result is
          cached per CPU model + flags, ONEDNN_MAX_CPU_ISA, threads and OpenVINO version;
    fp32  where bf16 was not clearly faster (an Intel Xeon with AMX hidden: 0.74x; bf16 instructions hidden: 0.3x)
          or no bf16 kernel exists;
    int8  the renderer quantized by NNCF post-training quantization calibrated on avatars (openvino_int8.py), on
          request (`--precision int8`) or chosen by `auto` behind a quality gate (int8_gate.py); the rest of the
          graph runs at the float precision above. The detector is never int8: its temperature-0.1 softmax
          amplifies quantization error (measured keypoint shift 0.08-0.30 normalised units).
  The keypoint detector stays fp32 unless bf16 is measured faster on it and its still-face jitter is no worse
  than 1.2x fp32's (`detector_bf16_check`, cached per weights and CPU).
- Devices: CPU, or an Intel GPU (iGPU/Arc) / NPU through OpenVINO's GPU and NPU plugins, which run fp16 (detector
  fp32 on the GPU); the avatar encoder stays eager on the CPU.
- Caches, under the project cache folder (engines/cache.py's EntryCache): the converted (and, for int8, quantized)
  OpenVINO IR per graph, keyed by weights digest, config, precision, shapes, device name and OpenVINO (+ NNCF)
  version; entries are checked (bounded meta, sizes + sha256, the XML parses) and set aside and rebuilt when bad.
  OpenVINO's own compiled-blob cache (CACHE_DIR) lies beside them so the second start skips compilation too.
- Threads: every core the OS gives this process (os.sched_getaffinity), one stream, latency hint.
- Per frame: the avatar state is bound to the renderer's request once per avatar (its tensors shared, not copied);
  only the driving keypoints change, and outputs land in fresh arrays (no copy out of the request's buffers).

The build is four steps, each its own function: `resolve_target` (device, its name, the CPU's measured precision),
`convert_graph` (torch -> IR, cached), `quantize_renderer_ir` (int8, cached) and `compile_graph`; plus
`detector_precision` (the bf16 detector check) between the last two.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cache import DecisionStore, EntryCache, Lookup
from ..engine import FOMMEngine
from ..export import example_inputs, frame_renderer, input_shapes
from ..progress import Progress, announced, step
from ..protocol import EngineReport
from ..storage import cache_root, interprocess_lock
from .common import AcceleratedEngine, describe_error, module_digest, weights_digest
from .planner import once
from .precision import (BF16_MIN_SPEEDUP, Bf16Measurement, cached_measurement, cpu_identity, interleaved_minimum,
                        openvino_bf16_probe)

SUPPORTED_PRECISIONS = ("fp32", "bf16", "int8")
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
ACCELERATOR_PRECISIONS = ("fp16", "fp32")  # what the GPU/NPU run (no bf16, no int8 renderer there)
STILL_FRAMES = 8  # frames of the detector's still-face jitter check
DETECTOR_JITTER_LIMIT = 1.2  # bf16 detector: at most this many times the f32 still-face jitter
CACHE_FORMAT = 3  # bump when the entry layout or the converted graphs change meaning (3: engines/cache.py's meta)
MODEL_XML, MODEL_BIN = "model.xml", "model.bin"
PAYLOADS = (MODEL_XML, MODEL_BIN)
COMPILE_LOCK = ".compile.lock"  # in the compile cache: one process compiles into it at a time
DEFAULT_CALIBRATION_SAMPLES = 32


# --- availability and the CPU probe ------------------------------------------------------------------------------
def openvino_status() -> tuple[bool, str]:
    """(usable, reason): whether the openvino runtime imports and sees a CPU device."""
    try:
        import openvino as ov
        devices = ov.Core().available_devices
    except Exception as error:  # noqa: BLE001 - a broken install must only mean 'not available'
        return False, f"openvino cannot be used ({describe_error(error)})"
    if "CPU" not in devices:
        return False, f"openvino sees no CPU device (devices: {', '.join(devices) or 'none'})"
    return True, "ok"


@dataclass(frozen=True)
class CpuCapabilities:
    cpu: str                      # OpenVINO's FULL_DEVICE_NAME
    capabilities: tuple           # OPTIMIZATION_CAPABILITIES, e.g. ('BF16', 'FP32', 'INT8', ...)
    amx: bool                     # oneDNN runs bf16 on AMX in this process (honours ONEDNN_MAX_CPU_ISA); shown only
    kernel: str = ""              # the probe convolution's oneDNN kernel, e.g. brgconv_avx512_amx_bf16
    bf16: Bf16Measurement | None = None  # f32 against bf16, timed here (None: no bf16 kernel to time)
    cached: bool = False          # the measurement came from the decision cache

    @property
    def default_precision(self) -> str:
        """bf16 where it was measured clearly faster than f32 on this CPU, else f32."""
        return self.bf16.precision if self.bf16 is not None and "BF16" in self.capabilities else "fp32"

    @property
    def reason(self) -> str:
        if self.bf16 is None or "BF16" not in self.capabilities:
            return "no bf16 kernel on this CPU"
        return self.bf16.reason + (", cached" if self.cached else "")


def bf16_kernel(core) -> str:
    """The oneDNN kernel OpenVINO picks for a tiny bf16 convolution (~50 ms), e.g. brgconv_avx512_amx_bf16."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 32, 16, 16], np.float32, name="x")
    weights = ops.constant(np.ones((32, 32, 3, 3), np.float32))
    conv = ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = core.compile_model(ov.Model([conv], [x]), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 1})
    kernel = ""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            kernel = info["primitiveType"].astype(str)
    return kernel


def probe_cpu(core=None, store: DecisionStore | None = None, progress: Progress | None = None) -> CpuCapabilities:
    """What this process's CPU offers OpenVINO: where a bf16 kernel exists, f32 and bf16 are timed
    (precision.openvino_bf16_probe, ~0.3 s, announced through `progress`) and the result is cached per CPU, ISA cap
    and OpenVINO version."""
    import openvino as ov

    core = core or ov.Core()
    capabilities = tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    if "BF16" not in capabilities:
        return CpuCapabilities(cpu=name, capabilities=capabilities, amx=False)
    kernel = bf16_kernel(core)

    def measure():
        return announced(progress or (lambda line: None), "measuring bf16 against fp32 on this CPU (once, cached)",
                         lambda: openvino_bf16_probe(core, cpu_threads()))
    measurement, cached = cached_measurement(
        "openvino-bf16", {"device_name": name, "openvino": ov.__version__, "kernel": kernel}, measure, store)
    return CpuCapabilities(cpu=name, capabilities=capabilities, amx="amx" in kernel.lower(), kernel=kernel,
                           bf16=measurement, cached=cached)


def cpu_threads() -> int:
    """Every core the OS lets this process use (taskset / cgroup affinity), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def runtime_versions(precision: str) -> dict:
    import openvino as ov

    found = {"openvino": ov.__version__}
    if precision == "int8":
        from .openvino_int8 import nncf_version
        found["nncf"] = nncf_version() or "none"
    return found


# --- cache: IR entries (model.xml + model.bin + meta.json, engines/cache.py) ---------------------------------------
def default_cache_dir(environ=None) -> Path:
    """$LIVE_AVATAR_CACHE/openvino, else ~/.cache/live-avatar/openvino."""
    return cache_root(environ) / "openvino"


def cache_fields(*, graph: str, weights: str, config_hash: str, precision: str, shapes, cpu: str, versions: dict,
                 calibration: str | None = None) -> dict:
    """Everything a cached IR depends on. precision is the IR's ('fp32' also serves bf16, a compile-time hint)."""
    fields = {"format": CACHE_FORMAT, "graph": graph, "weights": weights, "config": config_hash,
              "precision": precision, "shapes": [list(s) for s in shapes], "cpu": cpu, **versions}
    if calibration is not None:
        fields["calibration"] = calibration
    return fields


def ir_cache(cache_dir) -> EntryCache:
    return EntryCache(cache_dir, PAYLOADS)


def entry_prefix(fields: dict) -> str:
    return f"{fields['graph']}-{fields['precision']}"


def load_or_convert(cache_dir: Path, fields: dict, *, build: Callable[[], object], label: str, core) -> Lookup:
    """Lookup(path to the cached model.xml, or the built ov.Model when it could not be saved, status, notices).

    A valid entry is returned as its path (compile_model(path) lets OpenVINO's CACHE_DIR skip reading and
    compiling); an entry whose XML does not parse is as bad as a corrupt one."""
    import openvino as ov

    def load(directory: Path) -> Path:
        core.read_model(str(directory / MODEL_XML))
        return directory / MODEL_XML

    def save(model, staging: Path) -> None:
        # compress_to_fp16=False: the default would halve the weights and the fp32 path would no longer be fp32.
        ov.save_model(model, str(staging / MODEL_XML), compress_to_fp16=False)

    return ir_cache(cache_dir).load_or_build(entry_prefix(fields), fields, label=f"OpenVINO {label}", build=build,
                                             save=save, load=load, reload_after_save=True)


# --- conversion and the engine -----------------------------------------------------------------------------------
def convert(module: torch.nn.Module, inputs: tuple):
    """openvino.convert_model with static input shapes (the example inputs' own). The module is traced through
    OpenVINO's own TorchScript decoder, as convert_model does, but without torch.jit.trace's check_trace, which
    runs the network twice more to compare traces (most of a cold conversion's time, ~1.5 s of 2.5 for the
    detector here): the graphs are checked against eager torch by the tests instead."""
    import openvino as ov

    shapes = [tuple(t.shape) for t in inputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings for the renderer's shape asserts: static here
        try:
            from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
        except ImportError:  # another OpenVINO layout: its own tracing, checks included
            return ov.convert_model(module.eval(), example_input=tuple(inputs), input=shapes)
        decoder = TorchScriptPythonDecoder(module.eval(), example_input=tuple(inputs),
                                           trace_kwargs={"check_trace": False})
        return ov.convert_model(decoder, input=shapes)


class CompiledGraph:
    """torch tensors in, torch tensors out, through one OpenVINO infer request (serialised: requests are not
    re-entrant, and the live loop may render from another thread than the one that calibrates).

    Inputs are bound, not copied: each input tensor's memory is shared with the request (ov.Tensor over the same
    buffer) and bound again only when another tensor comes in at that position, so the avatar state (~4 MB of the
    renderer's inputs) is bound once per avatar and only the driving keypoints change per frame. Outputs are
    written into fresh arrays set on the request (the caller may keep a frame while the next one renders).
    `bind=False`: the plain `infer(arrays)` path, which copies every input in and every output out (the bench's
    baseline for this)."""

    def __init__(self, compiled, *, bind: bool = True):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.bind = bind
        self.outputs = [(tuple(output.get_shape()), output.get_element_type().to_dtype())
                        for output in compiled.outputs]
        self._bound: list = [None] * len(compiled.inputs)  # (tensor, array) whose memory the request reads
        self._lock = threading.Lock()

    def __call__(self, *inputs):
        with self._lock:
            outs = self._bound_call(inputs) if self.bind else self._copying_call(inputs)
        return outs[0] if len(outs) == 1 else outs

    def _bound_call(self, inputs) -> tuple:
        import openvino as ov

        for index, tensor in enumerate(inputs):
            bound = self._bound[index]
            if bound is None or bound[0] is not tensor:  # we hold the tensor: its id cannot be reused meanwhile
                array = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)
                self.request.set_input_tensor(index, ov.Tensor(array, shared_memory=True))
                self._bound[index] = (tensor, array)
        arrays = [np.empty(shape, dtype) for shape, dtype in self.outputs]
        for index, array in enumerate(arrays):
            self.request.set_output_tensor(index, ov.Tensor(array, shared_memory=True))
        self.request.infer()
        return tuple(torch.from_numpy(array) for array in arrays)

    def _copying_call(self, inputs) -> tuple:
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in inputs]
        self.request.infer(arrays)
        # copies: the request reuses its output buffers on the next call
        return tuple(torch.from_numpy(self.request.get_output_tensor(i).data.copy()) for i in range(len(self.outputs)))


def usable_compile_cache(directory: Path) -> tuple[Path | None, str | None]:
    """(directory, None) when OpenVINO can keep compiled blobs there, else (None, a notice naming the folder and
    the cause). With an unwritable CACHE_DIR compile_model fails with only "Exception from core.cpp"; without a
    cache it compiles every start, which is slower to start but runs the same."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)  # os.access is wrong for root, ro mounts
        os.close(fd)
        os.unlink(probe)
        return directory, None
    except OSError as error:
        cause = f"cannot create directory {directory}" if not directory.is_dir() else f"cannot write in {directory}"
        return None, (f"OpenVINO compile cache unusable ({cause}: {error.strerror or error}): compiling without a "
                      "cache, every start compiles again")


def compile_config(hint_precision: str, cache_dir: Path | None, threads: int, device: str = "CPU") -> dict:
    config = {"INFERENCE_PRECISION_HINT": OV_HINTS[hint_precision], "PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        config.update({"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads})
    elif device == "NPU":
        config.pop("INFERENCE_PRECISION_HINT")  # the NPU compiles f16 itself; the hint is a CPU/GPU property
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def compile_cached(core, source, device: str, config: dict):
    """core.compile_model, holding the compile cache's lock while it runs. OpenVINO writes its blob in place and
    maps it to read it: two processes compiling the same graph into one CACHE_DIR at once (two clients starting
    together) can read a blob while it is written - an error, or SIGBUS when a mapped file is rewritten. With the
    lock the first one compiles and writes, the next one reads the finished blob."""
    cache_dir = config.get("CACHE_DIR")
    if cache_dir is None:
        return core.compile_model(source, device, config)
    with interprocess_lock(Path(cache_dir) / COMPILE_LOCK):
        return core.compile_model(source, device, config)


def still_face_jitter(detector: Callable, image: torch.Tensor, frames: int = STILL_FRAMES) -> float:
    """Mean over keypoints of the std over `frames` of a still face with camera-like noise (sigma 2/255, seeded):
    how much the detector makes a face that does not move shake."""
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(frames):
        noisy = (image + torch.randn(image.shape, generator=generator) * (2 / 255)).clamp(0, 1)
        values.append(detector(noisy)[0].reshape(-1, 2))
    return float(torch.stack(values).std(dim=0).mean())


def detector_bf16_check(core, ir, image: torch.Tensor, threads: int, compiled_dir) -> dict:
    """Time the detector in f32 and bf16 and measure its still-face jitter in each: bf16 serves the detector only
    if it is clearly faster and shakes no more than DETECTOR_JITTER_LIMIT x f32 (its temperature-0.1 softmax
    turns rounding into keypoint jitter). `ir`: the detector's model.xml path or ov.Model."""
    graphs = {name: CompiledGraph(compile_cached(core, _source(ir), "CPU", compile_config(name, compiled_dir, threads)))
              for name in ("fp32", "bf16")}
    x = image.contiguous()
    best = interleaved_minimum({name: (lambda g=graph: g(x)) for name, graph in graphs.items()}, rounds=6)
    jitter = {name: still_face_jitter(graph, image) for name, graph in graphs.items()}
    speedup = best["fp32"] / best["bf16"]
    ok = speedup >= BF16_MIN_SPEEDUP and jitter["bf16"] <= DETECTOR_JITTER_LIMIT * max(jitter["fp32"], 1e-9)
    return {"precision": "bf16" if ok else "fp32", "speedup": speedup, "jitter_fp32": jitter["fp32"],
            "jitter_bf16": jitter["bf16"]}


def describe_detector_check(check: dict) -> str:
    return (f"detector {check['precision']}: bf16 {check['speedup']:.2f}x fp32, still-face jitter "
            f"{check['jitter_bf16']:.2e} vs fp32 {check['jitter_fp32']:.2e} (bf16 needs >= {BF16_MIN_SPEEDUP}x "
            f"and <= {DETECTOR_JITTER_LIMIT}x the jitter)")


def device_precision(device: str, precision: str | None, capabilities: CpuCapabilities | None):
    """(precision, why, notices) for `device`: the CPU's measured choice, fp16 on a GPU/NPU."""
    notices = []
    if device != "CPU":
        if precision in (None, "auto"):
            return "fp16", f"{device} runs fp16", notices
        if precision not in ACCELERATOR_PRECISIONS:
            notices.append(f"precision {precision} is not offered on the OpenVINO {device}: using fp16")
            return "fp16", f"{device} runs fp16", notices
        return precision, "requested", notices
    if precision in (None, "auto"):
        return capabilities.default_precision, capabilities.reason, notices
    if precision not in SUPPORTED_PRECISIONS:
        if precision == "fp16":  # slower than f32 on the CPUs measured, and no CPU here runs it natively
            notices.append(f"precision fp16 is not supported by the OpenVINO backend: using "
                           f"{capabilities.default_precision}")
            return capabilities.default_precision, capabilities.reason, notices
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(SUPPORTED_PRECISIONS)}")
    if precision == "bf16" and capabilities.default_precision != "bf16":
        notices.append(f"bf16 requested although {capabilities.reason}")
    return precision, "requested", notices


# --- the build, step by step --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where the graphs compile: an OpenVINO device, its name (keys the IR cache) and, on the CPU, what was
    measured about it."""

    device: str                              # CPU | GPU | NPU
    name: str                                # FULL_DEVICE_NAME
    capabilities: CpuCapabilities | None     # the CPU probe's answer (None on a GPU/NPU)
    threads: int


def resolve_target(core, device: str, capabilities: CpuCapabilities | None, store: DecisionStore | None) -> Target:
    if device == "CPU":
        capabilities = capabilities or probe_cpu(core, store)
        return Target("CPU", capabilities.cpu, capabilities, cpu_threads())
    return Target(device, str(core.get_property(device, "FULL_DEVICE_NAME")), None, cpu_threads())


def _source(ir):
    """What compile_model / read_model take: a path as text (OpenVINO's blob cache can then skip the work) or the
    model itself."""
    return str(ir) if isinstance(ir, Path) else ir


def convert_graph(graph: str, module: torch.nn.Module, inputs: Callable[[], tuple], shapes, *, weights: str,
                  config_hash: str, target: Target, cache_dir: Path, core, progress: Progress | None) -> Lookup:
    """The fp32 IR of one graph ('keypoint_detector' or 'frame_renderer', engines/export.py's two), converted once
    and cached under `weights` (the digest of what it was converted from), its input `shapes` and the target's
    name. `inputs()` gives example inputs: asked for only when converting."""
    label = "keypoint detector" if graph == "keypoint_detector" else "renderer"
    fields = cache_fields(graph=graph, weights=weights, config_hash=config_hash, precision="fp32", shapes=shapes,
                          cpu=target.name, versions=runtime_versions("fp32"))
    return load_or_convert(cache_dir, fields, label=label, core=core, build=lambda: announced(
        progress, f"converting the {label} to OpenVINO (once, cached)", lambda: convert(module, inputs())))


def quantize_renderer_ir(base: FOMMEngine, fp32_ir, shapes, target: Target, cache_dir: Path, core, *, images,
                         samples: int, cancelled, progress: Progress | None) -> tuple[Lookup, str]:
    """(the int8 renderer IR, calibration id): NNCF post-training quantization of `fp32_ir` (inputs of `shapes`)
    calibrated on `samples` inputs from `images` (openvino_int8.py), once per calibration, cached."""
    from .openvino_int8 import calibration_id, calibration_inputs, quantize_renderer

    calibration = calibration_id(images, samples)
    fields = cache_fields(graph="frame_renderer", weights=weights_digest(base), config_hash=base.config_hash,
                          precision="int8", shapes=shapes, cpu=target.name, versions=runtime_versions("int8"),
                          calibration=calibration)

    def build():
        model = core.read_model(str(fp32_ir)) if isinstance(fp32_ir, Path) else fp32_ir
        with step(progress, f"quantizing the renderer to int8 on {samples} calibration inputs (once, cached)"):
            return quantize_renderer(model, calibration_inputs(base, images, samples), cancelled)

    found = load_or_convert(cache_dir, fields, label="int8 renderer", core=core, build=build)
    if found.status != "hit":
        source = "your avatars" if images is not None else "generated avatars"
        found = Lookup(found.value, found.status, found.notices + (
            f"quantized the renderer to int8 with {samples} calibration inputs from {source} ({calibration}); "
            "cached for the next start",))
    return found, calibration


def detector_precision(weights: str, image_size: int, detector_ir, target: Target, float_precision: str, core, *,
                       images, compiled_dir, store: DecisionStore | None,
                       progress: Progress | None = None) -> tuple[str, dict | None]:
    """(precision, the check's figures or None): fp32 unless the engine runs bf16 on the CPU and bf16 was measured
    faster on the detector and no shakier on a still face (detector_bf16_check, cached per weights and CPU); fp32
    on a GPU/NPU, whose fp16 keypoints jitter (temperature-0.1 softmax) for a cheap graph."""
    if target.device != "CPU" or float_precision != "bf16":
        return "fp32", None
    import openvino as ov

    from .openvino_int8 import calibration_id, generated_avatars

    still = images[0] if images else generated_avatars(image_size, 1)[0]
    store = store or DecisionStore()
    fields = {**cpu_identity(), "weights": weights, "openvino": ov.__version__,
              "kernel": target.capabilities.kernel, "still_face": calibration_id([still], STILL_FRAMES)}
    check = store.load("openvino-detector-bf16", fields, _valid_detector_check)
    if check is None:
        with step(progress, "measuring the keypoint detector in bf16 against fp32 (once, cached)"):
            check = detector_bf16_check(core, detector_ir, still, target.threads, compiled_dir)
        store.save("openvino-detector-bf16", fields, check)
    return check["precision"], check


def _valid_detector_check(result: dict) -> bool:
    from ..cache import number_within

    return (result.get("precision") in ("fp32", "bf16") and number_within(result.get("speedup"), 0.0, 1e3)
            and all(number_within(result.get(k), 0.0, 10.0) for k in ("jitter_fp32", "jitter_bf16")))


def compile_graph(core, ir, target: Target, precision: str, compiled_dir, *, bind: bool = True) -> CompiledGraph:
    """One IR compiled for the target with `precision` as its inference precision hint (an int8 IR's quantized
    layers carry their own; the rest runs at the hint)."""
    return CompiledGraph(compile_cached(core, _source(ir), target.device,
                                        compile_config(precision, compiled_dir, target.threads, target.device)),
                         bind=bind)


def openvino_report(target: Target, *, precision: str, float_precision: str, detector: str, why: str,
                    cache_dir: Path, statuses: dict, check: dict | None, calibration: str | None) -> EngineReport:
    facts = {"device_name": target.name, "threads": target.threads, "float_precision": float_precision,
             "cache_dir": str(cache_dir), **{f"cache_{graph}": status for graph, status in statuses.items()},
             **runtime_versions(precision)}
    if target.capabilities is not None:
        facts.update(amx=target.capabilities.amx, kernel=target.capabilities.kernel)
        if target.capabilities.bf16 is not None:
            facts["bf16_speedup"] = round(target.capabilities.bf16.speedup, 3)
    if check is not None:
        facts["detector_check"] = describe_detector_check(check)
    if calibration is not None:
        facts["calibration"] = calibration
    return EngineReport(backend="openvino", device=target.device.lower(), detector=detector, renderer=precision,
                        why=why, facts=tuple(facts.items()))


def build_openvino_engine(base: FOMMEngine, *, precision: str | None = None, cache_dir=None,
                          capabilities: CpuCapabilities | None = None, warm_up: bool = True,
                          calibration_images=None, calibration_samples: int | None = None,
                          device: str = "CPU", core=None, store: DecisionStore | None = None, cancelled=None,
                          progress: Progress | None = None, bind: bool = True):
    """(engine, notices). `base` must live on the CPU and openvino must import.

    precision: None/'auto' = the CPU's measured choice (bf16 where timed >= 1.25x f32, else fp32; fp16 on a GPU or
    NPU); 'fp32', 'bf16' or 'int8' on request. capabilities: the CPU probe's answer (tests pass their own).
    calibration_images: avatar images [1,3,S,S] for int8 calibration and the detector's still-face check (default:
    generated ones). device: CPU, GPU (Intel iGPU/Arc) or NPU; `core` an ov.Core (tests pass fakes).
    cancelled: () -> bool, checked during int8 calibration. progress: a line before each slow step (conversion,
    quantization, compilation) and its elapsed time after it. bind: CompiledGraph's input binding (the default).
    The report's frame_ms: one frame (detect + render) after warm-up, the minimum of two.
    """
    import openvino as ov

    if base.device.type != "cpu":
        raise ValueError("the OpenVINO backend takes its inputs from the CPU: it needs an engine on the CPU")
    started, core = time.perf_counter(), core or ov.Core()
    target = resolve_target(core, device, capabilities, store)
    precision, why, notices = device_precision(device, precision, target.capabilities)
    precision = _int8_usable(precision, target, notices)
    float_precision = precision if precision != "int8" else target.capabilities.default_precision
    cache_dir, digest, shapes = Path(cache_dir or default_cache_dir()), weights_digest(base), input_shapes(base.config)
    inputs = once(lambda: example_inputs(base))  # an avatar encoded: only a conversion needs it
    irs = {graph: convert_graph(graph, module, lambda i=index: inputs()[i], shapes[index], weights=digest,
                                config_hash=base.config_hash, target=target, cache_dir=cache_dir, core=core,
                                progress=progress)
           for index, (graph, module) in enumerate((("keypoint_detector", base.kp_detector),
                                                    ("frame_renderer", frame_renderer(base))))}
    calibration = None
    if precision == "int8":
        irs["frame_renderer_int8"], calibration = quantize_renderer_ir(
            base, irs["frame_renderer"].value, shapes[1], target, cache_dir, core,
            images=calibration_images, samples=calibration_samples or DEFAULT_CALIBRATION_SAMPLES,
            cancelled=cancelled, progress=progress)
    notices += [notice for lookup in irs.values() for notice in lookup.notices]
    compiled_dir, unusable = usable_compile_cache(cache_dir / "compiled")
    notices += [unusable] if unusable else []
    detector, check = detector_precision(digest, base.image_size, irs["keypoint_detector"].value, target,
                                         float_precision, core, images=calibration_images, compiled_dir=compiled_dir,
                                         store=store, progress=progress)
    renderer_ir = irs["frame_renderer_int8" if precision == "int8" else "frame_renderer"].value
    with step(progress, f"compiling the OpenVINO graphs for {device} ({float_precision}, {target.threads} threads)"):
        graphs = (compile_graph(core, irs["keypoint_detector"].value, target, detector, compiled_dir, bind=bind),
                  compile_graph(core, renderer_ir, target, float_precision, compiled_dir, bind=bind))
    report = openvino_report(target, precision=precision, float_precision=float_precision, detector=detector, why=why,
                             cache_dir=cache_dir, statuses={k: v.status for k, v in irs.items()}, check=check,
                             calibration=calibration)
    suffix = "" if device == "CPU" else f"-{device.lower()}"
    engine = AcceleratedEngine(base, name=f"openvino{suffix}-{precision}", detector=graphs[0], renderer=graphs[1],
                               report=report)
    if warm_up:
        with step(progress, "warming up and timing one frame"):
            engine.warm_up(runs=1)
            engine.amend_report(frame_ms=round(engine.frame_ms(runs=2), 1))
    engine.amend_report(startup_s=round(time.perf_counter() - started, 2))
    return engine, notices


def build_openvino_detector(kp_detector: torch.nn.Module, image_size: int, *, cache_dir=None, device: str = "CPU",
                            capabilities: CpuCapabilities | None = None, core=None,
                            store: DecisionStore | None = None, progress: Progress | None = None):
    """(graph, report) for a keypoint detector alone (the --remote client, whose renderer is on the server): the
    same conversion, cache, bf16 detector check and compilation as the engine's detector, keyed by the detector's
    own weights. `graph(image [1,3,S,S]) -> (value, jacobian)`."""
    import openvino as ov

    core = core or ov.Core()
    target = resolve_target(core, device, capabilities, store)
    float_precision, why, _ = device_precision(device, None, target.capabilities)
    cache_dir, digest = Path(cache_dir or default_cache_dir()), module_digest(kp_detector)
    shape = (1, 3, image_size, image_size)
    ir = convert_graph("keypoint_detector", kp_detector,
                       lambda: (torch.rand(shape, generator=torch.Generator().manual_seed(0)),), [shape],
                       weights=digest, config_hash=f"detector-{image_size}", target=target, cache_dir=cache_dir,
                       core=core, progress=progress)
    compiled_dir, _ = usable_compile_cache(cache_dir / "compiled")
    precision, check = detector_precision(digest, image_size, ir.value, target, float_precision, core, images=None,
                                          compiled_dir=compiled_dir, store=store, progress=progress)
    with step(progress, f"compiling the OpenVINO keypoint detector for {device} ({precision})"):
        graph = compile_graph(core, ir.value, target, precision, compiled_dir)
    report = openvino_report(target, precision=precision, float_precision=float_precision, detector=precision,
                             why=why, cache_dir=cache_dir, statuses={"keypoint_detector": ir.status}, check=check,
                             calibration=None)
    return graph, report


def _int8_usable(precision: str, target: Target, notices: list) -> str:
    """int8 needs nncf (its version keys the cache): where it is not installed, the CPU's float precision."""
    from .openvino_int8 import nncf_version

    if precision != "int8" or nncf_version() is not None:
        return precision
    notices.append(f"int8 needs nncf, which is not installed: using {target.capabilities.default_precision}")
    return target.capabilities.default_precision
