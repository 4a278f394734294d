"""`live-avatar doctor` (`run_live.py --doctor`): can a live run work here? One line per check, then a verdict.

Each check answers ok / warn (works, but worse than it could) / FAIL (a live run cannot work until it is fixed) /
skip (not used by this run) with what it found and, when it is not ok, what to do. The exit status is 0 when no check
failed, 1 otherwise. The same flags as a live run apply (`--camera`, `--vcam-size`, `--backend`, `--remote`, ...),
so the checks are about the run those flags would start. Nothing is downloaded; the slowest check times the engine
`--backend auto` picks on a few frames (generated weights unless the checkpoint is already here).
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engines.backends.common import describe_error
from engines.terminal_text import printable
from engines.version import __version__

TIMED_FRAMES = 3          # after the engine's own warm-up frame; the median is reported
SLOW_MS = 100.0           # slower than 10 frames/s: a live run works but looks choppy
DOCTOR_VCAM_FPS = 30.0
STATUS_WIDTH = 4


@dataclass(frozen=True)
class Check:
    name: str
    status: str           # "ok", "warn", "FAIL", "skip"
    text: str

    def line(self) -> str:
        return f"{self.status:<{STATUS_WIDTH}}  {self.name}: {self.text}"


def ok(name, text):
    return Check(name, "ok", text)


def warn(name, text):
    return Check(name, "warn", text)


def fail(name, text):
    return Check(name, "FAIL", text)


def skip(name, text):
    return Check(name, "skip", text)


# --- the checks (each takes the parsed run_live.py arguments) ----------------------------------------------------
def check_versions(args) -> Check:
    import torch
    parts = [f"live-avatar {__version__}", f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    if torch.version.cuda is None:
        parts.append("CUDA: not in this torch build")
    elif torch.cuda.is_available():
        parts.append(f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name(0)}")
    else:
        parts.append(f"CUDA {torch.version.cuda} build, no GPU found")
    try:
        import openvino
        parts.append(f"OpenVINO {openvino.__version__.split('-')[0]}")
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken native library
        return warn("versions", ", ".join(parts) + f"; OpenVINO missing ({describe_error(exc, 80)}): the CPU "
                                                   "renders several times slower (pip install -r requirements.txt)")
    return ok("versions", ", ".join(parts))


def _frame_ms(engine, frames: int) -> float:
    """Median ms of detect + render on a fixed synthetic frame (the same cost as a real face)."""
    import numpy as np
    import torch
    from engines.image import to_model_input

    rng = np.random.default_rng(0)
    avatar, driving = (to_model_input(rng.integers(0, 256, (engine.image_size, engine.image_size, 3), np.uint8),
                                      size=engine.image_size, device=engine.device) for _ in range(2))
    state = engine.encode(avatar)
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        out = engine.render(state, engine.detect(driving)).image
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        times.append((time.perf_counter() - start) * 1000.0)
    return sorted(times)[len(times) // 2]


def check_engine(args) -> Check:
    if args.remote:
        return skip("engine", f"rendering on the server ({args.remote}): see the remote line")
    from engines.backends import create_engine
    checkpoint, weights = None, "generated weights"
    if not args.deterministic_weights:
        if args.checkpoint and Path(args.checkpoint).expanduser().is_file():
            checkpoint, weights = Path(args.checkpoint).expanduser(), "your checkpoint"
        else:
            from engines.weights import cached_checkpoint
            path, problem = cached_checkpoint(verify=False)  # the weights line verifies it
            if problem is None:
                checkpoint, weights = path, "the cached checkpoint"
    # the float engine only: no int8 check (a background calibration would outlive this short run)
    engine, _ = create_engine(backend=args.backend, device=args.device, checkpoint=checkpoint,
                              deterministic_weights=checkpoint is None, align_corners=args.align_corners,
                              precision=args.precision, int8_check="off")
    with engine:
        ms = _frame_ms(engine, TIMED_FRAMES)
        report = engine.report()
    built = f"; engine built in {report.startup_s:.1f} s" if report.startup_s is not None else ""
    fell_back = "; not used: " + ", ".join(f.describe() for f in report.fell_back) if report.fell_back else ""
    text = (f"--backend {args.backend} --precision {args.precision} runs {engine.name} on {engine.device}: "
            f"{ms:.0f} ms per frame ({1000.0 / ms:.1f} frames/s; median of {TIMED_FRAMES} frames, {weights}{built})"
            + fell_back)
    if ms > SLOW_MS:
        return warn("engine", text + " - slower than 10 frames/s: the avatar will look choppy (an NVIDIA GPU, "
                                     "or --remote to one; README \"Speed\")")
    return ok("engine", text)


def check_camera(args) -> Check:
    from live.devices.capture import open_source
    from live.errors import CaptureError
    if args.driving is not None:
        try:
            with open_source(args.driving) as source:
                return skip("camera", f"not used: driving from {source.name}")
        except CaptureError as exc:
            return fail("camera", f"--driving: {exc}")
    from live.devices.cameras import check_not_own_output, choose_camera, list_cameras
    listing = list_cameras()
    others = ", ".join(c.label for c in listing.cameras)
    try:
        camera = choose_camera(args.camera, listing)
        notice = check_not_own_output(camera, args.vcam_device)
        w, h = args.camera_size or (None, None)
        with open_source(camera.index, width=w, height=h) as source:
            frame = source.read()
    except CaptureError as exc:
        if not listing.cameras:
            notice = f"; {listing.notice}" if listing.notice else ""
            return fail("camera", f"no camera found ({listing.where}{notice}) and --camera {args.camera} does not "
                                  "open: plug in a webcam (and allow camera access in the OS privacy settings), or "
                                  "drive from a video: --driving FILE")
        listed = others and "cameras here" not in str(exc)
        return fail("camera", f"{exc}" + (f" (cameras here: {others})" if listed else ""))
    found = f"{camera.label} delivers {frame.shape[1]}x{frame.shape[0]} frames"
    if len(listing.cameras) > 1:
        found += f"; all cameras: {others}"
    if listing.notice:
        found += f"; {listing.notice}"
    return warn("camera", f"{found}; {notice}") if notice else ok("camera", found)


def open_virtual_camera(width, height, fps, device, backend, mode):
    """Open and close a virtual camera at the run's size: (device name, backend). SinkError when it cannot."""
    from live.devices.sinks import VirtualCameraSink
    cam = VirtualCameraSink(width, height, fps, mode=mode, device=device, backend=backend)
    try:
        return printable(cam.name, 120), cam.backend
    finally:
        cam.close()


