"""Image files on disk, shared by avatars (`--avatar FOLDER`) and driving sources (`--driving FOLDER`)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


def is_image_name(path: Path) -> bool:
    # Dot-files are skipped: macOS leaves "._face.png" resource forks next to real images on shared drives.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith('.')


def image_files(folder: Path) -> list[Path]:
    """The folder's image files sorted by name (case-insensitive first, so a.png, B.png, c.png); may be empty."""
    return sorted((c for c in Path(folder).iterdir() if c.is_file() and is_image_name(c)),
                  key=lambda c: (c.name.lower(), c.name))


def decode_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """The decoded image, or None for an empty/undecodable file.

    np.fromfile + imdecode instead of cv2.imread: imread cannot open non-ASCII paths on Windows.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    return cv2.imdecode(data, flags)
