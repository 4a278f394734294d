"""Avatar images: find them on disk and load them as the square RGB image the model animates (and, for compositing,
as the photo the animation goes back into).

Loading rules (every avatar's model input ends up uint8 RGB [size, size, 3]):
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

Any photo is an avatar (`load_avatar_image` with a `FaceFraming`): the photo is searched for a face with the
webcam crop's own detector (OpenCV's Haar cascade, shipped with opencv-python: nothing is downloaded), and the
model's square is cut around it the way the webcam crop frames a head (`--crop-scale` times the face, like the vox
training crops). A photo where no face is found falls back to the centre square, with a notice; a face that
already fills the photo (an avatar framed like the crop, e.g. a 256x256 face) gives the whole square, as before.
With a `Canvas` (compositing on) the photo is also kept, resized to the size it has on the output frame (never
larger: memory is bounded by the canvas, not the file), with the square's place in it (engines/framing.py
PhotoLayout); the square is then cut from that resized photo on whole canvas pixels, so the compositor's
per-frame resampling lines up exactly with the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.files import FileRefused
from engines.framing import Canvas, CropBox, PhotoLayout, Placement, canvas_placement, centred_box, crop_placement
from engines.framing import crop_square, fit_box
from engines.image_header import ImageRejected, decode_checked, read_image_file
from live.errors import AvatarError, UserError
from live.devices.images import IMAGE_EXTENSIONS, image_files
from live.pipeline.crop import HaarFaceDetector, face_square


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
    """Load an avatar image as uint8 RGB [size, size, 3], its centre square. Raises AvatarError naming the file if
    it can't (one line; also for an image whose header declares more pixels than engines.image_header allows)."""
    return load_avatar_image(path, size).crop


# --- any photo is an avatar: the face found, the square cut around it, the photo kept for compositing ------------
DETECT_SIDE = 800          # the photo is searched for a face at most this large (once per avatar)
MIN_FACE_FRACTION = 0.04   # faces down to 4% of the photo's shorter side are found (a person in a room)
FRAMED = 0.8               # a face square this close to the photo's shorter side: framed like the crop already


@dataclass(frozen=True)
class FaceFraming:
    """How the model's square is cut around the face found in a photo: like the webcam crop (`--crop-scale`)."""

    scale: float = 1.8


@dataclass
class AvatarPhoto:
    """An avatar's own photo on the output canvas: what the animation is composited back into."""

    backdrop: np.ndarray   # uint8 RGB [H, W, 3]: the photo placed on the canvas (fit: borders beside it)
    layout: PhotoLayout    # where the photo and the model's square lie on the canvas


@dataclass
class LoadedAvatar:
    crop: np.ndarray                # uint8 RGB [size, size, 3]: the model's input square
    photo: AvatarPhoto | None       # None without a canvas (compositing off)
    face_found: bool | None         # None: not looked for
    notice: str | None = None       # for the user: why the square is the centre one


_detector: HaarFaceDetector | None = None


