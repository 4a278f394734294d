"""The offline animation entry point: function and CLI."""
import subprocess
import sys

import cv2
import numpy as np

from live.animate import animate, main
from tests.conftest import REPO


def _moving_clip(path, frames=4, size=96):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size, size))
    for t in range(frames):
        image = np.full((size, size, 3), 40, np.uint8)
        cv2.circle(image, (30 + 8 * t, 48), 18, (200, 180, 160), -1)
        cv2.circle(image, (70, 30 + 5 * t), 6, (20, 20, 220), -1)
        writer.write(image)
    writer.release()


def test_animate_yields_one_frame_per_driving_frame(golden, deterministic_engine):
    avatar = (golden("relative_adapt_ac_true")["source"] * 255).astype(np.uint8)
    driving = [(frame * 255).astype(np.uint8)[::2, ::2] for frame in golden.driving[:3]]  # any size is accepted
    outputs = list(animate(deterministic_engine, avatar, driving))
    assert len(outputs) == 3 and all(o.shape == (256, 256, 3) and o.dtype == np.uint8 for o in outputs)
    assert np.abs(outputs[0].astype(int) - outputs[2].astype(int)).mean() > 0.1  # motion changes the output


def test_cli_renders_a_video(tmp_path, golden):
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), (golden("relative_adapt_ac_true")["source"][..., ::-1] * 255).astype(np.uint8))
    clip, out = tmp_path / "driving.mp4", tmp_path / "out.mp4"
    _moving_clip(clip)
    assert main(["--avatar", str(avatar), "--driving", str(clip), "--output", str(out),
                 "--deterministic-weights", "--device", "cpu"]) == 0
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (capture.get(3), capture.get(4)) == (256, 256)


def test_cli_bad_input_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "live.animate", "--avatar", str(tmp_path / "none.png"),
                             "--driving", "x.mp4", "--output", str(tmp_path / "o.mp4"), "--deterministic-weights"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "none.png" in result.stderr
