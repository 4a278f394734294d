"""Recordings that survive: fragmented MP4 through PyAV, written beside the target and renamed when
finalised, write errors reported, and a killed writer leaving a playable partial file."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from live.errors import SinkError
from live.devices.sinks import PARTIAL_MARK, VideoFileSink, check_video_path
from tests.support import read_video

REPO = Path(__file__).resolve().parents[1]


def _frame(i, size=64):
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (i * 7 % 256, 100, 200)
    return img


def _partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if PARTIAL_MARK in p.name)


def test_old_recording_survives_until_the_new_one_is_finalised(tmp_path):
    out = tmp_path / "out.mp4"
    with VideoFileSink(out, fps=10) as first:
        for i in range(5):
            first.send(_frame(i))
    old = out.read_bytes()
    sink = VideoFileSink(out, fps=10)
    for i in range(8):
        sink.send(_frame(i))
    assert out.read_bytes() == old, "a running recording must not touch the file at the target"
    assert len(_partials(tmp_path)) == 1
    sink.close()
    assert len(read_video(out)[0]) == 8 and not _partials(tmp_path)


def test_a_run_that_records_nothing_leaves_the_old_file_alone(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    VideoFileSink(out, fps=10).close()
    assert out.read_bytes() == b"precious" and not _partials(tmp_path)


def test_odd_frame_sizes_are_padded_to_even(tmp_path):
    out = tmp_path / "odd.mp4"
    with VideoFileSink(out, fps=10) as sink:
        sink.send(np.full((33, 47, 3), 200, np.uint8))
        assert sink.size == (48, 34)
    frames, _ = read_video(out)
    assert len(frames) == 1 and frames[0].shape == (34, 48, 3)


def test_recording_permissions_follow_the_umask(tmp_path):
    out = tmp_path / "perm.mp4"
    old = os.umask(0o022)
    try:
        with VideoFileSink(out, fps=10) as sink:
            sink.send(_frame(0))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name, fragment", [("out.txt", "'.txt'"), ("out.gif", "'.gif'"), ("out", "no extension")])
def test_unsupported_extensions_are_refused(tmp_path, name, fragment):
    with pytest.raises(SinkError, match="unsupported extension") as info:
        check_video_path(tmp_path / name)
    assert fragment in str(info.value) and ".mp4" in str(info.value)
    with pytest.raises(SinkError, match="unsupported extension"):
        VideoFileSink(tmp_path / name, fps=10)
    assert list(tmp_path.iterdir()) == []
    assert check_video_path(tmp_path / "OUT.MP4") == tmp_path / "OUT.MP4"


_WRITER = textwrap.dedent("""
    import resource, sys, time
    import numpy as np
    sys.path.insert(0, {repo!r})
    from live.devices.sinks import VideoFileSink
    from live.errors import SinkError
    limit, mode = int(sys.argv[2]), sys.argv[3]
    if limit:  # a file size limit makes writes fail like a full disk (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = np.random.default_rng(0)
    sink = VideoFileSink(sys.argv[1], fps=2)  # a keyframe, so a fragment, every 2 frames
    try:
        for i in range(40):
            sink.send(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            print("sent", i + 1, flush=True)
            if mode == "wait" and i + 1 == 9:
                time.sleep(600)  # killed here
        sink.close()
    except SinkError as exc:
        print("error:", exc, flush=True)
        sys.exit(2)
""")


def _writer(tmp_path, out, limit=0, mode="run"):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(repo=str(REPO)))
    return subprocess.Popen([sys.executable, str(script), str(out), str(limit), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_full_disk_is_one_error_and_the_frames_so_far_are_kept(tmp_path):
    out = tmp_path / "full.mp4"
    proc = _writer(tmp_path, out, limit=40_000)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stdout + stderr
    errors = [line for line in stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large (disk full?)" in errors[0] and "kept in" in errors[0], stdout
    sent = int([line for line in stdout.splitlines() if line.startswith("sent")][-1].split()[1])
    decoded = len(read_video(out)[0])
    assert 2 <= decoded <= sent, (decoded, sent)
    assert not _partials(tmp_path)


def test_sigkill_leaves_a_playable_partial_file_and_the_old_recording(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _writer(tmp_path, out, mode="wait")
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.strip() == "sent 9" or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"the previous recording"
    [partial] = _partials(tmp_path)
    # fragments end at every 2nd frame: frames 1-8 are complete, the 9th waits for the next keyframe
    assert len(read_video(partial)[0]) == 8


def test_a_failed_rename_says_where_the_recording_is(tmp_path, monkeypatch):
    import live.devices.sinks
    out = tmp_path / "out.mp4"
    sink = VideoFileSink(out, fps=10)
    sink.send(_frame(0))

    def refuse(src, dst):
        raise OSError(13, "Permission denied")
    monkeypatch.setattr(live.devices.sinks.os, "replace", refuse)
    with pytest.raises(SinkError, match="renaming the finished recording failed .*Permission denied.*it is in") as e:
        sink.close()
    [partial] = _partials(tmp_path)
    assert str(partial) in str(e.value) and len(read_video(partial)[0]) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (a real ENOSPC); skipped where mounting is not permitted (the RLIMIT_FSIZE tests above
    simulate the same failure with EFBIG)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_while_overwriting_keeps_the_previous_recording(small_disk):
    out = small_disk / "out.mp4"
    with VideoFileSink(out, fps=2) as old:
        for i in range(4):
            old.send(_frame(i))
    previous = out.read_bytes()
    rng = np.random.default_rng(1)
    sink = VideoFileSink(out, fps=2)
    with pytest.raises(SinkError) as error:
        for _ in range(10_000):  # noise frames fill the 2 MiB within a few hundred
            sink.send(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
        sink.close()
    message = str(error.value)
    assert "\n" not in message and "No space left on device (disk full?)" in message, message
    assert out.read_bytes() == previous, "a failed run must not replace the previous recording"
    [partial] = _partials(small_disk)
    assert f"kept in {partial}; the previous {out} is unchanged" in message
    assert 2 <= len(read_video(partial)[0]) <= sink.frames_sent


# --- the rescue path of a failed write never deletes the frames already written ---------------------------------
class _FailingMux:
    """The sink's container, but every mux fails like a full disk (the frames before it are on disk)."""

    def __init__(self, container):
        self.container = container

    def mux(self, packet):
        raise OSError(28, "No space left on device")

    def close(self):
        self.container.close()


def _fail_after(out: Path, frames: int) -> tuple[VideoFileSink, SinkError]:
    sink = VideoFileSink(out, fps=2)  # a fragment every 2 frames
    for i in range(frames):
        sink.send(_frame(i))
    sink._container = _FailingMux(sink._container)
    with pytest.raises(SinkError) as error:
        sink.send(_frame(frames))
    return sink, error.value


@pytest.mark.parametrize("broken", ["trim", "rename"])
def test_a_failing_trim_or_rename_keeps_the_frames_and_says_where(tmp_path, monkeypatch, broken):
    import live.devices.sinks as sinks

    def refuse(*args):
        raise OSError(5, "Input/output error")
    if broken == "trim":
        monkeypatch.setattr(sinks, "_trim_to_complete_boxes", refuse)
    else:
        monkeypatch.setattr(sinks.os, "replace", refuse)
    out = tmp_path / "out.mp4"
    sink, error = _fail_after(out, 6)
    message = str(error)
    [partial] = _partials(tmp_path)
    assert not out.exists() and "nothing was written" not in message, message
    assert f"kept in {partial}" in message and "(disk full?)" in message and "\n" not in message, message
    assert 4 <= len(read_video(partial)[0]) <= 6  # the complete fragments play


def test_a_failure_before_any_frame_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out.mp4"
    sink = VideoFileSink(out, fps=2, size=(64, 64))
    sink._container = _FailingMux(sink._container)
    with pytest.raises(SinkError, match="nothing was written"):
        sink.send(_frame(0))
    assert list(tmp_path.iterdir()) == []
