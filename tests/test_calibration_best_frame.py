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


# --- loading the landmark model off the frame loop ----------------------------------------------------------------
def _gated_factory(gate, result="keypoints"):
    """A landmark source that takes as long as the test says (face-alignment takes seconds to load)."""
    import threading

    started = threading.Event()

    def factory():
        started.set()
        assert gate.wait(30), "the test never let the landmarks load"
        if isinstance(result, Exception):
            raise result
        return None if result == "keypoints" else result
    factory.started = started
    return factory


def test_pressing_b_loads_the_landmarks_in_the_background_while_frames_keep_coming():
    import threading
    import time

    from tests.test_live_loop import ScriptedKeys, frames, make_pipeline
    gate = threading.Event()
    factory = _gated_factory(gate)
    p = make_pipeline(keys=ScriptedKeys({0: ["b"]}), landmarks_factory=factory)
    feed = frames([200, 150, 100, 160, 60, 40])
    p.poll_keys()
    start = time.monotonic()
    for frame in feed[:3]:  # the model is still loading: frames go out, the avatar at rest
        p.step(frame)
    assert time.monotonic() - start < 10 and factory.started.is_set()
    assert p.stats.frames == 3 and p.stats.calibrations == 0
    assert "loading the face landmarks" in p.status
    gate.set()
    p.calibration._loading.wait(10)
    for frame in feed[3:]:
        p.step(frame)
    assert p.calibration.selector is not None and p.stats.calibrations >= 1  # 160, then 60 and 40 came closer
    assert any("best-frame mode ready" in m for m in p.messages), p.messages
    assert "loading" not in p.status


def test_a_failed_landmark_load_falls_back_to_the_model_keypoints_with_a_notice():
    import threading

    from tests.test_live_loop import frames, make_pipeline
    gate = threading.Event()
    gate.set()
    p = make_pipeline(landmarks_factory=_gated_factory(gate, RuntimeError("no weights offline")))
    p.handle_keys(["b"])
    p.calibration._loading.wait(10)
    for frame in frames([200, 100]):
        p.step(frame)
    assert p.calibration.selector is not None and p.stats.calibrations >= 1
    assert any("notice: best-frame landmarks unavailable" in m and "no weights offline" in m for m in p.messages)


def test_b_again_while_loading_turns_the_mode_off():
    import threading

    from tests.test_live_loop import frames, make_pipeline
    gate = threading.Event()
    p = make_pipeline(landmarks_factory=_gated_factory(gate))
    p.handle_keys(["b"])
    p.step(frames([200])[0])
    p.handle_keys(["b"])
    assert not p.calibration.best_frame and p.calibration.selector is None
    gate.set()


def test_an_offline_render_waits_for_the_landmarks_before_its_first_frame():
    import threading

    from live.pipeline.loop import PipelineOptions
    from tests.test_live_loop import make_pipeline
    gate = threading.Event()
    threading.Timer(0.3, gate.set).start()
    p = make_pipeline(landmarks_factory=_gated_factory(gate), landmarks_in_background=False,
                      options=PipelineOptions(best_frame=True))
    assert gate.is_set() and p.calibration.selector is not None  # built before any frame: deterministic output
