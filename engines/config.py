"""Model configuration: the values of the official vox-256 / vox-adv-256 configs (identical for inference)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class KeypointDetectorConfig:
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    temperature: float = 0.1
    scale_factor: float = 0.25
    pad: int = 0  # not in the yaml: the 7x7 heads run unpadded, 64x64 -> 58x58


@dataclass(frozen=True)
class DenseMotionConfig:
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01


@dataclass(frozen=True)
class GeneratorConfig:
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)


@dataclass(frozen=True)
class FOMMConfig:
    name: str = "vox-256"
    num_kp: int = 10
    num_channels: int = 3
    image_size: int = 256
    kp_detector: KeypointDetectorConfig = field(default_factory=KeypointDetectorConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def digest(self) -> str:
        """Stable short hash of every architectural value (used to key caches and calibration files)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# vox-adv-256 differs from vox-256 only in its discriminator and training settings: the inference networks and
# state_dict keys are the same, so vox-adv-cpk.pth.tar loads with this config too (--checkpoint).
VOX_256 = FOMMConfig()
