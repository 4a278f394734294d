"""`live-avatar-server` refuses, in one `error:` line with exit status 2 and before anything slow starts, what it
cannot serve safely: no Ray Serve installed, or Ray's token authentication turned off."""
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _one_line(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_without_ray_it_names_the_install_command():
    # a fresh interpreter where `import ray` fails as where it is not installed
    code = ("import sys; sys.modules['ray'] = None; from remote.server import main; "
            "sys.exit(main(['--deterministic-weights']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    _one_line(result.returncode, result.stderr, 'pip install ".[serve]"', "'ray'")


def test_ray_auth_mode_disabled_is_refused(capsys, monkeypatch):
    from remote.server import main
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _one_line(main(["--deterministic-weights"]), capsys.readouterr().err, "RAY_AUTH_MODE=disabled")


def test_the_api_documentation_routes_are_off():
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (requirements-serve.txt)")
    from remote.deployment import api
    # FastAPI adds /docs, /redoc and /openapi.json only for these (a real server answers 404 there:
    # tests/test_remote_server_options.py)
    assert (api.docs_url, api.redoc_url, api.openapi_url) == (None, None, None)
