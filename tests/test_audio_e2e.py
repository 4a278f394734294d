"""The microphone pass-through on a real audio server: PulseAudio started here with null sinks, no sound hardware.

    probe (null sink, 2 channels) <- left:  "test input" (remap sink): the test plays sound bursts into it; its
                                            monitor is the microphone (--audio-in)
                                  <- right: "live avatar mic" (remap sink): --audio-out
Recording the probe's monitor puts each burst and its delayed copy side by side in one stream (one clock), so
their distance is the delay a call would hear. The live loop runs for real (driving clip through the app's
Session) and measures its video latency; the pass-through must delay the microphone by that latency
(+ --audio-offset), +-20 ms once its delay has settled, and between the targets of the last seconds while it
glides to a new one (played up to 5 % faster or slower then, so a copy is searched at those speeds too), and
every burst that reached the microphone before the pass-through closed must come out - the last one too, whose
delayed copy is due after the run has ended (the quit comes right after a burst). The loop runs in passthrough mode
(key o: the camera crop is sent, no network) into a virtual camera that takes 150 ms per frame, so the latency is
real but steady on a busy 2-core machine (the network's time per frame varies there by hundreds of ms).

Robust to load without judging less: the test's own streams have long buffers (a callback that waits for the CPU
loses nothing), and a burst's moment is taken from the recording's own clock - its sample count - anchored to
the monotonic clock by the deliveries that follow it (a delivery is never before its samples were captured), not
from the recording's first callback (samples lost or delivered late would shift every moment after them).
A second run kills the server mid-run: one notice, the video goes on.

Install: apt install pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins (.ci/run does). Where no server
can start the tests skip with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.signal import butter, correlate, resample, sosfilt

from live.cli.app import Session, build_parser
from tests.conftest import carphone_path

RATE = 48000
BURST_S, PERIOD_S = 0.03, 0.5
# added to the video latency (~170 ms): the delayed copy of the last burst before the quit is due after the
# pass-through has begun to close, so the test sees whether the delayed tail still comes out
OFFSET_MS = 300.0
SINK_S = 0.15  # the virtual camera takes this long per frame: a video latency that stays steady on a busy machine
TOLERANCE_MS = 20.0
RUN_S = 14.0
HARNESS_BUFFER_S = 0.5  # the test's own player and recorder: long buffers, so a busy machine costs them nothing
INPUT_MARGIN_S = 0.05  # a burst the recorder captured this long before the pass-through closed reached its input
SETTLED_MS = 10.0  # the delay in use this close to the target: settled (else it is still gliding towards it)
MAX_SPEED = 0.05  # the delay line glides by playing up to this much faster or slower (DelayLine.max_speed)

PULSE_CONFIG = r"""
load-module module-native-protocol-unix
load-module module-null-sink sink_name=probe channels=2 rate=48000 format=float32le sink_properties=device.description=probe
load-module module-remap-sink sink_name=test_in master=probe channels=1 master_channel_map=front-left channel_map=mono remix=no sink_properties=device.description="test\ input"
load-module module-remap-sink sink_name=live_avatar_mic master=probe channels=1 master_channel_map=front-right channel_map=mono remix=no sink_properties=device.description="live\ avatar\ mic"
"""  # noqa: E501 - pulseaudio reads one command per line


class PulseServer:
    """A private PulseAudio daemon (its own runtime folder and cookie), reachable through os.environ while up."""

    ENV = ("XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH", "PULSE_STATE_PATH", "PULSE_COOKIE", "HOME")

    def __init__(self, root: Path):
        self.root = root
        self.process = None
        self._saved = {}

    def start(self) -> "PulseServer":
        exe = shutil.which("pulseaudio")
        if exe is None or shutil.which("pactl") is None:
            pytest.skip("no audio server: pulseaudio/pactl not installed (apt install pulseaudio pulseaudio-utils "
                        "libportaudio2 libasound2-plugins)")
        try:
            import sounddevice  # noqa: F401
        except (ImportError, OSError) as e:
            pytest.skip(f"no PortAudio for sounddevice ({e}): apt install libportaudio2 libasound2-plugins")
        run = self.root / "run"
        (run / "pulse").mkdir(parents=True, exist_ok=True)
        run.chmod(0o700)
        (self.root / "home").mkdir(exist_ok=True)
        config = self.root / "test.pa"
        config.write_text(PULSE_CONFIG)
        env = {"XDG_RUNTIME_DIR": str(run), "PULSE_RUNTIME_PATH": str(run / "pulse"),
               "PULSE_STATE_PATH": str(self.root / "state"), "PULSE_COOKIE": str(self.root / "cookie"),
               "HOME": str(self.root / "home")}
        self._saved = {k: os.environ.get(k) for k in self.ENV}
        os.environ.update(env)
        self.log = open(self.root / "pulse.log", "w")
        # --system=false -n -F: no system daemon, none of the machine's configuration, only ours (works as root)
        self.process = subprocess.Popen([exe, "--daemonize=no", "--exit-idle-time=-1", "--system=false", "-n",
                                         "-F", str(config), "--use-pid-file=false", "--log-target=stderr"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
                import sounddevice
                sounddevice._terminate()  # PortAudio lists ALSA's "pulse" device only while a server answers:
                sounddevice._initialize()  # enumerate again now that one does
                return self
            time.sleep(0.1)
        tail = (self.root / "pulse.log").read_text()[-400:].replace("\n", " | ")
        self.stop()
        pytest.skip(f"no audio server: pulseaudio did not start ({tail})")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved:  # PortAudio lists devices once: the next tests must not see this server's "pulse" device
            import sounddevice
            sounddevice._terminate()
            sounddevice._initialize()
        self._saved = {}
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture
def pulse(tmp_path):
    server = PulseServer(tmp_path / "pulse").start()
    yield server
    server.stop()


@pytest.fixture
def avatar(tmp_path):
    from skimage.data import astronaut
    path = tmp_path / "avatar.png"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    return path


def bursts(count: int, seed: int = 7) -> list[np.ndarray]:
    """Distinct noise bursts below 6 kHz: each one has a single cross-correlation peak."""
    rng = np.random.default_rng(seed)
    sos = butter(6, [300, 6000], btype="band", fs=RATE, output="sos")
    n = int(BURST_S * RATE)
    out = []
    for _ in range(count):
        b = sosfilt(sos, rng.standard_normal(n)) * np.hanning(n)
        out.append((0.5 * b / np.abs(b).max()).astype(np.float32))
    return out


def best_copy(channel: np.ndarray, template: np.ndarray) -> tuple[float, int, float]:
    """(score, offset, speed) of the template's best copy in `channel`, played at any speed the delay line glides
    at (up to MAX_SPEED faster or slower: its duration changes by that much); score 1 is the template itself."""
    best = (-np.inf, 0, 0.0)
    for speed in np.linspace(-MAX_SPEED, MAX_SPEED, 11):
        stretched = resample(template, int(round(len(template) / (1.0 + speed)))).astype(np.float32)
        if len(channel) < len(stretched):
            break
        c = correlate(channel, stretched, mode="valid", method="fft") / float(np.dot(stretched, stretched))
        if c.max() > best[0]:
            best = (float(c.max()), int(np.argmax(c)), float(speed))
    return best


class Stream:
    """A sounddevice stream on PortAudio's "pulse" device, routed to one sink/source of the test server."""

    def __init__(self, kind, target, channels, callback):
        import sounddevice as sd
        var = "PULSE_SOURCE" if kind == "input" else "PULSE_SINK"
        os.environ[var] = target
        try:
            cls = sd.InputStream if kind == "input" else sd.OutputStream
            self.stream = cls(device="pulse", channels=channels, samplerate=RATE, dtype="float32",
                              latency=HARNESS_BUFFER_S, callback=callback)
        finally:
            os.environ.pop(var, None)
        self.stream.start()

    def close(self):
        self.stream.abort()
        self.stream.close()


