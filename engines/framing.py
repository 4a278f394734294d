"""The model's input square in a bigger picture: a box in frame pixels and how it is cut out.

The webcam crop (live/pipeline/crop.py) and the preview share this geometry; it lives at the bottom layer so that
everything drawing or cutting the square agrees on its pixel bounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropBox:
    """A square in frame pixels: centre (cx, cy) and side length `size` (floats; may extend past the frame)."""

    cx: float
    cy: float
    size: float

    def corners(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) integer pixel bounds, x1/y1 exclusive, exactly `round(size)` wide and high."""
        side = max(1, int(round(self.size)))
        x0 = int(math.floor(self.cx - side / 2.0 + 0.5))
        y0 = int(math.floor(self.cy - side / 2.0 + 0.5))
        return x0, y0, x0 + side, y0 + side


def centred_box(width: int, height: int) -> CropBox:
    """The largest square centred in the frame: the starting box and the box with tracking off."""
    return CropBox(width / 2.0, height / 2.0, float(min(width, height)))


def fit_box(box: CropBox, width: int, height: int, min_size: float = 16.0) -> CropBox:
    """Keep the box usable: side within [min_size, max(width, height)], and inside the frame along every axis the
    box fits in (shifting beats padding: a face at the edge stays sharp instead of half black)."""
    size = float(np.clip(box.size, min(min_size, width, height), max(width, height)))
    cx, cy = box.cx, box.cy
    cx = float(np.clip(cx, size / 2.0, width - size / 2.0)) if size <= width else width / 2.0
    cy = float(np.clip(cy, size / 2.0, height - size / 2.0)) if size <= height else height / 2.0
    return CropBox(cx, cy, size)


