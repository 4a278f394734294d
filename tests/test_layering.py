"""Layers: engines/ imports nothing of ours above it; calibration/ only engines; remote/ (both ends of the wire)
only engines; live/ sits on top, in rooms (ROOMS below) that import only the rooms beneath them; no two modules
import each other. Read from the import statements themselves (ast), including imports inside functions."""
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


# The rooms of live/ and what each may import of live/ ("base": live/errors.py and live/signals.py, what every
# room shares). cli wires everything together; nothing imports cli but cli itself.
ROOMS = {
    "base": {"base"},
    "audio": {"base", "audio"},
    "devices": {"base", "audio", "devices"},
    "ui": {"base", "ui"},
    "pipeline": {"base", "devices", "ui", "pipeline"},
    "cli": {"base", "audio", "devices", "ui", "pipeline", "cli"},
}


def room_of(module: str) -> str | None:
    """'live.pipeline.loop' -> 'pipeline'; 'live.errors' -> 'base'; None outside live/."""
    parts = module.split(".")
    if parts[0] != "live":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "base"


def test_live_is_in_rooms_and_each_room_imports_only_those_beneath_it():
    live = REPO / "live"
    loose = sorted(f.name for f in live.glob("*.py") if f.name not in ("__init__.py", "errors.py", "signals.py"))
    assert loose == [], "every live/ module belongs to a room"
    wrong = {}
    for path in sorted(live.rglob("*.py")):
        room = room_of(".".join(path.relative_to(REPO).with_suffix("").parts))
        rooms = {room_of(name) for name in imported_modules(path)} - {None}
        if rooms - ROOMS[room]:
            wrong[str(path.relative_to(REPO))] = sorted(rooms - ROOMS[room])
    assert wrong == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nfrom .engine import X\n\n"
                      "def f():\n    from live.pipeline.loop import LivePipeline\n")
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


def test_rooms_are_read_from_module_names():
    assert room_of("live.pipeline.loop") == "pipeline"
    assert room_of("live.errors.UserError") == "base"
    assert room_of("live.cli") == "cli"
    assert room_of("engines.framing") is None
    assert "cli" not in ROOMS["pipeline"] and "pipeline" not in ROOMS["devices"]
