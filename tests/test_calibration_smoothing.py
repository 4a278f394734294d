"""One-Euro anti-jitter filter: quiets a still face, follows real head motion with bounded lag."""
import numpy as np
import pytest
import torch

from calibration.smoothing import KeypointSmoother, OneEuroFilter
from engines.keypoints import Keypoints

FPS = 30
NOISE = 0.003  # keypoint jitter, normalised units (~0.4 px on the 256 px model input)


def _run(filt, samples, times):
    return np.stack([filt(x, t) for x, t in zip(samples, times)])


def _times(n):
    return np.arange(n) / FPS


def test_still_sequence_jitter_drops_at_least_4x():
    rng = np.random.default_rng(0)
    raw = 0.3 + rng.normal(0, NOISE, size=(300, 10, 2))
    out = _run(OneEuroFilter(), raw, _times(300))
    raw_var = np.var(np.diff(raw[30:], axis=0))
    out_var = np.var(np.diff(out[30:], axis=0))
    assert out_var * 4 < raw_var, (raw_var, out_var)
    assert abs(out[30:].mean() - 0.3) < 1e-3  # no bias


def test_ramp_is_followed_with_bounded_lag():
    # A head turn at 0.5 normalised units/s (a quarter of the frame width per second) plus jitter.
    t = _times(150)
    truth = 0.5 * t[:, None, None] * np.ones((1, 10, 2)) - 0.4
    noisy = truth + np.random.default_rng(1).normal(0, NOISE, truth.shape)
    # Noise-free: steady-state lag of the default filter stays below 0.01 (~1.3 px) after 0.5 s.
    assert np.abs(_run(OneEuroFilter(), truth, t) - truth)[15:].max() < 0.01
    assert np.abs(_run(OneEuroFilter(), noisy, t) - truth)[15:].max() < 0.02
    # The speed term matters: without it (beta=0) the same filter lags far more.
    assert np.abs(_run(OneEuroFilter(beta=0.0), truth, t) - truth)[15:].max() > 0.05


def test_sinusoid_head_motion_is_followed():
    # A 1 Hz nod of amplitude 0.15 (peak speed ~0.94 units/s), 30 fps, with jitter.
    t = _times(240)
    truth = 0.15 * np.sin(2 * np.pi * 1.0 * t)[:, None, None] * np.ones((1, 10, 2))
    noisy = truth + np.random.default_rng(2).normal(0, NOISE, truth.shape)
    err = np.abs(_run(OneEuroFilter(), noisy, t) - truth)[30:].max()
    assert err < 0.04, err  # < ~27% of the amplitude at the fastest point; typically ~0.03


def test_first_sample_passes_through_and_reset():
    f = OneEuroFilter()
    x = np.array([1.0, -2.0])
    assert np.array_equal(f(x, 0.0), x)
    f(np.array([5.0, 5.0]), 1 / FPS)
    f.reset()
    assert np.array_equal(f(x, 10.0), x)


def test_repeated_timestamp_and_shape_change():
    f = OneEuroFilter()
    f(np.zeros(3), 0.0)
    a = f(np.ones(3), 1 / FPS)
    assert np.array_equal(f(np.full(3, 9.0), 1 / FPS), a)  # dt = 0: estimate unchanged
    assert np.array_equal(f(np.ones(5), 2 / FPS), np.ones(5))  # new shape restarts the filter


def test_torch_and_float_inputs_keep_their_type():
    f = OneEuroFilter()
    out = [f(torch.full((1, 10, 2), float(i % 2)), i / FPS) for i in range(5)]
    assert all(isinstance(o, torch.Tensor) and o.dtype == torch.float32 for o in out)
    g = OneEuroFilter()
    assert isinstance(g(1.0, 0.0), float) and 0.0 < g(0.0, 1 / FPS) < 1.0


def test_output_does_not_alias_state():
    f = OneEuroFilter()
    y = f(np.zeros(2), 0.0)
    y += 100
    assert np.all(f(np.zeros(2), 1 / FPS) == 0)


def test_invalid_parameters():
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0)
    with pytest.raises(ValueError):
        OneEuroFilter(beta=-1)


def _noisy_kp(rng, n):
    v0 = torch.rand(1, 10, 2) - 0.5
    for _ in range(n):
        yield Keypoints(v0 + torch.tensor(rng.normal(0, NOISE, (1, 10, 2)), dtype=torch.float32),
                        torch.eye(2) + torch.tensor(rng.normal(0, NOISE, (1, 10, 2, 2)), dtype=torch.float32))


def test_keypoint_smoother_filters_value_and_jacobian():
    rng = np.random.default_rng(3)
    frames = list(_noisy_kp(rng, 200))
    smoother = KeypointSmoother()
    out = [smoother(kp, i / FPS) for i, kp in enumerate(frames)]
    for field in ("value", "jacobian"):
        raw = torch.stack([getattr(k, field) for k in frames]).numpy()
        smooth = torch.stack([getattr(k, field) for k in out]).numpy()
        assert np.var(np.diff(smooth[30:], axis=0)) * 4 < np.var(np.diff(raw[30:], axis=0))
    smoother.reset()
    first = smoother(frames[5], 100.0)
    assert torch.equal(first.value, frames[5].value) and torch.equal(first.jacobian, frames[5].jacobian)


def test_keypoint_smoother_disabled_is_identity():
    rng = np.random.default_rng(4)
    smoother = KeypointSmoother(enabled=False)
    for i, kp in enumerate(_noisy_kp(rng, 10)):
        out = smoother(kp, i / FPS)
        assert torch.equal(out.value, kp.value) and torch.equal(out.jacobian, kp.jacobian)
