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
