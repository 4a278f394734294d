"""`python -m live.cli.animate`: FOMM's demo as a thin entry to run_live.py's offline mode (one pipeline)."""
import subprocess
import sys

import cv2
import numpy as np

from live.cli.animate import main
from tests.conftest import REPO
from tests.support import read_video


def _moving_clip(path, frames=4, size=96):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size, size))
    for t in range(frames):
        image = np.full((size, size, 3), 40, np.uint8)
        cv2.circle(image, (30 + 8 * t, 48), 18, (200, 180, 160), -1)
        cv2.circle(image, (70, 30 + 5 * t), 6, (20, 20, 220), -1)
        writer.write(image)
    writer.release()


def test_cli_renders_a_video_one_frame_per_driving_frame_and_motion_moves_it(tmp_path, golden, capsys):
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), (golden("relative_adapt_ac_true")["source"][..., ::-1] * 255).astype(np.uint8))
    clip, out = tmp_path / "driving.mp4", tmp_path / "out.mp4"
    _moving_clip(clip)
    assert main(["--avatar", str(avatar), "--driving", str(clip), "--output", str(out),
                 "--deterministic-weights", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "Calibrated" in err and f"wrote {out}" in err  # the first frame is the neutral pose, as in FOMM's demo
    frames, _ = read_video(out)
    assert len(frames) == 4 and frames[0].shape == (256, 256, 3)
    assert np.abs(frames[0].astype(int) - frames[3].astype(int)).mean() > 0.1  # motion changes the output


def test_cli_bad_input_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "live.cli.animate", "--avatar", str(tmp_path / "none.png"),
                             "--driving", "x.mp4", "--output", str(tmp_path / "o.mp4"), "--deterministic-weights"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "none.png" in result.stderr


def test_a_missing_required_flag_is_one_line(capsys):
    import pytest
    with pytest.raises(SystemExit) as exit_:
        main(["--avatar", "a.png", "--output", "o.mp4"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "--driving" in err and err.count("\n") == 1


# --- the CLI as a user runs it: the same protections as run_live.py -----------------------------------------------
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from live.devices.sinks import PARTIAL_MARK  # noqa: E402

FRAMES = 12

# The real CLI in a child process, with the engine replaced by cheap noise frames (the model is not what is tested,
# and on a shared 2-core box it costs seconds per frame). CHILD_MODE picks the hostile situation.
_CHILD = textwrap.dedent("""
    import os, resource, signal, sys, time
    sys.path.insert(0, {repo!r})
    import numpy as np
    import torch
    import engines.backends
    import live.pipeline.loop as L
    from engines.protocol import RenderedFrame, identity_motion
    from tests.support import FakeEngine
    import live.cli.animate as A
    mode = os.environ.get("CHILD_MODE", "")

    class NoiseEngine(FakeEngine):  # noise: each frame costs kilobytes, so a small size limit is reached
        image_size = 64
        rng = np.random.default_rng(0)

        def render(self, state, kp_driving):
            image = torch.from_numpy(self.rng.random((1, 3, 64, 64), dtype=np.float32))
            return RenderedFrame(image, *identity_motion(1, 8))
    engines.backends.create_engine = lambda **kw: (NoiseEngine(), [])

    real_step = L.LivePipeline.step
    def step(self, frame):
        out = real_step(self, frame)  # sent to the recording when it returns
        print("frame", self.stats.frames, flush=True)
        if mode == "wait" and self.stats.frames == 5:
            time.sleep(600)  # signalled here
        if mode == "last" and self.stats.frames == {frames}:
            time.sleep(0.5)  # the signals arrive here, at the last frame
        return out
    L.LivePipeline.step = step
    if mode == "fsync-term":  # SIGTERM delivered inside the fsync of the finished recording
        real_fsync = os.fsync
        def fsync(fd):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            real_fsync(fd)
        os.fsync = fsync
    if mode == "fsize":  # writes past 40000 bytes fail like a full disk (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40000, 40000))
    sys.exit(A.main(sys.argv[1:]))
""")


@pytest.fixture
def files(tmp_path):
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    clip = tmp_path / "driving.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (64, 64))  # 2 fps: a fragment / 2
    for t in range(FRAMES):
        writer.write(np.full((64, 64, 3), 10 * t, np.uint8))
    writer.release()
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO), frames=FRAMES))
    return avatar, clip, script


def _argv(avatar, clip, out):
    return ["--avatar", str(avatar), "--driving", str(clip), "--output", str(out), "--deterministic-weights",
            "--device", "cpu"]


def _child(files, out, mode=""):
    avatar, clip, script = files
    return subprocess.Popen([sys.executable, str(script), *_argv(avatar, clip, out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CHILD_MODE": mode})


def _wait_for(proc, line: str, timeout=120):
    deadline = time.monotonic() + timeout
    for got in proc.stdout:
        if got.strip() == line:
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"the child ended before {line!r}: {proc.stderr.read()}")


def _partials(folder):
    return sorted(p for p in folder.iterdir() if PARTIAL_MARK in p.name)


def _one_error_line(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_output_equal_to_driving_is_refused_and_the_clip_kept(files, capsys):
    avatar, clip, _ = files
    before = clip.read_bytes()
    _one_error_line(main(_argv(avatar, clip, clip)), capsys.readouterr().err, "same file as --driving")
    assert clip.read_bytes() == before


def test_output_hard_linked_to_the_avatar_is_refused(files, tmp_path, capsys):
    avatar, clip, _ = files
    linked = tmp_path / "linked.mp4"
    os.link(avatar, linked)
    before = avatar.read_bytes()
    _one_error_line(main(_argv(avatar, clip, linked)), capsys.readouterr().err, "same file as --avatar")
    assert avatar.read_bytes() == before


def test_an_unsupported_output_name_is_refused_up_front(files, tmp_path, capsys):
    avatar, clip, _ = files
    _one_error_line(main(_argv(avatar, clip, tmp_path / "o.txt")), capsys.readouterr().err,
                    "unsupported extension ('.txt')")
    assert not (tmp_path / "o.txt").exists()


def test_a_50000_pixel_avatar_is_one_line(files, tmp_path, capsys):
    from tests.support import gray_png_bomb
    _, clip, _ = files
    bomb = gray_png_bomb(tmp_path / "huge.png", 50000)
    _one_error_line(main(_argv(bomb, clip, tmp_path / "o.mp4")), capsys.readouterr().err, "50000x50000")


def test_a_render_writes_every_frame_through_the_recording_sink(files, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _child(files, out)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"done: {FRAMES} frames" in stderr and f"wrote {out}" in stderr, stderr
    frames, fps = read_video(out)
    assert len(frames) == FRAMES and fps == pytest.approx(2.0)
    assert not _partials(tmp_path)


@pytest.mark.parametrize("signame, code, message", [("SIGTERM", 143, "stopped (SIGTERM)"),
                                                    ("SIGINT", 130, "stopped (Ctrl-C)")])
def test_a_signal_mid_render_finalises_the_recording(files, tmp_path, signame, code, message):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _child(files, out, "wait")
    _wait_for(proc, "frame 5")
    proc.send_signal(getattr(signal, signame))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert message in stderr and "Traceback" not in stderr, stderr
    assert len(read_video(out)[0]) == 5
    assert not _partials(tmp_path)


def test_sigkill_keeps_the_old_file_and_the_next_run_names_the_partial(files, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _child(files, out, "wait")
    _wait_for(proc, "frame 5")
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    assert out.read_bytes() == b"the previous recording"
    [partial] = _partials(tmp_path)
    assert len(read_video(partial)[0]) == 4  # complete fragments: frames 1-4

    again = _child(files, out)
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"notice: {partial}: unfinished recording of out.mp4" in stderr, stderr
    assert len(read_video(out)[0]) == FRAMES and partial.exists()  # named, never deleted behind the user's back


def test_sigterm_inside_the_final_fsync_still_leaves_the_recording(files, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _child(files, out, "fsync-term")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr, stderr
    assert len(read_video(out)[0]) == FRAMES
    assert not _partials(tmp_path)


@pytest.mark.parametrize("gap", [0.0, 0.003, 0.05])
def test_term_int_and_hup_at_the_last_frame_never_lose_the_recording(files, tmp_path, gap):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _child(files, out, "last")
    _wait_for(proc, f"frame {FRAMES}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        proc.send_signal(sig)
        time.sleep(gap)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (129, 130, 143), (proc.returncode, stderr)  # the first one handled, no death by one
    assert "Traceback" not in stderr and stderr.count("stopped (") == 1, stderr
    assert len(read_video(out)[0]) == FRAMES
    assert not _partials(tmp_path)


def test_a_full_disk_is_one_error_line_and_keeps_the_previous_recording(files, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous recording")
    proc = _child(files, out, "fsize")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert "wrote" not in stderr and "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "(disk full?)" in line and "the previous" in line and "is unchanged" in line, line
    assert out.read_bytes() == b"the previous recording"
    [partial] = _partials(tmp_path)
    assert str(partial) in line
    written = int(re.search(r"after (\d+) frames", line).group(1))
    assert 2 <= len(read_video(partial)[0]) <= written < FRAMES
