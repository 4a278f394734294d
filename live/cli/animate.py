"""Offline animation as in FOMM's demo: an avatar image + a driving video -> an mp4.

    python -m live.cli.animate --avatar face.png --driving clip.mp4 --output out.mp4 [--checkpoint vox-cpk.pth.tar]

A thin entry to the offline mode of `run_live.py --driving clip.mp4 --output out.mp4` (live/cli/app.py Session):
the same flags where they apply, the same pipeline, checks, recording sink and signal handling (docs/recording.md),
with FOMM's demo defaults where the two differ: no face tracking (the whole frame, centre-cropped to a square, as
FOMM's demo feeds its pre-cropped clips), no keypoint smoothing, the model's own square as the output (256x256,
`--composite off`), and the plain eager torch engine (`--backend torch`, fp32: the reference; any other backend
can be chosen). As in the demo, the first driving frame is the neutral pose
and motion is relative to it (`--absolute` for the demo's absolute mode). Saved preferences are not read.
"""
from __future__ import annotations

import argparse
import sys

from engines.cli import ArgumentParser
from engines.options import add_engine_arguments
from live.cli.options import (MOTION_FLAGS, add_avatar, add_driving, add_max_frames, add_motion_arguments,
                              add_output, add_remote_arguments)
from live.signals import run_command

# Where this command's defaults differ from run_live.py's: FOMM's demo. Flags not declared here keep run_live.py's
# defaults (no virtual camera and no preview in an offline render).
# FOMM's demo writes the model's own square (256x256 for vox): no compositing into the photo
FOMM_DEMO_DEFAULTS = {"backend": "torch", "no_track": True, "no_smoothing": True, "composite": "off"}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m live.cli.animate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_avatar(p, required=True)
    add_driving(p, required=True)
    add_output(p, required=True)
    add_max_frames(p)
    add_engine_arguments(p)
    add_motion_arguments(p, only=MOTION_FLAGS)
    add_remote_arguments(p)
    p.set_defaults(**{dest: value for dest, value in FOMM_DEMO_DEFAULTS.items()
                      if any(action.dest == dest for action in p._actions)})  # noqa: SLF001
    return p


def session_args(argv=None) -> argparse.Namespace:
    """run_live.py's arguments for this command line: its defaults, FOMM's demo defaults, then the flags given."""
    from live.cli.app import build_parser as run_parser

    args = run_parser().parse_args([])
    vars(args).update(FOMM_DEMO_DEFAULTS)
    vars(args).update(vars(build_parser().parse_args(argv)))
    return args


def main(argv=None) -> int:
    args = session_args(argv)

    def body() -> int:
        from live.cli.app import Session, check_environment, validate_args
        validate_args(args)
        check_environment(args)
        return Session(args).run()
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
