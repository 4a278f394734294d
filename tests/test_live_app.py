"""run_live.py: bad input ends in one line `error: ...` with exit status 2 (never a traceback), and the happy paths
write what they promise."""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from live.cli import app
from live.cli.app import build_parser, main
from live.ui.hotkeys import BINDINGS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def avatar(tmp_path):
    path = tmp_path / "face.png"
    img = np.full((300, 200, 3), 180, np.uint8)  # non-square on purpose
    cv2.circle(img, (100, 150), 60, (90, 120, 200), -1)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def driving_folder(tmp_path):
    folder = tmp_path / "driving"
    folder.mkdir()
    for i in range(3):
        img = np.full((120, 160, 3), 100, np.uint8)
        cv2.circle(img, (70 + 5 * i, 60), 30, (200, 180, 160), -1)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


def run_main(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_avatar_file(capsys, tmp_path):
    code, err = run_main(capsys, ["--avatar", tmp_path / "nope.png", "--no-preview", "--no-vcam"])
    assert_one_line_error(code, err, "avatar not found", "nope.png")


def test_unreadable_avatar_image(capsys, tmp_path):
    bad = tmp_path / "face.png"
    bad.write_bytes(b"this is not a png")
    code, err = run_main(capsys, ["--avatar", bad, "--no-preview", "--no-vcam"])
    assert_one_line_error(code, err, "cannot read avatar image", "face.png")


def test_empty_avatar_folder(capsys, tmp_path):
    code, err = run_main(capsys, ["--avatar", tmp_path, "--no-preview", "--no-vcam"])
    assert_one_line_error(code, err, "no avatar images")


def test_no_camera(capsys, avatar):
    code, err = run_main(capsys, ["--avatar", avatar, "--camera", 97, "--no-preview", "--no-vcam"])
    assert_one_line_error(code, err, "cannot open camera 97")


def test_missing_driving_file(capsys, avatar, tmp_path):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", tmp_path / "talk.mp4", "--no-preview"])
    assert_one_line_error(code, err, "driving video not found")


def test_missing_checkpoint_path(capsys, avatar, driving_folder, tmp_path):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--output", tmp_path / "o.mp4",
                                  "--checkpoint", tmp_path / "missing.pth.tar", "--no-preview"])
    assert_one_line_error(code, err, "missing.pth.tar")
    assert not (tmp_path / "o.mp4").exists(), "a failed start must not leave an empty video behind"


def test_corrupt_checkpoint_file(capsys, avatar, driving_folder, tmp_path):
    bad = tmp_path / "vox.pth.tar"
    bad.write_bytes(b"\x00" * 1000)
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--output", tmp_path / "o.mp4",
                                  "--checkpoint", bad, "--no-preview", "--device", "cpu"])
    assert_one_line_error(code, err, "vox.pth.tar")


def test_output_folder_missing(capsys, avatar, driving_folder, tmp_path):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder,
                                  "--output", tmp_path / "no" / "out.mp4", "--no-preview"])
    assert_one_line_error(code, err, "does not exist")


def test_virtual_camera_backend_missing(capsys, avatar, driving_folder):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--vcam",
                                  "--vcam-backend", "no-such-backend", "--no-preview"])
    assert_one_line_error(code, err, "virtual camera backend")


def test_loop_with_offline_output_is_refused(capsys, avatar, driving_folder, tmp_path):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--loop",
                                  "--output", tmp_path / "o.mp4"])
    assert_one_line_error(code, err, "--loop")


def test_bad_flag_values_are_argparse_errors(capsys, avatar):
    with pytest.raises(SystemExit) as exc:
        main(["--avatar", str(avatar), "--vcam-size", "big"])
    assert exc.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_help_lists_every_hotkey(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for b in BINDINGS:
        if b.action.value != "avatar":
            assert b.description in text
    for flag in ("--avatar", "--camera", "--driving", "--output", "--vcam-size", "--checkpoint", "--backend",
                 "--device", "--auto-calibrate", "--no-track", "--mirror", "--preview"):
        assert flag in text


def test_defaults_depend_on_the_mode():
    args = build_parser().parse_args(["--avatar", "a.png"])
    assert args.camera == 0 and args.vcam is None and args.preview is None and args.vcam_size == (1280, 720)
    assert not app.Session(args).offline
    offline = build_parser().parse_args(["--avatar", "a.png", "--driving", "d.mp4", "--output", "o.mp4"])
    assert app.Session(offline).offline


@pytest.mark.slow
def test_offline_render_through_main(capsys, avatar, driving_folder, tmp_path):
    out = tmp_path / "out.mp4"
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--output", out,
                                  "--deterministic-weights", "--device", "cpu", "--no-preview"])
    assert code == 0, err
    assert "Calibrated" in err  # first frame = neutral pose, like FOMM's demo
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    # composited into the avatar's photo at the canvas size (--vcam-size, 1280x720 by default)
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (1280, 720)
    cap.release()
    square = tmp_path / "square.mp4"
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--output", square,
                                  "--deterministic-weights", "--device", "cpu", "--no-preview", "--composite", "off"])
    assert code == 0, err
    cap = cv2.VideoCapture(str(square))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (256, 256)  # as before
    cap.release()


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_video_is_playable(capsys, avatar, driving_folder, tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    calls = {"n": 0}

    def interrupt_on_third_poll():
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return []

    original = app.Session.__init__

    def init_with_interrupt(self, args, **kwargs):
        original(self, args, key_sources=[interrupt_on_third_poll], **kwargs)

    monkeypatch.setattr(app.Session, "__init__", init_with_interrupt)
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--output", out,
                                  "--deterministic-weights", "--device", "cpu", "--no-preview"])
    assert code == 130 and "Traceback" not in err
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2, "frames before Ctrl-C are kept in a finalised file"
    cap.release()