class QuitAfter:
    """Key source: q `seconds` after the loop's first poll - at the first poll from then on where `ready()` (within
    3 s more); `at` callbacks run once their time has come (in the video thread)."""

    def __init__(self, seconds, at=(), first=(), ready=lambda: True):
        self.start, self.seconds, self.at, self.first, self.ready = None, seconds, list(at), list(first), ready

    def __call__(self):
        if self.start is None:
            self.start = time.monotonic()
            return self.first
        elapsed = time.monotonic() - self.start
        while self.at and elapsed >= self.at[0][0]:
            self.at.pop(0)[1]()
        return ["q"] if elapsed >= self.seconds and (self.ready() or elapsed >= self.seconds + 3.0) else []


class Recording:
    """The probe's monitor, recorded: the samples, and for each block the monotonic time it was delivered."""

    def __init__(self):
        self.blocks, self.delivered, self.overflows = [], [], []
        self.burst_heard_at = -np.inf  # when the last block with a burst in the left channel came

    def callback(self, indata, frames, time_info, status):
        now = time.monotonic()
        self.blocks.append(indata.copy())
        self.delivered.append(now)
        if status.input_overflow:
            self.overflows.append(now)
        if frames and np.abs(indata[:, 0]).max() > 0.05:
            self.burst_heard_at = now

    def finish(self):
        self.samples = np.concatenate(self.blocks)
        self.ends = np.cumsum([len(b) for b in self.blocks])
        self.delivered = np.array(self.delivered)

    def captured_at(self, position: int) -> float:
        """The monotonic time sample `position` was captured. Each block is delivered after its samples were
        captured, so every later delivery k bounds it: delivered[k] - (ends[k] - position) / RATE; the smallest
        bound over the second that follows is the moment itself, however late single deliveries were."""
        first = int(np.searchsorted(self.ends, position, side="right"))
        last = int(np.searchsorted(self.ends, position + RATE, side="right"))
        k = slice(first, max(last, first + 1))
        return float(np.min(self.delivered[k] - (self.ends[k] - position) / RATE))


