"""Where the animated avatar goes: a virtual camera, a video file, nowhere, or several of these at once.

Every sink takes uint8 RGB HxWx3 frames through ``send`` and is finished with ``close`` (also a context manager,
and close() is safe to call twice). Sinks with a fixed output size place a frame of another size (the square
avatar without compositing, the camera in passthrough) on a canvas first, into a buffer each sink allocates once
per frame size; a frame of the canvas' own size (the composited avatar) is sent as it is.
"""

from __future__ import annotations

import fractions
import glob
import math
import os
import platform
import secrets
from pathlib import Path

import cv2
import numpy as np

from engines.framing import CANVAS_COLOR, CANVAS_MODES, canvas_placement
from engines.terminal_text import printable
from live.errors import SinkError, UserError
from live.signals import signals_deferred

DEFAULT_CANVAS_COLOR = CANVAS_COLOR  # RGB dark grey: calmer than black bars, reads as "background" in calls


def _check_rgb(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"expected a uint8 HxWx3 RGB frame, got shape {shape} dtype {dtype}")


def place_on_canvas(frame: np.ndarray, width: int, height: int, mode: str = "fit",
                    color=DEFAULT_CANVAS_COLOR) -> np.ndarray:
    """Fit an RGB frame into width x height (a new array).

    fit: largest size that fits, centred, borders in `color`; fill: scale to cover, centre-crop.
    """
    return CanvasBuffer(width, height, mode, color).place(frame)


class CanvasBuffer:
    """place_on_canvas into memory allocated once per frame size: the canvas, and the resized picture (what a sink
    sending 30 frames a second must not allocate each time). The canvas returned is this buffer: valid until the
    next place()."""

    def __init__(self, width: int, height: int, mode: str = "fit", color=DEFAULT_CANVAS_COLOR):
        if mode not in CANVAS_MODES:
            raise ValueError(f"unknown canvas mode {mode!r} (use one of {', '.join(CANVAS_MODES)})")
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas size must be positive, got {width}x{height}")
        self.width, self.height, self.mode, self.color = int(width), int(height), mode, color
        self._canvas: np.ndarray | None = None
        self._scaled: np.ndarray | None = None
        self._source: tuple[int, int] | None = None   # the frame size the buffers are laid out for
        self._at = (0, 0, 0, 0)                       # fit: where the picture goes; fill: what of it is shown

    def place(self, frame: np.ndarray) -> np.ndarray:
        _check_rgb(frame)
        h, w = frame.shape[:2]
        if (w, h) == (self.width, self.height):
            return np.ascontiguousarray(frame)
        if self._source != (w, h):
            self._layout(w, h)
        new_h, new_w = self._scaled.shape[:2]
        if (new_w, new_h) == (w, h):
            scaled = frame
        else:
            # AREA to shrink (no aliasing); LINEAR to enlarge: every frame comes here, cubic costs too much at 720p
            interp = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
            scaled = cv2.resize(frame, (new_w, new_h), dst=self._scaled, interpolation=interp)
        left, top, right, bottom = self._at
        if self.mode == "fill":
            np.copyto(self._canvas, scaled[top:bottom, left:right])
        else:
            self._canvas[top:bottom, left:right] = scaled
        return self._canvas

    def _layout(self, w: int, h: int) -> None:
        _, (new_w, new_h) = canvas_placement(w, h, self.width, self.height, self.mode)
        self._source = (w, h)
        self._scaled = np.empty((new_h, new_w, 3), np.uint8)
        if self._canvas is None:
            self._canvas = np.empty((self.height, self.width, 3), np.uint8)
        if self.mode == "fill":
            top, left = (new_h - self.height) // 2, (new_w - self.width) // 2
            self._at = (left, top, left + self.width, top + self.height)
        else:
            self._canvas[:] = self.color  # the borders stay: each frame only covers the picture's place
            top, left = (self.height - new_h) // 2, (self.width - new_w) // 2
            self._at = (left, top, left + new_w, top + new_h)


