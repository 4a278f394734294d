"""The argument parser of every command line here: a bad flag is one `error: ...` line and exit status 2, like
every other mistake the user can fix, instead of argparse's usage block above the message."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)
