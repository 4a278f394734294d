"""The audio flags without an audio server: one-line errors, device names, the latency the delay follows, and the
HUD line. (The pass-through itself runs on a real server in test_audio_e2e.py.)"""
import types

import pytest

from live.audio import pass_through as audio
from live.cli.app import build_parser, main
from live.audio.pass_through import AudioDevice, AudioError, AudioPassThrough, find_device, median_latency_ms
from live.ui.hud import Timings
from tests.test_live_app import assert_one_line_error, avatar, run_main  # noqa: F401 - the avatar fixture
from tests.test_live_loop import FakePreview, frames, make_pipeline


@pytest.mark.parametrize("argv,fragment", [
    (["--audio-in", "mic"], "--audio-in needs --audio-out"),
    (["--audio-out", "x", "--audio-offset", "5000"], "--audio-offset must be between"),
    (["--audio-out", "x", "--audio-offset", "nan"], "--audio-offset must be a finite number"),
    (["--audio-out", "x", "--driving", "clip.mp4", "--output", "out.mp4"], "--audio-out is for live runs"),
])
def test_audio_flag_mistakes_are_one_line_errors(capsys, avatar, argv, fragment):  # noqa: F811
    code, err = run_main(capsys, ["--avatar", avatar, "--no-preview", "--no-vcam", *argv])
    assert_one_line_error(code, err, fragment)


def test_an_unknown_device_is_a_one_line_error_before_the_model_loads(capsys, avatar, monkeypatch):  # noqa: F811
    monkeypatch.setattr(audio, "portaudio", lambda: FakeSoundDevice())
    monkeypatch.setattr(audio, "pulse_devices", lambda kind: [])
    code, err = run_main(capsys, ["--avatar", avatar, "--no-preview", "--no-vcam", "--audio-out", "no such card"])
    assert_one_line_error(code, err, "--audio-out 'no such card'", "--list-audio")


class FakeSoundDevice:
    """PortAudio's device list as on Windows: one card under two host APIs, a virtual cable, a microphone."""

    DEVICES = [
        {"name": "Microphone (USB)", "hostapi": 0, "max_input_channels": 1, "max_output_channels": 0,
         "default_samplerate": 48000.0},
        {"name": "CABLE Input (VB-Audio Virtual Cable)", "hostapi": 0, "max_input_channels": 0,
         "max_output_channels": 2, "default_samplerate": 44100.0},
        {"name": "CABLE Input (VB-Audio Virtual Cable)", "hostapi": 1, "max_input_channels": 0,
         "max_output_channels": 8, "default_samplerate": 48000.0},
        {"name": "pulse", "hostapi": 0, "max_input_channels": 32, "max_output_channels": 32,
         "default_samplerate": 44100.0},
    ]
    default = types.SimpleNamespace(device=[0, 1])

    def query_devices(self):
        return [dict(d) for d in self.DEVICES]

    def query_hostapis(self):
        return [{"name": "MME"}, {"name": "WASAPI"}]


def test_devices_by_index_name_part_or_pulseaudio_name(monkeypatch):
    monkeypatch.setattr(audio, "portaudio", lambda: FakeSoundDevice())
    monkeypatch.setattr(audio, "pulse_devices", lambda kind: [("live_avatar_mic", "live avatar mic")]
                        if kind == "output" else [("alsa_input.usb", "USB Headset Mono")])
    assert find_device(None, "input").name == "Microphone (USB)"
    assert find_device("0", "input").index == 0
    cable = find_device("cable input", "output")  # part of the name, any case; the default device's host API
    assert (cable.index, cable.channels, cable.rate) == (1, 2, 44100.0)
    mic = find_device("LIVE AVATAR MIC", "output")  # a PulseAudio sink, reached through PortAudio's "pulse"
    assert (mic.index, mic.pulse, mic.name) == (3, "live_avatar_mic", "live avatar mic")
    assert find_device("headset", "input").pulse == "alsa_input.usb"
    with pytest.raises(AudioError, match="no audio input device with that index"):
        find_device("1", "input")  # an output-only device
    with pytest.raises(AudioError, match="no audio output device of that name"):
        find_device("speakers", "output")
    listing = audio.list_devices()
    assert "CABLE Input (VB-Audio Virtual Cable)  [WASAPI]" in listing
    assert "live avatar mic  (live_avatar_mic)" in listing


def test_list_audio_needs_no_avatar(capsys, monkeypatch):
    monkeypatch.setattr(audio, "portaudio", lambda: FakeSoundDevice())
    monkeypatch.setattr(audio, "pulse_devices", lambda kind: [])
    with pytest.raises(SystemExit) as exit_:
        main(["--list-audio"])
    assert exit_.value.code == 0
    assert "Microphone (USB)" in capsys.readouterr().out


def test_audio_setup_without_pactl_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--audio-setup"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: --audio-setup needs pactl"), err


def test_the_delay_follows_the_running_median_of_the_video_latency():
    now = {"t": 100.0}
    timings = Timings(clock=lambda: now["t"])
    assert median_latency_ms(timings) is None  # no frame yet: the virtual mic stays silent
    for i, ms in enumerate([900, 100, 110, 120, 105, 115]):  # one slow first frame
        now["t"] = 100.0 + 0.5 * i
        timings.frame_done(now["t"] - ms / 1000.0)
    assert median_latency_ms(timings, 3.0) == pytest.approx(112.5)  # the slow outlier barely moves it
    assert median_latency_ms(timings, 2.2) == pytest.approx(110)  # older frames fall out of the window
    now["t"] += 10
    assert median_latency_ms(timings, 3.0) is None  # nothing sent in the last 3 s


def test_target_is_latency_plus_offset_less_the_devices_own_and_the_hud_shows_it():
    device = AudioDevice(0, "dev", 1, 48000.0)
    passthrough = AudioPassThrough(device, device, lambda: 150.0, offset_ms=-30.0)
    from live.audio.delay_line import DelayLine
    passthrough.line, passthrough.device_latency_s = DelayLine(1, 48000.0), 0.05
    assert passthrough.hud_line() == "audio: muted until the first video frame"
    passthrough._update_target()
    assert passthrough.target_delay_ms == pytest.approx(120.0)
    assert passthrough.line.target == pytest.approx(0.070)  # 150 - 30 ms, of which the devices give 50
    passthrough.line.write([0.0] * 4800)
    passthrough.line.read(480)
    assert passthrough.hud_line() == "audio delay  120 ms (target  120)"
    assert "video latency median 150 ms, offset -30 ms" in passthrough.summary()


def test_the_pipeline_shows_extra_hud_lines():
    preview = FakePreview([])
    p = make_pipeline(preview=preview)
    p.hud_extras.append(lambda: "audio delay  120 ms (target  120)")
    p.run(frames([100] * 2))
    assert preview.shown[0][3][-1] == "audio delay  120 ms (target  120)"
