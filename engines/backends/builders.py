"""From a planned candidate to an engine: the weights, loaded once per device, and each backend's builder.

`Weights.base(device)` loads the checkpoint (or generates the test weights) on that device the first time it is
asked, with a progress line; its errors are the user's to fix (a bad checkpoint), so the selection loop lets them
through instead of falling back. `build(candidate, base, settings)` runs the candidate's backend builder; any error
it raises is that candidate's failure, recorded, and the loop moves on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..engine import FOMMEngine
from ..progress import Progress, step
from .planner import Candidate


class Weights:
    """The FOMM networks on each device they are needed on (the base every backend builds from)."""

    def __init__(self, *, checkpoint=None, deterministic_weights: bool = False, align_corners: bool = True,
                 progress: Progress | None = None, load: Callable[..., FOMMEngine] | None = None):
        if not deterministic_weights and checkpoint is None:
            raise ValueError("a checkpoint path is required unless deterministic_weights=True")
        self.checkpoint, self.deterministic, self.align_corners = checkpoint, deterministic_weights, align_corners
        self.progress = progress
        self._load = load or load_weights
        self._bases: dict[str, FOMMEngine] = {}

    def base(self, device: str) -> FOMMEngine:
        if device not in self._bases:
            what = ("generating the test weights" if self.deterministic
                    else f"loading the checkpoint {self.checkpoint}")
            with step(self.progress, what + ("" if device == "cpu" else f" onto {device}")):
                self._bases[device] = self._load(device, self.checkpoint, self.deterministic, self.align_corners)
        return self._bases[device]


def load_weights(device: str, checkpoint, deterministic_weights: bool, align_corners: bool) -> FOMMEngine:
    if deterministic_weights:
        return FOMMEngine.from_deterministic_weights(device=device, align_corners=align_corners)
    return FOMMEngine.from_checkpoint(checkpoint, device=device, align_corners=align_corners)


@dataclass(frozen=True)
class Settings:
    """What every builder is given besides its candidate and base."""

    cache_dir: object = None            # TensorRT engines / OpenVINO IRs (default: under the project cache)
    warm_up: bool = True
    calibration_images: object = None   # avatars for int8 calibration and the detector's still-face check
    progress: Progress | None = None
    store: object = None                # engines.cache.DecisionStore for measured decisions
    cpu_capabilities: Callable = None   # () -> openvino_backend.CpuCapabilities (tests play other CPUs)
    torch_bf16: Callable = None         # () -> precision.Bf16Measurement for the eager CPU backend


def build(candidate: Candidate, base: FOMMEngine, settings: Settings):
    """(engine, notices) for one candidate; raises when its backend cannot be built here."""
    precision, progress = candidate.precision, settings.progress
    if candidate.backend == "tensorrt":
        from .tensorrt_backend import build_tensorrt_engine
        return build_tensorrt_engine(base, precision=precision, cache_dir=settings.cache_dir,
                                     warm_up=settings.warm_up, progress=progress)
    if candidate.backend == "cuda":
        from .cuda_backend import build_cuda_engine
        # torch.compile traces and captures the graphs on the first calls: the warm-up, every start
        with step(progress if settings.warm_up else (lambda _: None), "compiling the CUDA graphs (torch.compile)"):
            return build_cuda_engine(base, precision=precision, warm_up=settings.warm_up)
    if candidate.backend == "openvino":
        from .openvino_backend import build_openvino_engine
        on_cpu = candidate.device == "cpu"
        return build_openvino_engine(base, precision=precision, cache_dir=settings.cache_dir, warm_up=settings.warm_up,
                                     capabilities=settings.cpu_capabilities() if on_cpu else None,
                                     calibration_images=settings.calibration_images, device=candidate.device.upper(),
                                     progress=progress, store=settings.store)
    if candidate.backend == "mps":
        from .mps_backend import build_mps_engine
        return build_mps_engine(base, precision=precision, warm_up=settings.warm_up)
    if candidate.backend == "cpu":
        from .cpu_backend import build_cpu_engine
        return build_cpu_engine(base, precision=precision, warm_up=settings.warm_up,
                                measure=settings.torch_bf16 if precision is None else None)
    # torch: the eager fp32 reference itself (its own engine object over the same networks)
    engine = FOMMEngine(base.kp_detector, base.generator, config=base.config, device=base.device,
                        align_corners=base.align_corners, weights_id=base.weights_id)
    ignored = [] if precision in (None, "fp32") else [f"the torch backend runs fp32 only: ignoring precision "
                                                      f"{precision}"]
    return engine, ignored
