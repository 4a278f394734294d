#!/usr/bin/env python3
"""Live avatar: `python run_live.py --avatar face.png` (see --help, README.md and docs/live.md)."""
import sys

if __name__ == "__main__":
    if not {"-h", "--help"} & set(sys.argv[1:]):
        # before the imports: PyTorch, OpenCV and the model code take seconds to load on a small CPU
        print("live avatar: starting (loading PyTorch and OpenCV) ...", file=sys.stderr, flush=True)
    from live.app import main

    sys.exit(main())
