"""The avatars of one run (`--avatar FILE|FOLDER`) and which one is active.

Switching must be instant mid-call, so each avatar is encoded by the engine (the source half of FOMM) once and
cached. The first `eager` avatars (the ones keys 1-9 reach) are encoded up front; the rest on first use. All images
are *read* up front, so a broken file in the folder is reported at start, not in the middle of a call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.framing import Canvas
from engines.image import to_model_input
from live.pipeline.avatars import AvatarPhoto, FaceFraming, load_avatar_images


@dataclass
class Avatar:
    name: str
    image: np.ndarray               # uint8 RGB [S, S, 3]: the model's square, what the engine encodes (and what
                                    # is shown "at rest" without compositing)
    state: object = field(default=None, repr=False)  # engine SourceState, filled by AvatarSet on first use
    photo: AvatarPhoto | None = field(default=None, repr=False)  # its own photo on the output canvas (compositing;
                                    # None: the square is the whole photo, e.g. a snapshot)
    face_found: bool | None = None  # whether the square was cut around a face found in the photo (None: not looked)


def load_avatars(path, size: int, on_skip=None, *, canvas: Canvas | None = None,
                 framing: FaceFraming | None = None) -> list[Avatar]:
    """Avatars from a file or a folder (images in name order); raises AvatarError (one line) for a missing or
    unreadable file, so the app can check `--avatar` before the slow model load. Unreadable files in a folder are
    skipped, each with a notice through `on_skip(text)` (see avatars.load_avatar_images). `framing`: cut the
    model's square around the face found in each photo; `canvas`: keep each photo on that output canvas too."""
    return [Avatar(Path(p).name, loaded.crop, photo=loaded.photo, face_found=loaded.face_found)
            for p, loaded in load_avatar_images(path, size, on_skip, canvas=canvas, framing=framing)]


class AvatarSet:
    """Ordered avatars with a current one. It only holds and encodes them: whoever switches (the live loop) tells
    the rest (the neutral pose needs the new avatar's keypoints)."""

    def __init__(self, avatars: list[Avatar], engine, *, eager: int = 9):
        if not avatars:
            raise ValueError("AvatarSet needs at least one avatar")
        self._avatars = list(avatars)
        self._engine = engine
        self.index = 0
        for avatar in self._avatars[:eager]:
            self._ensure_encoded(avatar)

    def __len__(self) -> int:
        return len(self._avatars)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self._avatars]

    @property
    def current(self) -> Avatar:
        return self._ensure_encoded(self._avatars[self.index])

    def select(self, index: int) -> bool:
        """Switch to avatar `index` (0-based); False (and no change) when there is no such avatar."""
        if not 0 <= index < len(self._avatars):
            return False
        self.index = index
        self._ensure_encoded(self._avatars[index])  # avatars beyond the eager ones: encoded on first use
        return True

    def add(self, avatar: Avatar) -> int:
        """Append a new avatar (encoded now, so a failing encode leaves the set as it was); returns its index."""
        self._ensure_encoded(avatar)
        self._avatars.append(avatar)
        return len(self._avatars) - 1

    def _ensure_encoded(self, avatar: Avatar) -> Avatar:
        if avatar.state is None:
            x = to_model_input(avatar.image, size=self._engine.image_size, device=self._engine.device)
            avatar.state = self._engine.encode(x)
        return avatar
