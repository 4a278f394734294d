"""Image files on disk, shared by avatars (`--avatar FOLDER`) and driving sources (`--driving FOLDER`)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from live.errors import CaptureError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


def is_image_name(path: Path) -> bool:
    # Dot-files are skipped: macOS leaves "._face.png" resource forks next to real images on shared drives.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith('.')


def image_files(folder: Path) -> list[Path]:
    """The folder's image files sorted by name (case-insensitive first, so a.png, B.png, c.png); may be empty."""
    return sorted((c for c in Path(folder).iterdir() if c.is_file() and is_image_name(c)),
                  key=lambda c: (c.name.lower(), c.name))


def decode_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """The decoded image; CaptureError (one line naming the file) for an unreadable, undecodable or oversized one.

    Read and decoded like an avatar (engines.image_header): the header's size within the budget before the file
    is read, read once, decoded once - a driving folder is input from outside too. Reading the bytes ourselves
    also opens non-ASCII paths on Windows, which cv2.imread cannot.
    """
    from engines.files import FileRefused
    from engines.image_header import ImageRejected, decode_checked, read_image_file

    try:
        data, _ = read_image_file(path, what="image")
        image, _ = decode_checked(data, flags)
    except FileRefused as e:
        raise CaptureError(str(e)) from None
    except ImageRejected as e:
        raise CaptureError(f"cannot read image {path}: {e}") from None
    return image
