"""The `live-avatar` command (installed by pyproject.toml): `--version` and `--list-cameras` alone answer at once,
`demo` is live/cli/demo.py, everything else is live/cli/app.py, whose imports load torch (a first line says so before
them). `run_live.py` is the same command."""
from __future__ import annotations

import os
import sys

from engines.version import version_line

if sys.platform == "darwin":  # torch reads it once, at import: ops the Apple GPU (MPS) lacks then run on the CPU
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        print(version_line("live-avatar"))
        return 0
    if argv == ["--list-cameras"]:
        from live.devices.cameras import print_cameras
        return print_cameras()
    if not {"-h", "--help"} & set(argv):
        # before the imports: PyTorch, OpenCV and the model code take seconds to load on a small CPU
        print("live avatar: starting (loading PyTorch and OpenCV) ...", file=sys.stderr, flush=True)
    if argv[:1] == ["demo"]:  # `live-avatar demo [flags]`: no webcam, no driver, no download (live/cli/demo.py)
        from live.cli.demo import main as demo
        return demo(argv[1:])
    from live.cli.app import main as run
    return run(argv)
