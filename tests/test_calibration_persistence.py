"""Calibration file: round trip, staleness checks, and robustness against damaged files."""
import json
import os

import pytest
import torch

from calibration.persistence import (FORMAT_VERSION, default_calibration_path, load_calibration,
                                     save_calibration)
from engines.keypoints import Keypoints

CFG, CAM = "cfg-abc123", "0"


def _kp():
    g = torch.Generator().manual_seed(7)
    return Keypoints(torch.rand(1, 10, 2, generator=g) * 2 - 1, torch.randn(1, 10, 2, 2, generator=g))


def _load(path, cfg=CFG, cam=CAM):
    return load_calibration(path, config_hash=cfg, camera_id=cam, num_kp=10)


def test_round_trip_is_exact(tmp_path):
    kp = _kp()
    path = save_calibration(tmp_path / "sub" / "cal.json", kp, config_hash=CFG, camera_id=CAM)
    assert path.is_file()
    record = json.loads(path.read_text())
    assert record["version"] == FORMAT_VERSION and record["config_hash"] == CFG and record["camera_id"] == CAM
    assert isinstance(record["created"], float)
    result = _load(path)
    assert result.notice is None
    assert result.kp.value.dtype == torch.float32
    assert torch.equal(result.kp.value, kp.value) and torch.equal(result.kp.jacobian, kp.jacobian)
    assert not list(path.parent.glob("*.tmp"))  # no temp file left behind


def test_missing_file_is_silent(tmp_path):
    result = _load(tmp_path / "nope.json")
    assert result.kp is None and result.notice is None


@pytest.mark.parametrize("cfg, cam, field, word", [
    ("other-config", CAM, None, "model/config"),
    (CFG, "1", None, "camera"),
    (CFG, CAM, ("version", 999), "version"),
])
def test_stale_files_are_ignored_with_notice(tmp_path, cfg, cam, field, word):
    path = save_calibration(tmp_path / "cal.json", _kp(), config_hash=CFG, camera_id=CAM)
    if field:
        record = json.loads(path.read_text())
        record[field[0]] = field[1]
        path.write_text(json.dumps(record))
    result = _load(path, cfg, cam)
    assert result.kp is None
    assert word in result.notice and "\n" not in result.notice and str(path) in result.notice


def _valid_record(tmp_path):
    path = save_calibration(tmp_path / "valid.json", _kp(), config_hash=CFG, camera_id=CAM)
    return path.read_bytes()


