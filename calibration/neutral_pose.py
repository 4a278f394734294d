"""The neutral (reference) pose: the one frame all of the user's motion is measured from.

The live loop owns one NeutralPose. It feeds it the avatar keypoints (set_source), the user's calibration frame
(calibrate, or observe for hands-free auto-calibration) and then turns every driving frame into avatar keypoints
with normalize(). Everything that depends only on the avatar and the calibration frame (alpha) is computed once
here instead of once per frame.
"""
from __future__ import annotations

from engines.keypoints import Keypoints

from .relative_motion import MovementScale, movement_scale, normalize_kp


def instructions(key: str = "c") -> str:
    """What to tell the user before calibrating; `key` is whatever key the live loop binds to calibrate()."""
    return f"Look straight at the camera with a neutral face and press {key.upper()} to calibrate."


class NotCalibratedError(RuntimeError):
    """normalize() was called before the neutral pose (or the avatar keypoints) were known."""


class NeutralPose:
    """Holds kp_initial (the neutral pose), the avatar keypoints and the movement scale derived from both.

    Not thread-safe: the live loop reads keys and renders on one thread.
    """

    instructions = staticmethod(instructions)  # also reachable as NeutralPose.instructions(key)

    def __init__(self, *, relative_jacobian: bool = True, adapt_movement_scale: bool = True,
                 auto_calibrate_frames: int = 0, stability_threshold: float = 0.01):
        if auto_calibrate_frames < 0:
            raise ValueError("auto_calibrate_frames must be >= 0 (0 disables auto-calibration)")
        if stability_threshold <= 0:
            raise ValueError("stability_threshold must be > 0")
        self.relative_jacobian = relative_jacobian
        self.adapt_movement_scale = adapt_movement_scale
        self.auto_calibrate_frames = int(auto_calibrate_frames)
        # Mean |change| of keypoint values between consecutive frames, in normalised units (-1..1 spans the
        # frame), below which the face counts as still. 0.01 is ~1.3 px on the 256 px model input.
        self.stability_threshold = float(stability_threshold)
        self._kp_source: Keypoints | None = None
        self._kp_initial: Keypoints | None = None
        self._scale: MovementScale | None = None
        self._auto_done = False
        self._prev_value = None
        self._still_frames = 0

    # --- state -------------------------------------------------------------------------------------------------
    @property
    def is_calibrated(self) -> bool:
        return self._kp_initial is not None

    @property
    def kp_initial(self) -> Keypoints | None:
        return self._kp_initial

    @property
    def kp_source(self) -> Keypoints | None:
        return self._kp_source

    @property
    def scale(self) -> MovementScale | None:
        """The movement scale, known once both the avatar keypoints and the neutral pose are set."""
        return self._scale

    def reset(self) -> None:
        """Forget the neutral pose (the avatar keypoints stay); auto-calibration, if enabled, may trigger again."""
        self._kp_initial = None
        self._scale = None
        self._auto_done = False
        self._prev_value = None
        self._still_frames = 0

    # --- inputs ------------------------------------------------------------------------------------------------
    def set_source(self, kp_source: Keypoints) -> str | None:
        """New avatar: keep its keypoints and, if already calibrated, recompute alpha for it.

        Returns the degenerate-hull notice when alpha had to fall back to 1.0, else None.
        """
        self._kp_source = kp_source.detach().clone()
        self._update_scale()
        return self._scale.notice if self._scale is not None else None

    def calibrate(self, kp_frame: Keypoints) -> str:
        """Make this frame's keypoints the neutral pose; returns a one-line status message for the user."""
        self._kp_initial = kp_frame.detach().clone()
        self._auto_done = True  # a manual calibration also satisfies auto-calibration
        self._update_scale()
        return self.describe()

    def describe(self) -> str:
        """One-line status of the calibration for the user (what calibrate() returns)."""
        if self._kp_initial is None:
            return "Not calibrated. " + instructions()
        if self._scale is None:
            return "Calibrated: neutral pose set (movement scale follows once an avatar is loaded)."
        message = f"Calibrated: neutral pose set (movement scale {self._scale.alpha:.3f})."
        if self._scale.notice:
            message += " " + self._scale.notice
        return message

    def observe(self, kp_frame: Keypoints | None) -> bool:
        """Feed one driving frame for auto-calibration; True when this frame just became the neutral pose.

        Auto-calibration fires once (until reset()) after `auto_calibrate_frames` consecutive frames in which the
        mean absolute frame-to-frame change of the keypoint values stayed below `stability_threshold`; the
        frame that completes the still run becomes the neutral pose. None (no keypoints) breaks the run.
        """
        if self.auto_calibrate_frames <= 0 or self._auto_done or self.is_calibrated:
            return False
        if kp_frame is None:
            self._prev_value, self._still_frames = None, 0
            return False
        value = kp_frame.value.detach()
        if self._prev_value is None or self._prev_value.shape != value.shape:
            self._still_frames = 1
        else:
            change = float((value - self._prev_value).abs().mean())
            self._still_frames = self._still_frames + 1 if change < self.stability_threshold else 1
        self._prev_value = value.clone()
        if self._still_frames >= self.auto_calibrate_frames:
            self.calibrate(kp_frame)
            return True
        return False

    # --- per frame ---------------------------------------------------------------------------------------------
    def normalize(self, kp_driving: Keypoints) -> Keypoints:
        """The driving keypoints as avatar keypoints (FOMM relative mode, see relative_motion.normalize_kp)."""
        kp_source, kp_initial, scale = self._kp_source, self._kp_initial, self._scale
        if kp_initial is None:
            raise NotCalibratedError("No neutral pose yet: " + instructions())
        if kp_source is None:
            raise NotCalibratedError("No avatar keypoints yet: call set_source() with the avatar's keypoints "
                                     "before normalize().")
        # A saved calibration loads on the CPU in float32 while the engine may run on a GPU / in half
        # precision: follow the driving keypoints once, and keep the converted copies for later frames.
        like = kp_driving.value
        if kp_initial.value.device != like.device or kp_initial.value.dtype != like.dtype:
            kp_initial = self._kp_initial = kp_initial.to(device=like.device, dtype=like.dtype)
        if kp_source.value.device != like.device or kp_source.value.dtype != like.dtype:
            kp_source = self._kp_source = kp_source.to(device=like.device, dtype=like.dtype)
        return normalize_kp(kp_source, kp_driving, kp_initial, relative_movement=True,
                            relative_jacobian=self.relative_jacobian,
                            adapt_movement_scale=self.adapt_movement_scale, scale=scale.alpha)

    def _update_scale(self) -> None:
        # alpha depends only on the avatar and the neutral pose, so it is computed here, never per frame.
        if self._kp_source is None or self._kp_initial is None:
            self._scale = None
        elif self.adapt_movement_scale:
            self._scale = movement_scale(self._kp_source.value, self._kp_initial.value)
        else:
            self._scale = MovementScale(1.0)
