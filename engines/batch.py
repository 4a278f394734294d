"""Batched rendering: several avatar states and driving keypoints through the per-frame generator in one call.

Used by the remote server, which stacks the frames of several connections (one avatar each) into one batch. Every
layer of the per-frame path works per sample (no batch statistics at inference), so a batch equals the single
renders up to float rounding (tests/test_remote_batch.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .engine import FOMMEngine, SourceState
from .keypoints import Keypoints
from .protocol import RenderedFrame


def stack_states(states: Sequence[SourceState]) -> SourceState:
    """One SourceState of batch len(states) (each input is batch 1)."""
    return SourceState(image=torch.cat([s.image for s in states]),
                       kp=Keypoints(torch.cat([s.kp.value for s in states]),
                                    torch.cat([s.kp.jacobian for s in states])),
                       features=torch.cat([s.features for s in states]),
                       image_small=torch.cat([s.image_small for s in states]),
                       gaussians=torch.cat([s.gaussians for s in states]))


def concat_frames(frames: Sequence[RenderedFrame]) -> RenderedFrame:
    """One RenderedFrame of batch len(frames)."""
    return RenderedFrame(torch.cat([f.image for f in frames]), torch.cat([f.deformation for f in frames]),
                         torch.cat([f.occlusion for f in frames]), all(f.fresh for f in frames))


@torch.inference_mode()
def render_batch(engine: FOMMEngine, states: Sequence[SourceState], kps: Sequence[Keypoints]) -> RenderedFrame:
    """The frames ([B,3,S,S] in [0,1]) and their motion for B (state, driving keypoints) pairs; equals B calls of
    engine.render."""
    if len(states) != len(kps) or not states:
        raise ValueError(f"render_batch needs as many states as keypoints (got {len(states)} and {len(kps)})")
    if len(states) == 1 or not engine.takes_batches:
        return concat_frames([engine.render(s, k) for s, k in zip(states, kps)])
    state = stack_states(states)
    kp = Keypoints(torch.cat([k.value for k in kps]), torch.cat([k.jacobian for k in kps]))
    # engine.render stacks nothing itself: with a batched state and batched keypoints it renders the batch
    return engine.render(state, kp)