@pytest.mark.parametrize("make", [
    lambda good: os.urandom(300),                                  # garbage bytes
    lambda good: b"\xff\xfe\x00garbage",                           # not UTF-8
    lambda good: good[: len(good) // 2],                           # truncated mid-write
    lambda good: good[:-1],                                        # lost the final brace
    lambda good: b"",                                              # empty
    lambda good: b"[1, 2, 3]",                                     # valid JSON, wrong type
    lambda good: b'{"hello": "world"}',                            # valid JSON, wrong keys
    lambda good: b"[" * 100000,                                    # pathological nesting
])
def test_corrupt_files_give_notice_not_exception(tmp_path, make):
    path = tmp_path / "cal.json"
    path.write_bytes(make(_valid_record(tmp_path)))
    result = _load(path)
    assert result.kp is None
    assert isinstance(result.notice, str) and "\n" not in result.notice


@pytest.mark.parametrize("mutate", [
    lambda r: r.pop("value"),
    lambda r: r.pop("jacobian"),
    lambda r: r.pop("created"),
    lambda r: r.update(value="abc"),
    lambda r: r.update(value=[[1.0, 2.0]]),                         # wrong rank
    lambda r: r.update(value=[[[1.0, 2.0, 3.0]]]),                  # wrong last dim
    lambda r: r.update(value=[[[1.0, 2.0], [1.0]]]),                # ragged
    lambda r: r.update(jacobian=r["jacobian"][0][:3]),             # rank drop
    lambda r: r.update(jacobian=[r["jacobian"][0][:3]]),           # K mismatch with value
    lambda r: r.update(value=[[[1e400, 0.0]] * 10]),                # inf
    lambda r: r.update(value=[]),
])
def test_wrong_or_missing_keys_give_notice(tmp_path, mutate):
    path = save_calibration(tmp_path / "cal.json", _kp(), config_hash=CFG, camera_id=CAM)
    record = json.loads(path.read_text())
    mutate(record)
    path.write_text(json.dumps(record))
    result = _load(path)
    assert result.kp is None and "damaged" in result.notice


def test_unreadable_path_gives_notice(tmp_path):
    (tmp_path / "dir.json").mkdir()
    result = _load(tmp_path / "dir.json")
    assert result.kp is None and result.notice


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = save_calibration(tmp_path / "cal.json", _kp(), config_hash=CFG, camera_id=CAM)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_calibration(path, Keypoints(_kp().value + 1, _kp().jacobian), config_hash=CFG, camera_id=CAM)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json"]  # temp file cleaned up


def test_default_path_uses_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path / "cache"))
    a, b = default_calibration_path("/dev/video0"), default_calibration_path("/dev/video1")
    assert a.parent == tmp_path / "cache" and a != b
    assert a == default_calibration_path("/dev/video0") and "/" not in a.name[len("calibration-"):]
    assert default_calibration_path(0).name.endswith(".json")
    monkeypatch.delenv("LIVE_AVATAR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_calibration_path("0").parent == tmp_path / "home" / ".cache" / "live-avatar"



# --- files that are not a saved pose of this model ----------------------------------------------------------------
def _saved(tmp_path, batch: int, keypoints: int):
    g = torch.Generator().manual_seed(1)
    kp = Keypoints(torch.rand(batch, keypoints, 2, generator=g), torch.randn(batch, keypoints, 2, 2, generator=g))
    return save_calibration(tmp_path / "cal.json", kp, config_hash=CFG, camera_id=CAM)


@pytest.mark.parametrize("batch, keypoints, num_kp", [(1, 7, 10), (3, 10, 10), (1, 5, 10), (1, 12, 10)])
def test_a_pose_of_another_shape_is_ignored_with_a_notice(tmp_path, batch, keypoints, num_kp):
    path = _saved(tmp_path, batch, keypoints)
    result = load_calibration(path, config_hash=CFG, camera_id=CAM, num_kp=num_kp)
    assert result.kp is None and f"{batch} pose(s) of {keypoints} keypoints" in result.notice
    assert "\n" not in result.notice


def test_the_live_controller_ignores_a_pose_with_other_keypoints(tmp_path):
    from calibration.neutral_pose import NeutralPose
    from calibration.control import CalibrationController
    path = _saved(tmp_path, 1, 7)
    neutral = NeutralPose()
    neutral.set_source(_kp())  # the model's 10 keypoints
    said = []
    controller = CalibrationController(neutral, config_hash=CFG, path=path, camera_id=CAM, log=said.append)
    controller.load_saved()
    assert not neutral.is_calibrated and any("1 pose(s) of 7 keypoints" in line for line in said), said
    neutral.calibrate(_kp())  # calibrating by hand then works: nothing half-loaded stays behind
    assert neutral.normalize(_kp()).value.shape == (1, 10, 2)


def test_a_60_mb_file_is_refused_at_once(tmp_path):
    import time
    path = tmp_path / "cal.json"
    record = json.loads(_valid_record(tmp_path))
    record["value"] = [[[0.5, 0.5]] * 5_000_000]  # valid JSON of ~60 MB
    path.write_text(json.dumps(record))
    assert path.stat().st_size > 50_000_000
    started = time.perf_counter()
    result = _load(path)
    assert time.perf_counter() - started < 1.0
    assert result.kp is None and "more than the 65,536" in result.notice


def test_a_fifo_at_the_path_does_not_block_start_up(tmp_path):
    import threading
    path = tmp_path / "cal.json"
    os.mkfifo(path)
    results = []
    reader = threading.Thread(target=lambda: results.append(_load(path)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # unblock the reader before failing: a writer that closes at once gives it EOF
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_calibration blocked on a FIFO")
    [result] = results
    assert result.kp is None and "not a regular file" in result.notice


# --- every path that loads a pose checks it against the model ------------------------------------------------------
def test_num_kp_is_required_so_no_caller_skips_the_shape_check(tmp_path):
    path = _saved(tmp_path, 1, 5)
    with pytest.raises(TypeError):
        load_calibration(path, config_hash=CFG, camera_id=CAM)  # the missing num_kp is the point


def test_the_controller_loads_nothing_before_it_knows_the_models_keypoints(tmp_path):
    from calibration.control import CalibrationController
    from calibration.neutral_pose import NeutralPose
    path = _saved(tmp_path, 1, 5)  # right config hash and camera, 5 keypoints
    neutral = NeutralPose()
    said = []
    CalibrationController(neutral, config_hash=CFG, path=path, camera_id=CAM, log=said.append).load_saved()
    assert not neutral.is_calibrated, "a pose of 5 keypoints was taken without a model to check it against"
    neutral.set_source(_kp())
    neutral.calibrate(_kp())
    assert neutral.normalize(_kp()).value.shape == (1, 10, 2)


@pytest.mark.parametrize("mutate, why", [
    (lambda r: r.update(value=[[[5.0, 0.0]] * 10]), "outside the frame"),
    (lambda r: r.update(jacobian=[[[[1e9, 0.0], [0.0, 1.0]]] * 10]), "entries up to"),
    (lambda r: r.update(jacobian=[[[[1.0, 2.0], [2.0, 4.0]]] * 10]), "cannot be inverted"),
])
def test_values_no_detector_gives_are_ignored_with_a_notice(tmp_path, mutate, why):
    path = save_calibration(tmp_path / "cal.json", _kp(), config_hash=CFG, camera_id=CAM)
    record = json.loads(path.read_text())
    mutate(record)
    path.write_text(json.dumps(record))
    result = _load(path)
    assert result.kp is None and "damaged" in result.notice and why in result.notice


def _fake_webcam(monkeypatch):
    """--camera 0 is a listed webcam with a stable id whose frames come from a fake capture."""
    import cv2
    import numpy as np

    from live.devices import cameras
    from live.devices.cameras import Camera, CameraList

    class FakeCapture:
        def __init__(self, index):
            pass

        def isOpened(self):
            return True

        def set(self, *args):
            return True

        def get(self, prop):
            return 0.0

        def read(self):
            return True, np.full((120, 160, 3), 90, np.uint8)

        def release(self):
            pass
    listing = CameraList([Camera(0, "Test Cam", "/dev/video0", "uvcvideo", stable_id="test-cam-id")],
                         where="test", complete=True)
    monkeypatch.setattr(cameras, "list_cameras", lambda: listing)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    return "test-cam-id"


@pytest.mark.slow
@pytest.mark.parametrize("batch, keypoints", [(1, 5), (3, 10)])
def test_a_live_run_with_a_saved_pose_of_another_shape_says_so_and_runs(tmp_path, monkeypatch, capsys, batch,
                                                                        keypoints):
    """The live path of run_live.py (webcam, saved calibration for that camera id, right config hash): one notice,
    then the loop runs; it used to crash at its first frame ("size of tensor a (10) must match ... (5)")."""
    import cv2
    import numpy as np

    from engines.backends import create_engine
    from live.cli.app import main
    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path / "cache"))
    camera_id = _fake_webcam(monkeypatch)
    engine, _ = create_engine(backend="torch", device="cpu", deterministic_weights=True)
    config_hash = engine.config_hash
    engine.close()
    g = torch.Generator().manual_seed(3)
    pose = Keypoints(torch.rand(batch, keypoints, 2, generator=g) - 0.5,
                     torch.eye(2).repeat(batch, keypoints, 1, 1))
    saved = save_calibration(default_calibration_path(camera_id), pose, config_hash=config_hash, camera_id=camera_id)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.full((64, 64, 3), 128, np.uint8))
    code = main(["--avatar", str(face), "--camera", "0", "--no-vcam", "--no-preview", "--deterministic-weights",
                 "--backend", "torch", "--device", "cpu", "--max-frames", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err and "error:" not in err, err
    notices = [line for line in err.splitlines() if "saved calibration" in line]
    assert len(notices) == 1 and str(saved) in notices[0] and f"{batch} pose(s) of {keypoints} keypoints" in notices[0]
    assert "done: 2 frames" in err
