"""The project's version, in one place: pyproject.toml reads it from here at build time, and both commands
(`live-avatar`, `live-avatar-server`) print it for --version. No imports, so --version answers before torch loads."""
from __future__ import annotations

import os
import sys

__version__ = "0.1.0"


def version_line(command: str) -> str:
    """`<command> <version> (Python X.Y.Z)`, what --version prints."""
    return f"{command} {__version__} (Python {sys.version.split()[0]})"


def program_name(command: str, fallback: str) -> str:
    """What --help calls the program: the installed command when started through it, else how it is run from a
    checkout (`run_live.py`, `python -m remote.server`)."""
    started_as = os.path.basename(sys.argv[0] or "")
    for suffix in (".exe", "-script.py"):  # Windows launchers
        started_as = started_as.removesuffix(suffix)
    return command if started_as == command else fallback
