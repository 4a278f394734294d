"""What the accelerated backends share: an engine whose detect/render run through replaceable graphs."""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

from ..engine import FOMMEngine
from ..export import renderer_inputs
from ..keypoints import Keypoints

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class AcceleratedEngine(FOMMEngine):
    """Same protocol as FOMMEngine (detect/encode/render/forward_full, name, device, image_size, config_hash).

    `detector(image) -> (value, jacobian)` and `renderer(*renderer_inputs) -> prediction` replace the eager
    modules on the per-frame path. `encode` runs once per avatar: it uses `detect` for the source keypoints and the
    eager fp32 encoder for the features. `forward_full` stays the eager fp32 baseline.
    """

    def __init__(self, base: FOMMEngine, *, name: str, detector: Callable | None = None,
                 renderer: Callable | None = None, precision: str = "fp32", details: dict | None = None):
        super().__init__(base.kp_detector, base.generator, config=base.config, device=base.device,
                         align_corners=base.align_corners, weights_id=base.weights_id)
        self.name = name
        self.precision = precision
        self.details = dict(details or {})  # what the backend chose (for benchmarks and the HUD)
        self._detector = detector
        self._renderer = renderer

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> Keypoints:
        if self._detector is None:
            return super().detect(image)
        value, jacobian = self._detector(self._input(image).contiguous())
        return Keypoints(value.float(), jacobian.float())

    @torch.inference_mode()
    def render(self, state, kp_driving: Keypoints) -> torch.Tensor:
        if self._renderer is None:
            return super().render(state, kp_driving)
        kp_driving = kp_driving.to(self.device, torch.float32)
        inputs = [t.contiguous() for t in renderer_inputs(state, kp_driving)]
        out = self._renderer(*inputs)
        if isinstance(out, (tuple, list)):  # some compiled graph modules return their single output in a tuple
            out = out[0]
        return out.float()

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


def weights_digest(engine: FOMMEngine) -> str:
    """sha256 of every weight (names, dtypes, shapes, values) of both networks: keys compiled-engine caches.

    A file name and size (weights_id) would not tell two fine-tuned checkpoints of one size apart.
    """
    digest = hashlib.sha256()
    for prefix, module in (("kp_detector", engine.kp_detector), ("generator", engine.generator)):
        for key, tensor in sorted(module.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{prefix}.{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(f"|align_corners={engine.align_corners}|config={engine.config.digest()}".encode())
    return digest.hexdigest()


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
