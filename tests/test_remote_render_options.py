"""--remote carries every render option that changes pixels: the server's welcome states its own (align_corners)
and a client whose run asks for another refuses it in one line (run_live.py: `error:`, exit 2), at the first
connection and when a restarted server comes back different. Against a small scripted server on loopback; the same
with a real Ray Serve server is in tests/test_remote_server_options.py."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from remote import protocol as P
from remote.client import RemoteError
from tests.test_remote_client import digest, engine, fake, welcome  # noqa: F401 - fixtures and the scripted server

pytest.importorskip("websockets.sync.server")


def test_a_server_rendering_other_corners_is_refused_naming_both_flags(fake, digest, tmp_path):  # noqa: F811
    server = fake(welcome(digest, align_corners=True))
    with pytest.raises(RemoteError) as refused:
        engine(server.url, tmp_path, align_corners=False)
    message = str(refused.value)
    assert "\n" not in message and "renders with --align-corners" in message and "--no-align-corners" in message


def test_a_server_rendering_the_same_corners_is_used(fake, digest, tmp_path):  # noqa: F811
    server = fake(welcome(digest, align_corners=False))
    client = engine(server.url, tmp_path, align_corners=False)
    try:
        assert client.server["align_corners"] is False and client.align_corners is False
    finally:
        client.close()


def test_a_welcome_that_does_not_say_is_the_default_and_a_wrong_type_is_malformed(fake, digest, tmp_path):  # noqa: F811
    quiet = fake(welcome(digest))  # a server that does not state it renders create_engine's default: on
    with pytest.raises(RemoteError, match="renders with --align-corners"):
        engine(quiet.url, tmp_path, align_corners=False)
    engine(quiet.url, tmp_path).close()
    odd = fake(welcome(digest, align_corners="no"))
    with pytest.raises(RemoteError, match="malformed welcome.*align_corners"):
        engine(odd.url, tmp_path)


def test_parse_welcome_fills_the_default_render_options():
    message = {"type": "welcome", "version": P.PROTOCOL_VERSION, "engine": "e", "device": "cpu", "image_size": 256,
               "num_kp": 10, "config_hash": "c", "weights_id": "w", "detector_digest": "0" * 64,
               "detector_bytes": 1}
    assert P.parse_welcome(message)["align_corners"] is True
    assert P.parse_welcome({**message, "align_corners": False})["align_corners"] is False


def test_run_live_with_no_align_corners_against_a_default_server_is_one_error_line(fake, digest, tmp_path,  # noqa: F811
                                                                                    capsys):
    from live.cli.app import main
    server = fake(welcome(digest, align_corners=True))
    avatar, clip = tmp_path / "a.png", tmp_path / "d.mp4"
    cv2.imwrite(str(avatar), np.full((64, 64, 3), 128, np.uint8))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
    writer.write(np.full((64, 64, 3), 100, np.uint8))
    writer.release()
    out = tmp_path / "o.mp4"
    code = main(["--avatar", str(avatar), "--driving", str(clip), "--output", str(out), "--remote", server.url,
                 "--no-align-corners", "--deterministic-weights", "--no-track"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--no-align-corners" in errors[0] and "Traceback" not in err, err
    assert not out.exists()


def test_the_doctor_fails_the_remote_line_when_the_corners_differ(monkeypatch):
    from live.cli import doctor
    from tests.test_live_doctor import args_for
    monkeypatch.setattr(doctor, "probe_server", lambda url, token: {"engine": "e", "device": "d",
                                                                   "align_corners": True})
    check = doctor.check_remote(args_for("--remote", "ws://127.0.0.1:9", "--no-align-corners"))
    assert check.status == "FAIL" and "--no-align-corners" in check.text
    assert doctor.check_remote(args_for("--remote", "ws://127.0.0.1:9")).status == "ok"
