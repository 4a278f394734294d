"""Layers: engines/ imports nothing of ours above it; calibration/ only engines; remote/ (both ends of the wire)
only engines; live/ sits on top; no two modules of one package import each other. Read from the
import statements themselves (ast), including imports inside functions."""
import ast

import pytest

from tests.conftest import REPO

ALLOWED = {"engines": {"engines"}, "calibration": {"engines", "calibration"}, "remote": {"engines", "remote"}}
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
    files = sorted((REPO / layer).rglob("*.py"))
    assert files
    wrong = {str(f.relative_to(REPO)): sorted(imported_packages(f) - ALLOWED[layer]) for f in files}
    assert {f: p for f, p in wrong.items() if p} == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nfrom .engine import X\n\ndef f():\n    from live.loop import LivePipeline\n")
    assert imported_packages(sample) == {"live"}


def imported_modules(path):
    """Absolute module names of this project that `path` imports (relative ones resolved against its package)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(
                [*package.split(".")[:len(package.split(".")) - node.level + 1], node.module])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from remote import protocol`
    return {name for name in found if name.split(".")[0] in OURS}


def test_no_two_modules_import_each_other():
    modules = {".".join(f.relative_to(REPO).with_suffix("").parts): f
               for layer in (*ALLOWED, "live") for f in (REPO / layer).rglob("*.py")}
    imports = {name: imported_modules(path) & set(modules) for name, path in modules.items()}
    circles = sorted({tuple(sorted((a, b))) for a, deps in imports.items() for b in deps if a in imports.get(b, ())})
    assert circles == []
