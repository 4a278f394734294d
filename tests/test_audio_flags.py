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
    monkeypatch.setattr(audio, "server_down", lambda: None)
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
    monkeypatch.setattr(audio, "server_down", lambda: None)
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
    monkeypatch.setattr(audio, "server_down", lambda: None)
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


# --- device names: ambiguity, names from outside, no audio server ---------------------------------------------
class FakePortAudio(FakeSoundDevice):
    """A FakeSoundDevice with the given devices ({name, hostapi, in, out}); defaults: the first input and output."""

    def __init__(self, *devices, default=None):
        self.DEVICES = [{"name": name, "hostapi": api, "max_input_channels": inputs, "max_output_channels": outputs,
                         "default_samplerate": 48000.0} for name, api, inputs, outputs in devices]
        first_in = next((i for i, d in enumerate(self.DEVICES) if d["max_input_channels"]), -1)
        first_out = next((i for i, d in enumerate(self.DEVICES) if d["max_output_channels"]), -1)
        self.default = types.SimpleNamespace(device=default or [first_in, first_out])


def fake_pactl(*, running=True, sinks=(), sources=(), load_fails=False, calls=None):
    """pactl as a function of its arguments: a server that answers (with these sinks and sources) or none."""
    import subprocess

    refused = "Connection failure: Connection refused\npa_context_connect() failed: Connection refused\n"

    def listing(devices):
        return "".join(f"Sink #{i}\n\tState: IDLE\n\tName: {name}\n\tDescription: {desc}\n"
                       for i, (name, desc) in enumerate(devices))

    def run(*argv, timeout=5.0):
        if calls is not None:
            calls.append(argv)
        if not running:
            return subprocess.CompletedProcess(["pactl", *argv], 1, "", refused)
        if argv[:2] == ("list", "sinks"):
            return subprocess.CompletedProcess(["pactl", *argv], 0, listing(sinks), "")
        if argv[:2] == ("list", "sources"):
            return subprocess.CompletedProcess(["pactl", *argv], 0, listing(sources), "")
        if argv[0] == "load-module" and load_fails:
            return subprocess.CompletedProcess(["pactl", *argv], 1, "", "Failure: Module initialization failed\n")
        return subprocess.CompletedProcess(["pactl", *argv], 0, "", "")
    return run


@pytest.fixture
def pactl_here(monkeypatch):
    """pactl is installed (whatever this machine has); the tests give _pactl its answers."""
    monkeypatch.setattr(audio.shutil, "which", lambda name: "/usr/bin/" + name)
    return monkeypatch


def test_a_name_that_fits_several_devices_is_refused_naming_them(capsys, avatar, monkeypatch):  # noqa: F811
    monkeypatch.setattr(audio, "portaudio", lambda: FakePortAudio(
        ("Headset Microphone", 0, 1, 0), ("USB Audio Out A", 0, 0, 2), ("USB Audio Out B", 0, 0, 2)))
    monkeypatch.setattr(audio, "pulse_devices", lambda kind: [])
    with pytest.raises(AudioError, match="matches 2 audio output devices") as refused:
        find_device("usb audio", "output")
    assert '1 "USB Audio Out A"' in str(refused.value) and '2 "USB Audio Out B"' in str(refused.value)
    assert find_device("usb audio out b", "output").index == 2  # the whole name is not ambiguous
    assert find_device("2", "output").index == 2
    code, err = run_main(capsys, ["--avatar", avatar, "--no-preview", "--no-vcam", "--audio-out", "usb audio"])
    assert_one_line_error(code, err, "--audio-out 'usb audio'", "USB Audio Out A", "USB Audio Out B")


def test_the_same_card_on_several_host_apis_is_one_device_and_two_alike_on_one_api_are_two(monkeypatch):
    monkeypatch.setattr(audio, "pulse_devices", lambda kind: [])
    # Windows: MME cuts names at 31 characters; the same cable on WASAPI has its whole name
    monkeypatch.setattr(audio, "portaudio", lambda: FakePortAudio(
        ("Microphone (USB)", 0, 1, 0), ("CABLE Input (VB-Audio Virtual C", 0, 0, 2),
        ("CABLE Input (VB-Audio Virtual Cable)", 1, 0, 2)))
    assert find_device("cable input", "output").index == 1  # the default device's API (MME here)
    # two identical headsets on one API: only the index tells them apart
    monkeypatch.setattr(audio, "portaudio", lambda: FakePortAudio(("USB Headset", 0, 1, 0), ("USB Headset", 0, 1, 0)))
    with pytest.raises(AudioError, match="matches 2 audio input devices.*the index"):
        find_device("usb headset", "input")


def test_pulseaudio_names_that_fit_several_are_refused_too(pactl_here):
    pactl_here.setattr(audio, "portaudio", lambda: FakeSoundDevice())
    pactl_here.setattr(audio, "_pactl", fake_pactl(sources=[
        ("live_avatar_mic.monitor", "Monitor of live avatar mic"),
        ("live_avatar_mic_source", "live avatar mic (microphone)")]))
    with pytest.raises(AudioError, match="matches 2 audio input devices") as refused:
        find_device("live avatar mic", "input")
    assert '"Monitor of live avatar mic"' in str(refused.value)
    assert find_device("Monitor of live avatar mic", "input").pulse == "live_avatar_mic.monitor"