def check_virtual_camera(args) -> Check:
    from live.errors import SinkError
    if args.vcam is False:
        return skip("virtual camera", "off (--no-vcam)")
    width, height = args.vcam_size
    try:
        name, backend = open_virtual_camera(width, height, args.vcam_fps or DOCTOR_VCAM_FPS, args.vcam_device,
                                            args.vcam_backend, args.vcam_mode)
    except SinkError as exc:
        return fail("virtual camera", f"{exc}; or run without one: --no-vcam")
    return ok("virtual camera", f"{name} opens at {width}x{height} ({backend}): pick it in your video call app")


def display_problem():
    from live.ui.display import display_problem as problem
    return problem()


def check_display(args) -> Check:
    if args.preview is False:
        return skip("display", "no preview window (--no-preview)")
    problem = display_problem()
    if problem is None:
        return ok("display", "a preview window can open")
    if args.preview:
        return fail("display", f"--preview cannot open a window ({problem}); use --no-preview")
    return warn("display", f"no preview window ({problem}): runs headless, keys are read from the terminal")


def check_weights(args) -> Check:
    from engines.checkpoint import CheckpointError, known_by_filename, verify_checkpoint
    from engines.weights import DEFAULT_URL, URL_ENV, cached_checkpoint
    if args.deterministic_weights:
        return skip("weights", "generated test weights (--deterministic-weights)")
    if args.remote and not args.checkpoint:
        return skip("weights", "the server's (the keypoint detector weights come from the server)")
    if args.checkpoint:
        path = Path(args.checkpoint).expanduser()
        if not path.is_file():
            return fail("weights", f"--checkpoint {path}: no such file")
        if known_by_filename(path.name) is None:
            return ok("weights", f"{path} (not a published file name: loaded as it is, not verified)")
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            return warn("weights", f"{exc}: it is loaded as it is (not the published file)")
        return ok("weights", f"{path}, sha256 verified")
    path, problem = cached_checkpoint()
    if problem is None:
        return ok("weights", f"{path}, sha256 verified")
    url = os.environ.get(URL_ENV) or DEFAULT_URL
    size = known_by_filename(path.name)["size"] / 2**20
    what = "not downloaded yet" if problem == "not downloaded yet" else f"the cached copy has {problem}"
    return warn("weights", f"{what}: the first run downloads {path.name} ({size:.0f} MB) from {url} into "
                           f"{path.parent} (or pass --checkpoint PATH)")


