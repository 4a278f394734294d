"""Saying what a slow step is doing: one line before it starts, a "... s so far" line every `HEARTBEAT_S` seconds
while it runs, and one with the elapsed time when it ends.

Library code takes a `progress` callable (a function of one line of text) so tests can collect the lines; the
default prints to stderr, where a user running a command sees them at once (flushed).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

Progress = Callable[[str], None]
HEARTBEAT_S = 15.0  # a conversion or an int8 calibration runs for a minute without any output of its own
_IMPORTED = time.monotonic()  # the fallback origin of `process_age` where the OS does not say when we started


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(progress: Progress | None, what: str, heartbeat_s: float = HEARTBEAT_S) -> Iterator[None]:
    """`what ...` now, `what: 15 s so far` while it lasts, `what: done in 42.3 s` when the block ends (nothing
    more when it raises: the error says the rest)."""
    say = progress or to_stderr
    say(f"{what} ...")
    started = time.perf_counter()
    finished = threading.Event()

    def beat():
        while not finished.wait(heartbeat_s):
            say(f"  {what}: {time.perf_counter() - started:.0f} s so far")

    beater = threading.Thread(target=beat, name="progress", daemon=True)
    beater.start()
    try:
        yield
    finally:
        finished.set()
        beater.join()
    say(f"{what}: done in {time.perf_counter() - started:.1f} s")


def announced(progress: Progress | None, what: str, build: Callable[[], object]):
    """`build()` inside `step(progress, what)`: for steps handed around as callables (built on a cache miss only)."""
    with step(progress, what):
        return build()


def process_age() -> float:
    """Seconds since this process started (the interpreter's own start-up and every import included): Linux says
    it in /proc; elsewhere, since this module was imported (the first import of `engines`, nearly the same)."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED
