"""The engine's flags, declared once for every command that builds an engine: `run_live.py` / `live-avatar` (its
doctor and offline render too), `python -m live.cli.animate`, `live-avatar-server` and `python -m engines.bench`.

Each flag has one declaration here: its choices come from `engines.backends` (the names create_engine accepts) and
its default is the same in every command. A command takes the flags that apply to it (`flags=`); what it does
with a value it cannot serve (the benchmark and an OpenVINO-only device) is that command's own one-line error.
"""
from __future__ import annotations

import argparse

from engines.backends import BACKENDS, DEVICES, PRECISION_CHOICES

ENGINE_FLAGS = ("checkpoint", "deterministic_weights", "backend", "device", "precision", "align_corners")


def add_engine_arguments(parser: argparse.ArgumentParser, *, flags=ENGINE_FLAGS, title: str = "model",
                         checkpoint_default: str = "the published vox checkpoint, downloaded once into the cache"):
    """The engine group on `parser` with the `flags` that apply to the command; returns the group."""
    unknown = set(flags) - set(ENGINE_FLAGS)
    if unknown:
        raise ValueError(f"no engine flag {sorted(unknown)}")
    g = parser.add_argument_group(title)
    if "checkpoint" in flags:
        g.add_argument("--checkpoint", metavar="PATH",
                       help="FOMM vox checkpoint (vox-cpk.pth.tar or vox-adv-cpk.pth.tar); "
                            f"default: {checkpoint_default}")
    if "deterministic_weights" in flags:
        g.add_argument("--deterministic-weights", action="store_true",
                       help="run without any checkpoint on generated weights: no download, but the output is not a "
                            "face (for trying the set-up, the speed and the outputs, and for tests); it wins over "
                            "--checkpoint")
    if "backend" in flags:
        g.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="inference backend: auto (default) picks TensorRT, else torch CUDA fp16 + torch.compile, "
                            "else OpenVINO on the CPU, else the eager CPU; torch = plain eager fp32 reference")
    if "precision" in flags:
        g.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                       help="numeric precision where the backend supports it (default: the backend's own; on a CPU "
                            "bf16 where measured faster than fp32, else fp32, and the int8 renderer where it passes "
                            "a quality gate on your avatars); int8 = force the OpenVINO int8 renderer")
    if "device" in flags:
        g.add_argument("--device", choices=DEVICES, default="auto",
                       help="compute device (default auto: CUDA when available, else the fastest of the CPU and an "
                            "Intel GPU/NPU or Apple GPU present); gpu/npu = Intel GPU/NPU via OpenVINO, mps = Apple "
                            "GPU")
    if "align_corners" in flags:
        g.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=True,
                       help="grid_sample semantics: on (default) = torch 1.0, what the official checkpoints were "
                            "trained with; off = the original FOMM code as it runs on today's torch")
    return g
