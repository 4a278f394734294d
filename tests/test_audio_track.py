"""Offline renders keep the driving clip's sound: the recording gets an AAC track, aligned to the frames written
and as long as the video. The clips are made here with PyAV (frames + a tone with a click at a known time)."""
import av
import cv2
import numpy as np
import pytest

from live.cli.app import Session, build_parser
from live.devices.sinks import VideoFileSink

RATE = 44100
CLICK_AT = 0.6  # seconds


def make_clip(path, *, frames=30, fps=25, rate=RATE, audio_delay=0.0, audio=True, click_at=CLICK_AT,
              audio_seconds=None, codec="aac", spoil=None):
    """A small clip: moving frames and (unless audio=False) a 440 Hz tone with a loud 20 ms click at CLICK_AT
    clip time, its stream starting `audio_delay` seconds after the video (before it, if negative: the video's
    first frame then comes at -audio_delay), `audio_seconds` long (default: to the video's end).
    spoil(samples, rate) may damage the samples before they are encoded (codec "pcm_f32le" in a .mov keeps them
    exactly as given, NaN included)."""
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=fps)
    video.width = video.height = 96
    video.pix_fmt = "yuv420p"
    sound = container.add_stream(codec, rate=rate, layout="mono") if audio else None
    first_frame = round(max(0.0, -audio_delay) * fps)
    for i in range(frames):
        image = np.full((96, 96, 3), 40 + (i * 5) % 200, np.uint8)
        cv2.circle(image, (48, 48), 20 + i % 10, (200, 160, 140), -1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = first_frame + i
        for packet in video.encode(frame):
            container.mux(packet)
    if sound is not None:
        seconds = audio_seconds if audio_seconds is not None else frames / fps - audio_delay
        t = np.arange(int(seconds * rate)) / rate
        signal = 0.2 * np.sin(2 * np.pi * 440.0 * t)
        click = int((click_at - audio_delay) * rate)
        signal[click:click + int(0.02 * rate)] = 0.9
        if spoil is not None:
            spoil(signal, rate)
        start = round(max(0.0, audio_delay) * rate)
        for k in range(0, len(signal), 1024):
            frame = av.AudioFrame.from_ndarray(signal[k:k + 1024].astype(np.float32)[None], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start + k
            for packet in sound.encode(frame):
                container.mux(packet)
    for stream in (video, sound):
        for packet in stream.encode(None) if stream is not None else ():
            container.mux(packet)
    container.close()
    return path


def read_tracks(path):
    """(video frame count, video fps, mono audio samples or None, audio rate)."""
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = sum(1 for _ in c.decode(video=0))
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return frames, fps, None, None
        rate = c.streams.audio[0].codec_context.sample_rate
        audio = np.concatenate([f.to_ndarray().reshape(f.layout.nb_channels, -1)[0] for f in c.decode(audio=0)])
    return frames, fps, audio, rate


def click_time(audio, rate):
    return float(np.argmax(np.abs(audio) > 0.6)) / rate


@pytest.mark.parametrize("audio_delay", [0.0, 0.2])
def test_recording_keeps_the_clips_audio_aligned_and_as_long_as_the_video(tmp_path, audio_delay):
    clip = make_clip(tmp_path / "talk.mp4", audio_delay=audio_delay)
    out = tmp_path / "out.mp4"
    sink = VideoFileSink(out, fps=25, audio_from=clip)
    for i in range(20):  # the render stops before the clip ends (--max-frames)
        sink.send(np.full((64, 64, 3), i * 10, np.uint8))
    sink.close()
    assert sink.audio_error is None
    frames, fps, audio, rate = read_tracks(out)
    assert frames == 20 and audio is not None and rate == RATE
    assert abs(len(audio) / rate - frames / fps) <= 1 / fps, "audio as long as the video, within one frame"
    assert click_time(audio, rate) == pytest.approx(CLICK_AT, abs=0.003), "aligned to the frames"
    if audio_delay:
        assert np.abs(audio[: int(0.9 * audio_delay * rate)]).max() < 0.01, "silence before the clip's audio starts"
    tone = audio[int(0.1 * rate) + int(audio_delay * rate): int(0.5 * rate)]
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
    assert np.argmax(spectrum) * rate / len(tone) == pytest.approx(440, abs=5)


def test_audio_shorter_than_the_video_is_padded(tmp_path):
    clip = make_clip(tmp_path / "talk.mp4", frames=10)
    out = tmp_path / "out.mp4"
    with VideoFileSink(out, fps=25, audio_from=clip) as sink:
        for _ in range(25):  # a second of video from a 0.4 s clip
            sink.send(np.zeros((64, 64, 3), np.uint8))
    frames, fps, audio, rate = read_tracks(out)
    assert abs(len(audio) / rate - frames / fps) <= 1 / fps


def test_no_audio_track_without_sound_in_the_source(tmp_path):
    clip = make_clip(tmp_path / "silent.mp4", audio=False)
    out = tmp_path / "out.mp4"
    with VideoFileSink(out, fps=25, audio_from=clip) as sink:
        sink.send(np.zeros((64, 64, 3), np.uint8))
    assert read_tracks(out)[2] is None and sink.audio_error is None
    # not a media file at all (an image folder's first image): still no audio, no error
    with VideoFileSink(tmp_path / "out2.mp4", fps=25, audio_from=tmp_path) as sink:
        sink.send(np.zeros((64, 64, 3), np.uint8))
    assert read_tracks(tmp_path / "out2.mp4")[2] is None


@pytest.mark.slow
def test_offline_render_keeps_the_driving_clips_audio(tmp_path):
    """Through run_live's Session: --driving clip.mp4 --output out.mp4 (uncalibrated, so no render: fast)."""
    clip = make_clip(tmp_path / "talk.mp4", frames=12, click_at=0.2)
    avatar = tmp_path / "avatar.png"
    from skimage.data import astronaut
    cv2.imwrite(str(avatar), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.mp4"
    args = build_parser().parse_args([
        "--avatar", str(avatar), "--driving", str(clip), "--output", str(out), "--no-preview", "--no-track",
        "--no-calibrate-first", "--max-frames", "8", "--deterministic-weights", "--device", "cpu",
        "--backend", "torch"])
    assert Session(args, log=lambda m: None).run() == 0
    frames, fps, audio, rate = read_tracks(out)
    assert frames == 8 and audio is not None
    assert abs(len(audio) / rate - frames / fps) <= 1 / fps
    assert click_time(audio, rate) == pytest.approx(0.2, abs=0.003)


# --- hostile clips: bad audio costs only the sound ---------------------------------------------------------------
def render_frames(clip, out, count, **sink_options):
    sink = VideoFileSink(out, fps=25, audio_from=clip, **sink_options)
    for i in range(count):
        sink.send(np.full((64, 64, 3), i * 10, np.uint8))
    sink.close()
    return sink


def test_samples_that_are_not_numbers_cost_only_those_samples(tmp_path):
    def spoil(signal, rate):  # float audio keeps NaN and infinities as they are: here from 0.3 s to 0.4 s
        signal[int(0.30 * rate):int(0.34 * rate)] = np.nan
        signal[int(0.34 * rate):int(0.38 * rate)] = np.inf
        signal[int(0.38 * rate):int(0.40 * rate)] = 1e30  # a number, but its energy is not (full scale here)
    clip = make_clip(tmp_path / "nan.mov", codec="pcm_f32le", spoil=spoil)
    sink = render_frames(clip, tmp_path / "out.mp4", 20)
    assert sink.audio_error is None
    frames, fps, audio, rate = read_tracks(tmp_path / "out.mp4")
    assert frames == 20 and abs(len(audio) / rate - frames / fps) <= 1 / fps
    assert np.isfinite(audio).all()
    after = int(0.45 * rate)
    assert after / rate + click_time(audio[after:], rate) == pytest.approx(CLICK_AT, abs=0.003), \
        "the sound after the damage is kept, in its place"
    assert np.abs(audio[int(0.31 * rate):int(0.37 * rate)]).max() < 0.05, "not-a-number samples are silence"
    tone = audio[int(0.1 * rate):int(0.25 * rate)]
    assert 0.1 < np.abs(tone).max() < 0.3, "the sound before the damage is kept"


def test_an_audio_encoder_that_fails_ends_the_sound_not_the_recording(tmp_path):
    clip = make_clip(tmp_path / "talk.mp4")
    sink = VideoFileSink(tmp_path / "out.mp4", fps=25, audio_from=clip)

    class BrokenEncoder:
        def encode(self, frame):
            raise ValueError("encoder exploded")
    for i in range(20):
        if i == 10:  # half a second in
            sink.audio.stream = BrokenEncoder()
        sink.send(np.full((64, 64, 3), i * 10, np.uint8))
    sink.close()
    assert "encoder exploded" in sink.audio_error
    frames, fps, audio, rate = read_tracks(tmp_path / "out.mp4")
    assert frames == 20, "every frame is in the recording"
    assert 0.2 < len(audio) / rate <= 10 / fps, "the sound up to the failure"


def test_audio_that_starts_hours_after_the_video_is_silence_made_as_it_is_written(tmp_path):
    import tracemalloc
    rate = 8000  # one hour of silence at 8 kHz mono would be 115 MB made at once
    clip = make_clip(tmp_path / "late.mov", rate=rate, codec="pcm_f32le", audio_delay=3600.0, audio_seconds=0.5)
    tracemalloc.start()
    try:
        sink = render_frames(clip, tmp_path / "out.mp4", 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB traced while recording 0.8 s"
    frames, fps, audio, rate = read_tracks(tmp_path / "out.mp4")
    assert sink.audio_error is None and frames == 20
    assert abs(len(audio) / rate - frames / fps) <= 1 / fps and np.abs(audio).max() < 0.01


def test_audio_that_starts_long_before_the_video_is_cut_to_the_first_frame(tmp_path):
    """The clip's first frame comes 1.6 s into its sound: that much (dozens of decoded frames) is dropped."""
    clip = make_clip(tmp_path / "early.mp4", audio_delay=-1.6)
    render_frames(clip, tmp_path / "out.mp4", 20)
    frames, fps, audio, rate = read_tracks(tmp_path / "out.mp4")
    assert frames == 20 and abs(len(audio) / rate - frames / fps) <= 1 / fps
    assert click_time(audio, rate) == pytest.approx(CLICK_AT, abs=0.003)


@pytest.mark.slow
def test_minutes_of_audio_under_a_short_video_keep_every_frame(tmp_path):
    """150 s of sound under 0.6 s of picture: the last frames lie behind thousands of audio packets, where
    OpenCV's reader used to give up. A fresh process: OpenCV reads its packet limit once per process."""
    import subprocess
    import sys
    from tests.conftest import REPO
    clip = make_clip(tmp_path / "long.mp4", frames=15, audio_seconds=150.0, click_at=0.2)
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), np.full((64, 64, 3), 128, np.uint8))
    out = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, str(REPO / "run_live.py"), "--avatar", str(avatar), "--driving", str(clip),
                           "--output", str(out), "--no-preview", "--no-track", "--no-calibrate-first",
                           "--deterministic-weights", "--device", "cpu", "--backend", "torch"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={k: v for k, v in __import__("os").environ.items()
                               if k != "OPENCV_FFMPEG_READ_ATTEMPTS"})
    assert done.returncode == 0, done.stderr[-2000:]
    frames, fps, audio, rate = read_tracks(out)
    assert frames == 15 and abs(len(audio) / rate - frames / fps) <= 1 / fps
    assert click_time(audio, rate) == pytest.approx(0.2, abs=0.003)