class Sink:
    """Base class: send(frame_rgb) and close(); usable as a context manager."""

    name = "sink"

    def __init__(self):
        self.frames_sent = 0

    def send(self, frame_rgb: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def install_hint(system: str | None = None) -> str:
    """One sentence on how to get a virtual camera driver for this OS (platform.system() names)."""
    system = system or platform.system()
    if system == "Linux":
        return ('install and load v4l2loopback: sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback '
                'devices=1 exclusive_caps=1 card_label="live avatar" (see README "Install a virtual camera driver")')
    if system == "Windows":
        return ('install OBS Studio >= 26.1 and click "Start Virtual Camera" once, or install Unity Capture '
                '(backend "unitycapture"); see README "Install a virtual camera driver"')
    if system == "Darwin":
        return ('install OBS Studio >= 26.1 (macOS 13+: OBS 30+), click "Start Virtual Camera" once and allow the '
                'system extension; see README "Install a virtual camera driver"')
    return f"pyvirtualcam has no virtual camera backend for {system or 'this OS'} (write to a video file instead)"


class VirtualCameraSink(Sink):
    """Sends frames to a virtual camera through pyvirtualcam (RGB), placed on a width x height canvas.

    pace=False: send() returns at once and the caller paces the loop; pace=True also sleeps until the next frame
    is due at `fps` (pyvirtualcam's adaptive sleep).
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30, mode: str = "fit",
                 device: str | None = None, backend: str | None = None, *, pace: bool = False,
                 color=DEFAULT_CANVAS_COLOR):
        super().__init__()
        if mode not in CANVAS_MODES:
            raise ValueError(f"unknown canvas mode {mode!r} (use one of {', '.join(CANVAS_MODES)})")
        if width <= 0 or height <= 0 or fps <= 0:
            raise SinkError(f"invalid virtual camera format {width}x{height} @ {fps} fps: all must be positive")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.mode, self.color, self.pace = mode, color, pace
        self._canvas = CanvasBuffer(self.width, self.height, mode, color)
        self._cam = None
        self._device_name = device or "virtual camera"
        try:
            import pyvirtualcam
            from pyvirtualcam.camera import BACKENDS
        except Exception as e:  # noqa: BLE001 - ImportError or a broken native module
            raise SinkError(f"pyvirtualcam is not usable ({e}): pip install pyvirtualcam") from None
        if backend is not None and backend not in BACKENDS:
            # Checked here: pyvirtualcam raises a bare KeyError and then prints a __del__ traceback.
            known = ", ".join(sorted(BACKENDS)) or "none on this OS"
            raise SinkError(f"unknown virtual camera backend {backend!r} (available: {known})")
        try:
            self._cam = pyvirtualcam.Camera(self.width, self.height, self.fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                            device=device, backend=backend)
        except Exception as e:  # noqa: BLE001 - backends raise RuntimeError, native ones sometimes other types
            # pyvirtualcam joins one line per backend tried; keep them all, on one line.
            reasons = printable("; ".join(line.strip() for line in str(e).splitlines() if line.strip()), 600)
            target = f"virtual camera {printable(device, 120)}" if device else "a virtual camera"
            raise SinkError(f"cannot open {target} ({reasons or 'no virtual camera backend available'}); "
                            f"{install_hint()}") from None

    @property
    def name(self) -> str:
        """The device name pyvirtualcam reports (e.g. /dev/video2, 'OBS Virtual Camera'): text from outside (on
        Windows/macOS the name another program gave its camera), printed through engines.terminal_text."""
        return self._device_name if self._cam is None else self._cam.device

    @property
    def backend(self) -> str | None:
        return self._cam.backend if self._cam is not None else None

    def send(self, frame_rgb: np.ndarray) -> None:
        if self._cam is None:
            raise RuntimeError("VirtualCameraSink.send() after close()")
        canvas = self._canvas.place(frame_rgb)
        try:
            self._cam.send(canvas)
        except Exception as e:  # noqa: BLE001
            raise SinkError(f"virtual camera {printable(self.name, 120)} stopped accepting frames: "
                            f"{printable(e)}") from None
        self.frames_sent += 1
        if self.pace:
            self._cam.sleep_until_next_frame()

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            self._device_name = cam.device
            cam.close()


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov")  # what the fragmented-MP4 muxer writes and players expect
PARTIAL_MARK = ".partial-"                    # out.mp4 is recorded as out.partial-<random>.mp4 until finalised


def check_video_path(path) -> Path:
    """Raise SinkError (one line) unless `path` can name a recording: a supported extension, an existing folder,
    not a folder itself. Cheap and side-effect free, so the app calls it before the model loads."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SinkError(f"cannot write video file {path}: it is a folder")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        got = f"'{path.suffix}'" if path.suffix else "no extension"
        raise SinkError(f"cannot write video file {path}: unsupported extension ({got}); use a name ending in "
                        f"{', '.join(VIDEO_EXTENSIONS)}")
    if not path.parent.is_dir():
        raise SinkError(f"cannot write video file {path}: folder {path.parent} does not exist")
    return path


def _same_file(a, b) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links and symlinks
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(path, inputs: dict) -> Path:
    """check_video_path, and refuse an output that is one of the run's input files ({flag: path or None}): the
    rename at the end would replace it (a hard link or symlink to it counts too). Raises UserError (one line)."""
    path = check_video_path(path)
    for flag, other in inputs.items():
        if other is not None and _same_file(path, other):
            raise UserError(f"--output {path} is the same file as {flag} {other}: it would be overwritten; "
                            "choose another output name")
    return path


def check_recording_support(flag: str = "--output") -> None:
    """Raise UserError unless PyAV imports: recordings are written through it (FFmpeg's libraries)."""
    try:
        import av  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError or a broken native module
        raise UserError(f"{flag} needs PyAV ({type(e).__name__}: {e}): pip install -r requirements.txt") from None


def leftover_partials(path) -> list[Path]:
    """Unfinished recordings of `path` beside it (`<stem>.partial-*<ext>`): left by a run that was killed (or one
    that is still recording)."""
    path = Path(path).expanduser()
    try:
        return sorted(p for p in path.parent.glob(f"{glob.escape(path.stem)}{PARTIAL_MARK}*{path.suffix}")
                      if p.is_file())
    except OSError:
        return []


def leftover_notice(path) -> str | None:
    """One line naming the unfinished recordings of `path`, for the start of a run; None when there are none."""
    found = leftover_partials(path)
    if not found:
        return None
    names = ", ".join(str(p) for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return (f"notice: {names}: unfinished recording of {Path(path).expanduser().name} left by an interrupted "
            "run (or one still running); it plays up to where it stopped - rename or delete it")


def _describe_write_error(error: BaseException) -> str:
    errno_ = getattr(error, "errno", None)
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    if errno_ in (28, 27):  # ENOSPC, EFBIG: the disk (or a quota / file size limit) is full
        text += " (disk full?)"
    return text.replace("\n", " ")


class VideoFileSink(Sink):
    """Writes an H.264 mp4 through PyAV (FFmpeg's libraries). size=(width, height), or taken from the first frame.

    Why not cv2.VideoWriter: it reports no write errors (a full disk gave "wrote out.mp4" and an unplayable file)
    and a killed process leaves a file without its index ("moov atom not found"). Here:
    - the file is *fragmented* MP4 (movflags frag_keyframe+empty_moov, a keyframe every second): the index is
      written up front and each fragment is self-contained, so a file cut off by SIGKILL or power loss still plays
      up to its last complete fragment;
    - frames go to `<stem>.partial-<random><ext>` beside the target, renamed over the target only when finalised,
      so an old recording at that path is never destroyed by a run that fails or is killed;
    - a write error (disk full) raises SinkError naming it; the complete fragments already on disk are kept at
      the target when no file was there, else in the partial file beside it (the message says where);
    - finalising (drain, fsync, rename) is not torn by SIGTERM/SIGHUP/Ctrl-C (`live.signals.signals_deferred`).
    Frames of another size are placed on the canvas with `mode`. `audio_from`: a media file whose sound goes into
    the recording, aligned to the frames (live/audio/track.py). close() finalises (safe twice); use the sink as a
    context manager so an exception in the loop still leaves a playable file with every frame written.
    """

    def __init__(self, path, fps: float, size: tuple[int, int] | None = None, *, codec: str | None = None,
                 mode: str = "fit", color=DEFAULT_CANVAS_COLOR, audio_from=None):
        super().__init__()
        self._closed = True  # until fully open: __del__ must not finalise a half-built sink
        self.path = Path(path).expanduser()
        self.name = str(self.path)
        if not fps or not math.isfinite(fps) or fps <= 0:
            raise SinkError(f"cannot write video file {self.path}: fps must be positive, got {fps}")
        if size is not None and (len(size) != 2 or size[0] <= 0 or size[1] <= 0):
            raise SinkError(f"cannot write video file {self.path}: invalid size {size}")
        check_video_path(self.path)
        self.fps, self.size, self.mode, self.color = float(fps), size, mode, color
        self._codec = codec
        self._audio_from, self.audio = audio_from, None  # audio_from: a media file whose sound goes along
        self.audio_error: str | None = None
        self._container = self._stream = None
        self.temp_path = self._create_temp()
        self._closed = False
        if size is not None:
            self._open(int(size[0]), int(size[1]))

    def _create_temp(self) -> Path:
        # O_EXCL with a random name: two runs never share one; a real open probes the folder's writability
        # (os.access lies for root and for read-only mounts); 0o666 & umask like any file the user creates.
        for _ in range(100):
            temp = self.path.with_name(f"{self.path.stem}{PARTIAL_MARK}{secrets.token_hex(4)}{self.path.suffix}")
            try:
                os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return temp
            except FileExistsError:
                continue
            except OSError as e:
                raise SinkError(f"cannot write video file {self.path}: {e.strerror or e}") from None
        raise SinkError(f"cannot write video file {self.path}: no free temporary name beside it")

    def _open(self, width: int, height: int) -> None:
        import av  # imported here: only runs that record pay for loading FFmpeg's libraries

        # 4:2:0 video needs even sizes; an odd-sized canvas gets one more row/column of border.
        width, height = width + width % 2, height + height % 2
        try:
            container = av.open(str(self.temp_path), "w", format="mp4", options={
                # index first, then self-contained fragments; flush_packets pushes each fragment to the OS
                # at once, so a SIGKILL loses at most the fragment being written
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "flush_packets": "1"})
        except Exception as e:  # noqa: BLE001 - av.error.* for an unwritable file
            self._discard()
            raise SinkError(f"cannot write video file {self.path}: {_describe_write_error(e)}") from None
        try:
            codec = self._codec or _default_codec()
            rate = fractions.Fraction(self.fps).limit_denominator(1001)
            options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency"} if codec == "libx264" else {}
            stream = container.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # a keyframe (= a fragment boundary) every second; zerolatency: no frames held back in the encoder
            stream.codec_context.gop_size = max(1, round(self.fps))
            if codec != "libx264":
                stream.codec_context.bit_rate = 4_000_000
        except Exception as e:  # noqa: BLE001
            container.close()
            self._discard()
            raise SinkError(f"cannot write video file {self.path}: no usable video encoder ({e})") from None
        self._container, self._stream, self.size = container, stream, (width, height)
        self._canvas = CanvasBuffer(width, height, self.mode, self.color)
        if self._audio_from is not None:
            from live.audio.track import AudioTrack
            try:
                self.audio = AudioTrack.open(self._audio_from, container)
            except Exception as e:  # noqa: BLE001 - a broken audio stream costs the sound, not the video
                self.audio_error = f"{type(e).__name__}: {e}"

    def send(self, frame_rgb: np.ndarray) -> None:
        _check_rgb(frame_rgb)
        if self._closed:
            raise RuntimeError("VideoFileSink.send() after close()")
        if self._container is None:
            self._open(frame_rgb.shape[1], frame_rgb.shape[0])
        import av
        frame = av.VideoFrame.from_ndarray(self._canvas.place(frame_rgb), format="rgb24")
        frame.pts = self.frames_sent
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            if self.audio is not None:  # the sound up to the end of this frame
                self.audio.write_until((self.frames_sent + 1) / self.fps, self._container)
        except Exception as e:  # noqa: BLE001 - av.error.OSError (ENOSPC, EIO, ...) and other FFmpeg errors
            self._fail(e)
        self.frames_sent += 1

    def _fail(self, error: BaseException):
        """A write failed: keep what reached the disk at the target, then raise one SinkError line."""
        self._closed = True
        self._close_audio()
        container, self._container = self._container, None
        try:
            container.close()  # fragments already written stay readable; finishing this one may fail too
        except Exception:  # noqa: BLE001
            pass
        previous = self.path.exists() or self.path.is_symlink()  # an older recording the failure must not replace
        with signals_deferred():
            kept = self._keep_partial(previous)
        reason = _describe_write_error(error)
        if kept is None:
            where = "nothing was written"
        elif kept == self.path:
            where = f"the frames written before it are kept in {self.path}"
        elif previous:
            where = f"the frames written before it are kept in {kept}; the previous {self.path} is unchanged"
        else:
            where = f"the frames written before it are kept in {kept} (it could not be renamed to {self.path.name})"
        raise SinkError(f"cannot write video file {self.path}: {reason} after {self.frames_sent} frames; "
                        f"{where}") from None

    def _keep_partial(self, previous: bool) -> Path | None:
        """Where the frames of a failed recording are kept: the target when nothing was there; beside an existing
        file, never over it (a failed run must not replace the previous recording). Written frames are never
        deleted: a partial file that cannot be trimmed or renamed stays where it is (players read a fragmented
        MP4 up to its last complete fragment anyway). None only when no frame reached the file."""
        if self.frames_sent == 0:
            self._discard()
            return None
        try:
            if _trim_to_complete_boxes(self.temp_path) == 0:
                self._discard()  # not even the header reached the disk: nothing to keep
                return None
        except OSError:
            if not self.temp_path.exists():
                return None  # removed behind our back: there is nothing to point at
            return self.temp_path  # untrimmed: a torn last fragment, the complete ones still play
        if previous:
            return self.temp_path
        try:
            os.replace(self.temp_path, self.path)
        except OSError:
            return self.temp_path
        return self.path

    def _close_audio(self) -> None:
        if self.audio is not None:
            self.audio.close()
            self.audio_error = self.audio_error or self.audio.error

    def _discard(self) -> None:
        try:
            os.remove(self.temp_path)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        container, self._container = self._container, None
        if container is None or self.frames_sent == 0:
            # Nothing recorded: leave no empty file, and leave an old file at the target as it was.
            if container is not None:
                try:
                    container.close()
                except Exception:  # noqa: BLE001
                    pass
            self._close_audio()
            self._discard()
            return
        # drain -> close -> fsync -> rename runs as one piece: a signal arriving inside it is raised afterwards,
        # so a stopped run still ends with its recording at the target, never only in the partial file
        with signals_deferred():
            try:
                for packet in self._stream.encode(None):  # drain the encoder
                    container.mux(packet)
                if self.audio is not None:
                    self.audio.finish(self.frames_sent / self.fps, container)
                    self.audio_error = self.audio.error
                container.close()  # writes the last fragment (and the fragment index)
                with open(self.temp_path, "rb+") as handle:
                    os.fsync(handle.fileno())  # on disk before the rename makes it the recording
            except Exception as e:  # noqa: BLE001
                self._container = container
                self._fail(e)
            try:
                os.replace(self.temp_path, self.path)
            except OSError as e:
                raise SinkError(f"cannot write video file {self.path}: renaming the finished recording failed "
                                f"({e.strerror or e}); it is in {self.temp_path}") from None

    def __del__(self):
        # Last resort if the owner forgot close(): finalise what was written rather than leave a broken mp4.
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - nobody left to report to
                pass


def _trim_to_complete_boxes(path: Path) -> int:
    """Cut a fragmented MP4 after its last complete fragment (a write that failed halfway leaves a torn box that
    players warn about); returns the new size. Only top-level box headers are read: 4-byte size, 4-byte type."""
    size = path.stat().st_size
    keep = end = 0
    with open(path, "rb+") as handle:
        while end + 8 <= size:
            handle.seek(end)
            header = handle.read(16)
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            if box_size < 8 or end + box_size > size:
                break
            end += box_size
            if kind != b"moof":  # a moof is only useful with the mdat after it
                keep = end
        if keep < size:
            handle.truncate(keep)
    return keep


def _default_codec() -> str:
    """H.264 (libx264) where this PyAV build has it, else FFmpeg's own MPEG-4 part 2 encoder."""
    import av
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - av.codec.codec.UnknownCodecError
        return "mpeg4"
