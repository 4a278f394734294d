"""Face crop: find the head in the webcam frame and cut a steady square around it for the 256x256 model input.

FOMM's vox checkpoints were trained on crops where the whole head (hair to chin, a bit of neck) fills most of the
square, so the crop is the detected face box scaled by `scale`. Detection is OpenCV's Haar cascade (fast, offline,
ships with opencv-python<5) on a downscaled gray frame every `detect_every` frames. The box follows the face through
a dead-zone (jitter of the detector does not move it) and an exponential moving average (real moves are followed
smoothly). Manual zoom/pan sit on top of the tracked box; with tracking off the manual box is all there is.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from engines.framing import CropBox, centred_box, crop_square, fit_box  # noqa: F401 - re-exported
from live.errors import UserError


NEAR_FACE_PX = 48  # the side a known face is scaled to when it is looked for again near where it was


class HaarFaceDetector:
    """Frontal-face Haar cascade on a gray frame downscaled to at most `max_width` pixels wide (speed: detection
    cost grows with pixel count, and a webcam face is large enough to survive the downscale)."""

    def __init__(self, max_width: int = 320, min_face_fraction: float = 0.12, cascade: str | None = None):
        path = cascade or cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        # Checked by hand first: OpenCV logs its own ERROR line for a missing file and raises SystemError for a
        # damaged one. A UserError: the app checks this at start-up and reports it as one line.
        problem = None if os.path.isfile(path) else "missing"
        if problem is None:
            try:
                self._cascade = cv2.CascadeClassifier(path)
                problem = "empty or damaged" if self._cascade.empty() else None
            except (cv2.error, SystemError):
                problem = "damaged"
        if problem:
            raise UserError(f"cannot load OpenCV's face detector: Haar cascade {path} is {problem}; reinstall "
                            "opencv-python (<5, its wheels ship the cascades), or run with --no-track")
        self.max_width = max_width
        self.min_face_fraction = min_face_fraction

    def __call__(self, frame_bgr: np.ndarray, near: tuple[float, float, float, float] | None = None
                 ) -> list[tuple[float, float, float, float]]:
        """Faces as (x, y, w, h) in the coordinates of the full-size frame.

        `near`: a face (x, y, w, h) seen a moment ago. It is looked for first in a window around it, at sizes
        around its own - a fraction of the whole search, whose cost is mostly the many small scales of a whole
        frame - and in the whole frame only when it is not there (it moved far, or is gone)."""
        if near is not None:
            faces = self._near(frame_bgr, near)
            if faces:
                return faces
        return self._search(frame_bgr, (0, 0), None)

    def _near(self, frame_bgr: np.ndarray, face) -> list[tuple[float, float, float, float]]:
        x, y, w, h = face
        side = max(w, h)
        height, width = frame_bgr.shape[:2]
        x0, y0 = max(0, int(x - side)), max(0, int(y - side))
        x1, y1 = min(width, int(x + w + side)), min(height, int(y + h + side))
        if x1 - x0 < side or y1 - y0 < side:
            return []
        # the cascade's own window is 24 px: a face of NEAR_FACE_PX is found as surely as a bigger one, for less
        factor = min(1.0, NEAR_FACE_PX / side)
        # more neighbours asked: a part of the face (or of the photo beside it) that looks like a face at this
        # size must not be taken for it; a weak answer falls through to the whole frame
        return self._search(frame_bgr[y0:y1, x0:x1], (x0, y0), (side * 0.7, side * 1.45), factor, neighbours=7)

    def _search(self, frame_bgr: np.ndarray, origin: tuple[int, int], sides: tuple[float, float] | None,
                factor: float | None = None, neighbours: int = 5):
        """detectMultiScale on `frame_bgr` (a frame, or a window of one at `origin`), downscaled by `factor`
        (default: to max_width); `sides`: the smallest and largest face side to look for (full-size pixels), else
        any from min_face_fraction of the picture up."""
        gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        factor = min(1.0, self.max_width / gray.shape[1]) if factor is None else factor
        if factor < 1.0:
            gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)  # webcam exposure varies a lot; the cascade prefers normalised contrast
        if sides is None:
            smallest, largest = max(20, int(min(gray.shape[:2]) * self.min_face_fraction)), 0
        else:
            smallest, largest = max(20, int(sides[0] * factor)), int(sides[1] * factor) + 1
        faces = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=neighbours,
                                               minSize=(smallest, smallest), maxSize=(largest, largest))
        ox, oy = origin
        return [(ox + float(fx) / factor, oy + float(fy) / factor, float(fw) / factor, float(fh) / factor)
                for fx, fy, fw, fh in faces]


def face_square(face, scale: float) -> CropBox:
    """The model's square for a detected face (x, y, w, h): `scale` times its side, centred on it. Shared by the
    webcam crop and the avatar photo, so both frame a head alike."""
    x, y, fw, fh = face
    side = max(fw, fh)
    return CropBox(x + fw / 2.0, y + fh / 2.0, side * scale)


@dataclass
class TrackerSettings:
    scale: float = 1.8          # crop side / detected face side: the whole head plus a little neck, like vox crops
    detect_every: int = 3       # run the detector on every Nth frame; the box coasts in between
    smoothing: float = 0.35     # EMA weight of the target per frame (1 = jump at once, small = slow and steady)
    dead_zone: float = 0.06     # ignore detections whose centre/size differ by less than this fraction of the side
    zoom_step: float = 1.1      # one zoom key press scales the box by this factor
    pan_step: float = 0.05      # one pan key press moves the box by this fraction of its side


class FaceTracker:
    """Per-frame crop box: tracked face (if enabled) with manual zoom/pan on top.

    `update(frame)` returns the box to crop for that frame; `crop(frame)` does both and returns the model input.
    """

    def __init__(self, settings: TrackerSettings | None = None, *, tracking: bool = True, detector=None,
                 out_size: int = 256):
        self.settings = settings or TrackerSettings()
        self.tracking = tracking
        self.out_size = out_size
        self._detector = detector
        self._frame_shape: tuple[int, int] | None = None
        self._frame_index = 0
        self._target: CropBox | None = None   # where the face is (after dead-zone filtering)
        self._box: CropBox | None = None      # where the smoothed box is now
        self._acquired = False                 # a face has been seen since the last reset (first one: snap to it)
        self._face = None                      # the last face detected (x, y, w, h): where to look first next time
        self.zoom = 1.0
        self.pan_x = 0.0
        self.pan_y = 0.0
        self.face_found = False                # last detection attempt found a face (status/HUD)

    # --- manual adjustments -------------------------------------------------------------------------------------
    def zoom_in(self) -> None:
        self.zoom = min(self.zoom * self.settings.zoom_step, 8.0)

    def zoom_out(self) -> None:
        self.zoom = max(self.zoom / self.settings.zoom_step, 0.25)

    def pan(self, dx: int, dy: int) -> None:
        """Move the crop by dx/dy steps (right/down positive)."""
        self.pan_x = float(np.clip(self.pan_x + dx * self.settings.pan_step, -1.0, 1.0))
        self.pan_y = float(np.clip(self.pan_y + dy * self.settings.pan_step, -1.0, 1.0))

    def reset(self) -> None:
        """Undo manual zoom/pan and re-acquire the face from scratch on the next frame."""
        self.zoom, self.pan_x, self.pan_y = 1.0, 0.0, 0.0
        self._target = self._box = self._face = None
        self._acquired = False
        self._frame_index = 0

    def toggle_tracking(self) -> bool:
        self.tracking = not self.tracking
        self._frame_index = 0  # detect right away when switched on
        return self.tracking

    # --- per frame ----------------------------------------------------------------------------------------------
    def update(self, frame: np.ndarray) -> CropBox:
        h, w = frame.shape[:2]
        if self._frame_shape != (h, w):  # new camera mode / next file in a folder: old boxes mean nothing
            self._frame_shape = (h, w)
            self._target = self._box = None
            self._acquired = False
            self._frame_index = 0
        if self.tracking:
            base = self._track(frame)
        else:
            base = centred_box(w, h)
        self._frame_index += 1
        size = base.size / self.zoom
        box = CropBox(base.cx + self.pan_x * size, base.cy + self.pan_y * size, size)
        return fit_box(box, w, h)

    def crop(self, frame: np.ndarray) -> tuple[np.ndarray, CropBox]:
        box = self.update(frame)
        return crop_square(frame, box, self.out_size), box

    def _track(self, frame: np.ndarray) -> CropBox:
        h, w = frame.shape[:2]
        s = self.settings
        if self._frame_index % max(1, s.detect_every) == 0:
            if self._detector is None:
                self._detector = HaarFaceDetector()
            faces = self._detector(frame, near=self._face if self._acquired else None)
            self.face_found = bool(faces)
            if faces and not self._acquired:
                self._face = max(faces, key=lambda f: f[2] * f[3])
                self._target = self._box = self._face_to_box(self._face)
                self._acquired = True
            elif faces:
                self._face = self._nearest(faces)
                self._retarget(self._face_to_box(self._face))
        if self._target is None:  # no face yet: the centred square until one shows up
            self._target = centred_box(w, h)
        if self._box is None:
            self._box = self._target
        else:
            a, b, t = s.smoothing, self._box, self._target
            if max(abs(t.cx - b.cx), abs(t.cy - b.cy), abs(t.size - b.size)) < 0.25:
                self._box = t  # settle exactly: endless sub-pixel creeping would resample every frame differently
            else:
                self._box = CropBox(b.cx + a * (t.cx - b.cx), b.cy + a * (t.cy - b.cy),
                                    b.size + a * (t.size - b.size))
        return self._box

    def _nearest(self, faces):
        """The face nearest the tracked one: a face passing in the background must not steal the crop."""
        t = self._target
        return min(faces, key=lambda f: math.hypot(f[0] + f[2] / 2 - t.cx, f[1] + f[3] / 2 - t.cy))

    def _face_to_box(self, face) -> CropBox:
        return face_square(face, self.settings.scale)

    def _retarget(self, box: CropBox) -> None:
        """Accept a detection as the new target only if it moved beyond the dead-zone (detector jitter is a few
        pixels every frame; following it would make the avatar's whole frame shiver)."""
        t = self._target
        dz = self.settings.dead_zone
        moved = math.hypot(box.cx - t.cx, box.cy - t.cy) > dz * t.size
        resized = abs(box.size - t.size) > dz * t.size
        if moved or resized:
            self._target = box
