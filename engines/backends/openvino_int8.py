"""int8 renderer for the OpenVINO backend: NNCF post-training quantization calibrated without any dataset.

Calibration inputs are renderer inputs an avatar would really see: the avatar state (encoder features, small image,
heatmaps, source keypoints) with driving keypoints made from the source keypoints by plausible head motion
(rotation +-20 deg, scale 0.85-1.15, translation +-0.15, small per-keypoint jitter) and matching jacobian changes.
The avatar is the caller's images when given, else generated smooth images (deterministic, seeded): the renderer's
activations depend on the image content, so int8 quality is verified only as far as the README says.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math

import numpy as np
import torch

from ..engine import FOMMEngine
from ..engine import renderer_inputs
from ..keypoints import Keypoints

SEED = 0
GENERATED = "generated-v1"


def generated_avatars(size: int, count: int = 2) -> list[torch.Tensor]:
    """Smooth deterministic images [1,3,S,S] in [0,1]: low-frequency colour fields with a bright ellipse (a face
    has a large smooth blob in the middle), not noise, whose high frequencies no camera frame has."""
    generator = torch.Generator().manual_seed(SEED)
    images = []
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    for _ in range(count):
        coarse = torch.rand(1, 3, 6, 6, generator=generator)
        field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
        centre = (torch.rand(2, generator=generator) - 0.5) * 0.3
        blob = torch.exp(-(((xs - centre[0]) / 0.45) ** 2 + ((ys - centre[1]) / 0.6) ** 2))
        tint = torch.rand(3, 1, 1, generator=generator) * 0.5 + 0.5
        images.append((0.55 * field + 0.45 * blob * tint).clamp(0, 1))
    return images


def calibration_id(images, samples: int) -> str:
    """Names the calibration in the cache key: generated-v1 or a digest of the caller's images."""
    if images is None:
        return f"{GENERATED}:{samples}"
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.detach().cpu().float().contiguous().numpy().tobytes())
    return f"images-{digest.hexdigest()[:16]}:{samples}"


def head_motion(kp: Keypoints, rng: np.random.Generator) -> Keypoints:
    """The source keypoints moved like a head moves: similarity transform about their centre, plus jitter."""
    value = kp.value.cpu().numpy()[0]         # [K,2]
    jacobian = kp.jacobian.cpu().numpy()[0]   # [K,2,2]
    angle = math.radians(rng.uniform(-20, 20))
    scale = rng.uniform(0.85, 1.15)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = value.mean(axis=0, keepdims=True)
    moved = (value - centre) @ rotation.T + centre + rng.uniform(-0.15, 0.15, 2) + rng.normal(0, 0.02, value.shape)
    jac = rotation @ jacobian + rng.normal(0, 0.05, jacobian.shape)
    return Keypoints(torch.from_numpy(moved[None].astype(np.float32)), torch.from_numpy(jac[None].astype(np.float32)))


def avatar_motion(engine: FOMMEngine, images=None, samples: int = 32, *, seed: int = SEED,
                  neutral: bool = True) -> list[tuple]:
    """`samples` (avatar state, driving keypoints) pairs: avatars x head motion; with `neutral` the first of each
    avatar unmoved (the neutral pose the live loop starts from). Another `seed` gives motion calibration never
    saw (the quality gate's held-out frames)."""
    if samples < 1:
        raise ValueError("int8 calibration needs at least one sample")
    images = images if images is not None else generated_avatars(engine.image_size)
    states = [engine.encode(image) for image in images]
    rng = np.random.default_rng(seed)
    out = []
    for index in range(samples):
        state = states[index % len(states)]
        kp = state.kp if neutral and index < len(states) else head_motion(state.kp, rng)
        out.append((state, kp))
    return out


def calibration_inputs(engine: FOMMEngine, images=None, samples: int = 32) -> list[list[np.ndarray]]:
    """`samples` renderer input lists (RENDERER_INPUTS order) from `avatar_motion`."""
    return [[np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in renderer_inputs(state, kp)]
            for state, kp in avatar_motion(engine, images, samples)]


def nncf_version() -> str | None:
    """NNCF's installed version, or None where it is not installed: found without importing it (the import takes
    seconds on a small CPU, and only quantizing needs it; a broken install then fails that build, which falls back)."""
    import importlib.metadata
    import importlib.util

    try:
        if importlib.util.find_spec("nncf") is None:
            return None
        return importlib.metadata.version("nncf")
    except (ValueError, ImportError, importlib.metadata.PackageNotFoundError):
        return None


class Cancelled(Exception):
    """The calibration was stopped (the app is closing): nothing is cached."""


def quantize_renderer(model, samples: list, cancelled=None):
    """NNCF post-training int8 quantization of the fp32 renderer IR (performance preset: symmetric activations,
    what the CPU's int8 kernels run fastest). `cancelled()` is checked before each calibration sample, so a
    background calibration stops within one inference when the app closes."""
    import nncf

    def sample(item):
        if cancelled is not None and cancelled():
            raise Cancelled("int8 calibration stopped")
        return item

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step progress bars would flood the app's log
    # NNCF draws its progress bars (rich) on stdout whatever the log level: into the middle of the user's lines,
    # or above a report on stdout (the bench). What the user sees is our own "quantizing ..." line instead.
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(model, nncf.Dataset(samples, sample), subset_size=len(samples),
                             fast_bias_correction=True, target_device=nncf.TargetDevice.CPU)
