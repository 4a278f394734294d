"""The argument parser of every command line here, and the value types its flags share.

A bad flag is one `error: ...` line and exit status 2, like every other mistake the user can fix, instead of
argparse's usage block above the message. A flag's value is checked where the flag is declared, by its `type=`
callable: a number that cannot be parsed is argparse's "invalid int value" (the callable is named after the kind),
one out of range or not finite (argparse's float() accepts "nan" and "inf") an ArgumentTypeError saying the range.
The saved preferences (live/cli/config.py) run the same callables on the file's values, so the file accepts exactly
what the command line does.
"""
from __future__ import annotations

import argparse
import math
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def number(kind=float, *, low=None, high=None, low_open: bool = False):
    """An argparse type: text -> `kind` (int or float), finite, >= low (> low when `low_open`) and <= high."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    bounds = " and ".join(parts)

    def parse(text: str):
        value = kind(text)  # ValueError: argparse says "invalid <kind> value", named after parse.__name__
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = kind.__name__
    parse.bounds = bounds  # for help texts and tests
    return parse


def positive(kind=float, high=None):
    """> 0 (and <= high when given)."""
    return number(kind, low=0, high=high, low_open=True)


def dimensions(low: int = 1, high: tuple[int, int] = (7680, 4320)):
    """An argparse type: 'WIDTHxHEIGHT' -> (width, height), each side at least `low` and at most `high`."""

    def parse(text: str) -> tuple[int, int]:
        try:
            width, height = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}") from None
        if not (low <= width <= high[0] and low <= height <= high[1]):
            raise argparse.ArgumentTypeError(f"size {text!r} out of range ({low}x{low} .. {high[0]}x{high[1]})")
        return width, height

    parse.__name__ = "size"
    return parse
