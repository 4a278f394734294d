"""LivePipeline: one driving frame in, one avatar frame out to every sink.

    frame -> mirror -> face crop -> engine.detect -> smoothing -> neutral pose -> engine.render -> sinks (+ preview)

Before the first calibration the avatar is sent at rest (its own image) while the status line explains how to
calibrate. Keys (preview window, terminal, or injected by tests) are applied between frames. Frames come from a
*feed*: `live_feed` for cameras (newest frame only, bounded latency) or `file_feed` (every frame in order, for
offline rendering). The pipeline owns its sinks and preview and closes them however the run ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from calibration.best_frame import BestFrameSelector
from calibration.neutral_pose import NeutralPose, instructions
from calibration.persistence import load_calibration, save_calibration
from engines.image import to_model_input, to_uint8_image
from live.avatar_set import Avatar, AvatarSet
from live.capture import CapturedFrame
from live.crop import FaceTracker
from live.errors import CaptureError
from live.hotkeys import Action, KeyEvent, events_for
from live.hud import Timings

NOTICE_SECONDS = 3.0  # how long a one-off message (calibrated, avatar 2, ...) stays in the status line


# --- feeds ------------------------------------------------------------------------------------------------------
def file_feed(source) -> Iterator[CapturedFrame]:
    """Every frame of a file/folder source, in order (offline rendering: nothing may be dropped)."""
    index = 0
    while True:
        image = source.read()
        if image is None:
            return
        yield CapturedFrame(image, index, time.perf_counter())
        index += 1


def live_feed(reader, poll_seconds: float = 0.05) -> Iterator[CapturedFrame | None]:
    """Newest frames from a started LatestFrameReader. Yields None while no new frame is there, so the loop can
    still read keys (quit must work when the camera stalls). Raises CaptureError when the source failed."""
    while True:
        frame = reader.get(timeout=poll_seconds)
        if frame is not None:
            yield frame
            continue
        if reader.error is not None:
            raise CaptureError(reader.error)
        if reader.finished:
            return
        yield None


class RealtimePacer:
    """Wraps a fixed-frame-rate sink (a video file) for live runs: each frame is written as many times as frame
    slots have passed since the last one (0 when we are faster than `fps`), so a recording made at 5 processed
    frames per second still plays at real speed instead of 6x fast."""

    def __init__(self, sink, fps: float, clock: Callable[[], float] = time.perf_counter):
        self.sink, self.fps, self.clock = sink, float(fps), clock
        self.name = getattr(sink, "name", "paced sink")
        self._start: float | None = None
        self.written = 0

    def send(self, frame: np.ndarray) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        due = int((now - self._start) * self.fps) + 1
        for _ in range(due - self.written):
            self.sink.send(frame)
        self.written = max(self.written, due)

    def close(self) -> None:
        self.sink.close()


# --- pipeline ---------------------------------------------------------------------------------------------------
@dataclass
class PipelineOptions:
    mirror: bool = False
    passthrough: bool = False
    show_hud: bool = True
    calibrate_first_frame: bool = False   # offline rendering: the first frame is the neutral pose (FOMM demo)
    best_frame: bool = False              # start in best-frame mode
    media_fps: float | None = None        # smoothing on the media clock (index / fps) instead of wall time
    calibration_path: Path | None = None  # persist the neutral pose here (None: don't)
    camera_id: str = "camera"


@dataclass
class RunStats:
    frames: int = 0                       # driving frames processed (= frames sent to the sinks)
    calibrations: int = 0
    stopped_by_user: bool = False
    timings: Timings = field(default_factory=Timings)


class LivePipeline:
    """The live loop's per-frame work and state; drive it with `run(feed)` or frame by frame with `step()`."""

    def __init__(self, engine, avatars: AvatarSet, *, sinks=(), tracker: FaceTracker | None = None,
                 neutral: NeutralPose | None = None, smoother=None, preview=None,
                 key_sources: Iterable[Callable[[], list[str]]] = (), landmarks_factory=None,
                 options: PipelineOptions | None = None, log: Callable[[str], None] = print,
                 timings: Timings | None = None):
        self.engine = engine
        self.avatars = avatars
        self.sinks = list(sinks)
        self.tracker = tracker or FaceTracker(out_size=engine.image_size)
        self.neutral = neutral or NeutralPose()
        self.smoother = smoother
        self.preview = preview
        self.key_sources = list(key_sources)
        # () -> calibration.LandmarkSource for best-frame mode, called on first use; None: compare engine kp
        self._landmarks_factory = landmarks_factory
        self._landmarks = None
        self.options = options or PipelineOptions()
        self.log = log
        self.stats = RunStats(timings=timings or Timings())
        self.timings = self.stats.timings
        self.mirror = self.options.mirror
        self.passthrough = self.options.passthrough
        self.show_hud = self.options.show_hud
        self.quit_requested = False
        self.last_output: np.ndarray | None = None
        self.best_score: float | None = None
        self._pending_calibration = self.options.calibrate_first_frame
        self._selector: BestFrameSelector | None = None
        self._selector_fa = False             # the selector compares face-alignment landmarks, not engine kp
        self._notice = ""
        self._notice_until = 0.0
        self._closed = False

        self.avatars.set_listener(self._avatar_changed)
        self._load_saved_calibration()
        if self.options.best_frame:
            self._set_best_frame(True)

    # --- status ---------------------------------------------------------------------------------------------
    def notify(self, message: str) -> None:
        """A one-off message: printed once and shown in the preview status line for a few seconds."""
        self.log(message)
        self._notice, self._notice_until = message, time.monotonic() + NOTICE_SECONDS

    @property
    def status(self) -> str:
        if self._notice and time.monotonic() < self._notice_until:
            return self._notice
        parts = []
        if self.passthrough:
            parts.append("PASSTHROUGH (camera shown)")
        elif self._selector is not None:
            score = f"{self.best_score:.0f}" if self.best_score is not None else "-"
            best = self._selector.best_score
            parts.append(f"best-frame: match {score}, best {best:.0f}" if best is not None
                         else f"best-frame: match {score}")
        elif not self.neutral.is_calibrated:
            parts.append(instructions("c"))
        parts.append(f"avatar {self.avatars.index + 1}/{len(self.avatars)} {self.avatars.current.name}")
        return " | ".join(parts)

    # --- keys -----------------------------------------------------------------------------------------------
    def handle_keys(self, keys) -> None:
        for event in events_for(keys):
            self.handle(event)

    def handle(self, event: KeyEvent) -> None:
        a = event.action
        if a is Action.QUIT:
            self.quit_requested = True
        elif a is Action.CALIBRATE:
            self._pending_calibration = True   # taken on the next frame, from that frame's keypoints
        elif a is Action.RESET_CALIBRATION:
            self._reset_calibration()
        elif a is Action.BEST_FRAME:
            self._set_best_frame(self._selector is None)
        elif a is Action.AVATAR:
            if not self.avatars.select(int(event.arg)):
                self.notify(f"no avatar {int(event.arg) + 1}: there are {len(self.avatars)}")
        elif a is Action.NEXT_AVATAR:
            self.avatars.next()
        elif a is Action.PREVIOUS_AVATAR:
            self.avatars.previous()
        elif a is Action.PASSTHROUGH:
            self.passthrough = not self.passthrough
            self.notify("passthrough on: sending the camera" if self.passthrough else "passthrough off")
        elif a is Action.ZOOM_IN:
            self.tracker.zoom_in()
        elif a is Action.ZOOM_OUT:
            self.tracker.zoom_out()
        elif a is Action.PAN:
            self.tracker.pan(*event.arg)
        elif a is Action.RESET_CROP:
            self.tracker.reset()
            self.notify("crop reset")
        elif a is Action.TOGGLE_TRACKING:
            self.notify("face tracking on" if self.tracker.toggle_tracking() else "face tracking off")
        elif a is Action.MIRROR:
            self.mirror = not self.mirror
            # The neutral pose was measured on the unflipped image; mirrored motion relative to it is wrong.
            self.notify(("mirror on" if self.mirror else "mirror off")
                        + (": press C to calibrate again" if self.neutral.is_calibrated else ""))
        elif a is Action.TOGGLE_HUD:
            self.show_hud = not self.show_hud

    def _poll_keys(self) -> None:
        for source in self.key_sources:
            self.handle_keys(source())

    # --- calibration ----------------------------------------------------------------------------------------
    def _avatar_changed(self, avatar: Avatar) -> None:
        notice = self.neutral.set_source(avatar.state.kp)
        if self._selector is not None:
            self._selector = self._new_selector()  # "best" is relative to the avatar's pose
        if self.stats.frames or notice:
            self.notify(f"avatar {self.avatars.index + 1}: {avatar.name}" + (f" ({notice})" if notice else ""))

    def _load_saved_calibration(self) -> None:
        path = self.options.calibration_path
        if path is None:
            return
        result = load_calibration(path, config_hash=self.engine.config_hash, camera_id=self.options.camera_id)
        if result.notice:
            self.log(result.notice)
        if result.kp is not None:
            self.neutral.calibrate(result.kp)
            self.log(f"Using the saved calibration from {path} (press C to calibrate again, X to forget it).")

    def _calibrate(self, kp, how: str = "") -> None:
        message = self.neutral.calibrate(kp)
        self.stats.calibrations += 1
        path = self.options.calibration_path
        if path is not None:
            try:
                save_calibration(path, kp, config_hash=self.engine.config_hash, camera_id=self.options.camera_id)
            except OSError as exc:  # a read-only cache must not end the call: the calibration still works
                message += f" (not saved: {exc.strerror or exc})"
        self.notify(message + how)

    def _reset_calibration(self) -> None:
        self.neutral.reset()
        self._pending_calibration = False
        if self._selector is not None:
            self._selector.reset()
        path = self.options.calibration_path
        if path is not None:
            Path(path).unlink(missing_ok=True)
        self.notify("Calibration cleared. " + instructions("c"))

    @property
    def landmarks(self):
        if self._landmarks is None and self._landmarks_factory is not None:
            self._landmarks, self._landmarks_factory = self._landmarks_factory(), None
        return self._landmarks

    def _uses_face_alignment(self) -> bool:
        return self.landmarks is not None and getattr(self.landmarks, "backend", "") == "face-alignment"

    def _new_selector(self) -> BestFrameSelector:
        """Reference = the avatar's landmarks; frames must later be measured the same way (_selector_fa)."""
        self._selector_fa = False
        if self._uses_face_alignment():
            reference = self.landmarks(self.avatars.current.image)
            if reference is not None:
                self._selector_fa = True
                return BestFrameSelector(reference)
            self.notify("no face found in the avatar by face-alignment: comparing model keypoints instead")
        # model keypoints of the avatar vs. of each frame: the same detector on both sides, so comparable
        return BestFrameSelector(self.avatars.current.state.kp.value)

    def _set_best_frame(self, on: bool) -> None:
        self._selector = self._new_selector() if on else None
        self.best_score = None
        self.notify("best-frame mode on: move until the match score peaks" if on
                    else "best-frame mode off: keeping the current calibration")

    def _frame_landmarks(self, crop_rgb: np.ndarray, kp):
        if self._selector_fa:
            return self.landmarks(crop_rgb)
        return kp.value  # the engine keypoints: already computed, and comparable with the avatar's kp

    # --- per frame ------------------------------------------------------------------------------------------
    def step(self, frame: CapturedFrame) -> np.ndarray:
        """Process one driving frame: returns the RGB frame sent to the sinks."""
        t = self.timings
        image = cv2.flip(frame.image, 1) if self.mirror else frame.image
        with t.stage("crop"):
            crop_bgr, box = self.tracker.crop(image)
            crop_rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
        avatar = self.avatars.current
        if self.passthrough:
            output = crop_rgb
        else:
            output = self._animate(frame, crop_rgb, avatar)
        with t.stage("sinks"):
            for sink in self.sinks:
                sink.send(output)
        t.frame_done(frame.timestamp)
        self.stats.frames += 1
        self.last_output = output
        if self.preview is not None:
            hud = t.lines() if self.show_hud else ()
            self.handle_keys(self.preview.show(image, box, output, hud_lines=hud, status=self.status))
        return output

    def _animate(self, frame: CapturedFrame, crop_rgb: np.ndarray, avatar: Avatar) -> np.ndarray:
        t = self.timings
        with t.stage("detect"):
            kp = self.engine.detect(to_model_input(crop_rgb, size=self.engine.image_size, device=self.engine.device))
        with t.stage("normalize"):
            if self.smoother is not None:
                clock = frame.index / self.options.media_fps if self.options.media_fps else frame.timestamp
                kp = self.smoother(kp, clock)
            if self._pending_calibration:
                self._pending_calibration = False
                self._calibrate(kp)
            elif self._selector is not None:
                self.best_score, is_best = self._selector.update(self._frame_landmarks(crop_rgb, kp), kp)
                if is_best:
                    self._calibrate(self._selector.best_payload, f" (best frame, match {self.best_score:.0f})")
            elif not self.neutral.is_calibrated and self.neutral.observe(kp):
                self._calibrate(kp, " (auto: you held still)")  # observe() set it; this saves and reports it
            if not self.neutral.is_calibrated:
                return avatar.image  # at rest until calibrated: moving it relative to nothing would be random
            kp_avatar = self.neutral.normalize(kp)
        with t.stage("render"):
            return to_uint8_image(self.engine.render(avatar.state, kp_avatar))

    # --- running --------------------------------------------------------------------------------------------
    def run(self, feed: Iterable[CapturedFrame | None], *, max_frames: int | None = None,
            on_frame: Callable[[int], None] | None = None) -> RunStats:
        """Process frames until the feed ends, quit is pressed or max_frames; sinks and preview are always closed
        (the mp4 is finalised) however it ends, including Ctrl-C and errors."""
        iterator = iter(feed)
        failed = True
        try:
            waiting_since = time.perf_counter()
            while not self.quit_requested:
                self._poll_keys()
                if self.quit_requested or (max_frames is not None and self.stats.frames >= max_frames):
                    break
                try:
                    frame = next(iterator)
                except StopIteration:
                    break
                if frame is None:  # no new camera frame yet: keep the window responsive
                    if self.preview is not None:
                        self.handle_keys(self.preview.poll())
                    continue
                self.timings.record("wait", (time.perf_counter() - waiting_since) * 1000.0)
                self.step(frame)
                waiting_since = time.perf_counter()
                if on_frame is not None:
                    on_frame(self.stats.frames)
            self.stats.stopped_by_user = self.quit_requested
            failed = False
            return self.stats
        finally:
            self.close(quiet=failed)  # while an error propagates, a close error must not replace it

    def close(self, quiet: bool = False) -> None:
        """Close every sink and the preview; one failing close does not keep the others (the mp4!) open.
        The first close error is raised afterwards, or only logged when `quiet`."""
        if self._closed:
            return
        self._closed = True
        first_error = None
        for closable in [*self.sinks, self.preview]:
            if closable is None:
                continue
            try:
                closable.close()
            except Exception as exc:  # noqa: BLE001 - report after the rest are closed
                first_error = first_error or exc
        if first_error is not None:
            if not quiet:
                raise first_error
            self.log(f"while closing: {first_error}")
