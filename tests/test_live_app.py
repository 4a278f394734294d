"""run_live.py: bad input ends in one line `error: ...` with exit status 2 (never a traceback), and the happy paths
write what they promise."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from live import app
from live.app import build_parser, main
from live.hotkeys import BINDINGS

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
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (256, 256)
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
    assert result.stderr.strip().splitlines() == [f"error: avatar not found: {tmp_path / 'x.png'}"]


@pytest.mark.slow
def test_live_mode_from_a_folder_without_outputs(capsys, avatar, driving_folder):
    code, err = run_main(capsys, ["--avatar", avatar, "--driving", driving_folder, "--no-vcam", "--no-preview",
                                  "--deterministic-weights", "--device", "cpu"])
    assert code == 0, err
    assert "no output selected" in err and "press C to calibrate" in err
    assert "done:" in err
