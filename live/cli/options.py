"""The live commands' flags, one group per concern, declared once and shared by `run_live.py` / `live-avatar` (and
its doctor, which checks the run those flags would start), and `python -m live.cli.animate`. The engine's own group
lives in engines/options.py (the render server and the benchmark use it too); the audio group in
live/audio/pass_through.py.

A value is checked by its flag's `type=` (engines/cli.py: ranges, finite numbers, WxH sizes), so the command line
and the saved preferences refuse the same values with the same words. What depends on several flags at once is
checked in one place, `check_combinations`, before anything slow runs.
"""
from __future__ import annotations

import argparse
import math

from calibration.smoothing import DEFAULT_BETA, DEFAULT_MIN_CUTOFF
from engines.cli import dimensions, number, positive
from engines.errors import UserError
from live.devices.cameras import camera_spec
from live.pipeline.crop import TrackerSettings

AUTO_CALIBRATE_FRAMES = 10  # still frames before --auto-calibrate takes the neutral pose
MAX_SIZE = (7680, 4320)


size = dimensions(high=MAX_SIZE)  # the argparse type of WIDTHxHEIGHT flags (--camera-size, --vcam-size)


def add_avatar(p, *, required: bool = False) -> None:
    p.add_argument("--avatar", metavar="PATH", required=required,
                   help="avatar image, or a folder of images" + ("" if required else " (required for a run)"))


def add_driving(g, *, required: bool = False) -> None:
    g.add_argument("--driving", metavar="FILE|FOLDER", required=required,
                   help="drive from a video file or image folder" + ("" if required else " instead of the webcam"))


def add_max_frames(g) -> None:
    g.add_argument("--max-frames", type=positive(int), metavar="N", help="stop after N frames")


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--camera", type=camera_spec, default=0, metavar="N|NAME",
                   help="webcam index, or part of its name as --list-cameras shows it (default 0)")
    g.add_argument("--camera-size", type=size, metavar="WxH", help="ask the webcam for this resolution")
    add_driving(g)
    g.add_argument("--loop", action="store_true", help="restart --driving at its end (live mode only)")
    add_max_frames(g)


def add_output(g, *, required: bool = False) -> None:
    g.add_argument("--output", metavar="OUT.mp4", required=required,
                   help="write the avatar video to this mp4 file" + ("" if required else " (too)"))


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    add_output(g)
    g.add_argument("--vcam", action=argparse.BooleanOptionalAction, default=None,
                   help="send to a virtual camera (default: on, except when rendering --driving to --output)")
    g.add_argument("--vcam-size", type=size, default=(1280, 720), metavar="WxH",
                   help="virtual camera resolution (default 1280x720)")
    g.add_argument("--vcam-fps", type=positive(float, high=240.0), metavar="FPS",
                   help="virtual camera frame rate (default: the input's; at most 240)")
    g.add_argument("--vcam-device", metavar="NAME", help="virtual camera device, e.g. /dev/video2")
    g.add_argument("--vcam-backend", metavar="NAME",
                   help="pyvirtualcam backend: v4l2loopback, obs or unitycapture (default: the OS's first)")
    g.add_argument("--vcam-mode", choices=("fit", "fill"), default="fit",
                   help="the avatar's photo (or square) on the --vcam-size canvas: fit (borders) or fill (crop); "
                        "default fit")
    g.add_argument("--composite", choices=("on", "off"), default="on",
                   help="on (default): the avatar's own photo at --vcam-size, the face animated in place, sharper "
                        "than the model's 256 px; off: the model's square alone (placed on the canvas), as before")
    g.add_argument("--preview", action=argparse.BooleanOptionalAction, default=None,
                   help="preview window with camera, crop box, avatar and HUD (default: on where a display "
                        "exists)")


# The motion flags an offline render of FOMM's demo has too (python -m live.cli.animate)
MOTION_FLAGS = ("absolute", "no_relative_jacobian", "no_adapt_scale")


