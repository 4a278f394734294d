"""The README's before/after pictures: what a video call sees of the same avatar frame without and with compositing.

    python scripts/readme_pictures.py [--out docs/pictures]

The avatar photo is scikit-image's astronaut (bundled, no download) at its own 512 px in a 1280x720 picture of a
room; it is loaded like `run_live.py --avatar` loads it (the face found, the square cut around it, the photo kept
on the 1280x720 canvas). The frame comes from the oracle renderer of engines/composite_bench.py - the true motion
of the photo, rendered at 256 px and softened the way FOMM's output is, with the motion at 64x64 - because a
published checkpoint is not needed to judge the compositing (and generated test weights do not draw a face).

before.png: what `--composite off` (and every release before it) sends: the 256-px square on the canvas.
after.png:  what `--composite on` sends: the photo at full resolution, the face animated in it.
Both are written at half size (640x360) to keep the repository small; the figures in the README come from
`python -m engines.bench --composite-only`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.composite import Compositor  # noqa: E402
from engines.composite_bench import call_oracle  # noqa: E402
from engines.framing import Canvas  # noqa: E402
from engines.image import to_uint8_image  # noqa: E402
from live.devices.sinks import place_on_canvas  # noqa: E402
from live.pipeline.avatars import FaceFraming, frame_avatar  # noqa: E402

CANVAS = (1280, 720)


def room_photo() -> np.ndarray:
    """uint8 BGR 1280x720: the astronaut at her own resolution, right of centre, in front of a plain wall."""
    from skimage.data import astronaut

    wall = np.linspace(70, 170, CANVAS[0])[None, :, None] * np.array([1.0, 0.95, 0.85])[None, None, :]
    photo = np.broadcast_to(wall, (CANVAS[1], CANVAS[0], 3)).clip(0, 255).astype(np.uint8)
    photo[150:662, 620:1132] = astronaut()
    return cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)


def pictures() -> tuple[np.ndarray, np.ndarray]:
    loaded = frame_avatar(room_photo(), 256, canvas=Canvas(*CANVAS), framing=FaceFraming(), name="room")
    photo = loaded.photo
    frame, _ = call_oracle(photo.backdrop, photo.layout)
    before = place_on_canvas(to_uint8_image(frame.image), *CANVAS)
    compositor = Compositor(CANVAS, 256)
    after = compositor.compose(compositor.plate("room", photo.backdrop, photo.layout, loaded.crop), frame).copy()
    return before, after


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "pictures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rgb in zip(("before", "after"), pictures()):
        half = cv2.resize(rgb, (CANVAS[0] // 2, CANVAS[1] // 2), interpolation=cv2.INTER_AREA)
        path = out / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(half, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