def check_cache(args) -> Check:
    from engines.storage import CACHE_ENV, cache_root
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-", delete=True) as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        return fail("cache", f"{root} is not writable ({exc.strerror or exc}): the checkpoint, compiled models "
                             f"and calibrations go there; set {CACHE_ENV} to a writable folder")
    import shutil
    free_gb = shutil.disk_usage(root).free / 2**30
    if free_gb < 1.0:
        return warn("cache", f"{root} writable, but only {free_gb:.1f} GB free (the checkpoint alone is 0.7 GB; "
                             f"set {CACHE_ENV} to another folder)")
    return ok("cache", f"{root} writable, {free_gb:.0f} GB free")


def probe_server(url, token_file):
    from remote.client import probe_server as probe
    return probe(url, token_file)


def check_remote(args) -> Check:
    from engines.errors import UserError
    if not args.remote:
        return skip("remote", "not used (no --remote)")
    try:
        welcome = probe_server(args.remote, args.token_file)
    except UserError as exc:
        return fail("remote", str(exc))
    from remote.protocol import render_option
    if render_option(welcome, "align_corners") != args.align_corners:
        server, mine = (("--align-corners" if on else "--no-align-corners")
                        for on in (render_option(welcome, "align_corners"), args.align_corners))
        return fail("remote", f"{args.remote} renders with {server}, this run asks for {mine}: start the server "
                              f"with {mine}, or run with {server}")
    token = "token accepted" if args.token_file else "no token needed"
    return ok("remote", f"{args.remote} answers, {token}; it renders with {welcome.get('engine', '?')} on "
                        f"{welcome.get('device', '?')}")


def check_avatar(args) -> Check:
    from engines.config import VOX_256
    from engines.errors import UserError
    from live.pipeline.avatar_set import load_avatars
    from live.pipeline.avatars import loading_options
    if args.avatar is None:
        return skip("avatar", "none given (--avatar PATH)")
    options = loading_options(composite=args.composite == "on", canvas_size=args.vcam_size,
                              canvas_mode=args.vcam_mode, crop_scale=args.crop_scale)
    try:
        avatars = load_avatars(args.avatar, VOX_256.image_size, on_skip=lambda message: None, **options)
    except UserError as exc:
        return fail("avatar", str(exc))
    canvas = options["canvas"]
    mode = (f"composite on: each photo at {canvas.width}x{canvas.height} ({canvas.mode}), the face animated in it"
            if canvas is not None else f"composite off: the {VOX_256.image_size}-px square alone")
    faceless = [a.name for a in avatars if a.face_found is False]
    text = f"{args.avatar}: {len(avatars)} image{'s' if len(avatars) != 1 else ''}; {mode}"
    if faceless:
        return warn("avatar", f"{text}; no face found in {', '.join(faceless[:3])}"
                              f"{' and more' if len(faceless) > 3 else ''}: the centre square is animated (a photo "
                              "with the face upright and clearly visible works best)")
    return ok("avatar", text)


CHECKS = (check_versions, check_camera, check_virtual_camera, check_display, check_weights, check_cache,
          check_remote, check_avatar, check_engine)


def run_checks(args, checks=None, out=None):
    """Each check's line as soon as it is known (the engine check takes seconds); a check that crashes is a FAIL
    with the reason, never a traceback."""
    out = out or (lambda line: print(line, flush=True))
    results = []
    for check in CHECKS if checks is None else checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            result = check(args)
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
            result = fail(name, f"the check itself failed: {describe_error(exc, 200)}")
        if result.status in ("FAIL", "warn"):  # a value from the preferences file: say so
            from live.cli.config import blame_config
            result = Check(result.name, result.status, blame_config(args, result.text))
        results.append(result)
        out(result.line())
    return results


def main(args, out=None) -> int:
    out = out or (lambda line: print(line, flush=True))
    results = run_checks(args, out=out)
    failed = [r.name for r in results if r.status == "FAIL"]
    warned = [r.name for r in results if r.status == "warn"]
    if failed:
        out(f"result: a live run cannot work here yet: fix {', '.join(failed)} (the FAIL lines above)")
        return 1
    out("result: a live run can work here" + (f" ({len(warned)} warning{'s' if len(warned) > 1 else ''}: "
                                              f"{', '.join(warned)})" if warned else ""))
    return 0
