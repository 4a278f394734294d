"""FOMMEngine: the inference API everything else uses (torch backend).

    engine = FOMMEngine.from_checkpoint("vox-cpk.pth.tar")
    state = engine.encode(avatar)          # once per avatar
    kp = engine.detect(frame)              # every frame
    frame = engine.render(state, kp_norm)  # every frame: only the per-frame part of the generator runs
    frame.image                            # [1,3,256,256] in [0,1]; frame.deformation, frame.occlusion: its motion
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .config import VOX_256, FOMMConfig
from .deterministic_weights import load_deterministic_weights
from .generator import OcclusionAwareGenerator
from .keypoint_detector import KeypointDetector
from .keypoints import Keypoints
from .protocol import EngineBase, EngineReport, RenderedFrame


@dataclass
class SourceState:
    """Everything that depends only on the avatar, computed once by `encode`."""

    image: torch.Tensor           # [1,3,256,256]
    kp: Keypoints                 # source keypoints
    features: torch.Tensor        # [1,256,64,64] encoder output
    image_small: torch.Tensor     # [1,3,64,64] anti-aliased source for the dense motion network
    gaussians: torch.Tensor       # [1,K,64,64] source keypoint heatmaps


def renderer_inputs(state: SourceState, kp_driving: Keypoints) -> tuple[torch.Tensor, ...]:
    """The per-frame renderer's positional inputs from an avatar state and driving keypoints, in the order of
    FrameRenderer.forward and of the exported graphs (engines.export.RENDERER_INPUTS)."""
    return (state.features, state.image_small, state.gaussians, state.kp.value, state.kp.jacobian,
            kp_driving.value, kp_driving.jacobian)


@contextmanager
def fp32_strict():
    """Convolutions and matmuls in true fp32 inside: cuDNN allows TF32 by default, and TF32 keeps fp16's 10-bit
    mantissa, the rounding the keypoint detector's temperature-0.1 softmax turns into jitter. No-op on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_BUILDING = threading.Lock()


@contextmanager
def _convolutions_left_uninitialised():
    """Networks built without torch's random initialisation of their convolutions (~0.3 s of a CPU start, every
    start): each of those weights is overwritten right after, by the checkpoint (loaded strictly) or the generated
    weights (which refuse a missing key). The switch is process-wide while it lasts, so it is held under a lock
    and used only by the constructors below, which load every weight before returning."""
    from torch.nn.modules.conv import _ConvNd

    with _BUILDING:
        initialise = _ConvNd.reset_parameters
        _ConvNd.reset_parameters = lambda self: None
        try:
            yield
        finally:
            _ConvNd.reset_parameters = initialise


def _networks(config: FOMMConfig) -> tuple[KeypointDetector, OcclusionAwareGenerator]:
    with _convolutions_left_uninitialised():
        return KeypointDetector(config), OcclusionAwareGenerator(config)


class FOMMEngine(EngineBase):
    def __init__(self, kp_detector: KeypointDetector, generator: OcclusionAwareGenerator, *,
                 config: FOMMConfig = VOX_256, device="cpu", align_corners: bool = True,
                 weights_id: str = "untrained"):
        self.config = config
        self.device = resolve_device(device)
        self.kp_detector = kp_detector.eval().to(self.device)
        self.generator = generator.eval().to(self.device)
        self.generator.align_corners = align_corners
        self.weights_id = weights_id
        self.name = f"torch-{self.device.type}-fp32"
        self._report = EngineReport(backend="torch", device=self.device.type, detector="fp32", renderer="fp32",
                                    why="the eager reference")

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, *, config: FOMMConfig = VOX_256, verify: bool = False, **kwargs):
        kp_detector, generator = _networks(config)
        load_checkpoint(path, kp_detector, generator, verify=verify)
        stat = Path(path).stat()
        weights_id = f"file:{Path(path).name}:{stat.st_size}"
        return cls(kp_detector, generator, config=config, weights_id=weights_id, **kwargs)

    @classmethod
    def from_deterministic_weights(cls, *, salt: str = "", config: FOMMConfig = VOX_256, **kwargs):
        """Weights generated from key names (tests, demos, benchmarks): behaves like FOMM numerically, but
        the output is not a plausible face."""
        kp_detector, generator = _networks(config)
        load_deterministic_weights(kp_detector, "kp_detector", salt)
        load_deterministic_weights(generator, "generator", salt)
        return cls(kp_detector, generator, config=config, weights_id=f"deterministic:{salt}", **kwargs)

    # --- properties -----------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def align_corners(self) -> bool:
        return self.generator.align_corners

    @property
    def takes_batches(self) -> bool:
        """Whether `render` takes a batch of states (engines/batch.py): the eager modules take any batch."""
        return True

    @property
    def config_hash(self) -> str:
        """Identifies config + weights: keypoints saved under one hash are meaningless under another."""
        text = f"{self.config.digest()}|{self.weights_id}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # --- inference ------------------------------------------------------------------------------------------
    def _input(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.device, torch.float32)

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> Keypoints:
        with fp32_strict():
            value, jacobian = self.kp_detector(self._input(image))
        return Keypoints(value, jacobian)

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> SourceState:
        image = self._input(image)
        kp = self.detect(image)
        features, small, gaussians = self.generator.encode_source(image, kp.value)
        return SourceState(image=image, kp=kp, features=features, image_small=small, gaussians=gaussians)

    @torch.inference_mode()
    def render(self, state: SourceState, kp_driving: Keypoints) -> RenderedFrame:
        """The frame [1,3,256,256] in [0,1] and its motion: runs only the per-frame part (dense motion, warp,
        decoder)."""
        kp_driving = kp_driving.to(self.device, torch.float32)
        prediction, deformation, occlusion, _, _ = self.generator.render(*renderer_inputs(state, kp_driving))
        return RenderedFrame(prediction, deformation, occlusion)

    @torch.inference_mode()
    def forward_full(self, source: torch.Tensor, kp_driving: Keypoints, kp_source: Keypoints | None = None) -> dict:
        """The original generator forward from scratch (baseline for tests and benchmarks)."""
        source = self._input(source)
        kp_source = kp_source or self.detect(source)
        return self.generator(source, kp_driving.value.to(self.device), kp_driving.jacobian.to(self.device),
                              kp_source.value, kp_source.jacobian)
