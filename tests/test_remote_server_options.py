"""A real render server started with --no-align-corners (Ray Serve on loopback, once for the module): a client run
with --no-align-corners renders what the local engine renders, a run with the default is refused in one line, and
the server answers no API documentation (FastAPI's /docs, /redoc, /openapi.json need no token: they are off)."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import torch

from engines.image import to_model_input
from tests.conftest import REPO, carphone_path
from tests.support import read_video

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (requirements-serve.txt)")
pytest.importorskip("websockets.sync.client")

from tests.test_remote_server import TOKEN, ServerProcess, _free_port  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote-options")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    srv = ServerProcess(_free_port(), token_file, folder, extra_args=["--no-align-corners"])
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def clip():
    frames, _ = read_video(carphone_path())
    return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames[::20][:4]]


def test_no_align_corners_renders_what_the_local_engine_renders(server, clip, tmp_path):
    from engines.engine import FOMMEngine
    from remote.client import RemoteEngine

    remote = RemoteEngine(server.url, token=TOKEN, deterministic_weights=True, align_corners=False, fmt="png16",
                          max_in_flight=1, cache_dir=tmp_path, log=lambda m: None)
    try:
        assert remote.server["align_corners"] is False
        avatar = to_model_input(np.ascontiguousarray(clip[0][:, 16:160]), remote.image_size)
        state = remote.encode(avatar)
        kps = [remote.detect(to_model_input(frame, remote.image_size)) for frame in clip]
        served = [remote.render(state, kp).image.clone() for kp in kps]
    finally:
        remote.close()
    expected = {}
    for corners in (False, True):
        local = FOMMEngine.from_deterministic_weights(device="cpu", align_corners=corners)
        local_state = local.encode(avatar)
        expected[corners] = [local.render(local_state, kp).image for kp in kps]
    same = max(float((a - b).abs().max()) for a, b in zip(served, expected[False]))
    other = max(float((a - b).abs().max()) for a, b in zip(served, expected[True]))
    assert same < 2e-3, same  # png16 quantisation + the eager CPU backend vs torch
    assert other > 10 * max(same, 1e-4), (same, other)  # the option really changes the pixels
    assert all(torch.isfinite(frame).all() for frame in served)


def _run_live(server, tmp_path, *flags):
    avatar = tmp_path / "face.png"
    frames, _ = read_video(carphone_path())
    cv2.imwrite(str(avatar), frames[60][:, 16:160])
    out = tmp_path / "out.mp4"
    env = dict(os.environ, LIVE_AVATAR_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "run_live.py", "--avatar", str(avatar), "--remote", server.url, "--token-file",
         str(server.token_file), "--driving", str(carphone_path()), "--output", str(out), "--max-frames", "3",
         *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result, out


def test_run_live_with_the_server_s_corners_renders_and_with_others_is_refused(server, tmp_path):
    ok, out = _run_live(server, tmp_path, "--no-align-corners")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(read_video(out)[0]) == 3
    (tmp_path / "default").mkdir()
    refused, out = _run_live(server, tmp_path / "default", "--align-corners")
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--no-align-corners" in errors[0] and "Traceback" not in refused.stderr
    assert not out.exists()


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_the_api_documentation_is_off(server, path):
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10)
    assert answer.value.code == 404
    assert server.health()["connections"] >= 0  # the server itself still answers
