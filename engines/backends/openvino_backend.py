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
- Caches, under the project cache folder (engines/storage.py): the converted (and, for int8, quantized) OpenVINO IR
  per graph, keyed by weights digest, config, precision, shapes, device name and OpenVINO (+ NNCF) version; entries are
  checked (sizes + sha256) and rebuilt when corrupt. OpenVINO's own compiled-blob cache (CACHE_DIR) lies beside them
  so the second start skips compilation too.
- Threads: every core the OS gives this process (os.sched_getaffinity), one stream, latency hint.
"""
from __future__ import annotations

import hashlib
import json
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

from ..engine import FOMMEngine
from ..export import example_inputs, frame_renderer
from ..progress import Progress, announced, step
from ..storage import cache_root, sha256_file, staged_directory
from .common import AcceleratedEngine, describe_error, weights_digest
from .precision import (BF16_MIN_SPEEDUP, Bf16Measurement, DecisionStore, cached_measurement, cpu_identity,
                        interleaved_minimum, openvino_bf16_probe)

SUPPORTED_PRECISIONS = ("fp32", "bf16", "int8")
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
OPENVINO_DEVICES = ("CPU", "GPU", "NPU")
ACCELERATOR_PRECISIONS = ("fp16", "fp32")  # what the GPU/NPU run (no bf16, no int8 renderer there)
STILL_FRAMES = 8  # frames of the detector's still-face jitter check
DETECTOR_JITTER_LIMIT = 1.2  # bf16 detector: at most this many times the f32 still-face jitter
CACHE_FORMAT = 2  # bump when the entry layout or the converted graphs change meaning (2: renderer outputs its motion)
MODEL_XML, MODEL_BIN, META = "model.xml", "model.bin", "meta.json"
PAYLOADS = (MODEL_XML, MODEL_BIN)
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


def probe_cpu(core=None, store: DecisionStore | None = None) -> CpuCapabilities:
    """What this process's CPU offers OpenVINO: where a bf16 kernel exists, f32 and bf16 are timed
    (precision.openvino_bf16_probe, ~0.3 s) and the result is cached per CPU, ISA cap and OpenVINO version."""
    import openvino as ov

    core = core or ov.Core()
    capabilities = tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    if "BF16" not in capabilities:
        return CpuCapabilities(cpu=name, capabilities=capabilities, amx=False)
    kernel = bf16_kernel(core)
    measurement, cached = cached_measurement(
        "openvino-bf16", {"device_name": name, "openvino": ov.__version__, "kernel": kernel},
        lambda: openvino_bf16_probe(core, cpu_threads()), store)
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
        import nncf
        found["nncf"] = nncf.__version__
    return found


# --- cache: IR entries (xml + bin + meta) ------------------------------------------------------------------------
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


def entry_dir(cache_dir: Path, fields: dict) -> Path:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return Path(cache_dir) / f"{fields['graph']}-{fields['precision']}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def check_entry(directory: Path, fields: dict) -> tuple[str, str]:
    """('ok' | 'missing' | 'corrupt' | 'mismatch', reason) for the IR entry in `directory`."""
    directory = Path(directory)
    if not directory.exists():
        return "missing", "no cached model"
    try:
        meta = json.loads((directory / META).read_text())
        expected, files = meta["fields"], {name: (int(v["size"]), str(v["sha256"])) for name, v in
                                           meta["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return "corrupt", f"unreadable {META} ({type(error).__name__})"
    if expected != fields:
        differing = sorted(k for k in set(fields) | set(expected) if fields.get(k) != expected.get(k))
        return "mismatch", f"built for a different {', '.join(differing)}"
    for name in PAYLOADS:
        path = directory / name
        if name not in files or not path.is_file():
            return "corrupt", f"{name} is missing"
        size, sha = files[name]
        if path.stat().st_size != size:
            return "corrupt", f"{name} has {path.stat().st_size} bytes, expected {size}"
        if sha256_file(path) != sha:
            return "corrupt", f"{name} checksum differs"
    return "ok", "cached model is valid"


def write_entry(directory: Path, fields: dict, model) -> None:
    """Save the IR + meta into a temporary sibling, then move it into place: a crash leaves no half entry."""
    import openvino as ov

    with staged_directory(directory) as staging:
        # compress_to_fp16=False: the default would halve the weights and the fp32 path would no longer be fp32.
        ov.save_model(model, str(staging / MODEL_XML), compress_to_fp16=False)
        files = {name: {"size": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
                 for name in PAYLOADS}
        meta = {"fields": fields, "files": files, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (staging / META).write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_or_build(cache_dir: Path, fields: dict, *, build: Callable[[], object], label: str, core):
    """(path to the cached model.xml or None, ov.Model or None, status, notices).

    A valid entry is returned as its path only (compile_model(path) lets OpenVINO's CACHE_DIR skip reading and
    compiling); otherwise the model is built, saved and returned (and its path, when saving worked).
    """
    notices = []
    directory = entry_dir(cache_dir, fields)
    status, reason = check_entry(directory, fields)
    if status == "ok":
        try:
            core.read_model(str(directory / MODEL_XML))  # a payload that does not parse is as bad as a corrupt one
            return directory / MODEL_XML, None, "hit", notices
        except Exception as error:  # noqa: BLE001
            status, reason = "corrupt", f"it does not load ({describe_error(error)})"
    if status not in ("missing", "mismatch"):
        notices.append(f"cached OpenVINO {label} at {directory} is {status}: {reason}; rebuilding it")
    model = build()
    try:
        write_entry(directory, fields, model)
        return directory / MODEL_XML, model, "rebuilt" if status == "corrupt" else "miss", notices
    except Exception as error:  # noqa: BLE001 - an unwritable cache must not stop the app
        notices.append(f"could not save the OpenVINO {label} to {directory}: {describe_error(error)}")
        return None, model, "miss", notices


# --- conversion and the engine -----------------------------------------------------------------------------------
def convert(module: torch.nn.Module, inputs: tuple):
    """openvino.convert_model with static input shapes (the example inputs' own)."""
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings for the renderer's shape asserts: static here
        return ov.convert_model(module.eval(), example_input=tuple(inputs), input=[tuple(t.shape) for t in inputs])


class CompiledGraph:
    """torch tensors in, torch tensors out, through one OpenVINO infer request (serialised: requests are not
    re-entrant, and the live loop may render from another thread than the one that calibrates)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.outputs = len(compiled.outputs)
        self._lock = threading.Lock()

    def __call__(self, *inputs):
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in inputs]
        with self._lock:
            self.request.infer(arrays)
            # Copies: the request reuses its output buffers on the next call.
            outs = tuple(torch.from_numpy(self.request.get_output_tensor(i).data.copy())
                         for i in range(self.outputs))
        return outs[0] if self.outputs == 1 else outs


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


def still_face_jitter(detector: Callable, image: torch.Tensor, frames: int = STILL_FRAMES) -> float:
    """Mean over keypoints of the std over `frames` of a still face with camera-like noise (sigma 2/255, seeded):
    how much the detector makes a face that does not move shake."""
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(frames):
        noisy = (image + torch.randn(image.shape, generator=generator) * (2 / 255)).clamp(0, 1)
        values.append(detector(noisy)[0].reshape(-1, 2))
    return float(torch.stack(values).std(dim=0).mean())


def detector_bf16_check(core, path, model, image: torch.Tensor, threads: int, compiled_dir) -> dict:
    """Time the detector in f32 and bf16 and measure its still-face jitter in each: bf16 serves the detector only
    if it is clearly faster and shakes no more than DETECTOR_JITTER_LIMIT x f32 (its temperature-0.1 softmax
    turns rounding into keypoint jitter)."""
    graphs = {name: CompiledGraph(core.compile_model(str(path) if path is not None else model, "CPU",
                                                     compile_config(name, compiled_dir, threads)))
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


def build_openvino_engine(base: FOMMEngine, *, precision: str | None = None, cache_dir=None,
                          capabilities: CpuCapabilities | None = None, warm_up: bool = True,
                          calibration_images=None, calibration_samples: int | None = None,
                          device: str = "CPU", core=None, store: DecisionStore | None = None, cancelled=None,
                          progress: Progress | None = None):
    """(engine, notices). `base` must live on the CPU and openvino must import.

    precision: None/'auto' = the CPU's measured choice (bf16 where timed >= 1.25x f32, else fp32; fp16 on a GPU or
    NPU); 'fp32', 'bf16' or 'int8' on request.
    capabilities: the CPU probe's answer (tests pass their own); probed when None.
    calibration_images: avatar images [1,3,S,S] for int8 calibration and the detector's still-face check (default:
    generated ones); the cache key names them, so other images quantize anew.
    device: OpenVINO device, CPU, GPU (Intel iGPU/Arc) or NPU; `core` an ov.Core (tests pass fakes).
    cancelled: () -> bool, checked during int8 calibration (a background build stops when the app closes).
    details['frame_ms']: one frame (detect + render) timed after warm-up, the minimum of two.
    progress: one line before each slow step (conversion, int8 quantization, compilation) and its elapsed time
    after it (engines/progress.py; default: stderr).
    """
    import openvino as ov

    if base.device.type != "cpu":
        raise ValueError("the OpenVINO backend takes its inputs from the CPU: it needs an engine on the CPU")
    started = time.perf_counter()
    calibration_samples = calibration_samples or DEFAULT_CALIBRATION_SAMPLES
    core = core or ov.Core()
    if device == "CPU":
        capabilities = capabilities or probe_cpu(core, store)
        device_name = capabilities.cpu
    else:
        device_name = str(core.get_property(device, "FULL_DEVICE_NAME"))
    precision, reason, notices = device_precision(device, precision, capabilities)
    if precision == "int8":
        try:
            import nncf  # noqa: F401 - only the int8 path needs it (and its version keys the cache)
        except Exception as error:  # noqa: BLE001 - a broken nncf must not cost the whole fast path
            precision = capabilities.default_precision
            notices.append(f"int8 needs nncf, which cannot be imported ({describe_error(error)}): using {precision}")
    # The float precision of everything not quantized.
    float_precision = precision if precision != "int8" else capabilities.default_precision
    threads = cpu_threads()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    detector_inputs, renderer_inputs_ = example_inputs(base)
    digest = weights_digest(base)
    common = {"weights": digest, "config_hash": base.config_hash, "cpu": device_name}

    def fields_for(graph, ir_precision, inputs, calibration=None):
        return cache_fields(graph=graph, precision=ir_precision, shapes=[t.shape for t in inputs],
                            versions=runtime_versions(ir_precision), calibration=calibration, **common)

    statuses = {}
    detector_path, detector_model, statuses["keypoint_detector"], more = load_or_build(
        cache_dir, fields_for("keypoint_detector", "fp32", detector_inputs), label="keypoint detector", core=core,
        build=lambda: announced(progress, "converting the keypoint detector to OpenVINO (once, cached)",
                                lambda: convert(base.kp_detector, detector_inputs)))
    notices += more
    renderer_fields = fields_for("frame_renderer", "fp32", renderer_inputs_)
    renderer_path, renderer_model, statuses["frame_renderer"], more = load_or_build(
        cache_dir, renderer_fields, label="renderer", core=core,
        build=lambda: announced(progress, "converting the renderer to OpenVINO (once, cached)",
                                lambda: convert(frame_renderer(base), renderer_inputs_)))
    notices += more
    calibration = None
    if precision == "int8":
        from .openvino_int8 import calibration_id, calibration_inputs, quantize_renderer

        fp32_renderer = renderer_model
        calibration = calibration_id(calibration_images, calibration_samples)

        def build_int8():
            model = fp32_renderer if fp32_renderer is not None else core.read_model(str(renderer_path))
            with step(progress, f"quantizing the renderer to int8 on {calibration_samples} calibration inputs "
                                "(once, cached)"):
                samples = calibration_inputs(base, calibration_images, calibration_samples)
                return quantize_renderer(model, samples, cancelled)

        renderer_path, renderer_model, statuses["frame_renderer_int8"], more = load_or_build(
            cache_dir, fields_for("frame_renderer", "int8", renderer_inputs_, calibration), label="int8 renderer",
            core=core, build=build_int8)
        notices += more
        if statuses["frame_renderer_int8"] != "hit":
            source = "your avatars" if calibration_images is not None else "generated avatars"
            notices.append(f"quantized the renderer to int8 with {calibration_samples} calibration inputs from "
                           f"{source} ({calibration}); cached for the next start")

    compiled_dir, unusable = usable_compile_cache(cache_dir / "compiled")
    if unusable:
        notices.append(unusable)

    # The detector stays fp32 unless bf16 is measured faster and no shakier on a still face (cached per weights).
    detector_precision, check = "fp32", None
    if device == "CPU" and float_precision == "bf16":
        from .openvino_int8 import calibration_id, generated_avatars

        still = calibration_images[0] if calibration_images else generated_avatars(base.image_size, 1)[0]
        store = store or DecisionStore()
        fields = {**cpu_identity(), "weights": digest, "openvino": ov.__version__, "kernel": capabilities.kernel,
                  "still_face": calibration_id([still], STILL_FRAMES)}
        check = store.load("openvino-detector-bf16", fields, lambda r: r.get("precision") in ("fp32", "bf16"))
        if check is None:
            check = detector_bf16_check(core, detector_path, detector_model, still, threads, compiled_dir)
            store.save("openvino-detector-bf16", fields, check)
        detector_precision = check["precision"]
    elif device != "CPU" and precision == "fp16":
        detector_precision = "fp32"  # fp16 keypoints jitter (temperature-0.1 softmax); the detector is cheap

    def compile_graph(path, model, hint):
        config = compile_config(hint, compiled_dir, threads, device)
        # From a path OpenVINO's cache can skip reading and compiling; a model object is hashed whole first.
        return core.compile_model(str(path) if path is not None else model, device, config)

    with step(progress, f"compiling the OpenVINO graphs for {device} ({float_precision}, {threads} threads)"):
        graphs = {"keypoint_detector": CompiledGraph(compile_graph(detector_path, detector_model,
                                                                   detector_precision)),
                  "frame_renderer": CompiledGraph(compile_graph(renderer_path, renderer_model, float_precision))}
    details = {"backend": "openvino", "device": device, "precision": precision, "precision_reason": reason,
               "float_precision": float_precision, "detector": detector_precision, "renderer": precision,
               "threads": threads, "cpu": device_name, "cache_dir": str(cache_dir), "cache": statuses,
               **runtime_versions(precision)}
    if capabilities is not None:
        details.update({"amx": capabilities.amx, "kernel": capabilities.kernel})
        if capabilities.bf16 is not None:
            details["bf16_speedup"] = round(capabilities.bf16.speedup, 3)
    if check is not None:
        details["detector_check"] = describe_detector_check(check)
    if calibration is not None:
        details["calibration"] = calibration
    suffix = "" if device == "CPU" else f"-{device.lower()}"
    engine = AcceleratedEngine(base, name=f"openvino{suffix}-{precision}", detector=graphs["keypoint_detector"],
                               renderer=graphs["frame_renderer"], precision=precision, details=details)
    if warm_up:
        engine.warm_up(runs=1)
        engine.details["frame_ms"] = round(engine.frame_ms(runs=2), 1)
    engine.details["startup_s"] = round(time.perf_counter() - started, 2)  # (the engine keeps a copy of details)
    return engine, notices
