"""Face crop: tracking on a real face clip, steadiness, border handling and the zoom/pan/reset maths."""

import cv2
import numpy as np
import pytest

from tests.conftest import carphone_path
from live.pipeline.crop import (CropBox, FaceTracker, HaarFaceDetector, TrackerSettings, centred_box, crop_square,
                                fit_box)




def read_frames(n: int, start: int = 0) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(carphone_path()))
    frames = []
    try:
        index = 0
        while len(frames) < n:
            ok, frame = cap.read()
            if not ok:
                break
            if index >= start:
                frames.append(frame)
            index += 1
    finally:
        cap.release()
    assert len(frames) == n, "could not decode the carphone clip"
    return frames


class ScriptedDetector:
    """Stands in for the cascade: returns the given face boxes frame after frame."""

    def __init__(self, faces_per_call):
        self.faces = list(faces_per_call)
        self.calls = 0

    def __call__(self, frame, near=None):
        self.near = near
        result = self.faces[min(self.calls, len(self.faces) - 1)]
        self.calls += 1
        return result


def test_haar_finds_the_face_in_the_real_clip():
    frame = read_frames(1)[0]
    faces = HaarFaceDetector()(frame)
    assert len(faces) == 1
    x, y, w, h = faces[0]
    # the face sits right of centre in the upper half of the 176x144 frame
    assert 40 < x + w / 2 < 130 and 30 < y + h / 2 < 90 and 40 < w < 90


def test_a_face_seen_a_moment_ago_is_found_in_its_window_and_a_moved_one_in_the_whole_frame():
    from skimage.data import astronaut

    frame = np.full((720, 1280, 3), 70, np.uint8)
    head = np.ascontiguousarray(astronaut()[0:320, 100:420, ::-1])  # her head, as large as a webcam shows one
    face_photo = cv2.resize(head, (600, 600), interpolation=cv2.INTER_CUBIC)
    frame[60:660, 340:940] = face_photo
    detector = HaarFaceDetector()
    [whole] = detector(frame)
    [near] = detector(frame, near=whole)  # the window around it, at sizes around its own
    assert max(abs(a - b) for a, b in zip(near, whole)) < 0.1 * whole[2], (near, whole)
    moved = np.full_like(frame, 70)
    moved[60:660, 0:600] = face_photo  # 340 px to the left: out of the old window
    [found] = detector(moved, near=whole)
    assert found[0] + found[2] / 2 < 600 and abs(found[2] - whole[2]) < 0.2 * whole[2]
    assert detector(np.full_like(frame, 70), near=whole) == []  # gone: the whole frame was searched too


def test_the_tracker_looks_near_the_face_it_follows():
    detector = ScriptedDetector([[(270, 190, 100, 100)]])
    tracker = FaceTracker(TrackerSettings(detect_every=1), detector=detector)
    frame = np.zeros((480, 640, 3), np.uint8)
    tracker.update(frame)
    assert detector.near is None  # nothing seen yet: the whole frame
    tracker.update(frame)
    assert detector.near == (270, 190, 100, 100)
    tracker.reset()
    tracker.update(frame)
    assert detector.near is None


def test_tracker_box_contains_the_face_and_follows_it():
    frames = read_frames(40)
    tracker = FaceTracker(TrackerSettings(detect_every=1))
    detector = HaarFaceDetector()
    for frame in frames:
        box = tracker.update(frame)
        faces = detector(frame)
        if faces:
            x, y, w, h = faces[0]
            x0, y0, x1, y1 = box.corners()
            assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1, "face must lie inside the crop"
    assert tracker.face_found
    crop, _ = tracker.crop(frames[-1])
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8


def test_tracker_is_steady_on_detector_jitter():
    # a face that wobbles by +-2 px around a fixed spot must not move the box at all (dead-zone)
    rng = np.random.default_rng(0)
    faces = [[(300 + rng.integers(-2, 3), 200 + rng.integers(-2, 3), 100, 100)] for _ in range(60)]
    tracker = FaceTracker(TrackerSettings(detect_every=1), detector=ScriptedDetector(faces))
    frame = np.zeros((480, 640, 3), np.uint8)
    boxes = [tracker.update(frame) for _ in range(60)]
    centres = np.array([(b.cx, b.cy, b.size) for b in boxes[1:]])
    assert np.ptp(centres, axis=0).max() == 0.0


