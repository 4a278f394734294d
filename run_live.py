#!/usr/bin/env python3
"""Live avatar: `python run_live.py --avatar face.png` (see --help, and the README's "Live loop" section)."""
import os
import sys

if sys.platform == "darwin":  # torch reads it once, at import: ops the Apple GPU (MPS) lacks then run on the CPU
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

from live.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
