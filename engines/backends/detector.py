"""A keypoint detector on its own, on the backend a local run would choose for it: what the --remote client runs
(its renderer is on the server, its detection here, every frame).

The same planner and the same fallback loop as `create_engine`, over the candidates that can run a detector alone:
OpenVINO (CPU, Intel GPU, NPU: the engine's conversion, cache, bf16 detector check and compilation) and torch
(eager fp32 on CUDA, MPS or the CPU; TensorRT and the compiled CUDA backend become eager torch on CUDA, which runs
a detector in a few ms). So a laptop without a GPU detects through OpenVINO like a local run does, not through
eager PyTorch (4-10x slower here).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..cache import DecisionStore
from ..engine import fp32_strict
from ..keypoints import Keypoints
from ..progress import Progress
from ..protocol import EngineReport
from .planner import Candidate, Request, plan


@dataclass
class Detector:
    """image [1,3,S,S] in [0,1] -> Keypoints (fp32), and the report of the backend that runs it."""

    graph: Callable
    report: EngineReport
    device: torch.device

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> Keypoints:
        with fp32_strict():
            value, jacobian = self.graph(image.to(self.device, torch.float32).contiguous())
        return Keypoints(value.float().cpu(), jacobian.float().cpu())


def _detector_candidate(candidate: Candidate) -> Candidate:
    """The detector-only form of an engine candidate: OpenVINO stays; everything else is eager torch where it
    would have run (a detector needs no compiled renderer)."""
    if candidate.backend == "openvino":
        return replace(candidate, precision=None, why="")
    device = {"cuda": "cuda", "mps": "mps"}.get(candidate.device, "cpu")
    return replace(candidate, backend="torch", device=device, precision=None, why="")


def create_detector(kp_detector: torch.nn.Module, image_size: int, *, backend: str = "auto", device: str = "auto",
                    cache_dir=None, progress: Progress | None = None) -> tuple[Detector, list[str]]:
    """(detector, notices) for the weights in `kp_detector` (kept on the CPU; copied to a GPU where one runs it)."""
    from . import build_first, cpu_capabilities, survey

    notices = []
    store = DecisionStore(notify=notices.append)
    machine = survey(None, store)
    chosen = plan(Request(backend, device), machine)
    candidates, seen = [], set()
    for candidate in map(_detector_candidate, chosen.candidates):
        if (candidate.backend, candidate.device, candidate.skip) not in seen:
            seen.add((candidate.backend, candidate.device, candidate.skip))
            candidates.append(candidate)

    def make(candidate: Candidate, _):
        if candidate.backend == "openvino":
            from .openvino_backend import build_openvino_detector
            graph, report = build_openvino_detector(
                kp_detector, image_size, cache_dir=cache_dir, device=candidate.device.upper(), store=store,
                capabilities=cpu_capabilities(store) if candidate.device == "cpu" else None, progress=progress)
            return Detector(graph, report, torch.device("cpu")), []
        target = torch.device(candidate.device)
        module = (kp_detector if target.type == "cpu" else copy.deepcopy(kp_detector).to(target)).eval()
        report = EngineReport(backend="torch", device=candidate.device, detector="fp32", renderer="none",
                              why="the eager reference")
        return Detector(module, report, target), []

    built = build_first(candidates, make, lambda candidate: None)
    notices += [f"{f.describe()}: the keypoint detector uses the {built.candidate.label}" for f in built.fell_back]
    found = built.engine
    return Detector(found.graph, replace(found.report, fell_back=built.fell_back), found.device), notices