def test_run_live_script_prints_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "run_live.py"), "--avatar", str(tmp_path / "x.png")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    start, error = result.stderr.strip().splitlines()  # the start line comes before the slow imports
    assert start.startswith("live avatar: starting") and error == f"error: avatar not found: {tmp_path / 'x.png'}"


@pytest.mark.slow
def test_live_mode_from_a_folder_without_outputs(capsys, avatar, driving_folder):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--no-vcam", "--no-preview",
                                  "--deterministic-weights", "--device", "cpu"])
    assert code == 0, err
    assert "no output selected" in err and "no keys reach this run" in err and "--auto-calibrate" in err
    assert "press C" not in err  # stdin is no terminal and there is no window: nobody could press it
    assert "end of driving (--loop plays it again)" in err
    assert "done:" in err


@pytest.mark.skipif(sys.platform != "linux", reason="Windows/macOS always have a desktop")
def test_preview_requested_without_a_display(capsys, avatar, driving_folder, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--preview", "--no-vcam"])
    assert_one_line_error(code, err, "no display", "--no-preview")


class LineCollector(threading.Thread):
    """Reads a child's stderr line by line so the test can wait for a message while the child keeps running."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []

    def run(self):
        for line in self.stream:
            self.lines.append(line)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.2)
        return False


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")),
                    reason="needs Xvfb and xdotool for a virtual display (apt-get install xvfb xdotool)")
def test_preview_window_under_a_virtual_display_takes_keys(avatar, driving_folder):
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        env = {**os.environ, "DISPLAY": ":" + xvfb.stdout.readline().strip()}
        child = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), "--avatar", str(avatar),
                                  "--driving", str(driving_folder), "--loop", "--no-vcam", "--preview",
                                  "--deterministic-weights", "--device", "cpu"],
                                 cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        errors = LineCollector(child.stderr)
        errors.start()
        try:
            found = subprocess.run(["xdotool", "search", "--sync", "--name", "live avatar"], env=env,
                                   capture_output=True, text=True, timeout=120)
            window = found.stdout.split()[0]
            subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, timeout=20, check=True)
            subprocess.run(["xdotool", "key", "c"], env=env, timeout=20, check=True)
            assert errors.wait_for("Calibrated", 120), "".join(errors.lines)
            subprocess.run(["xdotool", "key", "q"], env=env, timeout=20, check=True)
            assert child.wait(timeout=60) == 0, "".join(errors.lines)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        errors.join(5)
        text = "".join(errors.lines)
        assert "hotkeys in the preview window" in text and "done:" in text and "Traceback" not in text
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="pseudo-terminals are POSIX only")
def test_headless_keys_from_the_terminal(avatar, driving_folder):
    import pty
    import termios

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    child = subprocess.Popen([sys.executable, str(REPO / "run_live.py"), "--avatar", str(avatar),
                              "--driving", str(driving_folder), "--loop", "--no-vcam", "--deterministic-weights",
                              "--device", "cpu"],
                             cwd=REPO, env=env, stdin=slave, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    errors = LineCollector(child.stderr)
    errors.start()
    try:
        assert errors.wait_for("hotkeys in this terminal", 120), "".join(errors.lines)
        os.write(master, b"c")
        assert errors.wait_for("Calibrated", 120), "".join(errors.lines)
        os.write(master, b"q")
        assert child.wait(timeout=60) == 0, "".join(errors.lines)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        errors.join(5)
    assert termios.tcgetattr(slave) == before, "the terminal mode must be restored at exit"
    os.close(master)
    os.close(slave)


def test_default_virtual_camera_failure_suggests_no_vcam(capsys, avatar, driving_folder):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--vcam-backend", "nope",
                                  "--no-preview"])
    assert_one_line_error(code, err, "virtual camera backend", "--no-vcam")


@pytest.mark.slow
def test_avatar_from_the_config_and_k_saves_the_face_crop_beside_it(tmp_path, driving_folder):
    from live.cli.app import Session, parse_command_line
    from live.pipeline.avatars import load_avatar
    faces = tmp_path / "faces"
    faces.mkdir()
    cv2.imwrite(str(faces / "a.png"), np.full((64, 64, 3), 150, np.uint8))
    config = tmp_path / "config.toml"
    config.write_text(f'avatar = "{faces.as_posix()}"\nvcam = false\npreview = false\nbackend = "torch"\n')
    args = parse_command_line(["--config", str(config), "--driving", str(driving_folder),
                               "--deterministic-weights", "--device", "cpu"])
    polls = iter([[], [], ["g", "k"]])
    log = []
    assert Session(args, key_sources=[lambda: next(polls, [])], log=log.append).run() == 0
    saved = list(faces.glob("snapshot-*.png"))
    assert len(saved) == 1 and any(f"saved {saved[0]} as avatar 2" in m for m in log), log
    assert load_avatar(saved[0]).shape == (256, 256, 3)
    assert any("framing guide on" in m for m in log)


def test_a_live_run_without_a_window_prints_the_hud_in_the_terminal(capsys, avatar, driving_folder, monkeypatch):
    monkeypatch.setattr(app, "TERMINAL_HUD_S", 0.0)  # every frame, instead of every 5 s
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--no-vcam", "--no-preview",
                                  "--deterministic-weights", "--backend", "torch", "--device", "cpu"])
    assert code == 0, err
    hud = [line for line in err.splitlines() if " frames | FPS " in line]
    assert hud and "ms: " in hud[-1] and "no key reaches this run" in hud[-1] and "--auto-calibrate" in hud[-1], err
