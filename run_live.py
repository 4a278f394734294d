#!/usr/bin/env python3
"""Live avatar: `python run_live.py --avatar face.png` (see --help, README.md and docs/live.md); the same command as
the installed `live-avatar`."""
import sys

if __name__ == "__main__":
    from live.cli.command import main

    sys.exit(main())
