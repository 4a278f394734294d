"""Best-frame mode: pick, as the neutral pose, the webcam frame whose face pose best matches the avatar's.

Relative motion transfers the *difference* from the neutral frame, so the avatar looks most natural when the
neutral frame shows the user in the same pose as the avatar picture (same head turn, mouth and eyes state). Like
the original FOMM demo's best-frame search, frames are compared by their facial landmarks after removing position
and size (centre on the mean, divide by sqrt of the landmark hull area); rotation and expression still count.

Similarity shown to the user (0..100): 100 * exp(-(distance / N) / SIMILARITY_SCALE), where distance is the sum
of squared differences of the N normalised landmarks. 100 = identical pose; with SIMILARITY_SCALE = 0.01 the score
is ~78 when landmarks are off by an RMS 5% of the face size, ~37 at 10%, ~0 beyond 25%.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any, Callable

import numpy as np
import torch

from engines.keypoints import Keypoints

from .relative_motion import DegenerateHullError, hull_area

log = logging.getLogger(__name__)

SIMILARITY_SCALE = 0.01  # mean squared per-landmark distance (in face-size units) at which the score is 100/e


def _as_points(points) -> np.ndarray:
    if isinstance(points, Keypoints):
        points = points.value
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 3 and pts.shape[0] == 1:  # engine keypoints [1, K, 2]
        pts = pts[0]
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"expected [N, 2] landmarks, got shape {pts.shape}")
    return pts[:, :2]


def normalize_landmarks(points) -> np.ndarray:
    """[N, 2] landmarks centred on their mean and divided by sqrt(hull area), i.e. translation and size removed.

    A degenerate set (collinear/coincident, e.g. a failed detection) has no hull area; it is divided by its RMS
    radius instead (or left centred when all points coincide) so it still compares, badly, instead of raising.
    """
    pts = _as_points(points)
    centred = pts - pts.mean(axis=0, keepdims=True)
    try:
        size = math.sqrt(hull_area(centred))
    except DegenerateHullError:
        size = float(np.sqrt((centred ** 2).sum(axis=1).mean()))
    return centred / size if size > 0 else centred


def landmark_distance(a, b) -> float:
    """Sum of squared differences between two normalised landmark sets (0 = same pose up to shift and size)."""
    na, nb = normalize_landmarks(a), normalize_landmarks(b)
    if na.shape != nb.shape:
        raise ValueError(f"landmark sets differ in shape: {na.shape} vs {nb.shape}")
    return float(((na - nb) ** 2).sum())


def similarity(distance: float, num_points: int) -> float:
    """Map a landmark_distance to the 0..100 score shown to the user (see module docstring)."""
    return float(100.0 * math.exp(-(distance / max(num_points, 1)) / SIMILARITY_SCALE))


def pose_match(reference, landmarks) -> float:
    """Similarity 0..100 of a frame's landmarks to the reference's, as best-frame mode scores frames."""
    reference = _as_points(reference)
    return similarity(landmark_distance(reference, landmarks), reference.shape[0])


class BestFrameSelector:
    """Keeps the frame (any payload: image, keypoints, ...) whose landmarks are closest to the reference."""

    def __init__(self, reference_landmarks):
        self._reference = normalize_landmarks(reference_landmarks)
        self.reset()

    def reset(self) -> None:
        self.best_payload: Any = None
        self.best_score: float | None = None  # similarity 0..100 of best_payload, None before any frame
        self.best_distance = math.inf

    def update(self, landmarks, payload) -> tuple[float, bool]:
        """Score one frame; returns (similarity 0..100, whether it is the new best). None landmarks -> (0, False)."""
        if landmarks is None:
            return 0.0, False
        distance = landmark_distance(self._reference, landmarks)
        score = similarity(distance, self._reference.shape[0])
        if distance < self.best_distance:
            self.best_distance = distance
            self.best_score = score
            # Copy: camera/engine buffers may be reused for the next frame.
            self.best_payload = copy.deepcopy(payload)
            return score, True
        return score, False


def face_alignment_weights_present() -> bool:
    """True when face-alignment's 2-D FAN and its SFD face detector weights are already in the torch hub cache.

    Checked by file name so that nothing is downloaded (face-alignment would otherwise fetch them on construction).
    """
    try:
        from face_alignment import api
        from face_alignment.detection.sfd import sfd_detector

        names = [os.path.basename(api.models_urls["2DFAN-4"]), os.path.basename(sfd_detector.models_urls["s3fd"])]
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        return all(os.path.isfile(os.path.join(folder, name)) for name in names)
    except Exception:  # noqa: BLE001 - face-alignment missing or laid out differently: treat as unavailable
        return False


class LandmarkSource:
    """Landmarks for best-frame mode: face-alignment's 68 2-D landmarks if its weights are on disk, else the
    caller's fallback (typically the engine's keypoint detector, returning [K, 2] / [1, K, 2] values or Keypoints).

    Use the same LandmarkSource for the avatar (reference) and the webcam frames: the two backends' landmarks are
    not comparable with each other. Call with an RGB uint8 HxWx3 frame; returns float64 [N, 2] or None (no face).
    """

    def __init__(self, fallback: Callable[[np.ndarray], Any] | None = None, *, device: str = "cpu",
                 use_face_alignment: bool = True, flip_input: bool = False):
        self._fallback = fallback
        self._fa = None
        self.notice: str | None = None
        if use_face_alignment and face_alignment_weights_present():
            try:
                import face_alignment

                kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
                self._fa = face_alignment.FaceAlignment(kind, device=device, flip_input=flip_input, compile=False)
            except Exception as exc:  # noqa: BLE001 - broken weights, wrong version, ...: fall back rather than fail
                self.notice = f"face-alignment unavailable ({exc.__class__.__name__}); using engine keypoints."
                log.info(self.notice)
        if self._fa is None and fallback is None:
            raise ValueError("face-alignment weights are not available offline and no fallback was given")

    @property
    def backend(self) -> str:
        return "face-alignment" if self._fa is not None else "keypoints"

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        if self._fa is not None:
            faces = self._fa.get_landmarks_from_image(frame_rgb)
            if not faces:
                return None
            return np.asarray(faces[0], dtype=np.float64)[:, :2]
        result = self._fallback(frame_rgb)
        return None if result is None else _as_points(result)