def test_tracker_follows_a_real_move_smoothly_and_keeps_the_box_when_the_face_is_lost():
    faces = [[(100, 100, 100, 100)]] * 5 + [[(300, 100, 100, 100)]] * 30 + [[]] * 10
    tracker = FaceTracker(TrackerSettings(detect_every=1, scale=2.0), detector=ScriptedDetector(faces))
    frame = np.zeros((480, 640, 3), np.uint8)
    xs = [tracker.update(frame).cx for _ in range(45)]
    assert xs[0] == 150.0  # snapped to the first face: centre of (100..200)
    steps = np.diff(xs[4:12])
    assert np.all(steps > 0) and steps.max() < 200 * 0.5, "moves towards the new face gradually, not in a jump"
    assert xs[34] == 350.0  # converged (and settled exactly) on the new face
    assert xs[-1] == xs[34], "no face found: keep the last box"
    assert not tracker.face_found


def test_no_face_ever_gives_the_centred_square():
    tracker = FaceTracker(detector=ScriptedDetector([[]]))
    box = tracker.update(np.zeros((480, 640, 3), np.uint8))
    assert (box.cx, box.cy, box.size) == (320.0, 240.0, 480.0)


def test_detector_runs_every_nth_frame():
    detector = ScriptedDetector([[(100, 100, 50, 50)]])
    tracker = FaceTracker(TrackerSettings(detect_every=3), detector=detector)
    frame = np.zeros((240, 320, 3), np.uint8)
    for _ in range(9):
        tracker.update(frame)
    assert detector.calls == 3


def test_zoom_pan_reset_maths():
    tracker = FaceTracker(TrackerSettings(zoom_step=1.25, pan_step=0.1), tracking=False)
    frame = np.zeros((480, 640, 3), np.uint8)
    assert tracker.update(frame) == CropBox(320.0, 240.0, 480.0)
    tracker.zoom_in()
    tracker.zoom_in()
    box = tracker.update(frame)
    assert box.size == pytest.approx(480 / 1.25 ** 2)
    tracker.pan(1, 0)  # right by 10 % of the (zoomed) side
    tracker.pan(0, -2)  # up by 20 %
    box = tracker.update(frame)
    assert box.cx == pytest.approx(320 + 0.1 * 307.2)
    assert box.cy == pytest.approx(240 - 0.2 * 307.2)
    tracker.zoom_out()
    assert tracker.update(frame).size == pytest.approx(480 / 1.25)
    tracker.reset()
    assert tracker.update(frame) == CropBox(320.0, 240.0, 480.0)


def test_zoom_and_pan_apply_on_top_of_tracking():
    tracker = FaceTracker(TrackerSettings(scale=2.0, zoom_step=2.0, pan_step=0.25),
                          detector=ScriptedDetector([[(270, 190, 100, 100)]]))
    frame = np.zeros((480, 640, 3), np.uint8)
    assert tracker.update(frame) == CropBox(320.0, 240.0, 200.0)
    tracker.zoom_in()
    tracker.pan(-1, 1)
    assert tracker.update(frame) == CropBox(320.0 - 25.0, 240.0 + 25.0, 100.0)


def test_toggle_tracking_switches_to_the_manual_box():
    tracker = FaceTracker(detector=ScriptedDetector([[(0, 0, 100, 100)]]))
    frame = np.zeros((480, 640, 3), np.uint8)
    assert tracker.update(frame).cx < 320
    assert tracker.toggle_tracking() is False
    assert tracker.update(frame) == CropBox(320.0, 240.0, 480.0)


def test_fit_box_shifts_inside_and_limits_size():
    assert fit_box(CropBox(10, 10, 100), 640, 480) == CropBox(50, 50, 100)
    assert fit_box(CropBox(630, 470, 100), 640, 480) == CropBox(590, 430, 100)
    big = fit_box(CropBox(0, 0, 5000), 640, 480)
    assert big == CropBox(320, 240, 640)  # wider than high: centred vertically, padded above/below
    assert fit_box(CropBox(320, 240, 1), 640, 480).size == 16


def test_crop_square_pads_outside_the_frame_with_edge_pixels():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :100] = (255, 0, 0)
    frame[:, 100:] = (0, 0, 255)
    crop = crop_square(frame, CropBox(100, 50, 200), out_size=64)
    assert crop.shape == (64, 64, 3)
    # left half blue-ish channel 0, right half channel 2, all the way up to the padded rows
    assert crop[0, 5, 0] == 255 and crop[-1, -5, 2] == 255
    assert crop_square(frame, centred_box(200, 100), out_size=32).shape == (32, 32, 3)


def test_crop_square_keeps_channel_order_and_exact_content():
    frame = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    crop = crop_square(frame, CropBox(32, 32, 64), out_size=64)
    assert np.array_equal(crop, frame)


def test_frame_size_change_resets_tracking():
    tracker = FaceTracker(detector=ScriptedDetector([[(0, 0, 50, 50)], []]))
    tracker.update(np.zeros((480, 640, 3), np.uint8))
    box = tracker.update(np.zeros((240, 320, 3), np.uint8))
    assert box == CropBox(160.0, 120.0, 240.0)
