"""Best-frame mode: landmark normalisation, similarity score, selection, and the offline landmark fallback."""
import math

import numpy as np
import pytest
import torch

from calibration import best_frame
from calibration.best_frame import (BestFrameSelector, LandmarkSource, landmark_distance, normalize_landmarks,
                                    similarity)
from calibration.relative_motion import hull_area
from engines.keypoints import Keypoints


def _face(n=68, seed=0):
    """A face-like landmark cloud: points on an ellipse plus some inside (eyes/nose/mouth)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n // 2, endpoint=False)
    outline = np.stack([80 * np.cos(t), 100 * np.sin(t)], axis=1)
    inner = rng.uniform(-50, 50, size=(n - n // 2, 2))
    return np.concatenate([outline, inner]) + [320, 240]


def _rotate(points, degrees):
    a = math.radians(degrees)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = points.mean(axis=0)
    return (points - c) @ r.T + c


def test_normalize_landmarks_removes_translation_and_scale():
    face = _face()
    n = normalize_landmarks(face)
    assert np.allclose(n.mean(axis=0), 0, atol=1e-12)
    assert hull_area(n) == pytest.approx(1.0)
    assert np.allclose(normalize_landmarks(face * 3.7 + [-100, 55]), n, atol=1e-12)
    assert landmark_distance(face, face * 0.5 + 10) == pytest.approx(0, abs=1e-20)
    # Accepts torch tensors and [1, K, 2] engine keypoints too.
    assert np.allclose(normalize_landmarks(torch.tensor(face)[None]), n)


def test_normalize_landmarks_degenerate_is_guarded():
    line = np.stack([np.linspace(0, 10, 20), np.linspace(0, 5, 20)], axis=1)
    n = normalize_landmarks(line)
    assert np.all(np.isfinite(n)) and np.allclose(n.mean(axis=0), 0)
    assert np.allclose((n ** 2).sum(axis=1).mean(), 1.0)  # RMS radius 1 instead of hull area 1
    same = normalize_landmarks(np.full((10, 2), 3.0))
    assert np.all(same == 0)


def test_similarity_mapping():
    assert similarity(0.0, 68) == 100.0
    # RMS per-landmark offset of 10% of face size -> mean squared 0.01 -> 100/e.
    assert similarity(68 * 0.01, 68) == pytest.approx(100 / math.e)
    scores = [similarity(d, 10) for d in (0, 0.01, 0.1, 1, 10)]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 100 for s in scores)


def test_translated_scaled_copy_wins_over_rotated_and_noisy():
    reference = _face(seed=1)
    rng = np.random.default_rng(2)
    frames = {
        "rotated 15 deg": _rotate(reference, 15),
        "noisy": reference + rng.normal(0, 6, reference.shape),
        "shifted+scaled": reference * 1.6 - [150, 40],
        "rotated 5 deg + scaled": _rotate(reference, 5) * 0.8,
        "other face": _face(seed=9),
    }
    selector = BestFrameSelector(reference)
    assert selector.best_payload is None and selector.best_score is None
    results = {name: selector.update(points, payload=name) for name, points in frames.items()}
    assert selector.best_payload == "shifted+scaled"
    assert selector.best_score == pytest.approx(100.0)
    assert results["shifted+scaled"] == (pytest.approx(100.0), True)
    assert results["rotated 5 deg + scaled"][0] > results["rotated 15 deg"][0] > results["other face"][0]
    assert results["rotated 15 deg"][1] is True  # the first frame is the best so far
    assert results["noisy"][1] is True  # mild noise beats a 15 degree rotation
    assert results["rotated 5 deg + scaled"][1] is False  # came after the exact match


def test_selection_over_a_sequence_and_reset():
    reference = _face(seed=3)
    angles = [20, 12, 6, 2, 9, 15]  # the user turns towards the avatar's pose, then away again
    selector = BestFrameSelector(reference)
    new_best = [selector.update(_rotate(reference, a) + [5 * i, 0], payload={"frame": i})[1]
                for i, a in enumerate(angles)]
    assert new_best == [True, True, True, True, False, False]
    assert selector.best_payload == {"frame": 3}
    assert 0 < selector.best_score < 100
    assert selector.update(None, payload="no face") == (0.0, False)
    selector.reset()
    assert selector.best_payload is None and selector.best_score is None


def test_best_payload_is_a_copy():
    reference = _face()
    selector = BestFrameSelector(reference)
    frame = np.zeros((4, 4, 3), np.uint8)
    selector.update(reference, payload=frame)
    frame[:] = 255  # the camera reuses its buffer
    assert selector.best_payload.max() == 0


def test_landmark_source_falls_back_to_engine_keypoints(monkeypatch):
    monkeypatch.setattr(best_frame, "face_alignment_weights_present", lambda: False)
    calls = []

    def engine_keypoints(frame):
        calls.append(frame.shape)
        return Keypoints(torch.tensor(_face(10), dtype=torch.float32)[None], torch.eye(2).repeat(1, 10, 1, 1))

    source = LandmarkSource(engine_keypoints)
    assert source.backend == "keypoints"
    points = source(np.zeros((256, 256, 3), np.uint8))
    assert points.shape == (10, 2) and points.dtype == np.float64 and calls == [(256, 256, 3)]
    assert LandmarkSource(lambda f: None)(np.zeros((8, 8, 3), np.uint8)) is None
    assert LandmarkSource(lambda f: np.ones((1, 5, 2)))(None).shape == (5, 2)
    with pytest.raises(ValueError):
        LandmarkSource(None)


def test_landmark_source_survives_face_alignment_failure(monkeypatch):
    # Weights "present" but construction fails (e.g. corrupt file): fall back with a notice, no exception.
    monkeypatch.setattr(best_frame, "face_alignment_weights_present", lambda: True)
    import face_alignment

    def broken(*args, **kwargs):
        raise RuntimeError("corrupt weights")
    monkeypatch.setattr(face_alignment, "FaceAlignment", broken)
    source = LandmarkSource(lambda f: _face(10))
    assert source.backend == "keypoints" and "face-alignment" in source.notice


def test_weights_check_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert best_frame.face_alignment_weights_present() is False
    (tmp_path / "checkpoints").mkdir()
    for name in ("2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    assert best_frame.face_alignment_weights_present() is True
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2DFAN4-11f355bf06.pth.tar",
                                                                         "s3fd-619a316812.pth"]
