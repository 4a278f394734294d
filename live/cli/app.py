"""`run_live.py`: the command line, and wiring source -> pipeline -> sinks for one run.

Two modes share one pipeline:
- live (webcam, or --driving without --output): newest frame only, virtual camera on by default, calibrate by key;
- offline (--driving FILE --output out.mp4): every frame in order with a progress bar, calibrated on the first
  frame like FOMM's demo, no virtual camera unless asked.
Problems the user can fix end as `error: <one line>` and exit status 2, checked before the model loads where
possible (`validate_args`); Ctrl-C, SIGTERM and SIGHUP close everything (the mp4 is finalised) and exit 130, 143
and 129 (`stop_on_signals`).
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

from calibration.neutral_pose import NeutralPose
from calibration.smoothing import DEFAULT_D_CUTOFF, KeypointSmoother
from engines.cli import ArgumentParser
from engines.errors import UserError
from engines.options import add_engine_arguments
from engines.terminal_text import printable
from engines.progress import step
from engines.version import program_name, version_line
from live.audio.pass_through import add_audio_arguments, check_audio
from live.cli.config import add_config_arguments
from live.cli.options import (AUTO_CALIBRATE_FRAMES, add_avatar, add_crop_arguments, add_input_arguments,
                              add_motion_arguments, add_output_arguments, add_remote_arguments,
                              check_combinations, is_offline)
from live.ui.hotkeys import help_text
from live.signals import Stopped, run_command, stop_on_signals  # noqa: F401 - Stopped, stop_on_signals: API

TERMINAL_HUD_S = 5.0  # live runs without a preview window print the HUD this often
FRAMING_HUD_S = 1.0   # ... and this often while the framing guide's match score is shown there (key g)
NO_KEYS_WHAT_INSTEAD = ("calibrate with --auto-calibrate (hold still) or --best-frame, or run in a terminal or "
                        "with a preview window (--preview) to use the keys")
NO_KEYS_HINT = "Not calibrated, and no key reaches this run: " + NO_KEYS_WHAT_INSTEAD + "."
INT8_CALIBRATION_AVATARS = 4  # --precision int8 calibrates on the first avatars (each is encoded once for it)


def validate_args(args) -> None:
    """Raise UserError (one line) for flags that cannot work together, before anything slow or destructive runs
    (live/cli/options.py; each value was checked by its flag's type already)."""
    check_combinations(args)


def check_environment(args) -> None:
    """Start-up checks of what the run will need from the installation (raise UserError)."""
    if args.output is not None:
        from live.devices.sinks import check_recording_support
        check_recording_support("--output")
    check_audio(args)
    if not args.no_track:
        from live.pipeline.crop import HaarFaceDetector
        HaarFaceDetector()  # loads the cascade now rather than on the first frame, after the model


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=program_name("live-avatar", "run_live.py"),
        description="Animate an avatar image with your webcam (First Order Motion Model) and send it to a virtual "
                    "camera, a preview window and/or a video file.",
        epilog=help_text() + "\n\nexamples:\n"
               "  python run_live.py --avatar face.png                      webcam 0 -> virtual camera (+ preview)\n"
               "  python run_live.py --avatar avatars/ --camera 1           keys 1-9 switch between the images\n"
               "  python run_live.py --avatar face.png --driving talk.mp4 --output out.mp4   offline render\n"
               "  python run_live.py demo  (live-avatar demo)              no webcam: a packaged clip -> mp4\n"
               "  python run_live.py --list-cameras                        index, name, resolutions\n"
               "  python run_live.py --doctor  (live-avatar doctor)        can a live run work here?",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_avatar(p)
    p.add_argument("--version", action="version", version=version_line("live-avatar"))
    p.add_argument("--list-cameras", action="store_true",
                   help="list the cameras (index, name, resolutions; virtual cameras marked) and exit")
    p.add_argument("--doctor", action="store_true",
                   help="check everything a live run with these flags needs, one line each, and exit (also: "
                        "live-avatar doctor); exit status 1 when something fails")

    add_input_arguments(p)
    add_output_arguments(p)
    add_engine_arguments(p)
    add_remote_arguments(p)
    add_motion_arguments(p)
    add_crop_arguments(p)
    add_config_arguments(p)

    add_audio_arguments(p.add_argument_group("audio (lip sync in calls: docs/audio.md)"))
    return p


def avatar_options(args) -> dict:
    """How the avatars are loaded for these flags (live/pipeline/avatars.py loading_options)."""
    from live.pipeline.avatars import loading_options

    return loading_options(composite=getattr(args, "composite", "on") == "on", canvas_size=args.vcam_size,
                           canvas_mode=args.vcam_mode, crop_scale=args.crop_scale)


class Session:
    """Everything one run opens, built in an order that reports cheap mistakes before slow work: avatar images,
    driving source, weights + engine, avatar encodings, sinks."""

    camera = None  # the live.devices.cameras.Camera of a webcam run

    def __init__(self, args, *, key_sources=(), log=None):
        self.args = args
        self.extra_key_sources = list(key_sources)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.offline = is_offline(args)
        self.audio = None  # the microphone pass-through (--audio-out)
        self.recording = None  # the --output sink

    def run(self) -> int:
        from engines.config import VOX_256
        from live.pipeline.avatar_set import load_avatars
        from live.devices.capture import LatestFrameReader, open_source
        from live.ui.hotkeys import TerminalKeys
        from live.pipeline.loop import file_feed, live_feed

        args = self.args
        # Cheap checks first: a typo in --avatar or a missing camera driver should not cost a model download/load.
        avatars = load_avatars(args.avatar, VOX_256.image_size, on_skip=self.log, **avatar_options(args))
        with ExitStack() as stack:
            w, h = args.camera_size or (None, None)
            spec = args.driving if args.driving is not None else self._camera().index
            source = stack.enter_context(open_source(spec, loop=args.loop and not self.offline, width=w, height=h))
            preview = self._preview()
            if preview is not None:
                stack.callback(preview.close)
            sinks = self._sinks(source)
            for sink in sinks:
                stack.callback(sink.close)  # until the pipeline owns them (closing twice is harmless)
            self._refuse_own_output(sinks)
            engine = self._engine(avatars)
            # closing stops background work at once (an unfinished int8 check runs again at the next start) and
            # frees a render server's avatars
            stack.callback(engine.close)
            pipeline = self._pipeline(engine, source, avatars, sinks, preview)
            if self.args.remote:
                attach_remote(engine, pipeline)
            self.audio = self._audio(pipeline, stack)
            terminal = stack.enter_context(TerminalKeys())
            pipeline.key_sources = [terminal.read, *self.extra_key_sources]
            self._greet(pipeline, source, terminal.active)
            if self.offline:
                feed = file_feed(source)
            else:  # a --driving file in live mode plays at its own frame rate, like a camera
                feed = live_feed(stack.enter_context(LatestFrameReader(source, realtime=not source.is_live)))
            stats = pipeline.run(feed, max_frames=args.max_frames,
                                 on_frame=self._ready_line(engine, self._progress(source, stack, pipeline)))
            if not (self.offline or stats.stopped_by_user or (args.max_frames and stats.frames >= args.max_frames)):
                self.log(f"end of {source.name}" + ("" if source.is_live else " (--loop plays it again)"))
        if self.recording is not None and self.recording.audio_error:
            self.log(f"notice: the recording has the clip's sound only up to where it failed: "
                     f"{self.recording.audio_error}")
        self.log(f"done: {stats.frames} frames ({stats.timings.summary()}); engine {engine.name}: "
                 f"{engine.report().summary()}"
                 + (f"; wrote {args.output}" if args.output else "")
                 + (f"; {self.audio.summary()}" if self.audio is not None else ""))
        return 0

    def _ready_line(self, engine, on_frame):
        """`on_frame`, plus one line when the first frame has gone out: the time since the process started (imports,
        weights, engine, avatars, devices: everything the user waited for), and the engine's own share of it."""
        from engines.progress import process_age

        def first_frame(frames: int) -> None:
            if frames == 1:
                built = engine.report().startup_s
                self.log(f"ready: the first frame went out {process_age():.1f} s after the start"
                         + (f" (the engine took {built:.1f} s of it)" if built is not None else ""))
            if on_frame is not None:
                on_frame(frames)
        return first_frame

    # --- pieces ---------------------------------------------------------------------------------------------
    def _camera(self):
        """--camera as a listed camera (a name resolved to its index); its stable id keys the saved calibration."""
        from live.devices.cameras import camera_for_run
        self.camera = camera_for_run(self.args.camera, self.args.vcam_device, self.log)
        return self.camera

    def _engine(self, avatars=()):
        from engines.backends import create_engine
        from engines.image import to_model_input
        args = self.args
        if args.remote:
            return remote_engine(args, self.offline, self.log)
        checkpoint = None
        if not args.deterministic_weights:
            from engines.weights import resolve_checkpoint
            checkpoint = resolve_checkpoint(args.checkpoint)
        # int8 (forced, or tried by auto behind its quality gate): calibrated on the user's own avatars (their
        # keypoints moved like a head); the quantized model and the gate's verdict are cached per avatar set.
        calibration = ([to_model_input(a.image) for a in list(avatars)[:INT8_CALIBRATION_AVATARS]]
                       if args.precision in ("int8", "auto") and avatars else None)
        engine, notices = create_engine(backend=args.backend, device=args.device, checkpoint=checkpoint,
                                        deterministic_weights=args.deterministic_weights,
                                        align_corners=args.align_corners, precision=args.precision,
                                        calibration_images=calibration, progress=self.log)
        for notice in notices:
            self.log(f"notice: {notice}")
        if args.deterministic_weights:
            self.log("notice: generated test weights, the output is not a face (use --checkpoint)")
        return engine

    def _pipeline(self, engine, source, avatar_list, sinks, preview):
        from calibration.best_frame import LandmarkSource
        from calibration.persistence import default_calibration_path
        from engines.image import to_model_input
        from live.pipeline.avatar_set import AvatarSet, load_avatars
        from live.pipeline.crop import FaceTracker, TrackerSettings
        from live.pipeline.loop import LivePipeline, PipelineOptions
        from live.pipeline.snapshot import snapshot_folder

        args = self.args
        if avatar_list[0].image.shape[0] != engine.image_size:
            avatar_list = load_avatars(args.avatar, engine.image_size, **avatar_options(args))
        # a folder's avatars are encoded up front (those keys 1-9 reach): a second or more each on a CPU
        with step(self.log, f"encoding {len(avatar_list)} avatar{'s' if len(avatar_list) > 1 else ''}"):
            avatars = AvatarSet(avatar_list, engine)
        if len(avatars) > 1:
            self.log(f"{len(avatars)} avatars: " + ", ".join(f"{i + 1}={name}" for i, name in
                                                          enumerate(avatars.names[:9]))
                     + (" ..." if len(avatars) > 9 else ""))
        settings = TrackerSettings() if args.crop_scale is None else TrackerSettings(scale=args.crop_scale)
        tracker = FaceTracker(settings, tracking=not args.no_track, out_size=engine.image_size)
        neutral = NeutralPose(relative_jacobian=not args.no_relative_jacobian,
                              adapt_movement_scale=not args.no_adapt_scale,
                              auto_calibrate_frames=AUTO_CALIBRATE_FRAMES if args.auto_calibrate else 0)
        smoother = None if args.no_smoothing else KeypointSmoother(args.smooth_min_cutoff, args.smooth_beta,
                                                                   DEFAULT_D_CUTOFF)
        camera = source.is_live
        options = PipelineOptions(
            mirror=args.mirror,
            calibrate_first_frame=self.offline and not (args.no_calibrate_first or args.auto_calibrate
                                                        or args.best_frame),
            best_frame=args.best_frame,
            absolute=args.absolute,
            media_fps=None if camera else source.fps,
            # a saved neutral pose only makes sense for the same webcam (by its stable id, not the index that
            # changes with the plug-in order); files are calibrated per run
            calibration_path=default_calibration_path(self.camera_id) if camera else None,
            camera_id=self.camera_id,
            snapshot_folder=snapshot_folder(args.avatar))
        def landmarks():  # built when best-frame mode is first asked for: face-alignment takes seconds to load
            def engine_kp(rgb):
                return engine.detect(to_model_input(rgb, size=engine.image_size, device=engine.device)).value
            return LandmarkSource(engine_kp, device=str(engine.device))

        # log through a lambda: the offline progress bar swaps self.log for its write() later. Live runs load the
        # landmarks in the background (the video goes on); an offline render waits for them before its first frame.
        return LivePipeline(engine, avatars, sinks=sinks, tracker=tracker, neutral=neutral, smoother=smoother,
                            preview=preview, landmarks_factory=landmarks, landmarks_in_background=not self.offline,
                            options=options, log=lambda message: self.log(message),
                            composite=avatar_options(args)["canvas"])

    def _refuse_own_output(self, sinks) -> None:
        """The virtual camera pyvirtualcam picked (the first free loopback device) must not be the webcam."""
        from live.devices.cameras import is_device, own_output_error
        from live.devices.sinks import VirtualCameraSink
        for sink in sinks:
            if self.camera is not None and isinstance(sink, VirtualCameraSink) and is_device(self.camera, sink.name):
                raise own_output_error(self.camera, sink.name)

    @property
    def camera_id(self) -> str:
        return self.camera.stable_id if self.camera is not None else f"camera {self.args.camera}"

    def _sinks(self, source) -> list:
        from live.pipeline.loop import RealtimePacer
        from live.errors import SinkError
        from live.devices.sinks import VideoFileSink, VirtualCameraSink, leftover_notice
        args = self.args
        sinks = []
        try:
            if args.output:
                notice = leftover_notice(args.output)
                if notice:
                    self.log(notice)
                # offline: the driving clip's own audio track goes into the mp4, aligned to the frames
                video = self.recording = VideoFileSink(args.output, fps=source.fps,
                                                       audio_from=args.driving if self.offline else None)
                # live: repeat/drop frames by the clock so the recording plays at real speed on a slow machine
                sinks.append(video if self.offline else RealtimePacer(video, source.fps))
            vcam = args.vcam if args.vcam is not None else not self.offline
            if vcam:
                width, height = args.vcam_size
                try:
                    cam = VirtualCameraSink(width, height, args.vcam_fps or source.fps, mode=args.vcam_mode,
                                            device=args.vcam_device, backend=args.vcam_backend)
                except SinkError as exc:
                    if args.vcam:  # asked for explicitly: the driver hint is the whole story
                        raise
                    raise SinkError(f"{exc}; or run without a virtual camera: --no-vcam") from None
                sinks.append(cam)
                self.log(f"virtual camera: {printable(cam.name, 120)} ({width}x{height}) - pick it in your video "
                         "call app")
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
        return sinks

    def _audio(self, pipeline, stack):
        """--audio-out: the microphone pass-through, delayed by this pipeline's measured latency."""
        if getattr(self.args, "audio_out", None) is None:
            return None
        from live.audio.pass_through import open_pass_through
        audio = open_pass_through(self.args, pipeline.timings, notify=pipeline.notify)
        stack.callback(audio.close)
        pipeline.hud_extras.append(audio.hud_line)
        pick = f'"Monitor of {audio.target}"' if audio.target.pulse else f"the recording side of {audio.target}"
        self.log(f"audio: {audio.source} -> {audio.target}, delayed like the video"
                 + (f" {self.args.audio_offset:+.0f} ms" if self.args.audio_offset else "")
                 + f"; in your call app pick {pick} as the microphone (docs/audio.md)")
        return audio

    def _preview(self):
        want = self.args.preview
        if want is False:
            return None
        from live.ui.display import has_display, require_display
        from live.ui.preview import PreviewWindow
        if want is None:
            want = has_display() and not self.offline
        elif want:
            require_display()
        return PreviewWindow() if want else None

    def _greet(self, pipeline, source, terminal_keys: bool) -> None:
        self.log(f"engine {pipeline.engine.name}; input {source.name}"
                 + (f" ({source.frame_count} frames)" if source.frame_count else ""))
        if not pipeline.sinks and pipeline.preview is None:
            self.log(f"notice: no output selected (no --vcam, --preview or --output): only timings are shown, "
                     f"every {TERMINAL_HUD_S:g} s")
        if self.offline:
            return
        keys = pipeline.preview is not None or terminal_keys or bool(self.extra_key_sources)
        if keys:
            where = "the preview window" if pipeline.preview is not None else "this terminal"
            self.log(f"hotkeys in {where}: c calibrate, 1-9 avatar, o passthrough, q quit (all: --help)")
        else:  # nobody can press C here: say what works instead, here and in the status line
            pipeline.calibration.calibrate_hint = NO_KEYS_HINT
            self.log(f"notice: no keys reach this run (no preview window, and stdin is not a terminal): "
                     f"{NO_KEYS_WHAT_INSTEAD}")
        if not (pipeline.neutral.is_calibrated or self.args.auto_calibrate or self.args.best_frame
                or self.args.absolute):
            self.log(pipeline.calibration.calibrate_hint)

    def _progress(self, source, stack, pipeline):
        """tqdm bar for offline renders (its write() keeps messages from breaking the bar); live without a preview
        window, the HUD and the status line in the terminal every TERMINAL_HUD_S seconds; else None."""
        if not self.offline:
            return self._terminal_hud(pipeline) if pipeline.preview is None else None
        from tqdm import tqdm
        total = source.frame_count
        if self.args.max_frames:
            total = min(total, self.args.max_frames) if total else self.args.max_frames
        bar = stack.enter_context(tqdm(total=total, unit="frame", desc="rendering", dynamic_ncols=True))
        previous_log = self.log

        def log_above_bar(message: str) -> None:
            with tqdm.external_write_mode():  # clears the bar, prints, redraws it
                previous_log(message)

        def update(frames: int) -> None:
            bar.update(frames - bar.n)

        self.log = log_above_bar
        stack.callback(lambda: setattr(self, "log", previous_log))
        return update

    def _terminal_hud(self, pipeline):
        next_at = time.monotonic() + TERMINAL_HUD_S

        def update(frames: int) -> None:
            nonlocal next_at
            if time.monotonic() >= next_at:
                # the framing guide's score (key g) is for lining up a face: printed more often while it is on
                next_at = time.monotonic() + (FRAMING_HUD_S if pipeline.options.framing else TERMINAL_HUD_S)
                # the preview window's HUD lines, less the engine name the greeting gave: the audio delay too
                hud = " | ".join([*pipeline.timings.lines(), *(line() for line in pipeline.hud_extras)]
                                 ) if pipeline.show_hud else ""
                self.log(" | ".join(part for part in (f"{frames} frames", hud, pipeline.status) if part))
        return update


# --- remote rendering (--remote): the renderer runs on a render server (remote/server.py) ----------------------
RECONNECT_WAIT_S = 60.0  # offline --remote renders: how long to wait for a server that went away


def remote_engine(args, offline: bool, log):
    from remote.client import check_url, load_engine
    check_url(args.remote)
    if args.token_file is None and args.remote and not args.remote.startswith(("ws://127.", "ws://localhost",
                                                                                  "ws://[::1]")):
        log("notice: no --token-file: a server on another machine will refuse the connection")
    # offline renders keep one frame in flight so output frame i is the render of input frame i, and wait for a
    # lost server instead of filling the file with copies; live runs keep two, so the round trip hides behind the
    # next frame's capture and detection, and show the last frame while reconnecting
    log(f"remote: connecting to {args.remote} ...")
    engine = load_engine(args.remote, args.token_file, checkpoint=args.checkpoint,
                         deterministic_weights=args.deterministic_weights, align_corners=args.align_corners,
                         quality=args.remote_quality,
                         max_in_flight=1 if offline else 2, reconnect_wait=RECONNECT_WAIT_S if offline else 0.0,
                         log=log)
    log(f"remote: rendering on {args.remote} ({engine.server['engine']} on {engine.server['device']})")
    return engine


def attach_remote(engine, pipeline) -> None:
    """Connection notices (lost, reconnected) go to the status line; the HUD shows the round trip as "rtt"."""
    engine.observe(pipeline.notify, pipeline.timings.record)


def parse_command_line(argv=None):
    """The flags over the saved preferences (live/cli/config.py); None when --save-config wrote them (nothing to
    run)."""
    from live.cli.config import given_preferences, parse_args, save_preferences
    parser = build_parser()
    args = parse_args(parser, argv, check=validate_args)
    if not args.save_config:
        return args
    validate_args(args)
    entries = given_preferences(parser, argv)
    path = save_preferences(args.config, entries, parser)
    print(f"saved {len(entries)} setting(s) to {path}: " + (", ".join(entries) or "nothing new"), file=sys.stderr)
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["doctor"]:  # `live-avatar doctor [flags]`: the flags of the run to check follow
        argv = [*argv[1:], "--doctor"]

    def body() -> int:
        args = parse_command_line(argv)
        if args is None:
            return 0
        try:
            return run(args)
        except Exception as exc:
            # a value from the preferences file that the run refuses: the message says where it came from
            from engines.checkpoint import CheckpointError
            from live.cli.config import ConfigError, blame_config
            if not isinstance(exc, (UserError, CheckpointError)) or blame_config(args, str(exc)) == str(exc):
                raise
            raise ConfigError(blame_config(args, str(exc))) from None

    def run(args) -> int:
        if args.list_cameras:
            from live.devices.cameras import print_cameras
            return print_cameras()
        if args.avatar is None and not args.doctor:
            raise UserError("--avatar is required for a run (an image or a folder of images; or set avatar in "
                            f"the config file {args.config})")
        validate_args(args)
        if args.doctor:
            from live.cli import doctor
            return doctor.main(args)
        check_environment(args)
        return Session(args).run()
    return run_command(body)
