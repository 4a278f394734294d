#!/usr/bin/env python3
"""Live avatar: `python run_live.py --avatar face.png` (see --help, and the README's "Live loop" section)."""
import sys

from live.app import main

if __name__ == "__main__":
    sys.exit(main())
