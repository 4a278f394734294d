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


def make_clip(path, *, frames=30, fps=25, rate=RATE, audio_delay=0.0, audio=True, click_at=CLICK_AT):
    """A small mp4: moving frames and (unless audio=False) a 440 Hz tone with a loud 20 ms click at CLICK_AT
    clip time, its stream starting `audio_delay` seconds after the video."""
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=fps)
    video.width = video.height = 96
    video.pix_fmt = "yuv420p"
    sound = container.add_stream("aac", rate=rate, layout="mono") if audio else None
    for i in range(frames):
        image = np.full((96, 96, 3), 40 + (i * 5) % 200, np.uint8)
        cv2.circle(image, (48, 48), 20 + i % 10, (200, 160, 140), -1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        for packet in video.encode(frame):
            container.mux(packet)
    if sound is not None:
        t = np.arange(int((frames / fps - audio_delay) * rate)) / rate
        signal = 0.2 * np.sin(2 * np.pi * 440.0 * t)
        click = int((click_at - audio_delay) * rate)
        signal[click:click + int(0.02 * rate)] = 0.9
        start = round(audio_delay * rate)
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
        "--no-calibrate-first", "--max-frames", "8", "--deterministic-weights", "--device", "cpu", "--backend", "torch"])
    assert Session(args, log=lambda m: None).run() == 0
    frames, fps, audio, rate = read_tracks(out)
    assert frames == 8 and audio is not None
    assert abs(len(audio) / rate - frames / fps) <= 1 / fps
    assert click_time(audio, rate) == pytest.approx(0.2, abs=0.003)
