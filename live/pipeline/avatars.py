"""Avatar images: find them on disk and load them as the square RGB image the model animates.

Loading rules (every avatar ends up uint8 RGB [size, size, 3]):
- grayscale is replicated to three channels;
- 16-bit and float images are scaled to 8 bit;
- transparency is composited over WHITE: a cut-out portrait then looks like a studio photo, which the face model
  handles better than the arbitrary colour hidden under transparent pixels (often black or garbage);
- non-square images are centre-cropped to a square of the shorter side (faces are usually centred; cropping keeps
  the aspect ratio instead of squashing the face), then resized with INTER_AREA to shrink (no aliasing) or
  INTER_CUBIC to enlarge (sharper than linear);
- the header is read first: an image declaring more pixels (or decoded bytes) than engines.image_header's budget
  is refused with one line before anything is decoded, the file is read once (after its size was checked against
  what such an image can take) and decoded once.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engines.files import FileRefused
from engines.image_header import ImageRejected, decode_checked, read_image_file
from live.devices.images import IMAGE_EXTENSIONS, image_files
from live.errors import AvatarError


def list_avatar_paths(path) -> list[Path]:
    """A file -> [file]; a folder -> its images sorted by name. Raises AvatarError if there is nothing to load."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AvatarError(f"avatar not found: {p}")
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise AvatarError(f"avatar path is neither a file nor a folder: {p}")
    images = image_files(p)
    if not images:
        raise AvatarError(f"no avatar images in folder {p} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Any decoded sample type -> uint8 at the same shape, without a wider temporary copy of the image."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return cv2.convertScaleAbs(img, alpha=1 / 257)  # rounds like (v + 128) // 257
    if np.issubdtype(img.dtype, np.floating):
        # Float images (EXR/TIFF) are nominally 0..1; NaN/inf become 0/clipped rather than garbage.
        return (np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        scaled = (img.astype(np.float64) - info.min) / (info.max - info.min)
        return (scaled * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {img.dtype}")


def _strip_to_rgb(img: np.ndarray) -> np.ndarray:
    img = _to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 2:  # gray + alpha
        img = np.dstack([img[:, :, 0]] * 3 + [img[:, :, 1]])
        channels = 4
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor((bgr + 0.5).astype(np.uint8), cv2.COLOR_BGR2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported channel count {channels}")


STRIP_ROWS = 256  # conversion temporaries (float alpha blending) cost a strip, not the whole image


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """Decoded OpenCV image (any channel count and depth) -> uint8 RGB, alpha composited over white."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] not in (2, 3, 4):
        raise ValueError(f"unsupported channel count {img.shape[2]}")
    out = np.empty((*img.shape[:2], 3), np.uint8)
    for top in range(0, img.shape[0], STRIP_ROWS):
        out[top:top + STRIP_ROWS] = _strip_to_rgb(img[top:top + STRIP_ROWS])
    return out


def _centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square of the shorter side, then resize to size x size."""
    square = _centre_square(rgb)
    side = square.shape[0]
    if side == size:
        return np.ascontiguousarray(square)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def _decode_avatar(p: Path) -> np.ndarray:
    """Read once (engines.image_header.read_image_file: regular file, header within the budget, file size within
    what that image can take) and decode once. Images that may carry alpha are decoded as stored (UNCHANGED keeps
    alpha and 16-bit depth); the others in colour with their depth, which also applies the EXIF orientation phone
    JPEGs need (UNCHANGED ignores it)."""
    try:
        data, header = read_image_file(p, what="avatar image")
        flags = cv2.IMREAD_UNCHANGED if header.channels in (2, 4) else cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
        image, _ = decode_checked(data, flags)
    except FileRefused as e:
        raise AvatarError(str(e)) from None
    except ImageRejected as e:
        raise AvatarError(f"cannot read avatar image {p}: {e}") from None
    return image


def load_avatar(path, size: int = 256) -> np.ndarray:
    """Load an avatar image as uint8 RGB [size, size, 3]. Raises AvatarError naming the file if it can't
    (one line; also for an image whose header declares more pixels than engines.image_header allows)."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise AvatarError(f"avatar not found: {p}")
    if not p.is_file():
        raise AvatarError(f"avatar is not a file: {p}")
    img = _decode_avatar(p)
    try:
        rgb = _to_rgb(_centre_square(img))  # crop first: the conversion never touches the cut-off sides
    except ValueError as e:
        raise AvatarError(f"cannot use avatar image {p}: {e}") from None
    return square_resize(rgb, size)


def load_avatar_images(path, size: int = 256, on_skip=None) -> list[tuple[Path, np.ndarray]]:
    """(path, image) for every usable avatar of `--avatar FILE|FOLDER`.

    A single file must load (AvatarError otherwise). In a folder, one bad file must not end the run: each
    unreadable image is skipped with a one-line notice through `on_skip(text)`, and only a folder with no usable
    image at all is an AvatarError.
    """
    paths = list_avatar_paths(path)
    if Path(path).expanduser().is_file():
        return [(paths[0], load_avatar(paths[0], size=size))]
    loaded, reasons = [], []
    for p in paths:
        try:
            loaded.append((p, load_avatar(p, size=size)))
        except AvatarError as e:
            reasons.append(str(e))
            if on_skip is not None:
                on_skip(f"notice: skipping an unusable avatar ({e})")
    if not loaded:
        raise AvatarError(f"no usable avatar image in folder {Path(path).expanduser()}: all {len(paths)} failed to "
                          f"load (first: {reasons[0]})")
    return loaded
