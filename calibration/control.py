"""When the neutral pose is taken, kept and forgotten: the live loop's calibration policy in one place.

The controller owns everything that decides which frame is the neutral pose (a key press, the first frame of an
offline render, auto-calibration once the user holds still, best-frame mode), the saved calibration file, and the
keypoint smoother's history (reset whenever the driving keypoints jump for reasons other than motion: a new
avatar, the mirror toggled, a calibration asked for or forgotten). Per frame, `neutralise` turns the smoothed
driving keypoints into avatar keypoints, or returns None while there is nothing to measure motion from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from calibration.best_frame import BestFrameSelector, pose_match
from calibration.neutral_pose import NeutralPose, instructions
from calibration.persistence import load_calibration, save_calibration
from engines.keypoints import Keypoints


class CalibrationController:
    def __init__(self, neutral: NeutralPose, *, config_hash: str, smoother=None, path: Path | None = None,
                 camera_id: str = "camera", landmarks_factory: Callable[[], object] | None = None,
                 absolute: bool = False, notify: Callable[[str], None] = print,
                 log: Callable[[str], None] = print):
        self.neutral = neutral
        self.smoother = smoother
        self.config_hash = config_hash
        self.path = Path(path) if path is not None else None
        self.camera_id = camera_id
        # absolute: the driving keypoints are used as they are (FOMM's non-relative mode), no neutral pose needed
        self.absolute = absolute
        self.notify, self.log = notify, log
        # () -> calibration.LandmarkSource for best-frame mode, built on first use; None: compare engine keypoints
        self._landmarks_factory = landmarks_factory
        self._landmarks = None
        self.pending = False                  # calibrate on the next frame (key C, or the first offline frame)
        self.selector: BestFrameSelector | None = None
        self._selector_fa = False             # the selector compares face-alignment landmarks, not engine kp
        self.best_score: float | None = None  # match of the latest frame in best-frame mode
        self.measure_match = False            # score every frame against the avatar (the framing guide)
        self._match: float | None = None
        self.calibrations = 0

    # --- inputs ---------------------------------------------------------------------------------------------
    def request(self) -> None:
        """Take the next frame as the neutral pose (from that frame's own keypoints, not a blend of the last
        second's motion: the smoother starts over)."""
        self.pending = True
        self.reset_smoothing()

    def forget(self) -> None:
        """Forget the neutral pose, also the saved one."""
        self.neutral.reset()
        self.pending = False
        if self.selector is not None:
            self.selector.reset()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.reset_smoothing()
        self.notify("Calibration cleared. " + instructions("c"))

    def set_best_frame(self, on: bool, avatar) -> None:
        self.selector = self._new_selector(avatar) if on else None
        self.best_score = None
        self.notify("best-frame mode on: move until the match score peaks" if on
                    else "best-frame mode off: keeping the current calibration")

    def avatar_changed(self, avatar) -> str | None:
        """A new avatar: alpha is recomputed for it and best-frame restarts against its pose. Returns the notice
        about its keypoints (degenerate hull), if any."""
        notice = self.neutral.set_source(avatar.state.kp)
        self._match = None  # measured against the old avatar
        if self.selector is not None:
            self.selector = self._new_selector(avatar)  # "best" is relative to the avatar's pose
        self.reset_smoothing()
        return notice

    def reset_smoothing(self) -> None:
        if self.smoother is not None:
            self.smoother.reset()

    def load_saved(self) -> None:
        """The saved neutral pose of this camera, if it fits this model (load_calibration checks it against the
        avatar's keypoint count: no avatar yet, nothing to check against, so nothing is loaded)."""
        source = self.neutral.kp_source  # set from the first avatar: the model's keypoint count
        if self.path is None or source is None:
            return
        result = load_calibration(self.path, config_hash=self.config_hash, camera_id=self.camera_id,
                                  num_kp=source.value.shape[1])
        if result.notice:
            self.log(result.notice)
        if result.kp is not None:
            self.neutral.calibrate(result.kp)
            self.log(f"Using the saved calibration from {self.path} (press C to calibrate again, X to forget it).")

    # --- per frame ------------------------------------------------------------------------------------------
    def smooth(self, kp: Keypoints, clock: float) -> Keypoints:
        return kp if self.smoother is None else self.smoother(kp, clock)

    def neutralise(self, kp: Keypoints, crop_rgb: np.ndarray, avatar) -> Keypoints | None:
        """Apply this frame to the calibration policy, then map it to avatar keypoints; None = show the avatar at
        rest (not calibrated yet: motion relative to nothing would be random)."""
        if self.measure_match and self.selector is None:  # best-frame mode scores the frame itself, below
            self._match = pose_match(avatar.state.kp.value, kp.value)
        if self.absolute:
            return kp
        if self.pending:
            self.pending = False
            self._calibrated(kp, self.neutral.calibrate(kp))
        elif self.selector is not None:
            self.best_score, is_best = self.selector.update(self._frame_landmarks(crop_rgb, kp), kp)
            if is_best:
                message = self.neutral.calibrate(self.selector.best_payload)
                self._calibrated(self.selector.best_payload, f"{message} (best frame, match {self.best_score:.0f})")
        elif not self.neutral.is_calibrated and self.neutral.observe(kp):
            # observe() has just made this frame the neutral pose: only save and report it
            self._calibrated(kp, f"{self.neutral.describe()} (auto: you held still)")
        if not self.neutral.is_calibrated:
            return None
        return self.neutral.normalize(kp)

    @property
    def match(self) -> float | None:
        """How well the latest frame's pose matches the avatar's, 0..100: best-frame mode's score while it is on,
        else the engine keypoints compared like it (while `measure_match`); None before any frame."""
        return self.best_score if self.selector is not None else self._match

    def status(self) -> str | None:
        """The calibration part of the status line, None when there is nothing to say."""
        if self.selector is not None:
            score = f"{self.best_score:.0f}" if self.best_score is not None else "-"
            best = self.selector.best_score
            return (f"best-frame: match {score}, best {best:.0f}" if best is not None
                    else f"best-frame: match {score}")
        if not self.absolute and not self.neutral.is_calibrated:
            return instructions("c")
        return None

    # --- internals ------------------------------------------------------------------------------------------
    def _calibrated(self, kp: Keypoints, message: str) -> None:
        self.calibrations += 1
        if self.path is not None:
            try:
                save_calibration(self.path, kp, config_hash=self.config_hash, camera_id=self.camera_id)
            except OSError as exc:  # a read-only cache must not end the call: the calibration still works
                message += f" (not saved: {exc.strerror or exc})"
        self.notify(message)

    @property
    def landmarks(self):
        if self._landmarks is None and self._landmarks_factory is not None:
            self._landmarks, self._landmarks_factory = self._landmarks_factory(), None
        return self._landmarks

    def _new_selector(self, avatar) -> BestFrameSelector:
        """Reference = the avatar's landmarks; frames must later be measured the same way (_selector_fa)."""
        self._selector_fa = False
        if self.landmarks is not None and getattr(self.landmarks, "backend", "") == "face-alignment":
            reference = self.landmarks(avatar.image)
            if reference is not None:
                self._selector_fa = True
                return BestFrameSelector(reference)
            self.notify("no face found in the avatar by face-alignment: comparing model keypoints instead")
        # model keypoints of the avatar vs. of each frame: the same detector on both sides, so comparable
        return BestFrameSelector(avatar.state.kp.value)

    def _frame_landmarks(self, crop_rgb: np.ndarray, kp: Keypoints):
        if self._selector_fa:
            return self.landmarks(crop_rgb)
        return kp.value  # the engine keypoints: already computed, and comparable with the avatar's kp