def _find_face(img: np.ndarray, framing: FaceFraming, detector=None) -> tuple[CropBox | None, str | None]:
    """The square around the largest face in a decoded image (its own pixels), fitted into it; (None, why) when
    there is none."""
    global _detector
    h, w = img.shape[:2]
    factor = min(1.0, DETECT_SIDE / max(w, h))
    small = img if factor == 1.0 else cv2.resize(img, (max(1, round(w * factor)), max(1, round(h * factor))),
                                                 interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(_to_rgb(small), cv2.COLOR_RGB2GRAY)
    try:
        if detector is None:
            if _detector is None:
                _detector = HaarFaceDetector(max_width=DETECT_SIDE, min_face_fraction=MIN_FACE_FRACTION)
            detector = _detector
        faces = detector(gray)
    except UserError as exc:  # the cascade is missing or damaged: the photo still works, centred
        return None, str(exc)
    if not faces:
        return None, None
    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
    box = face_square((x / factor, y / factor, fw / factor, fh / factor), framing.scale)
    shorter = min(w, h)
    if box.size >= FRAMED * shorter:  # the face fills the photo: the whole square around it, as without a search
        box = CropBox(box.cx, box.cy, float(shorter))
    return fit_box(box, w, h), None


def _scaled_rgb(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """A decoded image (any depth and channels) as uint8 RGB at width x height. Transparency is put over white
    first (resizing colours hidden under transparent pixels would bleed them into the edges); otherwise the
    image is resized first, so the conversion only touches the resized pixels."""
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_CUBIC
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (2, 4):
        rgb = _to_rgb(img)
        return rgb if (w, h) == (width, height) else cv2.resize(rgb, (width, height), interpolation=interp)
    return _to_rgb(img if (w, h) == (width, height) else cv2.resize(img, (width, height), interpolation=interp))


def _crop_from(img: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The model's square of `box` from a decoded image: only the pixels inside are converted."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box.corners()
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return square_resize(_to_rgb(_centre_square(img)), size)
    patch = _to_rgb(img[cy0:cy1, cx0:cx1])
    return crop_square(patch, CropBox(box.cx - cx0, box.cy - cy0, box.size), size)


def frame_avatar(img: np.ndarray, size: int, *, canvas: Canvas | None = None, framing: FaceFraming | None = None,
                 name: str = "the avatar", detector=None) -> LoadedAvatar:
    """A decoded avatar image -> its model square (around the face when `framing` is given) and, with a
    `canvas`, its photo on that canvas. ValueError for an image that cannot be used."""
    h, w = img.shape[:2]
    box, face_found, notice = None, None, None
    if framing is not None:
        box, why = _find_face(img, framing, detector)
        face_found = box is not None
        if box is None:
            notice = (f"notice: no face found in {name}" + (f" ({why})" if why else "")
                      + ": animating its centre square (a photo with the face upright and clearly visible works "
                      "best)")
    if canvas is None:
        crop = square_resize(_to_rgb(_centre_square(img)), size) if box is None else _crop_from(img, box, size)
        return LoadedAvatar(crop, None, face_found, notice)
    placement, (new_w, new_h) = canvas_placement(w, h, canvas.width, canvas.height, canvas.mode)
    if box is None:
        square = centred_box(new_w, new_h)
    else:
        scale = (placement.sx + placement.sy) / 2.0
        square = fit_box(CropBox(box.cx * placement.sx, box.cy * placement.sy, box.size * scale), new_w, new_h)
    x0, y0, x1, y1 = square.corners()
    if (x0, y0, x1, y1) == (0, 0, new_w, new_h) and w == h:
        crop = square_resize(_to_rgb(img), size)  # the whole square photo: cut from the file, exactly as before
    else:
        crop = None
    scaled = _scaled_rgb(img, new_w, new_h)
    if crop is None:
        crop = crop_square(scaled, square, size)  # on whole canvas pixels: the compositor's grids line up
    left, top = int(placement.dx), int(placement.dy)
    backdrop = np.empty((canvas.height, canvas.width, 3), np.uint8)
    backdrop[:] = canvas.color
    px0, py0 = max(left, 0), max(top, 0)
    px1, py1 = min(left + new_w, canvas.width), min(top + new_h, canvas.height)
    backdrop[py0:py1, px0:px1] = scaled[py0 - top:py1 - top, px0 - left:px1 - left]
    layout = PhotoLayout(canvas.size, (px0, py0, px1, py1),
                         crop_placement(square, size).then(Placement(1.0, 1.0, float(left), float(top))), size)
    return LoadedAvatar(crop, AvatarPhoto(backdrop, layout), face_found, notice)


def loading_options(*, composite: bool, canvas_size: tuple[int, int], canvas_mode: str = "fit",
                    crop_scale: float | None = None) -> dict:
    """The avatar loader's options for a run (run_live.py and its doctor alike): the square around the face found
    in each photo (`--crop-scale`), and, compositing, each photo kept on the output canvas (`--vcam-size`,
    `--vcam-mode`)."""
    framing = FaceFraming() if crop_scale is None else FaceFraming(scale=crop_scale)
    return {"canvas": Canvas(*canvas_size, canvas_mode) if composite else None, "framing": framing}


def crop_sized_photo(crop: np.ndarray, canvas: Canvas) -> AvatarPhoto:
    """The photo of an avatar that is nothing but the model's square (a snapshot of the webcam crop): the square
    itself, placed on the canvas and animated whole."""
    return frame_avatar(crop, crop.shape[0], canvas=canvas).photo


def load_avatar_image(path, size: int = 256, *, canvas: Canvas | None = None,
                      framing: FaceFraming | None = None) -> LoadedAvatar:
    """Load an avatar file: its model square (around the face with `framing`, else the centre square) and, with a
    `canvas`, its photo on the output canvas. Raises AvatarError naming the file if it can't (one line)."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise AvatarError(f"avatar not found: {p}")
    if not p.is_file():
        raise AvatarError(f"avatar is not a file: {p}")
    img = _decode_avatar(p)
    try:
        return frame_avatar(img, size, canvas=canvas, framing=framing, name=p.name)
    except ValueError as e:
        raise AvatarError(f"cannot use avatar image {p}: {e}") from None


def load_avatar_images(path, size: int = 256, on_skip=None, *, canvas: Canvas | None = None,
                       framing: FaceFraming | None = None) -> list[tuple[Path, LoadedAvatar]]:
    """(path, loaded avatar) for every usable avatar of `--avatar FILE|FOLDER`.

    A single file must load (AvatarError otherwise). In a folder, one bad file must not end the run: each
    unreadable image is skipped with a one-line notice through `on_skip(text)`, and only a folder with no usable
    image at all is an AvatarError. Notices about usable avatars (no face found) go through `on_skip` too.
    """
    paths = list_avatar_paths(path)
    options = dict(canvas=canvas, framing=framing)
    if Path(path).expanduser().is_file():
        loaded = [(paths[0], load_avatar_image(paths[0], size, **options))]
    else:
        loaded, reasons = [], []
        for p in paths:
            try:
                loaded.append((p, load_avatar_image(p, size, **options)))
            except AvatarError as e:
                reasons.append(str(e))
                if on_skip is not None:
                    on_skip(f"notice: skipping an unusable avatar ({e})")
        if not loaded:
            raise AvatarError(f"no usable avatar image in folder {Path(path).expanduser()}: all {len(paths)} failed "
                              f"to load (first: {reasons[0]})")
    if on_skip is not None:
        for _, avatar in loaded:
            if avatar.notice:
                on_skip(avatar.notice)
    return loaded
