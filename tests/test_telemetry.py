"""No telemetry: converting a model with OpenVINO (what a cold start does) must start no telemetry process and
send nothing, in a user's environment (no CI variable, no consent file in the home folder: openvino_telemetry
counts that as consent)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("openvino")

# Runs in a child process: records every process start and URL opened while a tiny torch module is converted.
PROBE = r"""
import json, multiprocessing, sys, time, urllib.request
import engines  # every entry point imports this package before openvino
if sys.argv[1] == "telemetry-allowed":  # the control: undo the block, as if it were missing
    sys.modules.pop("openvino_telemetry", None)
started, opened = [], []
def start(self):
    target = getattr(self, "_target", None)
    started.append(f"{getattr(target, '__module__', '?')}.{getattr(target, '__name__', '?')}")
multiprocessing.Process.start = start
multiprocessing.Process.join = lambda self, timeout=None: None
multiprocessing.Process.is_alive = lambda self: False
def urlopen(request, *args, **kwargs):
    opened.append(getattr(request, "full_url", str(request)))
    raise OSError("no network in this test")
urllib.request.urlopen = urlopen
import torch
from engines.backends.openvino_backend import convert
convert(torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 16, 16),))
deadline = time.monotonic() + (5.0 if sys.argv[1] == "telemetry-allowed" else 1.5)
while time.monotonic() < deadline and not started and not opened:  # the sender posts from a worker thread
    time.sleep(0.05)
print(json.dumps({"started": started, "opened": opened,
                  "telemetry_loaded": sys.modules.get("openvino_telemetry") is not None}))
"""


def _probe(mode, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_openvino_conversion_starts_no_telemetry_process_and_sends_nothing(tmp_path):
    seen = _probe("ours", tmp_path)
    assert seen == {"started": [], "opened": [], "telemetry_loaded": False}
    assert not (tmp_path / "intel").exists(), "no telemetry client id / consent folder written to the home folder"


def test_the_probe_sees_telemetry_when_it_is_not_blocked(tmp_path):
    """The control: without the block the same conversion does start a GA4 sender, so the test above can fail.
    (openvino itself requires the openvino-telemetry package: it is always there to be blocked.)"""
    seen = _probe("telemetry-allowed", tmp_path)
    assert seen["telemetry_loaded"]
    assert any("_send_func" in name for name in seen["started"]) or seen["opened"], seen


def test_the_test_process_itself_has_telemetry_blocked():
    import openvino  # noqa: F401 - imports openvino.tools.ovc, which would load the telemetry package

    assert "openvino_telemetry" in sys.modules and sys.modules["openvino_telemetry"] is None
    from openvino.tools.ovc import telemetry_utils

    assert telemetry_utils.tm.__name__.endswith("telemetry_stub")
