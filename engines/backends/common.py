"""What the accelerated backends share: an engine whose detect/render run through replaceable graphs, and one
compile-with-fallback wrapper for those graphs."""
from __future__ import annotations

import hashlib
import logging
import weakref
from typing import Callable

import torch

from ..engine import FOMMEngine, fp32_strict, renderer_inputs
from ..keypoints import Keypoints
from ..protocol import EngineReport, RenderedFrame

log = logging.getLogger(__name__)


def log_fallback(message: str) -> None:
    """How a graph that falls back after its engine was built reports it (no notice list to append to then)."""
    log.warning(message)

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class AcceleratedEngine(FOMMEngine):
    """Same protocol as FOMMEngine (detect/encode/render/forward_full, name, device, image_size, config_hash).

    `detector(image) -> (value, jacobian)` and `renderer(*renderer_inputs) -> prediction` replace the eager
    modules on the per-frame path. `encode` runs once per avatar: it uses `detect` for the source keypoints and the
    eager fp32 encoder for the features. `forward_full` stays the eager fp32 baseline. `report`: what the backend
    chose and why (engines.protocol.EngineReport).
    """

    def __init__(self, base: FOMMEngine, *, name: str, report: EngineReport, detector: Callable | None = None,
                 renderer: Callable | None = None):
        super().__init__(base.kp_detector, base.generator, config=base.config, device=base.device,
                         align_corners=base.align_corners, weights_id=base.weights_id)
        self.name = name
        self._report = report
        self._detector = detector
        self._renderer = renderer

    @property
    def takes_batches(self) -> bool:
        """Eager renderers take any batch; compiled graphs (TensorRT, OpenVINO, torch.compile) are specialised on
        batch 1."""
        return self._renderer is None or isinstance(self._renderer, torch.nn.Module)

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> Keypoints:
        if self._detector is None:
            return super().detect(image)
        with fp32_strict():  # also while a compiled detector is traced / its CUDA graph captured
            value, jacobian = self._detector(self._input(image).contiguous())
        return Keypoints(value.float(), jacobian.float())

    @torch.inference_mode()
    def render(self, state, kp_driving: Keypoints) -> RenderedFrame:
        if self._renderer is None:
            return super().render(state, kp_driving)
        kp_driving = kp_driving.to(self.device, torch.float32)
        inputs = [t.contiguous() for t in renderer_inputs(state, kp_driving)]
        prediction, deformation, occlusion = self._renderer(*inputs)  # FrameRenderer's three outputs
        return RenderedFrame(prediction.float(), deformation.float(), occlusion.float())

    def warm_up(self, runs: int = 3) -> None:
        """Run the per-frame graphs a few times so compilation / CUDA-graph capture happens before the first frame."""
        size = self.image_size
        generator = torch.Generator().manual_seed(0)
        source = torch.rand(1, 3, size, size, generator=generator)
        state = self.encode(source)
        for _ in range(runs):
            kp = self.detect(torch.rand(1, 3, size, size, generator=generator))
            self.render(state, kp)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def frame_ms(self, runs: int = 2) -> float:
        """One frame (detect + render) in ms, the fastest of `runs` after warm-up: what decides whether a slower
        float engine is worth an int8 renderer, or which device is faster."""
        return measure_frame_ms(self, runs)


def as_float(outputs):
    """A graph's outputs (one tensor or a tuple, e.g. FrameRenderer's three) back in fp32."""
    if isinstance(outputs, (tuple, list)):
        return tuple(t.float() for t in outputs)
    return outputs.float()


def measure_frame_ms(engine, runs: int = 2) -> float:
    """Fastest of `runs` frames (detect + render) of any engine, on a seeded random avatar and frame."""
    import time

    size = engine.image_size
    generator = torch.Generator().manual_seed(1)
    state = engine.encode(torch.rand(1, 3, size, size, generator=generator))
    frame = torch.rand(1, 3, size, size, generator=generator)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        out = engine.render(state, engine.detect(frame.to(engine.device))).image
        if out.device.type in ("cuda", "mps"):
            out.cpu()  # waits for the device
        best = min(best, (time.perf_counter() - start) * 1000.0)
    return best


class CompiledWithFallback:
    """Calls a compiled graph; the first time it raises, records why, reports it once through `report` and runs
    the eager module from then on (e.g. no C++ compiler for inductor on this machine).

    `report(message)` defaults to a logging warning; builders collect the messages as notices during warm-up.
    `clone_outputs`: with CUDA graphs (mode="reduce-overhead") the output lives in a buffer the next replay
    overwrites, so it is copied before it is returned.
    """

    def __init__(self, name: str, eager: Callable, compiled: Callable | None, *, clone_outputs: bool = False,
                 report: Callable[[str], None] | None = None):
        self.name, self.eager, self.compiled, self.clone_outputs = name, eager, compiled, clone_outputs
        self.report = report or log_fallback
        self.error: str | None = None

    @property
    def fell_back(self) -> bool:
        return self.error is not None

    def __call__(self, *inputs):
        if self.compiled is not None and self.error is None:
            try:
                if self.clone_outputs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = self.compiled(*inputs)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eager, and say so
                self.error = describe_error(error)
                self.report(f"torch.compile failed for the {self.name} ({self.error}): running it eager")
            else:
                if self.clone_outputs:
                    out = tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()
                return out
        return self.eager(*inputs)


_digests: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # generator -> (state, digest)


def weights_digest(engine: FOMMEngine) -> str:
    """sha256 of every weight (names, dtypes, shapes, values) of both networks: keys compiled-engine caches.

    A file name and size (weights_id) would not tell two fine-tuned checkpoints of one size apart. Hashing 240 MB
    takes about half a second, and one start asks several times (each cache, each decision): the digest is kept
    per networks and recomputed when any weight changed (torch's version counters) or the resampling flag did."""
    modules = (("kp_detector", engine.kp_detector), ("generator", engine.generator))
    try:
        state = (id(engine.kp_detector), engine.align_corners, engine.config.digest(),
                 tuple(t._version for _, module in modules for t in module.state_dict().values()))
    except RuntimeError:  # inference tensors keep no version counter: no shortcut
        state = None
    known = _digests.get(engine.generator)
    if state is not None and known is not None and known[0] == state:
        return known[1]
    digest = hashlib.sha256()
    for prefix, module in modules:
        add_module(digest, module, f"{prefix}.")
    digest.update(f"|align_corners={engine.align_corners}|config={engine.config.digest()}".encode())
    if state is not None:
        _digests[engine.generator] = (state, digest.hexdigest())
    return digest.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 of one module's weights (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    add_module(digest, module)
    return digest.hexdigest()


def add_module(digest, module: torch.nn.Module, prefix: str = "") -> None:
    for key, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{prefix}{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no 240 MB of copies


def describe_error(error: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message' for one-line notices (compiler errors can run to pages)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


def check_precision(precision: str | None, supported: tuple[str, ...], default: str) -> tuple[str, list[str]]:
    """(precision to use, notices): unknown names are an error; known but unsupported ones fall back with a notice."""
    if precision in (None, "auto"):
        return default, []
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if precision not in supported:
        return default, [f"precision {precision} is not supported by this backend: using {default}"]
    return precision, []
