"""Batched rendering (engines.batch) equals single renders: the remote server stacks several connections."""
from __future__ import annotations

import torch

from engines.batch import render_batch
from engines.keypoints import Keypoints


def _inputs(engine, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = engine.image_size
    states = [engine.encode(torch.rand(1, 3, size, size, generator=generator)) for _ in range(count)]
    kps = []
    for state in states:
        noise = torch.randn(state.kp.value.shape, generator=generator) * 0.05
        kps.append(Keypoints(state.kp.value + noise, state.kp.jacobian.clone()))
    return states, kps


def test_batched_render_equals_single_renders(deterministic_engine):
    engine = deterministic_engine
    states, kps = _inputs(engine, 3)
    assert engine.takes_batches
    batch = render_batch(engine, states, kps).image
    assert batch.shape == (3, 3, engine.image_size, engine.image_size)
    for i, (state, kp) in enumerate(zip(states, kps)):
        single = engine.render(state, kp).image
        assert (batch[i:i + 1] - single).abs().max().item() <= 1e-5
    # distinct avatars and poses give distinct frames: the batch is not one sample repeated
    assert (batch[0] - batch[1]).abs().max().item() > 1e-3


def test_cpu_backend_batches_too(deterministic_engine):
    from engines.backends.cpu_backend import CpuOptions, build_cpu_engine

    engine, _ = build_cpu_engine(deterministic_engine, options=CpuOptions(channels_last=True), warm_up=False)
    assert engine.takes_batches
    states, kps = _inputs(engine, 2, seed=1)
    batch = render_batch(engine, states, kps).image
    for i in range(2):
        assert (batch[i:i + 1] - engine.render(states[i], kps[i]).image).abs().max().item() <= 1e-5


def test_mismatched_lengths_are_refused(deterministic_engine):
    import pytest

    states, kps = _inputs(deterministic_engine, 2)
    with pytest.raises(ValueError, match="as many states"):
        render_batch(deterministic_engine, states, kps[:1])
