"""Lip sync in calls: the microphone passed to a virtual microphone, delayed by the video's measured latency.

The avatar reaches the call later than the voice (the HUD's capture -> sent latency). `AudioPassThrough` reads the
microphone and writes it to an output device that the call app uses as its microphone (a PulseAudio/PipeWire null
sink, VB-CABLE, BlackHole: docs/audio.md), delayed by the running median of the video latency over the last
seconds plus `--audio-offset`. The sound cards' own latencies (as PortAudio reports them) are part of that delay,
so the delay line holds back only the rest.

Audio runs in PortAudio's callback threads (sounddevice): the video loop never waits for it, and the only thing the
two share is the latency list the video loop appends to. Until the video has sent its first frame the virtual
microphone is silent (there is no avatar to sync with yet). A device that fails or disappears stops the
pass-through with one notice; the video goes on.

Devices are PortAudio's, by index or by name (case-insensitive, whole name or part of it). On Linux the
PulseAudio/PipeWire sinks and sources are accepted by name too (PortAudio reaches them through ALSA's "pulse"
device; PULSE_SINK / PULSE_SOURCE pick the one), so `--audio-out "live avatar mic"` works with Debian's PortAudio.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from live.audio.delay_line import DelayLine
from engines.terminal_text import printable
from live.errors import UserError

LATENCY_WINDOW_S = 3.0       # the running median of the video latency looks this far back
TARGET_UPDATE_S = 0.1        # how often the output callback reads the video latency
OUTPUT_LATENCY_S = 0.06      # asked of PortAudio for the output: low (it is part of the delay), safe when busy
# The microphone's buffer costs no delay (its callback gets each block as soon as it is full) but is what a busy
# machine eats into while the callback waits for the CPU: a long one loses no sound where a short one dropped it.
INPUT_BUFFER_S = 0.5
BLOCK_S = 0.01               # callback period
DRAIN_MARGIN_S = 0.05        # closing: after the output buffer has played, before the output stops
DRAIN_SLACK_S = 0.5          # closing: how much longer than real time the last blocks may take on a busy machine
PACE_WINDOW = 200            # input blocks (2 s) over which the microphone's delivery pace is known
MAX_OFFSET_MS = 2000.0
NAME_LIMIT = 120             # characters of a device name shown: longer than a terminal line is not a name
VIRTUAL_MIC_SINK = "live_avatar_mic"
VIRTUAL_MIC_DESCRIPTION = "live avatar mic"
VIRTUAL_MIC_SOURCE = "live_avatar_mic_source"
VIRTUAL_MIC_SOURCE_DESCRIPTION = "live avatar mic (microphone)"


class AudioError(UserError):
    """An audio device cannot be found or opened, or PortAudio is missing."""


def portaudio():
    """The sounddevice module, or AudioError saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise AudioError("audio needs the sounddevice package: pip install -r requirements.txt") from None
    except OSError as e:  # the wheel has no PortAudio on Linux
        raise AudioError(f"audio needs the PortAudio library ({printable(e, NAME_LIMIT)}): on Debian/Ubuntu apt "
                         "install libportaudio2 libasound2-plugins") from None
    return sounddevice


# --- devices ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioDevice:
    index: int            # PortAudio device index
    name: str             # what the user sees (engines.terminal_text.printable)
    channels: int         # of the direction it is used in
    rate: float           # its default sample rate
    pulse: str | None = None  # PulseAudio/PipeWire sink or source opened through PortAudio's "pulse" device

    def __str__(self) -> str:
        return self.name


def _portaudio_devices(sd) -> list[dict]:
    """PortAudio's devices, each with its index and its name as shown (names come from drivers: never raw)."""
    return [dict(d, index=i, name=printable(d.get("name", ""), NAME_LIMIT))
            for i, d in enumerate(sd.query_devices())]


def _channels(device: dict, kind: str) -> int:
    return int(device["max_input_channels" if kind == "input" else "max_output_channels"])


