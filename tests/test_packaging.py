"""`pip install .` gives working `live-avatar` / `live-avatar-server` commands: pyproject.toml's dependency lists
mirror the requirements files (the README's path), the version has one source, and an install into a fresh
virtual environment (offline: the packages come from this interpreter's site-packages) runs --version,
--list-cameras and doctor from outside the checkout."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from engines.version import __version__
from tests.conftest import REPO

PACKAGES = ("engines", "calibration", "live", "remote")


def requirement_lines(path: Path) -> set[str]:
    """Requirements of one file, normalised (its `-r` includes are the other lists)."""
    found = set()
    for line in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if line and not line.startswith("-"):
            found.add(str(Requirement(line)))
    return found


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dependencies_mirror_the_requirements_files():
    project = pyproject()["project"]
    assert {str(Requirement(r)) for r in project["dependencies"]} == requirement_lines(REPO / "requirements.txt")
    for extra, name in (("serve", "requirements-serve.txt"), ("gpu", "requirements-gpu.txt")):
        assert {str(Requirement(r)) for r in project["optional-dependencies"][extra]} == \
            requirement_lines(REPO / name), extra
    assert "torch==2.13.0" in project["dependencies"]


def test_commands_and_packages():
    data = pyproject()
    assert data["project"]["scripts"] == {"live-avatar": "live.cli.command:main",
                                          "live-avatar-server": "remote.server:main"}
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "engines.version.__version__"}
    listed = set(data["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for name in PACKAGES
               for p in (REPO / name).rglob("__init__.py")}
    assert listed == on_disk  # a new subpackage must be listed, or the installed command lacks it
    data_files = [p for name in PACKAGES for p in (REPO / name).rglob("*") if p.is_file()
                  and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data_files == []  # none today; package data would need declaring


def test_version_on_both_commands_from_a_checkout():
    for command in (["run_live.py"], ["-m", "remote.server"]):
        done = subprocess.run([sys.executable, *command, "--version"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert re.fullmatch(rf"live-avatar(-server)? {re.escape(__version__)} \(Python 3\.\d+\.\d+\)\n",
                            done.stdout), done.stdout


@pytest.mark.slow
def test_pip_install_gives_working_commands(tmp_path):
    # Sources copied out so the build writes nothing into the checkout.
    source = tmp_path / "src"
    for name in PACKAGES:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # This interpreter's packages (torch, pip, setuptools, ...) behind the new environment's own: nothing is
    # downloaded, and what gets installed lands in the new environment.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "parent-packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY")}
    env["LIVE_AVATAR_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", str(source)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    installed = subprocess.run([python, "-c", "import live.cli.app, remote.server; print(live.cli.app.__file__)"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert installed.stdout.startswith(site), installed.stdout + installed.stderr  # not the checkout's copy

    def command(*argv):
        return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240, stdin=subprocess.DEVNULL)

    for name in ("live-avatar", "live-avatar-server"):
        done = command(name, "--version")
        assert (done.returncode, done.stdout.split()[:2]) == (0, [name, __version__]), done.stderr

    cameras_here = Path("/sys/class/video4linux").exists()
    done = command("live-avatar", "--list-cameras")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    if not cameras_here:
        assert done.stdout == "no cameras found (looked in /sys/class/video4linux)\n"

    # the torch backend keeps this quick (no OpenVINO compile into the empty cache); the rest is the real thing
    done = command("live-avatar", "doctor", "--backend", "torch")
    out = done.stdout
    assert "Traceback" not in done.stderr + out, done.stderr
    lines = out.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["versions:", "camera:", "virtual", "display:",
                                                      "weights:", "cache:", "remote:", "avatar:", "engine:"], out
    assert re.match(r"(ok|warn) +engine: --backend torch --precision auto runs torch-\w+-fp32 on \w+: \d+ ms per "
                    r"frame", lines[8]), out
    assert lines[5].startswith("ok    cache: ") and lines[3].startswith("warn  display: no preview window")
    if not cameras_here:
        assert lines[1].startswith("FAIL  camera: no camera found") and "--driving FILE" in lines[1]
        assert lines[2].startswith("FAIL  virtual camera: ") and "modprobe v4l2loopback" in lines[2]
        assert done.returncode == 1
        assert lines[-1] == "result: a live run cannot work here yet: fix camera, virtual camera (the FAIL lines " \
                            "above)"


def test_version_and_camera_list_answer_without_loading_torch():
    code = ("import sys; from live.cli.command import main; main(['--version']); main(['--list-cameras']); "
            "print(sorted(m for m in ('torch', 'cv2', 'openvino') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("live-avatar ") and done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv0, prog", [("/venv/bin/live-avatar", "live-avatar"), (r"C:\v\live-avatar.exe",
                                                                                     "live-avatar"),
                                         ("run_live.py", "run_live.py"), ("/venv/bin/live-avatar-server",
                                                                          "run_live.py")])
def test_help_names_the_program_as_it_was_started(monkeypatch, argv0, prog):
    from engines.version import program_name
    monkeypatch.setattr(sys, "argv", [argv0.replace("\\", "/")])
    assert program_name("live-avatar", "run_live.py") == prog
