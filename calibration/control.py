"""When the neutral pose is taken, kept and forgotten: the live loop's calibration policy in one place.

The controller owns everything that decides which frame is the neutral pose (a key press, the first frame of an
offline render, auto-calibration once the user holds still, best-frame mode), the saved calibration file, and the
keypoint smoother's history (reset whenever the driving keypoints jump for reasons other than motion: a new
avatar, the mirror toggled, a calibration asked for or forgotten). Per frame, `neutralise` turns the smoothed
driving keypoints into avatar keypoints, or returns None while there is nothing to measure motion from.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from calibration.best_frame import BestFrameSelector, pose_match
from calibration.neutral_pose import NeutralPose, instructions
from calibration.persistence import load_calibration, save_calibration
from engines.keypoints import Keypoints


LOADING_STATUS = "best-frame: loading the face landmarks (the video goes on)"


class BackgroundLoad:
    """`load()` run once in a daemon thread: best-frame mode's landmark model (face-alignment) takes seconds to
    load, and the video must not freeze for them in the middle of a call. `value` once `done`; a load that raised
    leaves `error` and no value."""

    def __init__(self, load: Callable[[], object], name: str = "landmarks"):
        self.value = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(load,), name=name, daemon=True)
        self._thread.start()

    def _run(self, load) -> None:
        try:
            self.value = load()
        except Exception as exc:  # noqa: BLE001 - reported on the loop's thread; best-frame falls back
            self.error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class CalibrationController:
    def __init__(self, neutral: NeutralPose, *, config_hash: str, smoother=None, path: Path | None = None,
                 camera_id: str = "camera", landmarks_factory: Callable[[], object] | None = None,
                 landmarks_in_background: bool = True, absolute: bool = False,
                 notify: Callable[[str], None] = print, log: Callable[[str], None] = print):
        self.neutral = neutral
        self.smoother = smoother
        self.config_hash = config_hash
        self.path = Path(path) if path is not None else None
        self.camera_id = camera_id
        # absolute: the driving keypoints are used as they are (FOMM's non-relative mode), no neutral pose needed
        self.absolute = absolute
        self.notify, self.log = notify, log
        # () -> calibration.LandmarkSource for best-frame mode, built when the mode is first asked for; None:
        # compare engine keypoints. In the background for a live run (frames keep coming while it loads); an
        # offline render waits for it (its frames must not depend on how long a model takes to load).
        self._landmarks_factory = landmarks_factory
        self._landmarks_in_background = landmarks_in_background
        self._loading: BackgroundLoad | None = None
        self._landmarks = None
        self.pending = False                  # calibrate on the next frame (key C, or the first offline frame)
        self.best_frame = False               # best-frame mode is on (its selector once the landmarks are ready)
        self.selector: BestFrameSelector | None = None
        self._selector_fa = False             # the selector compares face-alignment landmarks, not engine kp
        self.best_score: float | None = None  # match of the latest frame in best-frame mode
        self.measure_match = False            # score every frame against the avatar (the framing guide)
        # what to do while not calibrated: press C, or (a run no key reaches) what can be done instead
        self.calibrate_hint = instructions("c")
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
        self.notify("Calibration cleared. " + self.calibrate_hint)

    def set_best_frame(self, on: bool, avatar) -> None:
        self.best_frame = on
        self.selector = None
        self.best_score = None
        if not on:
            self.notify("best-frame mode off: keeping the current calibration")
            return
        self._start_loading()
        if self._landmarks_ready():
            self.selector = self._new_selector(avatar)
            self.notify("best-frame mode on: move until the match score peaks")
        else:
            self.notify("best-frame mode on: " + LOADING_STATUS.split(": ", 1)[1])

    def avatar_changed(self, avatar) -> str | None:
        """A new avatar: alpha is recomputed for it and best-frame restarts against its pose. Returns the notice
        about its keypoints (degenerate hull), if any."""
        notice = self.neutral.set_source(avatar.state.kp)
        self._match = None  # measured against the old avatar
        if self.selector is not None:
            self.selector = self._new_selector(avatar)  # "best" is relative to the avatar's pose
            self.best_score = None
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
        if self.best_frame and self.selector is None and self._landmarks_ready():
            self.selector = self._new_selector(avatar)  # the landmarks have loaded in the background
            self.notify(f"best-frame mode ready ({self._landmarks_backend()}): move until the match score peaks")
        if self.measure_match and not self.best_frame:  # best-frame mode scores the frame itself, below
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
        return self.best_score if self.best_frame else self._match

    def status(self) -> str | None:
        """The calibration part of the status line, None when there is nothing to say."""
        if self.best_frame and self.selector is None:
            return LOADING_STATUS
        if self.selector is not None:
            score = f"{self.best_score:.0f}" if self.best_score is not None else "-"
            best = self.selector.best_score
            return (f"best-frame: match {score}, best {best:.0f}" if best is not None
                    else f"best-frame: match {score}")
        if not self.absolute and not self.neutral.is_calibrated:
            return self.calibrate_hint
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

    def _start_loading(self) -> None:
        """Build the landmark source once: in a thread (live), or here (offline, or a test's instant factory)."""
        if self._loading is not None or self._landmarks_factory is None:
            return
        self._loading = BackgroundLoad(self._landmarks_factory)
        if not self._landmarks_in_background:
            self._loading.wait()

    def _landmarks_ready(self) -> bool:
        """True once best-frame mode can compare frames: the landmark source built (or failed: the model's own
        keypoints then), or none to build."""
        if self._loading is None:
            return self._landmarks_factory is None
        if not self._loading.done:
            return False
        if self._landmarks is None and self._landmarks_factory is not None:
            self._landmarks_factory = None  # taken: a failed load is not retried mid-call
            self._landmarks = self._loading.value
            if self._loading.error is not None:
                self.log(f"notice: best-frame landmarks unavailable ({type(self._loading.error).__name__}: "
                         f"{self._loading.error}); comparing the model's keypoints")
            elif getattr(self._landmarks, "notice", None):
                self.log(f"notice: {self._landmarks.notice}")
        return True

    def _landmarks_backend(self) -> str:
        backend = getattr(self.landmarks, "backend", None)
        return f"{backend} landmarks" if backend and backend != "keypoints" else "the model's keypoints"

    @property
    def landmarks(self):
        """The landmark source once loaded (None before, or when the model's keypoints are compared)."""
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
