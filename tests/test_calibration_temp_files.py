"""Calibration saves leave no orphan temp files: removed on failure, and a killed save's orphans are
cleaned on the next start."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from calibration.persistence import clean_stale_temp_files, load_calibration, save_calibration
from engines.keypoints import Keypoints

REPO = Path(__file__).resolve().parents[1]
CFG, CAM = "cfg", "0"


def _kp():
    return Keypoints(torch.zeros(1, 10, 2), torch.eye(2).repeat(1, 10, 1, 1))


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_orphans_are_removed_on_start_and_young_ones_kept(tmp_path):
    path = tmp_path / "calibration-camera_0-1234abcd.json"
    save_calibration(path, _kp(), config_hash=CFG, camera_id=CAM)
    stale = tmp_path / f"{path.name}.k3j4h5.tmp"
    young = tmp_path / f"{path.name}.zz9911.tmp"  # maybe another process saving right now
    other = tmp_path / "calibration-camera_1-5678.json.abcd.tmp"  # another camera's file: not this run's
    unrelated = tmp_path / "notes.tmp"
    for p in (stale, young, other, unrelated):
        p.write_text("{")
    for p in (stale, other, unrelated):
        _age(p, 3600)
    result = load_calibration(path, config_hash=CFG, camera_id=CAM, num_kp=10)
    assert result.kp is not None
    assert not stale.exists()
    assert young.exists() and other.exists() and unrelated.exists() and path.exists()


def test_save_cleans_orphans_and_its_own_temp_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "cal.json"
    orphan = tmp_path / "cal.json.x1y2z3.tmp"
    orphan.write_text("{")
    _age(orphan, 120)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_calibration(path, _kp(), config_hash=CFG, camera_id=CAM)
    assert list(tmp_path.iterdir()) == []


def test_clean_never_raises_for_a_missing_folder(tmp_path):
    assert clean_stale_temp_files(tmp_path / "nope" / "cal.json") == []


_SAVER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import torch
    from calibration import persistence
    from engines.keypoints import Keypoints
    real_fsync = os.fsync
    def slow_fsync(fd):  # widens the window a SIGKILL hits, as a slow disk does
        print("writing", flush=True)
        time.sleep(30)
        real_fsync(fd)
    os.fsync = slow_fsync
    kp = Keypoints(torch.zeros(1, 10, 2), torch.eye(2).repeat(1, 10, 1, 1))
    persistence.save_calibration(sys.argv[1], kp, config_hash="cfg", camera_id="0")
""")


def test_orphan_of_a_sigkilled_save_is_gone_after_the_next_start(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER.format(repo=str(REPO)))
    cache = tmp_path / "cache"
    path = cache / "cal.json"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    orphans = list(cache.glob("cal.json.*.tmp"))
    assert len(orphans) == 1 and not path.exists()
    _age(orphans[0], 120)  # the next start comes later than STALE_TEMP_SECONDS
    assert load_calibration(path, config_hash=CFG, camera_id=CAM, num_kp=10).kp is None
    assert list(cache.iterdir()) == []