def crop_square(frame: np.ndarray, box: CropBox, out_size: int = 256) -> np.ndarray:
    """Cut `box` out of `frame` (any channel order, kept) and resize to out_size x out_size.

    Parts of the box outside the frame are filled by repeating the edge pixels: a hard black bar would be a strong
    edge the keypoint detector could latch onto.
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box.corners()
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:  # box entirely off-frame: nothing sensible to show, fall back to the centre
        return crop_square(frame, centred_box(w, h), out_size)
    patch = frame[cy0:cy1, cx0:cx1]
    pad = (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, borderType=cv2.BORDER_REPLICATE)
    shrinking = patch.shape[0] > out_size
    return cv2.resize(patch, (out_size, out_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# --- one picture placed in another: crop square <-> photo <-> canvas ------------------------------------------------
# Coordinates here are continuous pixel-edge coordinates: pixel i covers [i, i+1) and its centre is i + 0.5. Cutting a
# square, resizing a picture (cv2.resize aligns pixel centres exactly this way) and placing it on a canvas are all an
# axis-aligned scale and shift, so any chain of them is one Placement too.
@dataclass(frozen=True)
class Placement:
    """x' = x * sx + dx, y' = y * sy + dy: where a pixel position of one picture lies in another."""

    sx: float
    sy: float
    dx: float = 0.0
    dy: float = 0.0

    def point(self, x: float, y: float) -> tuple[float, float]:
        return x * self.sx + self.dx, y * self.sy + self.dy

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        (a, b), (c, d) = self.point(x0, y0), self.point(x1, y1)
        return a, b, c, d

    def inverse(self) -> "Placement":
        return Placement(1.0 / self.sx, 1.0 / self.sy, -self.dx / self.sx, -self.dy / self.sy)

    def then(self, other: "Placement") -> "Placement":
        """This placement followed by `other` (e.g. crop -> photo, then photo -> canvas)."""
        return Placement(self.sx * other.sx, self.sy * other.sy, self.dx * other.sx + other.dx,
                         self.dy * other.sy + other.dy)


def crop_placement(box: CropBox, out_size: int) -> Placement:
    """Model-input pixels -> frame pixels for the square `crop_square(frame, box, out_size)` cuts: its integer
    corners, resized to out_size."""
    x0, y0, x1, y1 = box.corners()
    scale = (x1 - x0) / out_size
    return Placement(scale, scale, float(x0), float(y0))


CANVAS_MODES = ("fit", "fill")
CANVAS_COLOR = (32, 32, 32)  # RGB dark grey beside a fitted picture: calmer than black bars, reads as background


@dataclass(frozen=True)
class Canvas:
    """The output frame: width x height pixels, and how a picture of another shape goes on it (`fit`: whole, with
    borders in `color`; `fill`: covering it, the overflow cut off)."""

    width: int
    height: int
    mode: str = "fit"
    color: tuple[int, int, int] = CANVAS_COLOR

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def canvas_placement(width: int, height: int, canvas_w: int, canvas_h: int,
                     mode: str = "fit") -> tuple[Placement, tuple[int, int]]:
    """Where a width x height picture goes on a canvas_w x canvas_h canvas: (its Placement, the size it is resized
    to). fit: the whole picture, as large as fits, centred (borders beside it); fill: covering the canvas, centred,
    the overflow cut off. Sizes are whole pixels, so the two scales can differ by a fraction of a pixel."""
    if mode not in CANVAS_MODES:
        raise ValueError(f"unknown canvas mode {mode!r} (use one of {', '.join(CANVAS_MODES)})")
    if width <= 0 or height <= 0 or canvas_w <= 0 or canvas_h <= 0:
        raise ValueError(f"sizes must be positive, got {width}x{height} on {canvas_w}x{canvas_h}")
    if mode == "fit":
        scale = min(canvas_w / width, canvas_h / height)
        new_w, new_h = min(canvas_w, max(1, round(width * scale))), min(canvas_h, max(1, round(height * scale)))
        left, top = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    else:
        scale = max(canvas_w / width, canvas_h / height)
        new_w, new_h = max(canvas_w, round(width * scale)), max(canvas_h, round(height * scale))
        left, top = -((new_w - canvas_w) // 2), -((new_h - canvas_h) // 2)
    return Placement(new_w / width, new_h / height, float(left), float(top)), (new_w, new_h)


@dataclass(frozen=True)
class PhotoLayout:
    """One avatar on the output canvas: where its photo lies, and where the model's input square lies in it.

    canvas      (width, height) of the output frame
    photo_rect  (x0, y0, x1, y1) whole canvas pixels covered by the photo (clipped to the canvas; the rest is border)
    crop        model-input pixels -> canvas pixels (the crop square of the photo, carried onto the canvas)
    image_size  side of the model's square (256 for vox)
    """

    canvas: tuple[int, int]
    photo_rect: tuple[int, int, int, int]
    crop: Placement
    image_size: int

    @property
    def crop_rect(self) -> tuple[float, float, float, float]:
        """The crop square on the canvas (may reach past the photo and the canvas)."""
        s = self.image_size
        return self.crop.rect(0.0, 0.0, float(s), float(s))

    def region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the canvas pixels whose centres lie in the crop square and on the photo - the only
        pixels the animation may change. Empty (x1 <= x0) when the square is off the photo."""
        cx0, cy0, cx1, cy1 = self.crop_rect
        px0, py0, px1, py1 = self.photo_rect
        x0, y0 = max(math.ceil(cx0 - 0.5), px0), max(math.ceil(cy0 - 0.5), py0)
        x1, y1 = min(math.floor(cx1 - 0.5) + 1, px1), min(math.floor(cy1 - 0.5) + 1, py1)
        return x0, y0, max(x0, x1), max(y0, y1)

    def feathered_sides(self) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): True where the photo goes on beyond that side of the crop square, so the
        animation must fade into the still photo there; False where the square meets the photo's (or the canvas')
        own edge, beyond which nothing of the photo shows."""
        cx0, cy0, cx1, cy1 = self.crop_rect
        px0, py0, px1, py1 = self.photo_rect
        return cx0 > px0 + 0.5, cy0 > py0 + 0.5, cx1 < px1 - 0.5, cy1 < py1 - 0.5
