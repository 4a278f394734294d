"""Layers: engines/ imports nothing of ours above it; calibration/ only engines; live/ sits on top. Read from the
import statements themselves (ast), including imports inside functions."""
import ast

import pytest

from tests.conftest import REPO

ALLOWED = {"engines": {"engines"}, "calibration": {"engines", "calibration"}, "remote": {"engines", "remote"}}
# remote/bench.py drives the server through the client (live.remote_engine): it is a client-side tool that lives
# with the server package so that `python -m remote.bench` sits beside `python -m remote.server`.
CLIENT_TOOLS = {"remote/bench.py"}
OURS = {"engines", "calibration", "live", "tests", "run_live", "remote"}


def imported_packages(path):
    """Top-level packages of this project that `path` imports (relative imports stay inside the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_lower_layer_imports_nothing_above_it(layer):
    files = [f for f in sorted((REPO / layer).rglob("*.py")) if str(f.relative_to(REPO)) not in CLIENT_TOOLS]
    assert files
    wrong = {str(f.relative_to(REPO)): sorted(imported_packages(f) - ALLOWED[layer]) for f in files}
    assert {f: p for f, p in wrong.items() if p} == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nfrom .engine import X\n\ndef f():\n    from live.loop import LivePipeline\n")
    assert imported_packages(sample) == {"live"}
