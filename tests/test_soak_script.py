"""scripts/soak.py (run by hand): its arithmetic, checked here so the README figure means what it says."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slope_is_mib_per_minute(soak):
    samples = [(t, 500.0 + 0.5 * t / 60.0 + (3.0 if i % 2 else -3.0)) for i, t in enumerate(range(0, 601, 10))]
    assert soak.slope_per_minute(samples) == pytest.approx(0.5, abs=0.02)
    assert soak.slope_per_minute([(0.0, 1.0), (60.0, 1.0)]) == 0.0


def test_rss_is_read_from_proc(soak):
    if not Path("/proc/self/statm").exists():
        pytest.skip("no /proc (not Linux)")
    assert 10 < soak.rss_mib() < 1_000_000


def test_floor_per_minute_ignores_transient_peaks(soak):
    samples = [(t, 650.0 + (100.0 if t % 20 == 0 else 0.0)) for t in range(0, 180, 5)]
    assert soak.floor_per_minute(samples) == [(30.0, 650.0), (90.0, 650.0), (150.0, 650.0)]
