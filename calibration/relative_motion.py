"""Relative motion: express the driving keypoints as motion away from the neutral (initial) pose.

FOMM animates the avatar with the *change* between the calibration frame kp_0 and the current frame kp_t, applied
to the avatar's own keypoints kp_s (FOMM_SPEC.md §8). Without this the avatar would snap to the user's face
geometry (absolute mode), which only looks right when the user's face and the avatar are aligned alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from engines.geometry import inverse_2x2
from engines.keypoints import Keypoints


class DegenerateHullError(ValueError):
    """The points span no area (all collinear or coincident), so a convex hull area is undefined."""


def hull_area(points) -> float:
    """Area of the 2-D convex hull of a [K, 2] point set, in float64 (scipy's `volume` is the area in 2-D)."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"hull_area expects [K, 2] points, got shape {pts.shape}")
    if pts.shape[0] < 3 or not np.all(np.isfinite(pts)):
        raise DegenerateHullError(f"cannot take the hull of {pts.shape[0]} point(s) / non-finite points")
    try:
        area = float(ConvexHull(pts).volume)
    except QhullError as exc:  # Qhull refuses flat (collinear / coincident) inputs
        raise DegenerateHullError(f"keypoints are collinear or coincident: {exc.__class__.__name__}") from None
    if not area > 0.0:
        raise DegenerateHullError("keypoint hull has zero area")
    return area


@dataclass(frozen=True)
class MovementScale:
    """How much to scale the user's keypoint motion so it fits the avatar's face size.

    alpha:      sqrt(hull area of the avatar keypoints) / sqrt(hull area of the neutral keypoints).
    degenerate: True when a hull had no area and alpha fell back to 1.0.
    notice:     human-readable explanation of the fallback (None when not degenerate).
    """

    alpha: float
    degenerate: bool = False
    notice: str | None = None


def _first_element(value) -> np.ndarray:
    """Batch element 0 of a [B, K, 2] value (or a bare [K, 2]); FOMM uses only that element for the scale."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return value[0] if value.ndim == 3 else value


def movement_scale(source_value, initial_value) -> MovementScale:
    """alpha = sqrt(area(hull(source[0]))) / sqrt(area(hull(initial[0]))), with a safe fallback to 1.0."""
    try:
        source_area = hull_area(_first_element(source_value))
    except DegenerateHullError:
        return MovementScale(1.0, True, "The avatar's keypoints span no area, so motion scaling is off "
                                        "(movement scale 1.0); try another avatar image.")
    try:
        initial_area = hull_area(_first_element(initial_value))
    except DegenerateHullError:
        return MovementScale(1.0, True, "The calibration frame's keypoints span no area, so motion scaling is "
                                        "off (movement scale 1.0); face the camera and calibrate again.")
    return MovementScale(float(np.sqrt(source_area) / np.sqrt(initial_area)))


def normalize_kp(kp_source: Keypoints, kp_driving: Keypoints, kp_initial: Keypoints, *,
                 relative_movement: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = True, scale: float | None = None) -> Keypoints:
    """Driving keypoints re-expressed relative to the neutral pose and transplanted onto the avatar (pure).

    v_n = (v_t - v_0) * alpha + v_s          J_n = (J_t @ inv(J_0)) @ J_s   (jacobian not scaled by alpha)

    alpha: `scale` when given (callers cache it: it is constant per avatar + calibration), else computed from the
    hulls when adapt_movement_scale is on (1.0 on a degenerate hull), else 1.0. kp_initial may have batch 1 and
    broadcasts over the driving batch. relative_movement=False is absolute mode: kp_driving comes back unchanged.
    """
    if not relative_movement:
        return Keypoints(kp_driving.value, kp_driving.jacobian)

    if scale is not None:
        alpha = float(scale)
    elif adapt_movement_scale:
        alpha = movement_scale(kp_source.value, kp_initial.value).alpha
    else:
        alpha = 1.0

    value = (kp_driving.value - kp_initial.value) * alpha + kp_source.value
    if relative_jacobian:
        # Closed-form 2x2 inverse instead of torch.inverse keeps the graph exportable (ONNX has no inverse op).
        jacobian = torch.matmul(torch.matmul(kp_driving.jacobian, inverse_2x2(kp_initial.jacobian)),
                                kp_source.jacobian)
    else:
        jacobian = kp_driving.jacobian
    return Keypoints(value, jacobian)