class SlowCamera:
    """A pyvirtualcam backend that takes SINK_S per frame (like a slow encoder) and counts the frames."""

    instances = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height, self.frames = width, height, 0
        SlowCamera.instances.append(self)

    def send(self, frame):
        time.sleep(SINK_S)
        self.frames += 1

    def device(self):
        return "slow0"

    def native_fourcc(self):
        return None

    def close(self):
        pass


@pytest.fixture
def slow_camera():
    import pyvirtualcam
    from pyvirtualcam.camera import BACKENDS
    SlowCamera.instances = []
    pyvirtualcam.register_backend("slow-test", SlowCamera)
    yield ["--vcam", "--vcam-backend", "slow-test", "--vcam-size", "64x48"]
    BACKENDS.pop("slow-test", None)


def session_args(avatar, *extra):
    return build_parser().parse_args([
        "--avatar", str(avatar), "--driving", str(carphone_path()), "--loop", "--no-preview", "--no-vcam",
        "--deterministic-weights", "--device", "cpu", "--backend", "torch",
        "--audio-in", "Monitor of test input", "--audio-out", "live avatar mic", *extra])


@pytest.mark.slow
def test_the_microphone_reaches_the_virtual_mic_delayed_by_the_measured_video_latency(pulse, avatar, slow_camera,
                                                                                     monkeypatch):
    templates = bursts(int(RUN_S / PERIOD_S) + 10)
    signal = np.zeros(int((len(templates) + 1) * PERIOD_S * RATE), np.float32)
    starts = [int((0.25 + i * PERIOD_S) * RATE) for i in range(len(templates))]
    for s, b in zip(starts, templates):
        signal[s:s + len(b)] = b

    recording = Recording()
    position = [0]
    playing = threading.Event()  # from when the pass-through runs (the model loads first)

    def play(outdata, frames, time_info, status):
        outdata.fill(0)
        if playing.is_set():
            chunk = signal[position[0]:position[0] + frames]
            outdata[:len(chunk), 0] = chunk
            position[0] += frames

    from live.audio.pass_through import AudioPassThrough
    closing = []  # when the pass-through began to close: its microphone stops there
    original_close = AudioPassThrough.close

    def close(self):
        closing.append(time.monotonic())
        original_close(self)
    monkeypatch.setattr(AudioPassThrough, "close", close)

    # the quit comes right after a burst reached the microphone, so its delayed copy is due after the close
    quit = QuitAfter(RUN_S, first=["o"], ready=lambda: 0.03 < time.monotonic() - recording.burst_heard_at < 0.2)
    session = Session(session_args(avatar, "--audio-offset", str(OFFSET_MS), *slow_camera),
                      key_sources=[quit], log=(messages := []).append)
    history = []  # (monotonic time, target ms, delay in use ms, audio glitches so far)
    done = threading.Event()

    def watch():
        while not done.is_set():
            audio = session.audio
            if audio is not None and audio.line is not None:
                playing.set()
                glitches = audio.line.underruns + audio.output_underflows + audio.input_overflows
                history.append((time.monotonic(), audio.target_delay_ms, audio.delay_ms(), glitches))
            time.sleep(0.02)

    recorder = Stream("input", "probe.monitor", 2, recording.callback)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    player = Stream("output", "test_in", 1, play)
    try:
        assert session.run() == 0
        time.sleep(HARNESS_BUFFER_S)  # the recorder's buffer comes in
    finally:
        done.set()
        player.close()
        recorder.close()
        watcher.join(2)

    assert any(m.startswith("audio: ") and "live avatar mic" in m for m in messages), messages
    (summary,) = [m for m in messages if m.startswith("done:")]
    assert "audio delay" in summary and "video latency median" in summary, summary
    (closed,) = closing
    recording.finish()
    left, right = recording.samples[:, 0], recording.samples[:, 1]
    times = np.array([h[0] for h in history])
    targets = np.array([np.nan if h[1] is None else h[1] for h in history], dtype=float)
    glitch_times = [h[0] for prev, h in zip(history, history[1:]) if h[3] > prev[3]]
    in_use = np.array([np.nan if h[2] is None else h[2] for h in history], dtype=float)
    audio_start = times[np.argmax(~np.isnan(targets))]

    # what the pass-through said while it ran (once it closes, its delay line only empties: not a delay in use)
    played = ~np.isnan(in_use) & (times < closed)

    def said(values, at):
        """The median of what the watcher read within 60 ms of `at` (one read can be off while a callback waits
        for the CPU), the last reading before the close for a moment after it."""
        t, v = times[played], values[played]
        near = np.abs(t - min(at, t[-1])) <= 0.06
        return float(np.median(v[near])) if near.any() else float(np.interp(at, t, v))
    rows = []
    for b in templates:
        energy = float(np.dot(b, b))
        cl = correlate(left, b, mode="valid", method="fft")
        li = int(np.argmax(cl))
        if cl[li] < 0.8 * energy:
            continue  # played after the recording ended
        when = recording.captured_at(li + len(b))
        due = float(np.interp(when, times, targets)) / 1000.0
        # steady state: the delay has settled, and no underrun or overflow (a busy machine starving the audio
        # threads: the sound has a gap there) from a second before the burst until its copy is out; nor a gap in
        # the test's own recording
        steady = (when > audio_start + 3.0 and all(not when - 1.0 < u <= when + due + 0.2 for u in glitch_times)
                  and all(abs(when - u) > 1.0 for u in recording.overflows))
        if not steady or when > closed - INPUT_MARGIN_S:
            continue  # still settling, or it came after the microphone stopped
        assert len(right) - li > (due + 0.35) * RATE, "the recording ends before the copy is due"
        score, offset, speed = best_copy(right[li:li + int((due + 0.3) * RATE)], b)
        if score < 0.6:
            score, offset, speed = best_copy(right[li:li + 3 * RATE], b)  # where its best match is, if anywhere
            rows.append(dict(when=when, measured=None, note=f"at {when - audio_start:.2f} s: best match "
                             f"{offset / RATE * 1000:.0f} ms later at {score:.2f} (speed {speed:+.0%})"))
            continue
        measured = offset / RATE * 1000.0
        # what the pass-through said it played at that moment (for a copy played while it closed: the delay it
        # used last before the close)
        at = when + measured / 1000.0
        recent = played & (times > at - 5.0) & (times <= at)
        rows.append(dict(when=when, measured=measured, target=said(targets, at), in_use=said(in_use, at),
                         low=targets[recent].min(), high=targets[recent].max(), speed=speed))

    missing = [r["note"] for r in rows if r["measured"] is None]
    assert not missing, (f"bursts that never came out of the virtual mic: {missing} (the pass-through closed "
                         f"{closed - audio_start:.2f} s after the audio started)")
    # settled (the delay in use has reached the target): the delay heard is the video latency + the offset;
    # gliding: it lies between the targets of the last seconds (a glide after a 200 ms step takes 5 s)
    settled = [r for r in rows if abs(r["in_use"] - r["target"]) <= SETTLED_MS]
    astray = [(round(r["when"] - audio_start, 2), round(r["measured"]), round(r["low"]), round(r["high"]))
              for r in rows if r not in settled and not r["low"] - TOLERANCE_MS <= r["measured"]
              <= r["high"] + TOLERANCE_MS]
    assert not astray, f"bursts played while gliding, outside the recent targets (s, ms, lowest, highest): {astray}"
    assert len(settled) >= 8, (f"too few settled bursts: {len(settled)} of {len(rows)} (audio for "
                               f"{closed - audio_start:.1f} s, glitches at "
                               f"{[round(u - audio_start, 1) for u in glitch_times]} s)")
    tail = [r for r in rows if r["when"] + r["measured"] / 1000.0 > closed]
    assert tail, "no burst's copy was due after the close: the quit must come right after a burst"
    errors = np.array([r["measured"] - r["target"] for r in settled])
    report = (f"{len(rows)} bursts ({len(tail)} played out while closing, {len(rows) - len(settled)} while gliding, "
              f"at speeds up to {max(abs(r['speed']) for r in rows):.0%}); {len(settled)} settled: video latency "
              f"median + {OFFSET_MS:g} ms = {np.mean([r['target'] for r in settled]):.0f} ms, audio delay measured "
              f"{np.mean([r['measured'] for r in settled]):.0f} ms, error mean {errors.mean():+.1f} ms, worst "
              f"{errors[np.argmax(np.abs(errors))]:+.1f} ms (of which heard - in use "
              f"{[r['measured'] - r['in_use'] for r in settled][int(np.argmax(np.abs(errors)))]:+.1f} ms, at "
              f"{settled[int(np.argmax(np.abs(errors)))]['when'] - audio_start:.2f} s); glitches at "
              f"{[round(u - audio_start, 2) for u in glitch_times]} s")
    print(report)
    assert np.abs(errors).max() <= TOLERANCE_MS, report
    assert np.mean([r["target"] for r in settled]) > OFFSET_MS + 1000 * SINK_S, "the target includes the latency"


@pytest.mark.slow
def test_a_vanishing_audio_server_stops_the_audio_with_one_notice_and_the_video_goes_on(pulse, avatar,
                                                                                      memory_backend):
    from tests.support import MemoryCamera
    sent_at_kill = []

    def kill():
        sent_at_kill.append(len(MemoryCamera.instances[0].frames))
        pulse.kill()

    args = session_args(avatar, "--vcam", "--vcam-backend", memory_backend, "--vcam-size", "64x48")
    session = Session(args, key_sources=[QuitAfter(8.0, at=[(4.0, kill)], first=["o"])], log=(messages := []).append)
    assert session.run() == 0
    # the notice itself, once (the terminal HUD line, every 5 s without a window, may repeat the status line)
    notices = [m for m in messages if m.startswith("notice:") and "pass-through is off" in m]
    assert len(notices) == 1, messages
    (summary,) = [m for m in messages if m.startswith("done:")]
    assert "audio stopped" in summary, summary
    (cam,) = MemoryCamera.instances
    assert sent_at_kill and len(cam.frames) > sent_at_kill[0] + 2, "the video goes on after the audio stopped"