def add_motion_arguments(p: argparse.ArgumentParser, *, only=None) -> None:
    """The calibration and motion group; `only`: the dests to declare (default all)."""
    def wanted(dest: str) -> bool:
        return only is None or dest in only

    g = p.add_argument_group("calibration and motion")
    if wanted("auto_calibrate"):
        g.add_argument("--auto-calibrate", action="store_true",
                       help=f"calibrate by itself once you hold still for {AUTO_CALIBRATE_FRAMES} frames")
    if wanted("best_frame"):
        g.add_argument("--best-frame", action="store_true",
                       help="start in best-frame mode (recalibrate whenever your pose matches the avatar better; "
                            "its landmarks load in the background at the start)")
    if wanted("absolute"):
        g.add_argument("--absolute", action="store_true",
                       help="absolute motion: use your keypoints as they are, no calibration (only looks right when "
                            "your face is framed like the avatar's)")
    if wanted("no_calibrate_first"):
        g.add_argument("--no-calibrate-first", action="store_true",
                       help="offline mode: do not take the first frame as the neutral pose (wait for a key/auto)")
    if wanted("no_relative_jacobian"):
        g.add_argument("--no-relative-jacobian", action="store_true",
                       help="use the driving jacobians as they are instead of relative to the neutral pose")
    if wanted("no_adapt_scale"):
        g.add_argument("--no-adapt-scale", action="store_true",
                       help="do not scale your motion to the avatar's face size")
    if wanted("no_smoothing"):
        g.add_argument("--no-smoothing", action="store_true", help="turn keypoint anti-jitter filtering off")
    if wanted("smooth_min_cutoff"):
        # above the frame rate the filter no longer smooths at all
        g.add_argument("--smooth-min-cutoff", type=number(float, low=0.0, high=100.0, low_open=True),
                       default=DEFAULT_MIN_CUTOFF, metavar="HZ",
                       help=f"anti-jitter strength at rest: lower is steadier but slower (> 0 and <= 100; default "
                            f"{DEFAULT_MIN_CUTOFF})")
    if wanted("smooth_beta"):
        # negative would close the filter as motion grows
        g.add_argument("--smooth-beta", type=number(float, low=0.0, high=1000.0), default=DEFAULT_BETA, metavar="B",
                       help=f"how fast the filter opens up for quick motion: higher lags less (0..1000; default "
                            f"{DEFAULT_BETA})")


def add_crop_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("face crop")
    g.add_argument("--no-track", action="store_true", help="no face tracking: fixed centre crop, moved by keys")
    # below 0.5 the crop is inside the face
    g.add_argument("--crop-scale", type=number(float, low=0.5, high=8.0), default=None, metavar="F",
                   help=f"crop side as a multiple of the detected face size, in the webcam and in the avatar "
                        f"photo (0.5..8; default {TrackerSettings.scale:g}: whole head)")
    g.add_argument("--mirror", action="store_true", help="mirror the camera image")


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("remote rendering (render on a GPU server: python -m remote.server)")
    g.add_argument("--remote", metavar="ws://HOST:PORT",
                   help="render on this server instead of locally (wss:// through a TLS proxy); keypoints, "
                        "calibration and smoothing stay here; the server's --align-corners must match this run's")
    g.add_argument("--token-file", metavar="FILE", help="file holding the server's shared secret")
    g.add_argument("--remote-quality", type=number(int, low=1, high=100), default=90, metavar="Q",
                   help="JPEG quality of the frames the server sends back (1-100, default 90)")


def is_offline(args) -> bool:
    """--driving with --output: every frame in order into the file (the other mode is live)."""
    return getattr(args, "driving", None) is not None and getattr(args, "output", None) is not None


def check_combinations(args) -> None:
    """Raise UserError (one line) for flags that cannot work together, before anything slow or destructive runs.
    Single values were checked by their flags' types already."""
    from live.audio.pass_through import validate_audio_args

    # the groups above check their numbers in their types; a plain float() elsewhere (--audio-offset) accepts
    # "nan" and "inf", which would give black video or a traceback mid-run
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{dest.replace('_', '-')} must be a finite number, got {value}")
    if is_offline(args) and getattr(args, "loop", False):
        raise UserError("--loop cannot be combined with --output for a --driving file (the render would never "
                        "end); drop one of them")
    validate_audio_args(args)
    output = getattr(args, "output", None)
    if output:
        from live.devices.sinks import check_output
        check_output(output, {"--driving": getattr(args, "driving", None), "--avatar": getattr(args, "avatar", None),
                              "--checkpoint": getattr(args, "checkpoint", None)})
