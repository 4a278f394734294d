"""No telemetry from our processes.

OpenVINO's model converter (`openvino.convert_model`, via openvino.tools.ovc) and NNCF report usage to Google
Analytics through the `openvino_telemetry` package whenever it imports: with no consent file in the home folder
they count as consenting, and each event starts a child process that posts to GA4. That package has no switch of
its own (only a consent file, which would be the user's setting, and CI=true), so we make it unimportable for this
process: every place that imports it falls back to its built-in no-op stub. `engines/__init__.py` calls
`disable_telemetry()`, so it runs before any module of ours can import openvino or nncf, in every entry point
(run_live.py, remote.server and its Ray replicas, engines.bench, remote.bench, the tests).
"""
from __future__ import annotations

import sys

TELEMETRY_MODULES = ("openvino_telemetry",)


def disable_telemetry() -> None:
    """Block the telemetry package for this process (idempotent). Too late only if it was imported already by
    someone else's code, in which case its loaded copy is left alone."""
    for name in TELEMETRY_MODULES:
        if sys.modules.get(name) is None:
            sys.modules[name] = None  # `import openvino_telemetry` now raises ImportError (Python's import rule)