def _pactl(*argv: str, timeout: float = 5.0) -> subprocess.CompletedProcess | None:
    if shutil.which("pactl") is None:
        return None
    try:
        return subprocess.run(["pactl", *argv], capture_output=True, text=True, errors="replace", timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def _said(done: subprocess.CompletedProcess | None) -> str:
    """What pactl said when it failed, as one line (it prints two: "Connection failure: ..." and the call that
    failed)."""
    if done is None:
        return "no answer"
    lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    return printable(lines[0], NAME_LIMIT) if lines else f"exit status {done.returncode}"


def server_down() -> str | None:
    """Why no PulseAudio/PipeWire server answers (pactl's own words), or None: one answers, or this system has
    no pactl to ask (Windows, macOS, or a Linux without pulseaudio-utils)."""
    if shutil.which("pactl") is None:
        return None
    done = _pactl("info")
    return None if done is not None and done.returncode == 0 else _said(done)


def pulse_devices(kind: str) -> list[tuple[str, str]]:
    """(name, description) of the PulseAudio/PipeWire sinks (kind "output") or sources ("input"), as shown; []
    without a server or pactl."""
    done = _pactl("list", "sinks" if kind == "output" else "sources")
    if done is None or done.returncode != 0:
        return []
    found, name = [], None
    for line in done.stdout.splitlines():
        line = line.strip()
        if line.startswith("Name:"):
            name = printable(line.split(":", 1)[1], NAME_LIMIT)
        elif line.startswith("Description:") and name is not None:
            found.append((name, printable(line.split(":", 1)[1], NAME_LIMIT)))
            name = None
    return found


def _exact(spec: str, names: list[str]) -> list[int]:
    """Indices of `names` equal to `spec`, any case."""
    key = spec.casefold()
    return [i for i, n in enumerate(names) if n.casefold() == key]


def _partial(spec: str, names: list[str]) -> list[int]:
    """Indices of `names` that contain `spec`, any case."""
    key = spec.casefold()
    return [i for i, n in enumerate(names) if key in n.casefold()]


def _ambiguous(flag: str, spec: str, kind: str, candidates: list[str]) -> AudioError:
    listed = ", ".join(candidates[:6]) + (f" and {len(candidates) - 6} more" if len(candidates) > 6 else "")
    return AudioError(f"{flag} {spec!r} matches {len(candidates)} audio {kind} devices: {listed}; give more of the "
                      "name, or the index (see --list-audio)")


def _one_card(flag: str, spec: str, kind: str, hits: list[dict], preferred_api) -> dict:
    """The device among PortAudio `hits` (all matching `spec` equally well). The same card appears once per host
    API (Windows: MME - which cuts names at 31 characters -, DirectSound, WASAPI): hits on different APIs are
    one card, and the default device's API wins, else the first API. Two hits on one API are two devices: the
    name is ambiguous."""
    apis = sorted({d["hostapi"] for d in hits}, key=lambda api: (api != preferred_api, api))
    same_api = [d for d in hits if d["hostapi"] == apis[0]]
    if len(same_api) > 1:
        raise _ambiguous(flag, spec, kind, [f'{d["index"]} "{d["name"]}"' for d in same_api])
    return same_api[0]


def find_device(spec: str | int | None, kind: str) -> AudioDevice:
    """The input ("input") or output ("output") device named by `spec`: None (the system default), an index or a
    name (whole, else part of it; any case). A name that fits several devices is refused, like a camera's.
    Raises AudioError (one line)."""
    sd = portaudio()
    devices = _portaudio_devices(sd)
    flag = "--audio-in" if kind == "input" else "--audio-out"
    usable = [d for d in devices if _channels(d, kind) > 0]
    default = sd.default.device[0 if kind == "input" else 1]
    if isinstance(spec, str) and not spec.strip():
        raise AudioError(f"{flag} needs a device name or index (see --list-audio)")
    if spec is None or (isinstance(spec, str) and spec.strip().lstrip("-").isdigit()):
        index = default if spec is None else int(spec)
        if index is None or index < 0:
            raise AudioError(f"no default audio {kind} device; name one with {flag} (see --list-audio)"
                             + _no_server_hint())
        chosen = next((d for d in devices if d["index"] == index), None)
        if chosen is None or _channels(chosen, kind) == 0:
            raise AudioError(f"{flag} {spec}: no audio {kind} device with that index (see --list-audio)")
        return AudioDevice(index, chosen["name"], _channels(chosen, kind), float(chosen["default_samplerate"]))
    spec = spec.strip()
    preferred_api = devices[default]["hostapi"] if default is not None and 0 <= default < len(devices) else None
    names = [d["name"] for d in usable]
    pulse = pulse_devices(kind)
    # an exact name anywhere wins over a part of a name anywhere; PortAudio's own devices before PulseAudio's
    for match in (_exact, _partial):
        hits = [usable[i] for i in match(spec, names)]
        if hits:
            d = _one_card(flag, spec, kind, hits, preferred_api)
            return AudioDevice(d["index"], d["name"], _channels(d, kind), float(d["default_samplerate"]))
        found = sorted(set(match(spec, [desc for _, desc in pulse]) + match(spec, [name for name, _ in pulse])))
        if len(found) > 1:
            raise _ambiguous(flag, spec, kind, [f'"{pulse[i][1]}"' for i in found])
        if found:
            name, desc = pulse[found[0]]
            bridge = next((d for d in usable if d["name"] == "pulse"), None)
            if bridge is None:
                raise AudioError(f"{flag} {spec!r} is a PulseAudio/PipeWire device, but PortAudio has no 'pulse' "
                                 "device to reach it: apt install libasound2-plugins")
            return AudioDevice(bridge["index"], desc, min(_channels(bridge, kind), 2),
                               float(bridge["default_samplerate"]), pulse=name)
    raise AudioError(f"{flag} {spec!r}: no audio {kind} device of that name (see --list-audio)" + _no_server_hint())


NO_SERVER = ("no audio server is running: start PulseAudio (pulseaudio --start) or PipeWire (systemctl --user start "
             "pipewire pipewire-pulse)")


def _no_server_hint() -> str:
    down = server_down()
    return f"; {NO_SERVER} (pactl: {down})" if down else ""


def list_devices() -> str:
    """The devices --audio-in / --audio-out accept, as text for the terminal. Raises AudioError when there are
    none (no sound card and no audio server): a header alone would say nothing."""
    sd = portaudio()
    default_in, default_out = sd.default.device
    apis = sd.query_hostapis()
    devices = _portaudio_devices(sd)
    pulse = {kind: pulse_devices(kind) for kind in ("output", "input")}
    down = server_down()
    if not devices and not any(pulse.values()):
        raise AudioError(f"no audio devices: {NO_SERVER} (pactl: {down})" if down else
                         "no audio devices: PortAudio finds no sound card and no audio server (Linux: start "
                         "PulseAudio or PipeWire; docs/audio.md)")
    lines = ["audio devices (index, name, host API, input/output channels, default rate):"]
    for d in devices:
        marks = [m for m, i in (("default input", default_in), ("default output", default_out)) if i == d["index"]]
        api = printable(apis[d['hostapi']]['name'], NAME_LIMIT)
        lines.append(f"  {d['index']:3d}  {d['name']}  [{api}]  "
                     f"in {d['max_input_channels']} / out {d['max_output_channels']}  "
                     f"{d['default_samplerate']:.0f} Hz" + (f"  ({', '.join(marks)})" if marks else ""))
    for kind, title in (("output", "sinks, for --audio-out"), ("input", "sources, for --audio-in")):
        if pulse[kind]:
            lines.append(f"PulseAudio/PipeWire {title} (by name or description):")
            lines += [f"  {desc}  ({name})" for name, desc in pulse[kind]]
    if down:
        lines.append(f"note: {NO_SERVER} (pactl: {down}); its devices are not listed")
    return "\n".join(lines)


def setup_virtual_mic() -> str:
    """Create the "live avatar mic" null sink (and a microphone made from its monitor) with pactl; returns what to
    tell the user. Raises AudioError (one line) where there is no PulseAudio/PipeWire server or pactl fails."""
    if shutil.which("pactl") is None:
        raise AudioError("--audio-setup needs pactl (PulseAudio or PipeWire's pipewire-pulse): apt install "
                         "pulseaudio-utils; on Windows and macOS see docs/audio.md")
    down = server_down()
    if down:
        raise AudioError(f"--audio-setup: {NO_SERVER}, then run --audio-setup again (pactl: {down})")
    if VIRTUAL_MIC_SINK in [name for name, _ in pulse_devices("output")]:
        created = f'the sink "{VIRTUAL_MIC_DESCRIPTION}" exists already'
    else:
        for argv in (["module-null-sink", f"sink_name={VIRTUAL_MIC_SINK}",
                      f"sink_properties=device.description={_escaped(VIRTUAL_MIC_DESCRIPTION)}"],
                     # a real-looking microphone too: some call apps hide "Monitor of ..." sources
                     ["module-remap-source", f"master={VIRTUAL_MIC_SINK}.monitor",
                      f"source_name={VIRTUAL_MIC_SOURCE}",
                      f"source_properties=device.description={_escaped(VIRTUAL_MIC_SOURCE_DESCRIPTION)}"]):
            done = _pactl("load-module", *argv)
            if done is None or done.returncode != 0:
                for module in _our_modules():
                    _pactl("unload-module", module)
                raise AudioError(f"--audio-setup: pactl load-module {argv[0]} failed, nothing was changed "
                                 f"(pactl: {_said(done)})")
        created = f'created the sink "{VIRTUAL_MIC_DESCRIPTION}"'
    microphones = [f'"Monitor of {VIRTUAL_MIC_DESCRIPTION}"']
    if VIRTUAL_MIC_SOURCE in [name for name, _ in pulse_devices("input")]:
        microphones.append(f'"{VIRTUAL_MIC_SOURCE_DESCRIPTION}"')
    remove = "; ".join(f"pactl unload-module {m}" for m in reversed(_our_modules()))
    return "\n".join([
        f"{created}; it lasts until the audio server restarts (log out or reboot)",
        f'use it:      python run_live.py --avatar face.png --audio-out "{VIRTUAL_MIC_DESCRIPTION}"',
        f"in the call: pick the microphone {' or '.join(microphones)}",
        f"remove it:   {remove or 'nothing to remove'}"])


def _escaped(text: str) -> str:
    """A quoted property value inside a module argument, the way PulseAudio and pipewire-pulse parse it."""
    return '"' + text.replace(" ", "\\ ") + '"'


def _our_modules() -> list[str]:
    """Ids of the pactl modules that made the virtual microphone, oldest first."""
    done = _pactl("list", "short", "modules")
    if done is None or done.returncode != 0:
        return []
    fields = [line.split("\t") for line in done.stdout.splitlines()]
    return [f[0] for f in fields if len(f) >= 3 and (f"sink_name={VIRTUAL_MIC_SINK}" in f[2]
                                                      or f"source_name={VIRTUAL_MIC_SOURCE}" in f[2])]


class _ExitAction(argparse.Action):
    """--list-audio / --audio-setup: do it while parsing (like --help, so --avatar is not needed) and exit."""

    def __init__(self, option_strings, dest, run, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.run = run

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            text = self.run()
        except UserError as e:
            parser.exit(2, f"error: {printable(e, 2000)}\n")  # one line, whatever a device called itself
        print(text, flush=True)
        parser.exit(0)


def add_audio_arguments(group) -> None:
    group.add_argument("--audio-out", metavar="DEVICE",
                       help="pass the microphone to this output device (the call app's microphone, e.g. "
                            f'"{VIRTUAL_MIC_DESCRIPTION}"), delayed like the video: name or index')
    group.add_argument("--audio-in", metavar="DEVICE", help="microphone for --audio-out (default: the system's)")
    group.add_argument("--audio-offset", type=float, default=0.0, metavar="MS",
                       help="added to the measured video latency (may be negative; default 0)")
    group.add_argument("--list-audio", action=_ExitAction, run=list_devices, help="list audio devices and exit")
    group.add_argument("--audio-setup", action=_ExitAction, run=setup_virtual_mic,
                       help=f'Linux: create the virtual microphone "{VIRTUAL_MIC_DESCRIPTION}" (PulseAudio/'
                            "PipeWire null sink) with pactl, say how to remove it, and exit")


def validate_audio_args(args) -> None:
    """One-line errors for audio flags that cannot work (no device is opened here)."""
    if getattr(args, "audio_out", None) is None:
        if getattr(args, "audio_in", None) is not None:
            raise AudioError("--audio-in needs --audio-out (the device the delayed microphone goes to)")
        return
    if not -MAX_OFFSET_MS <= args.audio_offset <= MAX_OFFSET_MS:
        raise AudioError(f"--audio-offset must be between {-MAX_OFFSET_MS:g} and {MAX_OFFSET_MS:g} ms, "
                         f"got {args.audio_offset:g}")
    if args.driving is not None and args.output is not None:
        raise AudioError("--audio-out is for live runs: an offline render (--driving with --output) keeps the "
                         "clip's own audio in the mp4")


# --- the pass-through ---------------------------------------------------------------------------------------------
_alsa_handler = None  # kept alive: ALSA calls it


def _quiet_alsa() -> None:
    """alsa-lib prints a line per recovered underrun ("ALSA lib pcm.c: ... underrun occurred") to stderr, which
    on a busy machine floods the terminal; the pass-through counts them (summary line) instead."""
    global _alsa_handler
    if _alsa_handler is not None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("asound")
    if name is None:
        return
    try:
        lib = ctypes.CDLL(name)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p)
        _alsa_handler = handler_type(lambda *args: None)
        lib.snd_lib_error_set_handler(_alsa_handler)
    except (OSError, AttributeError):
        pass


def median_latency_ms(timings, seconds: float = LATENCY_WINDOW_S) -> float | None:
    """Running median of the video's capture -> sent latency over the last `seconds` (None before a frame)."""
    recent = timings.recent_latencies(seconds)
    return statistics.median(recent) if recent else None


@contextmanager
def _pulse_target(device: AudioDevice, kind: str):
    """Route PortAudio's "pulse" device to the chosen sink/source while the stream is opened."""
    var = "PULSE_SOURCE" if kind == "input" else "PULSE_SINK"
    old = os.environ.get(var)
    if device.pulse is not None:
        os.environ[var] = device.pulse
    try:
        yield
    finally:
        if device.pulse is not None:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


class AudioPassThrough:
    """Microphone -> delay line -> output device, each end in its own PortAudio callback stream (so the two may
    run at different rates: the delay line resamples)."""

    def __init__(self, source: AudioDevice, target: AudioDevice, latency_ms: Callable[[], float | None], *,
                 offset_ms: float = 0.0, notify: Callable[[str], None] = print, clock=time.monotonic):
        self.source, self.target = source, target
        self.latency_ms, self.offset_ms = latency_ms, float(offset_ms)
        self.notify, self.clock = notify, clock
        self.video_latency_ms: float | None = None  # the last median read
        self.device_latency_s = 0.0
        self.input_overflows = self.output_underflows = 0
        self.stopped_reason: str | None = None
        self._closing = False
        self._failure: str | None = None
        self._next_update = 0.0
        self._streams = []
        self._heard = 0  # microphone samples delivered so far
        # per input block: when it came less the time its samples span since the start - the earliest of these
        # is the moment sample 0 was captured, as far as the deliveries tell (any one may have been late)
        self._paces: collections.deque[float] = collections.deque(maxlen=PACE_WINDOW)
        self.line: DelayLine | None = None

    # --- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> "AudioPassThrough":
        sd = portaudio()
        _quiet_alsa()
        opening = f"input {self.source}"
        try:
            with _pulse_target(self.source, "input"):
                instream = sd.InputStream(device=self.source.index, channels=1, samplerate=self.source.rate,
                                          dtype="float32", blocksize=round(self.source.rate * BLOCK_S),
                                          latency=INPUT_BUFFER_S, callback=self._on_input,
                                          finished_callback=lambda: self._finished(self.source))
            self._streams.append(instream)
            opening = f"output {self.target}"
            channels = max(1, min(2, self.target.channels))
            with _pulse_target(self.target, "output"):
                outstream = sd.OutputStream(device=self.target.index, channels=channels,
                                            samplerate=self.target.rate, dtype="float32",
                                            blocksize=round(self.target.rate * BLOCK_S), latency=OUTPUT_LATENCY_S,
                                            callback=self._on_output,
                                            finished_callback=lambda: self._finished(self.target))
            self._streams.append(outstream)
        except Exception as e:  # noqa: BLE001 - sd.PortAudioError, ValueError for impossible formats
            self.close()
            raise AudioError(f"cannot open audio {opening}: {printable(e, 300)}") from None
        self.line = DelayLine(1, instream.samplerate, outstream.samplerate)
        # PortAudio's output latency is what its buffer holds; its input latency is the capture buffer's size, but
        # a capture callback gets each block as soon as it is full: one block of latency, not the whole buffer
        # (measured through PulseAudio, the buffer size overstated the delay by 30 ms)
        self.device_latency_s = float(outstream.latency) + min(float(instream.latency),
                                                                instream.blocksize / instream.samplerate)
        try:
            instream.start()
            outstream.start()
        except Exception as e:  # noqa: BLE001
            self.close()
            raise AudioError(f"cannot start audio: {printable(e, 300)}") from None
        return self

    def close(self) -> None:
        """Stop. The microphone stops first; what the delay line still holds (the last words before quitting, up
        to the delay) plays out through the output before it stops, unless a device has failed. Idempotent."""
        self._closing = True
        streams, self._streams = self._streams, []
        try:
            if len(streams) == 2 and self.stopped_reason is None and self.line is not None:
                self._drain(*streams)
        finally:
            for stream in streams:
                try:
                    stream.abort()  # at once; the drain above has played what mattered
                    stream.close()
                except Exception:  # noqa: BLE001 - a device that went away may fail to close too
                    pass

    def _drain(self, instream, outstream) -> None:
        # what the microphone captured up to now, its callback may not have had yet (a busy machine delays it):
        # take it first, then stop the microphone
        now = self.clock()
        paces = self._paces.copy()  # one C call: the input callback may append meanwhile
        if paces:
            captured = (now - min(paces)) * instream.samplerate - instream.blocksize  # less the block filling
            deadline = time.monotonic() + INPUT_BUFFER_S + DRAIN_SLACK_S
            while self._heard < captured and time.monotonic() < deadline and instream.active:
                time.sleep(BLOCK_S)
        try:
            instream.abort()
        except Exception:  # noqa: BLE001 - the output still plays what was captured
            pass
        self.line.end_input()
        # bounded: the line holds at most its max_delay; an output that stopped calling back is not waited for
        deadline = time.monotonic() + min(self.line.unplayed(), self.line.max_delay) + DRAIN_SLACK_S
        while self.line.unplayed() > 0 and time.monotonic() < deadline and outstream.active:
            time.sleep(BLOCK_S)
        if outstream.active:
            time.sleep(min(float(outstream.latency), 1.0) + DRAIN_MARGIN_S)  # PortAudio's buffer plays out too

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- what it does now --------------------------------------------------------------------------------------
    @property
    def target_delay_ms(self) -> float | None:
        """The total delay aimed at: the video latency (running median) plus the offset."""
        if self.video_latency_ms is None:
            return None
        return max(0.0, self.video_latency_ms + self.offset_ms)

    def delay_ms(self) -> float | None:
        """The delay in use, microphone to output: the delay line's plus the devices' (None while silent)."""
        delay = None if self.line is None else self.line.last_delay
        return None if delay is None else (delay + self.device_latency_s) * 1000.0

    def hud_line(self) -> str:
        if self.stopped_reason is not None:
            return "audio: off (device stopped)"
        delay, target = self.delay_ms(), self.target_delay_ms
        if delay is None:
            return "audio: muted until the first video frame"
        return f"audio delay {delay:4.0f} ms (target {target:4.0f})"

    def summary(self) -> str:
        if self.stopped_reason is not None:
            return f"audio stopped: {self.stopped_reason}"
        delay = self.delay_ms()
        return (f"audio delay {delay:.0f} ms" if delay is not None else "audio delay -") + \
            (f" (video latency median {self.video_latency_ms:.0f} ms, offset {self.offset_ms:+.0f} ms)"
             if self.video_latency_ms is not None else "") + \
            (f"; {self.output_underflows} output underruns" if self.output_underflows else "")

    # --- the callbacks (PortAudio's threads: never block, never raise) ------------------------------------------
    def _on_input(self, indata, frames, time_info, status):
        try:
            if status.input_overflow:
                self.input_overflows += 1
            now = self.clock()
            self.line.write(indata, now)
            self._heard += frames
            self._paces.append(now - self._heard / self.line.in_rate)
        except Exception as e:  # noqa: BLE001 - reported by _finished, outside the real-time thread
            self._failure = printable(f"{type(e).__name__}: {e}", 300)
            raise portaudio().CallbackAbort from None

    def _on_output(self, outdata, frames, time_info, status):
        try:
            if status.output_underflow:
                self.output_underflows += 1
            now = self.clock()
            if now >= self._next_update:
                self._next_update = now + TARGET_UPDATE_S
                self._update_target()
            block = self.line.read(frames, now)
            outdata[:] = block  # mono to every output channel
        except Exception as e:  # noqa: BLE001
            outdata.fill(0)
            self._failure = printable(f"{type(e).__name__}: {e}", 300)
            raise portaudio().CallbackAbort from None

    def _update_target(self) -> None:
        latency = self.latency_ms()
        if latency is None:
            return  # silent until the video has a latency to match
        self.video_latency_ms = float(latency)
        total = self.target_delay_ms / 1000.0
        self.line.set_target(max(0.0, total - self.device_latency_s))

    def _finished(self, device: AudioDevice) -> None:
        if self._closing or self.stopped_reason is not None:
            return
        self.stopped_reason = f"{device} stopped" + (f" ({self._failure})" if self._failure else "")
        self.notify(f"notice: audio {self.stopped_reason}; the microphone pass-through is off, the video goes on")


def open_pass_through(args, timings, notify) -> AudioPassThrough:
    """The pass-through the audio flags ask for, started; the delay follows `timings` (the live loop's HUD)."""
    source = find_device(args.audio_in, "input")
    target = find_device(args.audio_out, "output")
    return AudioPassThrough(source, target, lambda: median_latency_ms(timings), offset_ms=args.audio_offset,
                            notify=notify).start()


def check_audio(args) -> None:
    """Start-up check: the named devices exist (before the model loads)."""
    if getattr(args, "audio_out", None) is not None:
        find_device(args.audio_in, "input")
        find_device(args.audio_out, "output")
