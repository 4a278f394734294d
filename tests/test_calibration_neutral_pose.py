"""NeutralPose: the live loop's calibration state machine."""
import pytest
import torch

from calibration.neutral_pose import NeutralPose, NotCalibratedError, instructions
from calibration.relative_motion import movement_scale, normalize_kp
from engines.keypoints import Keypoints

K = 10


def _kp(seed, spread=0.5, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    value = (torch.rand(1, K, 2, generator=g) * 2 - 1) * spread + offset
    jacobian = torch.eye(2) + 0.1 * torch.randn(1, K, 2, 2, generator=g)
    return Keypoints(value, jacobian)


def _assert_kp_equal(a, b):
    torch.testing.assert_close(a.value, b.value, rtol=0, atol=0)
    torch.testing.assert_close(a.jacobian, b.jacobian, rtol=0, atol=0)


def test_instructions_text_and_key():
    assert instructions() == "Look straight at the camera with a neutral face and press C to calibrate."
    assert "press F5 to calibrate" in instructions("F5")
    assert NeutralPose.instructions("c") == instructions()


def test_calibrate_then_normalize_equals_normalize_kp():
    source, initial, driving = _kp(1, 0.6), _kp(2, 0.4), _kp(3, 0.4)
    pose = NeutralPose()
    pose.set_source(source)
    assert not pose.is_calibrated and pose.scale is None and pose.kp_initial is None
    message = pose.calibrate(initial)
    assert pose.is_calibrated and "Calibrated" in message
    expected_alpha = movement_scale(source.value, initial.value).alpha
    assert pose.scale.alpha == pytest.approx(expected_alpha) and f"{expected_alpha:.3f}" in message
    _assert_kp_equal(pose.kp_initial, initial)
    _assert_kp_equal(pose.normalize(driving), normalize_kp(source, driving, initial))


def test_calibration_is_a_snapshot():
    source, initial = _kp(1), _kp(2)
    pose = NeutralPose()
    pose.set_source(source)
    pose.calibrate(initial)
    initial.value.add_(1.0)  # the caller reuses its buffer: the neutral pose must not move
    assert not torch.equal(pose.kp_initial.value, initial.value)


def test_saved_calibration_follows_the_driving_dtype_and_device():
    source, initial, driving = _kp(1, 0.6), _kp(2, 0.4), _kp(3, 0.4)
    pose = NeutralPose()
    pose.set_source(source)
    pose.calibrate(initial.to(torch.float64))  # e.g. loaded from disk in another precision
    out = pose.normalize(driving)
    assert out.value.dtype == torch.float32 and pose.kp_initial.value.dtype == torch.float32
    torch.testing.assert_close(out.value, normalize_kp(source, driving, initial).value)


def test_switches_are_passed_through():
    source, initial, driving = _kp(1, 0.6), _kp(2, 0.4), _kp(3, 0.4)
    pose = NeutralPose(relative_jacobian=False, adapt_movement_scale=False)
    pose.set_source(source)
    pose.calibrate(initial)
    assert pose.scale.alpha == 1.0
    _assert_kp_equal(pose.normalize(driving), normalize_kp(source, driving, initial, relative_jacobian=False,
                                                           adapt_movement_scale=False))


def test_normalize_before_calibration_raises_clear_error():
    pose = NeutralPose()
    pose.set_source(_kp(1))
    with pytest.raises(NotCalibratedError, match="press C to calibrate"):
        pose.normalize(_kp(3))
    # Calibrated but no avatar yet: also a clear error, and alpha follows once the avatar arrives.
    pose = NeutralPose()
    assert "avatar" in pose.calibrate(_kp(2))
    assert pose.scale is None
    with pytest.raises(NotCalibratedError, match="set_source"):
        pose.normalize(_kp(3))
    pose.set_source(_kp(1))
    assert pose.scale is not None


def test_reset_forgets_neutral_pose_but_keeps_avatar():
    pose = NeutralPose()
    pose.set_source(_kp(1))
    pose.calibrate(_kp(2))
    pose.reset()
    assert not pose.is_calibrated and pose.kp_initial is None and pose.scale is None
    assert pose.kp_source is not None
    with pytest.raises(NotCalibratedError):
        pose.normalize(_kp(3))


def test_set_source_after_calibration_updates_alpha():
    initial = _kp(2, 0.4)
    pose = NeutralPose()
    pose.set_source(_kp(1, 0.6))
    pose.calibrate(initial)
    alpha_before = pose.scale.alpha
    bigger = Keypoints(pose.kp_source.value * 2, pose.kp_source.jacobian)  # twice the size -> twice alpha
    pose.set_source(bigger)
    assert pose.scale.alpha == pytest.approx(2 * alpha_before, rel=1e-6)
    driving = _kp(3, 0.4)
    _assert_kp_equal(pose.normalize(driving), normalize_kp(bigger, driving, initial))


def test_degenerate_hull_notice_in_calibration_message():
    pose = NeutralPose()
    pose.set_source(_kp(1))
    line = torch.stack([torch.linspace(-0.5, 0.5, K), torch.zeros(K)], dim=-1)[None]
    flat = Keypoints(line, torch.eye(2).repeat(1, K, 1, 1))
    message = pose.calibrate(flat)
    assert pose.scale.degenerate and pose.scale.alpha == 1.0
    assert pose.scale.notice in message
    # A degenerate avatar reports it from set_source too.
    assert NeutralPose().set_source(flat) is None  # not calibrated yet: nothing to report
    pose2 = NeutralPose()
    pose2.calibrate(_kp(2))
    assert "avatar" in pose2.set_source(flat)


def _still_then(seed, n, noise=0.002):
    """n frames of a still face with small jitter (mean abs change ~noise, below the 0.01 threshold)."""
    base = _kp(seed)
    g = torch.Generator().manual_seed(seed + 100)
    return [Keypoints(base.value + noise * torch.randn(base.value.shape, generator=g), base.jacobian)
            for _ in range(n)]


def test_auto_calibration_after_n_stable_frames_not_before():
    pose = NeutralPose(auto_calibrate_frames=5)
    pose.set_source(_kp(1))
    frames = _still_then(2, 8)
    results = [pose.observe(f) for f in frames[:5]]
    assert results == [False, False, False, False, True]
    assert pose.is_calibrated
    _assert_kp_equal(pose.kp_initial, frames[4])  # the frame that completed the still run
    assert [pose.observe(f) for f in frames[5:]] == [False] * 3  # fires once
    pose.reset()
    assert [pose.observe(f) for f in _still_then(3, 5)] == [False] * 4 + [True]


def test_no_auto_calibration_while_moving():
    pose = NeutralPose(auto_calibrate_frames=5, stability_threshold=0.01)
    pose.set_source(_kp(1))
    base = _kp(2)
    for i in range(30):  # a steady head turn: 0.02 per frame > threshold
        assert not pose.observe(Keypoints(base.value + 0.02 * i, base.jacobian))
    assert not pose.is_calibrated
    # Motion interrupting a still run restarts the count.
    still = _still_then(4, 10)
    assert [pose.observe(f) for f in still[:3]] == [False] * 3
    assert not pose.observe(Keypoints(still[3].value + 0.3, still[3].jacobian))  # jump
    assert not pose.observe(None)  # no face also breaks the run
    assert [pose.observe(f) for f in still[4:9]] == [False] * 4 + [True]


def test_auto_calibration_disabled_and_after_manual():
    pose = NeutralPose()  # auto_calibrate_frames=0
    assert not any(pose.observe(f) for f in _still_then(2, 20))
    assert not pose.is_calibrated
    pose = NeutralPose(auto_calibrate_frames=3)
    manual = _kp(5)
    pose.calibrate(manual)
    assert not any(pose.observe(f) for f in _still_then(2, 10))
    _assert_kp_equal(pose.kp_initial, manual)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        NeutralPose(auto_calibrate_frames=-1)
    with pytest.raises(ValueError):
        NeutralPose(stability_threshold=0)
