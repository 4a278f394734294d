"""calibration/face_loss.py: no face for more than a moment -> the avatar glides to rest, and back, without a jump."""
import pytest
import torch

from calibration.face_loss import GLIDE_S, LOST_AFTER_S, FaceLossGlide
from engines.keypoints import Keypoints

FPS = 30.0
REST = Keypoints(torch.zeros(1, 5, 2), torch.eye(2).expand(1, 5, 2, 2).clone())


def driven(level: float) -> Keypoints:
    return Keypoints(torch.full((1, 5, 2), level), torch.eye(2).expand(1, 5, 2, 2) * (1.0 + level))


def run(glide, faces, level=lambda i: 0.5):
    """The value sent on each frame of a 30 fps run with the face present/absent as `faces` says."""
    return [float(glide(driven(level(i)), REST, face, i / FPS).value.mean()) for i, face in enumerate(faces)]


def test_a_face_gone_for_a_moment_glides_to_rest_and_back_without_a_jump():
    glide = FaceLossGlide()
    lost, back = 30, 90
    faces = [True] * lost + [False] * (back - lost) + [True] * 60
    values = run(glide, faces)
    steps = [abs(b - a) for a, b in zip(values, values[1:])]
    biggest = 0.5 * 1.5 / (GLIDE_S * FPS)  # the eased glide's steepest step: 1.5x the average over the glide
    assert max(steps) <= biggest + 1e-6, "no jump in either direction"
    settled = lost + int((LOST_AFTER_S + GLIDE_S) * FPS) + 1
    assert values[:lost + int(LOST_AFTER_S * FPS)] == pytest.approx([0.5] * (lost + int(LOST_AFTER_S * FPS))), \
        "a moment without a face changes nothing"
    assert values[settled:back] == pytest.approx([0.0] * (back - settled)), "at rest: the avatar's own keypoints"
    assert values[-1] == pytest.approx(0.5) and glide.state == "driven", "and back to following the face"


def test_the_state_says_no_face_while_leaving_and_resting():
    glide = FaceLossGlide()
    run(glide, [True] * 5)
    assert not glide.face_lost
    glide(driven(0.5), REST, False, 1.0)
    glide(driven(0.5), REST, False, 1.0 + LOST_AFTER_S + 0.01)
    assert glide.face_lost and glide.state == "leaving"


def test_detector_misses_shorter_than_the_moment_change_nothing():
    glide = FaceLossGlide()
    faces = ([True] * 3 + [False] * 6) * 10  # 0.2 s gaps: a head turn, motion blur
    values = run(glide, faces, level=lambda i: 0.3 + 0.01 * i)
    assert values == pytest.approx([0.3 + 0.01 * i for i in range(len(faces))])
    assert glide.state == "driven"


def test_a_face_back_during_the_glide_turns_it_around_from_where_it_is():
    glide = FaceLossGlide()
    faces = [True] * 10 + [False] * (int(LOST_AFTER_S * FPS) + 5) + [True] * 40
    values = run(glide, faces)
    steps = [abs(b - a) for a, b in zip(values, values[1:])]
    assert min(values) > 0.0, "it had not reached rest"
    assert max(steps) <= 0.5 * 1.5 / (GLIDE_S * FPS) + 1e-6
    assert values[-1] == pytest.approx(0.5)


def test_without_face_detection_the_keypoints_pass_through():
    glide = FaceLossGlide()
    assert run(glide, [None] * 40, level=lambda i: i / 40) == pytest.approx([i / 40 for i in range(40)])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        FaceLossGlide(glide=0)
