"""run_live.py refuses bad input up front and survives signals.

Up-front means before the model loads: these tests make engine creation fail loudly, so a check that ran too late
shows up as that failure instead of the expected one-line error."""
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from live.cli.app import main
from live.devices.sinks import PARTIAL_MARK
from tests.support import read_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def avatar(tmp_path):
    path = tmp_path / "face.png"
    img = np.full((256, 256, 3), 180, np.uint8)
    cv2.circle(img, (128, 128), 60, (90, 120, 200), -1)
    cv2.imwrite(str(path), img)
    return path


def _write_clip(path: Path, frames: int, fps: float, size=64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for i in range(frames):
        img = np.full((size, size, 3), 90, np.uint8)
        cv2.circle(img, (size // 2 + i % 5, size // 2), size // 4, (200, 180, 160), -1)
        writer.write(img)
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path):
    return _write_clip(tmp_path / "talk.mp4", 6, 10.0)


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to build the engine fails the test: the error must come before the model loads."""
    import engines.backends

    def refuse(**kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")
    monkeypatch.setattr(engines.backends, "create_engine", refuse)


def run_main(capsys, argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------- numeric flags

@pytest.mark.parametrize("flag, value, fragment", [
    ("--smooth-beta", "nan", "must be a finite number"),
    ("--smooth-min-cutoff", "nan", "must be a finite number"),
    ("--smooth-min-cutoff", "inf", "must be a finite number"),
    ("--smooth-beta", "-50", "must be >= 0"),
    ("--smooth-beta", "1e9", "and <= 1000"),
    ("--smooth-min-cutoff", "1000", "must be > 0 and <= 100"),
    ("--crop-scale", "nan", "must be a finite number"),
    ("--crop-scale", "inf", "must be a finite number"),
    ("--crop-scale", "0.1", "must be >= 0.5"),
    ("--vcam-fps", "inf", "must be a finite number"),
    ("--vcam-fps", "1000", "must be > 0 and <= 240"),
    ("--remote-quality", "0", "must be >= 1 and <= 100"),
])
def test_bad_numbers_are_refused_before_the_model_loads(capsys, avatar, clip, tmp_path, no_model, flag, value,
                                                        fragment):
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as exit_:  # argparse: the flag's own type refuses the value
        main([str(a) for a in ["--avatar", avatar, "--driving", clip, "--output", out, "--no-preview",
                               "--deterministic-weights", flag, value]])
    assert_one_line_error(exit_.value.code, capsys.readouterr().err, f"argument {flag}: ", fragment)
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--smooth-beta", "0"), ("--smooth-beta", "40"),
                                         ("--smooth-min-cutoff", "0.5"), ("--crop-scale", "2.2")])
def test_sensible_numbers_pass_validation(flag, value):
    from live.cli.app import build_parser, validate_args
    validate_args(build_parser().parse_args(["--avatar", "a.png", flag, value]))


# ---------------------------------------------------------------- output path

def test_output_equal_to_driving_is_refused_and_the_clip_kept(capsys, avatar, clip, no_model, tmp_path):
    before = clip.read_bytes()
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", clip, "--output", clip, "--no-preview"])
    assert_one_line_error(code, err, "same file as --driving")
    assert clip.read_bytes() == before
    link = tmp_path / "link.mp4"  # another name for the same file
    link.symlink_to(clip)
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", clip, "--output", link, "--no-preview"])
    assert_one_line_error(code, err, "same file as --driving")
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", tmp_path / "." / clip.name, "--output", clip,
                                  "--no-preview"])
    assert_one_line_error(code, err, "same file as --driving")
    assert clip.read_bytes() == before


def test_output_equal_to_the_avatar_is_refused(capsys, avatar, clip, no_model, tmp_path):
    fake_avatar = tmp_path / "me.mp4"  # an odd avatar name, but the output must never overwrite it
    fake_avatar.write_bytes(b"not really an image")
    code, err = run_main(capsys, ["--avatar", fake_avatar, "--driving", clip, "--output", fake_avatar,
                                  "--no-preview"])
    assert_one_line_error(code, err, "same file as --avatar")
    assert fake_avatar.read_bytes() == b"not really an image"


@pytest.mark.parametrize("name", ["out.txt", "out.gif", "out"])
def test_unsupported_output_extension_is_refused_up_front(capsys, avatar, clip, no_model, tmp_path, name):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", clip, "--output", tmp_path / name,
                                  "--no-preview"])
    assert_one_line_error(code, err, "unsupported extension", ".mp4")
    assert "OpenCV" not in err and not (tmp_path / name).exists()


# ---------------------------------------------------------------- face detector, avatar folders

def test_missing_haar_cascade_is_a_start_up_error(capsys, avatar, clip, no_model, monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + os.sep)
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", clip, "--no-preview", "--no-vcam"])
    assert_one_line_error(code, err, "face detector", "--no-track")
    (tmp_path / "haarcascade_frontalface_default.xml").write_text("<damaged")
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", clip, "--no-preview", "--no-vcam"])
    assert_one_line_error(code, err, "face detector", "damaged")


def test_recording_without_pyav_is_a_start_up_error(capsys, avatar, clip, no_model, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError, as where it is missing
    out = tmp_path / "out.mp4"
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", clip, "--output", str(out), "--no-preview",
                                  "--no-vcam", "--no-track"])
    assert_one_line_error(code, err, "PyAV", "requirements.txt")
    assert not out.exists()


def test_no_track_does_not_need_the_cascade(monkeypatch, tmp_path):
    from live.cli.app import build_parser, check_environment
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + os.sep)
    check_environment(build_parser().parse_args(["--avatar", "a.png", "--no-track"]))
    with pytest.raises(Exception, match="face detector"):
        check_environment(build_parser().parse_args(["--avatar", "a.png"]))


def test_unreadable_files_in_an_avatar_folder_are_skipped_with_a_notice(tmp_path):
    from live.pipeline.avatar_set import load_avatars
    from live.errors import AvatarError
    folder = tmp_path / "avatars"
    folder.mkdir()
    cv2.imwrite(str(folder / "b_good.png"), np.full((40, 40, 3), 10, np.uint8))
    (folder / "a_broken.png").write_bytes(b"not a png")
    (folder / "c_empty.jpg").write_bytes(b"")
    notices = []
    avatars = load_avatars(folder, 32, on_skip=notices.append)
    assert [a.name for a in avatars] == ["b_good.png"] and avatars[0].image.shape == (32, 32, 3)
    assert len(notices) == 2 and all("\n" not in n and n.startswith("notice:") for n in notices)
    assert "a_broken.png" in notices[0] and "c_empty.jpg" in notices[1]
    (folder / "b_good.png").unlink()
    with pytest.raises(AvatarError, match="no usable avatar image in folder .*all 2 failed"):
        load_avatars(folder, 32)


@pytest.mark.slow
def test_a_bad_avatar_in_the_folder_does_not_end_the_run(capsys, avatar, clip, tmp_path):
    folder = tmp_path / "avatars"
    folder.mkdir()
    (folder / "1.png").write_bytes(avatar.read_bytes())
    (folder / "2.png").write_bytes(b"\x89PNG truncated")
    code, err = run_main(capsys, ["--avatar", folder, "--driving", clip, "--output", tmp_path / "o.mp4",
                                  "--deterministic-weights", "--device", "cpu", "--no-preview", "--max-frames", "2"])
    assert code == 0, err
    assert "notice: skipping an unusable avatar" in err and "2.png" in err
    assert len(read_video(tmp_path / "o.mp4")[0]) == 2


# ---------------------------------------------------------------- signals (real subprocesses)

def _start_render(avatar, driving, out):
    return subprocess.Popen(
        [sys.executable, str(REPO / "run_live.py"), "--avatar", str(avatar), "--driving", str(driving),
         "--output", str(out), "--deterministic-weights", "--device", "cpu", "--no-preview"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_frames(proc, frames: int, timeout: float = 300) -> str:
    """Read the progress bar (tqdm on stderr, '\\r'-separated) until `frames` frames were rendered."""
    seen = []
    reached = threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            seen.append(chunk.decode(errors="replace"))
            done = re.findall(r"\| *(\d+)/\d+ \[", "".join(seen))
            if done and int(done[-1]) >= frames:
                reached.set()
        reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert reached.wait(timeout), "".join(seen)
    assert proc.poll() is None, "the render ended before the signal: " + "".join(seen)

    def rest() -> str:
        reader.join(timeout=60)
        return "".join(seen)
    return rest


@pytest.mark.slow
@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_finalise_the_recording(avatar, tmp_path, signame, code):
    clip = _write_clip(tmp_path / "long.mp4", 200, 10.0)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old recording")
    proc = _start_render(avatar, clip, out)
    rest = _wait_for_frames(proc, 3)
    proc.send_signal(getattr(signal, signame))
    assert proc.wait(timeout=120) == code
    err = rest()
    assert f"stopped ({signame}); outputs closed" in err and "Traceback" not in err, err
    rendered = int(re.findall(r"\| *(\d+)/\d+ \[", err)[-1])
    frames, fps = read_video(out)
    assert len(frames) >= 3 and len(frames) >= rendered, (len(frames), rendered)
    assert fps == pytest.approx(10.0)
    assert not [p for p in tmp_path.iterdir() if PARTIAL_MARK in p.name]


@pytest.mark.slow
def test_sigkill_keeps_the_old_recording_and_a_playable_partial_one(avatar, tmp_path):
    clip = _write_clip(tmp_path / "slow.mp4", 200, 2.0)  # 2 fps: a keyframe, so a complete fragment, per 2 frames
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old recording")
    proc = _start_render(avatar, clip, out)
    rest = _wait_for_frames(proc, 5)
    proc.kill()
    proc.wait(timeout=60)
    rest()
    assert out.read_bytes() == b"old recording", "a killed run must not destroy the previous recording"
    [partial] = [p for p in tmp_path.iterdir() if PARTIAL_MARK in p.name]
    assert len(read_video(partial)[0]) >= 4


@pytest.mark.slow
def test_full_disk_during_a_render_is_one_error_and_keeps_the_frames(avatar, tmp_path):
    import resource
    clip = _write_clip(tmp_path / "c.mp4", 12, 2.0)
    out = tmp_path / "o.mp4"

    def small_disk():  # writes past 5000 bytes fail like a full disk (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
    result = subprocess.run(
        [sys.executable, str(REPO / "run_live.py"), "--avatar", str(avatar), "--driving", str(clip),
         "--output", str(out), "--deterministic-weights", "--device", "cpu", "--no-preview",
         "--composite", "off"],  # 256-px frames: a few of them fit under the 5000-byte limit
        cwd=REPO, capture_output=True, text=True, preexec_fn=small_disk, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "wrote" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "(disk full?)" in line and f"kept in {out}" in line
    written = int(re.search(r"after (\d+) frames", line).group(1))
    assert 2 <= len(read_video(out)[0]) <= written < 12
    assert not [p for p in tmp_path.iterdir() if PARTIAL_MARK in p.name]


def test_run_live_names_an_unfinished_recording_left_by_a_killed_run(tmp_path):
    from types import SimpleNamespace

    from live.cli.app import Session, build_parser
    out = tmp_path / "out.mp4"
    leftover = tmp_path / f"out{PARTIAL_MARK}1a2b3c4d.mp4"
    leftover.write_bytes(b"frames of a killed run")
    said = []
    args = build_parser().parse_args(["--avatar", "a.png", "--driving", "d.mp4", "--output", str(out), "--no-vcam"])
    sinks = Session(args, log=said.append)._sinks(SimpleNamespace(fps=10.0))
    for sink in sinks:
        sink.close()
    assert [line for line in said if line.startswith("notice:") and str(leftover) in line], said
    assert leftover.read_bytes() == b"frames of a killed run"
