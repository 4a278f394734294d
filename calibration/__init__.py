"""Calibration: the neutral pose that all motion is relative to, its persistence, best-frame mode, anti-jitter."""
from .best_frame import BestFrameSelector, LandmarkSource, landmark_distance, normalize_landmarks, similarity
from .neutral_pose import NeutralPose, NotCalibratedError, instructions
from .persistence import LoadResult, default_calibration_path, load_calibration, save_calibration
from .relative_motion import DegenerateHullError, MovementScale, hull_area, movement_scale, normalize_kp
from .smoothing import KeypointSmoother, OneEuroFilter

__all__ = [
    "BestFrameSelector", "LandmarkSource", "landmark_distance", "normalize_landmarks", "similarity",
    "NeutralPose", "NotCalibratedError", "instructions",
    "LoadResult", "default_calibration_path", "load_calibration", "save_calibration",
    "DegenerateHullError", "MovementScale", "hull_area", "movement_scale", "normalize_kp",
    "KeypointSmoother", "OneEuroFilter",
]
