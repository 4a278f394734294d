"""The `live-avatar` command (installed by pyproject.toml): `--version` and `--list-cameras` alone answer at once,
everything else is `run_live.py` (live/app.py), whose imports load torch."""
from __future__ import annotations

import sys

from engines.version import version_line


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        print(version_line("live-avatar"))
        return 0
    if argv == ["--list-cameras"]:
        from live.cameras import print_cameras
        return print_cameras()
    from live.app import main as run
    return run(argv)
