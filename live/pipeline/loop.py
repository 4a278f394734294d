"""LivePipeline: one driving frame in, one avatar frame out to every sink.

    capture -> (mirror) -> face crop -> detect -> smooth -> calibrate/normalise -> (face lost: glide to rest)
            -> render -> composite -> sinks (+ preview)

`LivePipeline.step` is that data path and nothing else. What decides the neutral pose (key C, auto-calibration,
best-frame mode, the saved file) lives in `calibration.control.CalibrationController`; what a key does is one
table from hotkey actions to methods (`LivePipeline.actions`). Keys come from key sources - the terminal, tests,
and the preview window, which is one more source - all read in one place, between frames. Before the first
calibration the avatar is sent at rest (its own image) while the status line explains how to calibrate; a frame
the engine turns into NaN/inf is never sent either (the avatar at rest again, and a notice saying why).
Frames come from a *feed*: `live_feed` for cameras (newest frame only, bounded latency) or `file_feed` (every
frame in order, for offline rendering). The pipeline owns its sinks and preview and closes them however the run
ends.
Compositing (`composite=Canvas(...)`, run_live.py's default): the rendered square goes back into the avatar's own
photo at the canvas size (engines/composite.py), so the sinks get the canvas as it is; the avatar at rest is its
photo. Without it the sinks get the model's square, as they always did. When the webcam shows no face for more
than a moment the avatar glides to its rest pose and the status line says so (calibration/face_loss.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch

from calibration.face_loss import FaceLossGlide
from calibration.neutral_pose import NeutralPose
from engines.composite import Compositor
from engines.framing import Canvas
from engines.image import to_model_input, to_uint8_image
from engines.keypoints import Keypoints
from engines.protocol import Engine, RenderedFrame
from live.pipeline.avatar_set import Avatar, AvatarSet
from live.pipeline.avatars import crop_sized_photo
from calibration.control import CalibrationController
from live.devices.capture import CapturedFrame
from live.pipeline.crop import FaceTracker
from live.errors import CaptureError, UserError
from live.ui.hotkeys import Action, KeyEvent, events_for
from live.ui.hud import Timings
from live.ui.preview import Framing
from live.pipeline.snapshot import save_snapshot

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
    """How the run starts. The pipeline keeps its own copy and toggles it (m, o, h), so it is always current."""

    mirror: bool = False
    passthrough: bool = False
    show_hud: bool = True
    calibrate_first_frame: bool = False   # offline rendering: the first frame is the neutral pose (FOMM demo)
    best_frame: bool = False              # start in best-frame mode
    absolute: bool = False                # FOMM's absolute mode: driving keypoints as they are, no calibration
    media_fps: float | None = None        # smoothing on the media clock (index / fps) instead of wall time
    calibration_path: Path | None = None  # persist the neutral pose here (None: don't)
    camera_id: str = "camera"
    framing: bool = False                 # the framing guide in the preview (key g)
    snapshot_folder: Path | None = None   # where key k saves the face crop as a new avatar (None: it can't)


@dataclass
class RunStats:
    frames: int = 0                       # driving frames processed (= frames sent to the sinks)
    calibrations: int = 0
    stopped_by_user: bool = False
    timings: Timings = field(default_factory=Timings)


def _finite(*tensors: torch.Tensor) -> bool:
    """Whether every value is finite, asked of the device once (not once per tensor: each answer is a sync)."""
    checks = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack([c.to(checks[0].device) for c in checks]).all())


class LivePipeline:
    """The live loop's per-frame work and state; drive it with `run(feed)` or frame by frame with `step()`."""

    def __init__(self, engine: Engine, avatars: AvatarSet, *, sinks=(), tracker: FaceTracker | None = None,
                 neutral: NeutralPose | None = None, smoother=None, preview=None,
                 key_sources: Iterable[Callable[[], list[str]]] = (), landmarks_factory=None,
                 landmarks_in_background: bool = True, options: PipelineOptions | None = None,
                 log: Callable[[str], None] = print, timings: Timings | None = None,
                 composite: Canvas | None = None):
        self.engine = engine
        self.avatars = avatars
        self.sinks = list(sinks)
        self.tracker = tracker or FaceTracker(out_size=engine.image_size)
        self.preview = preview
        self.key_sources = list(key_sources)
        self.options = replace(options or PipelineOptions())
        self.log = log
        self.stats = RunStats(timings=timings or Timings())
        self.timings = self.stats.timings
        self.quit_requested = False
        self.hud_extras: list[Callable[[], str]] = []  # more HUD lines (the audio delay in use)
        self._notice = ""
        self._notice_until = 0.0
        self._nonfinite_reported = False
        self._closed = False
        self._last_crop: np.ndarray | None = None  # the model's view of the latest frame, for key k
        # the output canvas the animation is composited on (None: the model's square goes to the sinks as it is)
        self.canvas = composite
        self.compositor = None if composite is None else Compositor(
            composite.size, engine.image_size, device=engine.device, align_corners=engine.align_corners)
        self.glide = FaceLossGlide()
        self._passthrough_rgb: np.ndarray | None = None
        self.calibration = CalibrationController(
            neutral or NeutralPose(), config_hash=engine.config_hash, smoother=smoother,
            path=self.options.calibration_path, camera_id=self.options.camera_id,
            landmarks_factory=landmarks_factory, landmarks_in_background=landmarks_in_background,
            absolute=self.options.absolute, notify=self.notify, log=log)
        self.actions: dict[Action, Callable[[object], None]] = {
            Action.QUIT: self.quit,
            Action.CALIBRATE: lambda _: self.calibration.request(),
            Action.RESET_CALIBRATION: lambda _: self.calibration.forget(),
            Action.BEST_FRAME: lambda _: self.calibration.set_best_frame(not self.calibration.best_frame,
                                                                          self.avatars.current),
            Action.AVATAR: self.select_avatar,
            Action.NEXT_AVATAR: lambda _: self.select_avatar((self.avatars.index + 1) % len(self.avatars)),
            Action.PREVIOUS_AVATAR: lambda _: self.select_avatar((self.avatars.index - 1) % len(self.avatars)),
            Action.PASSTHROUGH: self.toggle_passthrough,
            Action.ZOOM_IN: lambda _: self.tracker.zoom_in(),
            Action.ZOOM_OUT: lambda _: self.tracker.zoom_out(),
            Action.PAN: lambda step: self.tracker.pan(*step),
            Action.RESET_CROP: self.reset_crop,
            Action.TOGGLE_TRACKING: self.toggle_tracking,
            Action.MIRROR: self.toggle_mirror,
            Action.TOGGLE_HUD: self.toggle_hud,
            Action.SNAPSHOT_AVATAR: self.snapshot_avatar,
            Action.FRAMING: self.toggle_framing,
        }
        # The avatar set is complete here; tell the calibration about the first avatar, then the saved pose.
        notice = self.calibration.avatar_changed(self.avatars.current)
        if notice:
            self.notify(f"avatar {self.avatars.index + 1}: {self.avatars.current.name} ({notice})")
        self.calibration.load_saved()
        # offline rendering: the first frame is the neutral pose (FOMM demo)
        self.calibration.pending = self.options.calibrate_first_frame
        if self.options.best_frame:
            self.calibration.set_best_frame(True, self.avatars.current)
        self.calibration.measure_match = self.options.framing

    # --- shortcuts to state kept elsewhere ------------------------------------------------------------------
    @property
    def neutral(self) -> NeutralPose:
        return self.calibration.neutral

    @property
    def smoother(self):
        return self.calibration.smoother

    @property
    def mirror(self) -> bool:
        return self.options.mirror

    @property
    def passthrough(self) -> bool:
        return self.options.passthrough

    @property
    def show_hud(self) -> bool:
        return self.options.show_hud

    # --- status ---------------------------------------------------------------------------------------------
    def notify(self, message: str) -> None:
        """A one-off message: printed once and shown in the preview status line for a few seconds."""
        self.log(message)
        self._notice, self._notice_until = message, time.monotonic() + NOTICE_SECONDS

    @property
    def status(self) -> str:
        """The preview's status line: what the engine must keep saying (render server unreachable) first, that no
        face is in view while the avatar rests for it, then a recent notice, else the calibration state and the
        avatar."""
        persistent = self.engine.status()
        parts = [persistent] if persistent else []
        if self.glide.face_lost and not self.options.passthrough:  # said for as long as it lasts
            parts.append("no face: the avatar rests until you are back in view")
        if self._notice and time.monotonic() < self._notice_until:
            return " | ".join([*parts, self._notice])
        if self.options.passthrough:
            parts.append("PASSTHROUGH (camera shown)")
        elif (calibration := self.calibration.status()) is not None:
            parts.append(calibration)
        if (self.options.framing and self.preview is None and not self.options.passthrough
                and not self.calibration.best_frame):  # best-frame mode's status carries its own match
            match = self.calibration.match  # the guide's score, where no window shows the guide
            parts.append(f"match {match:.0f}" if match is not None else "match -")
        parts.append(f"avatar {self.avatars.index + 1}/{len(self.avatars)} {self.avatars.current.name}")
        return " | ".join(parts)

    # --- keys: every source read in one place, one table from action to method ------------------------------
    def _all_key_sources(self) -> list[Callable[[], list[str]]]:
        preview = [self.preview.poll] if self.preview is not None else []
        return [*self.key_sources, *preview]

    def poll_keys(self) -> None:
        for source in self._all_key_sources():
            self.handle_keys(source())

    def handle_keys(self, keys) -> None:
        for event in events_for(keys):
            self.handle(event)

    def handle(self, event: KeyEvent) -> None:
        self.actions[event.action](event.arg)

    def quit(self, _=None) -> None:
        self.quit_requested = True

    def select_avatar(self, index: int, what: str | None = None) -> None:
        if not self.avatars.select(int(index)):
            self.notify(f"no avatar {int(index) + 1}: there are {len(self.avatars)}")
            return
        avatar = self.avatars.current
        notice = self.calibration.avatar_changed(avatar)
        self.glide.reset()  # its rest pose is another avatar's
        self.notify((what or f"avatar {self.avatars.index + 1}: {avatar.name}") + (f" ({notice})" if notice else ""))

    def snapshot_avatar(self, _=None) -> None:
        """Save the latest face crop as a new avatar image, encode it and switch to it. A folder that cannot be
        written is a notice: the call goes on with the avatars it has."""
        folder = self.options.snapshot_folder
        if folder is None or self._last_crop is None:
            self.notify("no face crop to keep yet" if folder is not None
                        else "cannot keep the face crop: no avatar folder to save it in")
            return
        image = self._last_crop.copy()
        try:
            path = save_snapshot(folder, image)
        except OSError as exc:
            self.notify(f"could not save the face crop in {folder}: {exc.strerror or exc}")
            return
        try:
            index = self.avatars.add(Avatar(path.name, image))
        except UserError as exc:  # e.g. a render server refusing one more avatar: the file is kept for next time
            self.notify(f"saved {path}, but cannot use it now: {exc}")
            return
        self.select_avatar(index, f"saved {path} as avatar {index + 1}")

    def toggle_framing(self, _=None) -> None:
        self.options.framing = not self.options.framing
        self.calibration.measure_match = self.options.framing
        if not self.options.framing:
            self.notify("framing guide off")
        elif self.preview is not None:
            self.notify("framing guide on: line your face up with the avatar, then press C")
        else:  # no window to draw the guide in: the score goes to the status line (printed in the terminal)
            self.notify("framing guide on (no preview window): the pose match score 0..100 follows as 'match N'; "
                        "turn your head until it is high, then press C")

    def toggle_passthrough(self, _=None) -> None:
        self.options.passthrough = not self.options.passthrough
        self.notify("passthrough on: sending the camera" if self.options.passthrough else "passthrough off")

    def reset_crop(self, _=None) -> None:
        self.tracker.reset()
        self.notify("crop reset")

    def toggle_tracking(self, _=None) -> None:
        self.notify("face tracking on" if self.tracker.toggle_tracking() else "face tracking off")

    def toggle_mirror(self, _=None) -> None:
        self.options.mirror = not self.options.mirror
        self.calibration.reset_smoothing()  # the flipped keypoints are a jump, not motion
        # The neutral pose was measured on the unflipped image; mirrored motion relative to it is wrong.
        self.notify(("mirror on" if self.options.mirror else "mirror off")
                    + (": press C to calibrate again" if self.neutral.is_calibrated else ""))

    def toggle_hud(self, _=None) -> None:
        self.options.show_hud = not self.options.show_hud
        self.notify("HUD on" if self.options.show_hud else "HUD off")

    # --- per frame: the data path ---------------------------------------------------------------------------
    def step(self, frame: CapturedFrame) -> np.ndarray:
        """Process one driving frame: returns the RGB frame sent to the sinks."""
        image = self._capture(frame)
        crop_rgb, box = self._crop(image)
        avatar = self.avatars.current
        if self.options.passthrough:
            # composited: the whole camera picture (the sinks place it on their canvas); else the square, as ever
            output = crop_rgb if self.compositor is None else self._camera_rgb(image)
            fresh = True
        else:
            output, fresh = self._animate(frame, crop_rgb, avatar)
        self._send(output)
        self.timings.frame_done(frame.timestamp, fresh=fresh)  # FPS and latency count new frames only
        self.stats.frames += 1
        self.stats.calibrations = self.calibration.calibrations
        self._show(image, box, output)
        return output

    def _camera_rgb(self, image: np.ndarray) -> np.ndarray:
        """The camera picture in RGB, into a buffer kept while the camera's size stays (no frame-sized allocation
        per frame)."""
        if self._passthrough_rgb is None or self._passthrough_rgb.shape != image.shape:
            self._passthrough_rgb = np.empty_like(image)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=self._passthrough_rgb)

    def _capture(self, frame: CapturedFrame) -> np.ndarray:
        return cv2.flip(frame.image, 1) if self.options.mirror else frame.image

    def _crop(self, image: np.ndarray):
        with self.timings.stage("crop"):
            crop_bgr, box = self.tracker.crop(image)
            self._last_crop = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
            return self._last_crop, box

    def _animate(self, frame: CapturedFrame, crop_rgb: np.ndarray, avatar: Avatar) -> tuple[np.ndarray, bool]:
        """(frame to send, whether it is a new render rather than the avatar at rest or a repeat)."""
        kp = self._detect(crop_rgb)
        if not _finite(kp.value, kp.jacobian):  # before the smoother: one NaN would poison its history
            return self._at_rest(avatar, "the keypoint detector returned NaN/inf"), False
        clock = self._clock(frame)
        with self.timings.stage("normalize"):
            kp = self.calibration.smooth(kp, clock)
            kp_avatar = self.calibration.neutralise(kp, crop_rgb, avatar)
            if kp_avatar is not None:
                kp_avatar = self._follow_face(kp_avatar, avatar, clock)
        if kp_avatar is None:
            return self._composite(avatar, None), False  # at rest until calibrated
        with self.timings.stage("render"):
            rendered = self.engine.render(avatar.state, kp_avatar)
        if not _finite(rendered.image, rendered.deformation, rendered.occlusion):
            return self._at_rest(avatar, "the renderer returned NaN/inf"), False
        self._nonfinite_reported = False  # a good frame again: a later failure is news worth a notice
        return self._composite(avatar, rendered), rendered.fresh

    def _follow_face(self, kp_avatar: Keypoints, avatar: Avatar, clock: float) -> Keypoints:
        """The face-loss glide: the face tracker's verdict decides whether these keypoints drive the avatar or it
        settles at rest (its own keypoints). Nothing looks for faces with tracking off: then they always drive."""
        face = self.tracker.face_found if self.tracker.tracking else None
        returning = self.glide.returning
        kp_avatar = self.glide(kp_avatar, avatar.state.kp, face, clock)
        if self.glide.returning and not returning:
            self.calibration.reset_smoothing()  # its history is of whatever the crop showed meanwhile
        return kp_avatar

    def _composite(self, avatar: Avatar, rendered: RenderedFrame | None) -> np.ndarray:
        """The frame the sinks get: the render (None: the avatar at rest) composited into the avatar's photo on
        the canvas, or without compositing the model's square itself."""
        if self.compositor is None:
            return avatar.image if rendered is None else to_uint8_image(rendered.image)
        with self.timings.stage("composite"):
            plate = self._plate(avatar)
            return self.compositor.rest(plate) if rendered is None else self.compositor.compose(plate, rendered)

    def _plate(self, avatar: Avatar):
        if avatar.photo is None:  # the square is all there is (a snapshot): placed on the canvas and animated whole
            avatar.photo = crop_sized_photo(avatar.image, self.canvas)
        return self.compositor.plate(id(avatar), avatar.photo.backdrop, avatar.photo.layout, avatar.image)

    def _detect(self, crop_rgb: np.ndarray) -> Keypoints:
        with self.timings.stage("detect"):
            x = to_model_input(crop_rgb, size=self.engine.image_size, device=self.engine.device)
            return self.engine.detect(x)

    def _clock(self, frame: CapturedFrame) -> float:
        return frame.index / self.options.media_fps if self.options.media_fps else frame.timestamp

    def _at_rest(self, avatar: Avatar, why: str) -> np.ndarray:
        """Never send a broken frame: the avatar at rest instead, and say why once per run of bad frames."""
        if not self._nonfinite_reported:
            self._nonfinite_reported = True
            self.notify(f"{why} on this frame ({self.engine.name}): showing the avatar at rest")
        return self._composite(avatar, None)

    def _send(self, output: np.ndarray) -> None:
        with self.timings.stage("sinks"):
            for sink in self.sinks:
                sink.send(output)

    def _switch_engine(self) -> None:
        """Between two frames: an engine prepared in the background (int8 behind its quality gate) takes over."""
        notice = self.engine.between_frames()
        if notice:
            self.notify(notice)

    def _show(self, image: np.ndarray, box, output: np.ndarray) -> None:
        if self.preview is not None:  # its keys are read by poll_keys, with every other key source
            hud = ([*self.timings.lines(), f"engine {self.engine.name} ({self.engine.report().brief()})",
                    self.output_mode(),
                    *(line() for line in self.hud_extras)] if self.options.show_hud else ())
            self.preview.show(image, box, output, hud_lines=hud, status=self.status, framing=self._framing())

    def output_mode(self) -> str:
        """What the sinks get, for the HUD: the composite on its canvas, or the model's square."""
        if self.canvas is None:
            size = self.engine.image_size
            return f"composite off: the {size}x{size} square"
        photo = self.avatars.current.photo
        side = "" if photo is None else f", face square {photo.layout.crop.sx * self.engine.image_size:.0f} px"
        return f"composite {self.canvas.width}x{self.canvas.height} {self.canvas.mode}{side}"

    def _framing(self) -> Framing | None:
        """The framing guide for the preview (never for the sinks); no score in passthrough (nothing detected).
        Composited, it also marks where the animated square lies in the output."""
        if not self.options.framing:
            return None
        score = None if self.options.passthrough else self.calibration.match
        photo = self.avatars.current.photo
        region = None if self.canvas is None or photo is None or self.options.passthrough else photo.layout.crop_rect
        return Framing(self.avatars.current.image, score, region)

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
                self.poll_keys()  # also while the camera stalls (frame None): quit must still work
                self._switch_engine()
                if self.quit_requested or (max_frames is not None and self.stats.frames >= max_frames):
                    break
                try:
                    frame = next(iterator)
                except StopIteration:
                    break
                if frame is None:  # no new camera frame yet
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
