"""OpenVINO's compile cache is shared by every process on the machine (two clients started together, the int8
check's child and its parent): one compiles into it at a time, so nobody maps a blob while another writes it."""
import subprocess
import sys

import pytest

from engines.backends.openvino_backend import COMPILE_LOCK, compile_cached

pytest.importorskip("fcntl")

TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a+b") as handle:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
sys.exit(0)
"""


def other_process_can_lock(path) -> bool:
    code = subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode
    assert code in (0, 3)
    return code == 0


class RecordingCore:
    def __init__(self, lock_path):
        self.lock_path = lock_path
        self.free_while_compiling = []

    def compile_model(self, source, device, config):
        self.free_while_compiling.append(other_process_can_lock(self.lock_path))
        return "compiled"


def test_a_compile_into_the_cache_holds_its_lock_against_other_processes(tmp_path):
    core = RecordingCore(tmp_path / COMPILE_LOCK)
    assert compile_cached(core, "model.xml", "CPU", {"CACHE_DIR": str(tmp_path)}) == "compiled"
    assert core.free_while_compiling == [False]
    assert other_process_can_lock(tmp_path / COMPILE_LOCK)  # released afterwards


def test_a_failed_compile_releases_the_lock(tmp_path):
    class Failing(RecordingCore):
        def compile_model(self, source, device, config):
            raise RuntimeError("Exception from core.cpp")

    with pytest.raises(RuntimeError):
        compile_cached(Failing(tmp_path / COMPILE_LOCK), "model.xml", "CPU", {"CACHE_DIR": str(tmp_path)})
    assert other_process_can_lock(tmp_path / COMPILE_LOCK)


def test_without_a_cache_nothing_is_locked(tmp_path):
    core = RecordingCore(tmp_path / COMPILE_LOCK)
    compile_cached(core, "model.xml", "CPU", {})
    assert core.free_while_compiling == [True]
