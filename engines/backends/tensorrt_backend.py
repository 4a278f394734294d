"""TensorRT backend: the keypoint detector and the per-frame generator compiled with torch-tensorrt (dynamo IR).

- Static shapes, batch 1, 256x256; the avatar state enters the renderer as inputs, so switching avatars needs no
  rebuild (the graphs are the ones engines/export.py proves exportable).
- Precision: the renderer is fp16 by default (fp32 on request). The keypoint detector is always fp32 with TF32 off:
  its temperature-0.1 softmax over 3364 logits amplifies logit rounding into keypoint jitter, and it is ~3% of the
  per-frame FLOPs.
- fp16 is expressed in the graph itself (a half copy of the generator between fp32 casts): torch-tensorrt 2.13
  (pinned in requirements-gpu.txt) builds strongly typed TensorRT 11 networks, whose precision is the graph's dtypes.
- Compiled engines are serialized (torch_tensorrt.save, ExportedProgram format) into a cache folder keyed by
  everything that makes an engine invalid; a second start loads them in seconds.

The cache (engines/cache.py: keys, entry validation, load-or-build, bad entries set aside) is plain Python and tested
on CPU with fake payloads; the compile/save/load calls need a CUDA GPU with TensorRT (tests/test_gpu.py; what has
been run where: README).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import torch

from ..cache import EntryCache
from ..engine import FOMMEngine
from ..export import example_inputs, frame_renderer
from ..progress import Progress, announced
from ..protocol import EngineReport
from ..storage import cache_root
from .common import AcceleratedEngine, as_float, check_precision, describe_error, weights_digest

SUPPORTED_PRECISIONS = ("fp16", "fp32")
DEFAULT_PRECISION = "fp16"
CACHE_FORMAT = 3  # bump when the entry layout or the compiled graphs change meaning (3: engines/cache.py's meta)
PAYLOAD = "engine.ep"


# --- availability ----------------------------------------------------------------------------------------------
def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason). torch_tensorrt raises a plain Exception (not ImportError) when its TensorRT libraries
    are missing, so every exception counts as 'not available'."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is available to this torch build"
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as error:  # noqa: BLE001 - see docstring
        return False, f"torch_tensorrt cannot be imported ({describe_error(error)})"
    return True, "ok"


def runtime_versions() -> dict:
    """Versions that make a serialized engine invalid when they change (call only when TensorRT imports)."""
    import torch_tensorrt

    try:
        import tensorrt
        trt_version = tensorrt.__version__
    except Exception:  # noqa: BLE001 - some wheels expose the version only through torch_tensorrt
        trt_version = getattr(getattr(torch_tensorrt, "_version", None), "__tensorrt_version__", "unknown")
    return {"tensorrt": str(trt_version), "torch_tensorrt": str(torch_tensorrt.__version__),
            "torch": torch.__version__, "cuda": str(torch.version.cuda)}


def gpu_identity(device: torch.device) -> dict:
    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


# --- cache (engines/cache.py: key, meta, checks, atomic writes) -------------------------------------------------
def default_cache_dir(environ=None) -> Path:
    """$LIVE_AVATAR_CACHE/trt, else ~/.cache/live-avatar/trt."""
    return cache_root(environ) / "trt"


def cache_fields(*, graph: str, weights: str, config_hash: str, precision: str, shapes, gpu: dict,
                 versions: dict) -> dict:
    """Everything an engine depends on. `shapes` are the static input shapes of the graph."""
    return {"format": CACHE_FORMAT, "graph": graph, "weights": weights, "config": config_hash,
            "precision": precision, "shapes": [list(s) for s in shapes], **gpu, **versions}


def entry_cache(cache_dir) -> EntryCache:
    return EntryCache(cache_dir, (PAYLOAD,))


def entry_prefix(fields: dict) -> str:
    return f"{fields['graph']}-{fields['precision']}"


def load_or_build(cache_dir: Path, fields: dict, *, build: Callable[[], object],
                  save: Callable[[object, Path], None], load: Callable[[Path], object], label: str):
    """(module, notices): the cached module when its entry is valid and loads, else a fresh build (saved).
    `save(module, path)` / `load(path)` write and read the payload file."""
    cache, prefix = entry_cache(cache_dir), entry_prefix(fields)

    def on_missing() -> str:  # building takes minutes: say so, and why nothing cached fits
        other = cache.newest_other(f"{prefix}-*", fields)
        why = (f"the cached ones were built for a different {', '.join(other)}" if other
               else "none cached for this setup")
        return f"building the TensorRT {label} engine ({why}; this may take minutes)"

    found = cache.load_or_build(prefix, fields, label=f"TensorRT {label} engine", build=build,
                                save=lambda module, staging: save(module, staging / PAYLOAD),
                                load=lambda directory: load(directory / PAYLOAD), on_missing=on_missing)
    return found.value, list(found.notices)


# --- compilation (needs CUDA + TensorRT) ---------------------------------------------------------------------
class HalfRenderer(torch.nn.Module):
    """fp32 in, fp32 out, fp16 inside: the precision is part of the graph, not a builder hint."""

    def __init__(self, renderer: torch.nn.Module):
        super().__init__()
        self.renderer = copy.deepcopy(renderer).half()

    def forward(self, *inputs):
        return as_float(self.renderer(*(t.half() for t in inputs)))


def compile_settings(*, fp32_strict: bool) -> dict:
    """torch_tensorrt.dynamo.compile keyword arguments for a graph whose dtypes already say its precision."""
    settings = {"min_block_size": 1,  # convert every supported op: small graph pieces stay on the GPU anyway
                "truncate_double": True}
    if fp32_strict:
        settings["disable_tf32"] = True  # fp32 means fp32: TF32 rounding in the detector becomes keypoint jitter
    return settings


def compile_graph(module: torch.nn.Module, inputs: tuple, *, fp32_strict: bool):
    import torch_tensorrt

    program = torch.export.export(module.eval(), tuple(inputs), strict=False)
    settings = compile_settings(fp32_strict=fp32_strict)
    return torch_tensorrt.dynamo.compile(program, arg_inputs=list(inputs), **settings)


def save_graph(module, path: Path, inputs: tuple) -> None:
    import torch_tensorrt

    # pickle protocol >= 4, as the docs advise for large models (the renderer is ~90-180 MB)
    torch_tensorrt.save(module, str(path), output_format="exported_program", arg_inputs=list(inputs),
                        pickle_protocol=4)


def load_graph(path: Path):
    import torch_tensorrt  # registers the TensorRT runtime classes the saved program refers to

    return torch_tensorrt.load(str(path)).module()


def build_tensorrt_engine(base: FOMMEngine, *, precision: str | None = None, cache_dir=None, warm_up: bool = True,
                          progress: Progress | None = None):
    """(engine, notices). `base` must live on a CUDA device and torch_tensorrt must import. `warm_up` runs both
    engines a few times before returning, so TensorRT's lazy initialisation does not land on the first live frame.
    `progress` gets a line before each engine build (minutes, once per GPU and version) and its elapsed time."""
    if base.device.type != "cuda":
        raise ValueError("the TensorRT backend needs an engine on a CUDA device")
    started = time.perf_counter()
    why = "default" if precision in (None, "auto") else "requested"
    precision, notices = check_precision(precision, SUPPORTED_PRECISIONS, DEFAULT_PRECISION)
    why = "default" if notices else why
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    detector_inputs, renderer_inputs_ = example_inputs(base)
    common = {"weights": weights_digest(base), "config_hash": base.config_hash, "gpu": gpu_identity(base.device),
              "versions": runtime_versions()}

    def renderer_module():  # built only when compiling: a cached engine needs no half copy of the weights
        module = frame_renderer(base)
        return HalfRenderer(module) if precision == "fp16" else module

    graphs = {}
    for label, graph, make_module, inputs, graph_precision in (
            ("keypoint detector", "keypoint_detector", lambda: base.kp_detector, detector_inputs, "fp32"),
            ("renderer", "frame_renderer", renderer_module, renderer_inputs_, precision)):
        fields = cache_fields(graph=graph, precision=graph_precision, shapes=[t.shape for t in inputs], **common)
        started = time.perf_counter()
        graphs[graph], graph_notices = load_or_build(
            cache_dir, fields, label=label,
            build=lambda m=make_module, i=inputs, p=graph_precision, what=label: announced(
                progress, f"building the TensorRT {what} engine ({p}; once per GPU, cached)",
                lambda: compile_graph(m(), i, fp32_strict=p == "fp32")),
            save=lambda compiled, path, i=inputs: save_graph(compiled, path, i),
            load=load_graph)
        notices += graph_notices
        if graph_notices:
            notices.append(f"TensorRT {label} engine ready in {time.perf_counter() - started:.0f} s")

    report = EngineReport(backend="tensorrt", device="cuda", detector="fp32", renderer=precision, why=why,
                          facts=(("cache_dir", str(cache_dir)), *common["gpu"].items(), *common["versions"].items()))
    engine = AcceleratedEngine(base, name=f"tensorrt-{precision}", detector=graphs["keypoint_detector"],
                               renderer=graphs["frame_renderer"], report=report)
    if warm_up:
        engine.warm_up()
    engine.amend_report(startup_s=round(time.perf_counter() - started, 2))
    return engine, notices
