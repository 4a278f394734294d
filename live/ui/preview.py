"""Preview window: the webcam with the crop box next to the avatar output, plus HUD and a status line.

The framing guide (key g) blends the avatar's image into the crop box and shows the pose match score, so the face
can be lined up with the avatar before calibrating; when the output is composited into the avatar's photo it also
outlines where the animated square lies in it. It is drawn here only: what the sinks get never contains it. The
output panel keeps the output's own shape (the square, or the canvas of a composited photo).

Only ever opened where a display exists: without one, cv2.imshow aborts the whole process (no exception to catch),
so the caller checks live.ui.display first. `compose()` builds the picture without any window (tests, screenshots).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.framing import CropBox
from live.ui.hotkeys import key_from_waitkey
from live.ui.hud import draw_text_lines

PANEL_HEIGHT = 384  # both panels are scaled to this height: large enough to judge the face, fits a laptop screen
STATUS_HEIGHT = 28
FRAMING_OPACITY = 0.4  # enough to see the avatar's eyes and chin line, not so much that your own face disappears


@dataclass(frozen=True)
class Framing:
    """The framing guide: the avatar image (uint8 RGB, square) and how well the current pose matches it."""

    avatar_rgb: np.ndarray
    score: float | None = None  # 0..100 (calibration.best_frame), None while not measured
    region: tuple[float, float, float, float] | None = None  # the animated square in the output's pixels


def compose(camera_bgr: np.ndarray, box: CropBox | None, output_rgb: np.ndarray, *, hud_lines=(),
            status: str = "", panel_height: int = PANEL_HEIGHT, framing: Framing | None = None) -> np.ndarray:
    """BGR image: [camera with crop box | avatar output] above a status bar; HUD lines top-left."""
    h, w = camera_bgr.shape[:2]
    scale = panel_height / h
    camera = cv2.resize(camera_bgr, (max(1, int(round(w * scale))), panel_height), interpolation=cv2.INTER_AREA
                        if scale < 1 else cv2.INTER_LINEAR)
    if box is not None and framing is not None:
        _blend_framing(camera, box, scale, framing)
    if box is not None:
        x0, y0, x1, y1 = box.corners()
        cv2.rectangle(camera, (int(x0 * scale), int(y0 * scale)), (int(x1 * scale) - 1, int(y1 * scale) - 1),
                      (0, 255, 0), 2)
    output = cv2.cvtColor(output_rgb, cv2.COLOR_RGB2BGR)
    out_h, out_w = output.shape[:2]
    out_scale = panel_height / out_h
    output = cv2.resize(output, (max(1, int(round(out_w * out_scale))), panel_height),
                        interpolation=cv2.INTER_AREA if out_scale < 1 else cv2.INTER_LINEAR)
    if framing is not None and framing.region is not None:
        x0, y0, x1, y1 = (int(round(v * out_scale)) for v in framing.region)
        cv2.rectangle(output, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 255), 1, cv2.LINE_AA)
    top = np.hstack([camera, output])
    bar = np.zeros((STATUS_HEIGHT, top.shape[1], 3), np.uint8)
    if status:
        cv2.putText(bar, status, (8, STATUS_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    image = np.vstack([top, bar])
    if hud_lines:
        draw_text_lines(image, list(hud_lines))
    return image


def _blend_framing(camera: np.ndarray, box: CropBox, scale: float, framing: Framing) -> None:
    """Blend the avatar into the crop box of the (scaled) camera panel, in place, and write the score under it."""
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box.corners())
    side = max(1, x1 - x0)
    avatar = cv2.resize(cv2.cvtColor(framing.avatar_rgb, cv2.COLOR_RGB2BGR), (side, side),
                        interpolation=cv2.INTER_LINEAR)
    h, w = camera.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)  # the box may pass the edge
    if cx1 > cx0 and cy1 > cy0:
        region = camera[cy0:cy1, cx0:cx1]
        part = avatar[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        camera[cy0:cy1, cx0:cx1] = cv2.addWeighted(part, FRAMING_OPACITY, region, 1.0 - FRAMING_OPACITY, 0.0)
    label = f"match {framing.score:.0f}" if framing.score is not None else "match -"
    origin = (min(cx0, w - 1) + 4, max(min(cy1, h) - 8, 16))  # bottom-left inside the box, dark outline for contrast
    cv2.putText(camera, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(camera, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)


MAX_KEYS_PER_POLL = 64  # a key held down auto-repeats; stop draining somewhere so a frame always follows


class PreviewWindow:
    """An OpenCV window and a key source: `show()` draws one frame, `poll()` returns every key pressed since the
    last poll (the live loop reads it with its other key sources, between frames)."""

    def __init__(self, title: str = "live avatar (q to quit)"):
        self.title = title
        self._open = False
        self._pending: list[str] = []  # keys read while pumping the GUI in show(), until the next poll()
        self.closed_by_user = False

    def show(self, camera_bgr, box, output_rgb, *, hud_lines=(), status: str = "",
             framing: Framing | None = None) -> None:
        image = compose(camera_bgr, box, output_rgb, hud_lines=hud_lines, status=status, framing=framing)
        if not self._open:
            cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE)
            self._open = True
        cv2.imshow(self.title, image)
        self._drain()  # waitKeyEx also pumps the GUI event loop; without it the window never paints

    def poll(self) -> list[str]:
        """Every key pressed since the last poll, in order (a burst of three `o` is three `o`); "q" once the
        window was closed."""
        if self._open:
            self._drain()
        keys, self._pending = self._pending, []
        return keys

    def _drain(self) -> None:
        for _ in range(MAX_KEYS_PER_POLL):
            code = cv2.waitKeyEx(1)
            if code == -1:
                break
            key = key_from_waitkey(code)
            if key:
                self._pending.append(key)
        if not self.closed_by_user and self._window_gone():
            self.closed_by_user = True
            self._pending.append("q")  # closing the window ends the session like the quit key

    def _window_gone(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)  # let the GUI thread actually remove it
            except cv2.error:
                pass
