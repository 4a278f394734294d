"""Offline animation: an avatar image + driving frames (numpy array or video file) -> output frames.

    python -m live.cli.animate --avatar face.png --driving clip.mp4 --output out.mp4 --checkpoint vox-cpk.pth.tar

FOMM demo semantics: the first driving frame is the neutral (initial) pose, motion is relative to it. An app on top
of the engine and calibration (hence in live/, not engines/); `run_live.py --driving ... --output ...` is the
full-featured offline path (face crop, smoothing, progress), this is the minimal one of FOMM's demo. Both share the
avatar loader (a non-square avatar is centre-cropped, not squashed as in FOMM's demo; alpha over white), the
up-front output checks, the recording sink and the signal handling (docs/recording.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from calibration.neutral_pose import NeutralPose
from engines.cli import ArgumentParser
from engines.engine import FOMMEngine
from engines.errors import UserError
from engines.image import to_model_input, to_uint8_image
from engines.protocol import Engine
from live.signals import run_command


def animate(engine: Engine, avatar_rgb: np.ndarray, driving_rgb: Iterable[np.ndarray], *, relative=True,
            adapt_movement_scale=True, relative_jacobian=True) -> Iterator[np.ndarray]:
    """Yield one uint8 RGB frame (model size) per driving frame (uint8 or float RGB, any size)."""
    state = engine.encode(to_model_input(avatar_rgb, engine.image_size, engine.device))
    neutral = NeutralPose(relative_jacobian=relative_jacobian, adapt_movement_scale=adapt_movement_scale)
    neutral.set_source(state.kp)
    for frame in driving_rgb:
        kp = engine.detect(to_model_input(frame, engine.image_size, engine.device))
        if relative:
            if not neutral.is_calibrated:
                neutral.calibrate(kp)  # the first driving frame is the neutral pose, as in FOMM's demo
            kp = neutral.normalize(kp)
        yield to_uint8_image(engine.render(state, kp).image)


def read_video_rgb(path) -> tuple[Iterator[np.ndarray], float, int]:
    """(frames iterator, fps, frame count) of a video file, frames as RGB uint8."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: video file not found")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames():
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    return frames(), fps, count


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m live.cli.animate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", required=True, help="avatar image")
    parser.add_argument("--driving", required=True, help="driving video file")
    parser.add_argument("--output", required=True, help="output .mp4")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="vox-cpk.pth.tar or vox-adv-cpk.pth.tar")
    weights.add_argument("--deterministic-weights", action="store_true",
                         help="generated weights (tests/demos; output is not a face)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--absolute", action="store_true", help="absolute keypoints instead of relative motion")
    parser.add_argument("--no-adapt-scale", action="store_true")
    parser.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=True,
                        help="grid_sample semantics: True = torch 1.0 (training time, default)")
    args = parser.parse_args(argv)
    return run_command(lambda: render(args))


def render(args) -> int:
    """The CLI's work, under run_command: the same up-front checks and recording sink as run_live.py."""
    from tqdm import tqdm

    from engines.config import VOX_256
    from live.pipeline.avatars import load_avatar
    from live.devices.sinks import VideoFileSink, check_output, check_recording_support, leftover_notice

    check_output(args.output, {"--driving": args.driving, "--avatar": args.avatar, "--checkpoint": args.checkpoint})
    check_recording_support()
    avatar = load_avatar(args.avatar, VOX_256.image_size)  # same rules as run_live.py: header checked first
    try:
        frames, fps, count = read_video_rgb(args.driving)
    except ValueError as error:
        raise UserError(str(error)) from None
    notice = leftover_notice(args.output)
    if notice:
        print(notice, file=sys.stderr)
    if args.deterministic_weights:
        engine = FOMMEngine.from_deterministic_weights(device=args.device, align_corners=args.align_corners)
    else:
        engine = FOMMEngine.from_checkpoint(args.checkpoint, device=args.device, align_corners=args.align_corners)
    # frames go to out.partial-*.mp4 and replace out.mp4 only once finalised (see VideoFileSink)
    with VideoFileSink(args.output, fps=fps) as sink:
        for frame in tqdm(animate(engine, avatar, frames, relative=not args.absolute,
                                  adapt_movement_scale=not args.no_adapt_scale),
                          total=count or None, unit="frame"):
            sink.send(frame)
    print(f"wrote {sink.path} ({sink.frames_sent} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