EVIL = "Evil\x1b[2J\x1b]0;owned\x07 Mic\nrm -rf ~\r\u202etxt.exe\x9b31m"


def test_device_names_from_outside_are_printed_as_one_clean_line(pactl_here):
    pactl_here.setattr(audio, "portaudio", lambda: FakePortAudio((EVIL, 0, 1, 0), ("Speakers", 0, 0, 2),
                                                                  ("pulse", 0, 32, 32)))
    pactl_here.setattr(audio, "_pactl", fake_pactl(sinks=[("evil_sink", "Sink\x1b[31m of\tdoom\x07")]))
    listing = audio.list_devices()
    assert not any(c in listing for c in "\x1b\x07\r\u202e\x9b")
    assert len(listing.splitlines()) == 6  # header, 3 devices, the sinks' title, 1 sink
    assert "Evil Mic rm -rf ~ txt.exe 31m" in listing and "Sink of doom  (evil_sink)" in listing
    mic = find_device("evil mic", "input")  # matched by what --list-audio shows
    assert mic.name == "Evil Mic rm -rf ~ txt.exe 31m"
    assert find_device("sink of doom", "output").name == "Sink of doom"
    with pytest.raises(AudioError) as missing:
        find_device("\x1b[2Jnothing", "output")
    assert "\x1b" not in str(missing.value)  # the user's own spec is shown as repr


def test_audio_setup_without_a_server_is_one_line_saying_how_to_start_one(capsys, pactl_here):
    pactl_here.setattr(audio, "_pactl", fake_pactl(running=False))
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--audio-setup"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --audio-setup: no audio server is running") and "pulseaudio --start" in err
    assert "Connection refused" in err  # pactl's reason, its first line only


def test_audio_setup_that_pactl_refuses_is_one_line_naming_the_step(capsys, pactl_here):
    calls = []
    pactl_here.setattr(audio, "_pactl", fake_pactl(load_fails=True, calls=calls))
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--audio-setup"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --audio-setup: pactl load-module module-null-sink failed"), err
    assert "Module initialization failed" in err


def test_audio_setup_with_the_real_pactl_and_no_server(capsys, monkeypatch, tmp_path):
    """pactl itself (it prints two lines when it cannot connect), pointed at a server that is not there."""
    import shutil
    if shutil.which("pactl") is None:
        pytest.skip("pactl not installed (apt install pulseaudio-utils)")
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path / 'no-server'}")  # set: pactl never autospawns one
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--audio-setup"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --audio-setup: no audio server is running"), err


def test_list_audio_without_any_device_or_server_is_one_line(capsys, pactl_here):
    pactl_here.setattr(audio, "portaudio", lambda: FakePortAudio())
    pactl_here.setattr(audio, "_pactl", fake_pactl(running=False))
    with pytest.raises(SystemExit) as exit_:
        main(["--list-audio"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == "" and len(captured.err.splitlines()) == 1, captured
    assert captured.err.startswith("error: no audio devices: no audio server is running")
    # a sound card but no server: listed, and one line says the server's devices are missing
    pactl_here.setattr(audio, "portaudio", lambda: FakePortAudio(("HDA Intel PCH: ALC892 Analog (hw:0,0)", 0, 2, 2)))
    with pytest.raises(SystemExit) as exit_:
        main(["--list-audio"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "ALC892" in out and out.splitlines()[-1].startswith("note: no audio server")


def test_an_unknown_device_without_a_server_says_so(pactl_here):
    pactl_here.setattr(audio, "portaudio", lambda: FakePortAudio())
    pactl_here.setattr(audio, "_pactl", fake_pactl(running=False))
    with pytest.raises(AudioError, match="no audio output device of that name.*; no audio server is running"):
        find_device("live avatar mic", "output")
    with pytest.raises(AudioError, match="no default audio input device.*no audio server is running"):
        find_device(None, "input")


def test_the_terminal_hud_shows_the_audio_delay_like_the_preview(monkeypatch, tmp_path):
    """Live runs without a preview window print the HUD every few seconds: with the same extra lines."""
    from live.cli import app
    p = make_pipeline()
    p.run(frames([100] * 2))
    p.hud_extras.append(lambda: "audio delay  120 ms (target  120)")
    monkeypatch.setattr(app, "TERMINAL_HUD_S", 0.0)
    session = app.Session(build_parser().parse_args(["--avatar", str(tmp_path / "a.png")]),
                          log=(printed := []).append)
    session._terminal_hud(p)(2)
    (line,) = printed
    assert line.startswith("2 frames | ") and "latency" in line and "audio delay  120 ms (target  120)" in line
    p.options.show_hud = False  # h hides the HUD: in the terminal too
    session._terminal_hud(p)(3)
    assert "audio delay" not in printed[-1]
