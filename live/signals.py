"""How a command that writes files stops: Ctrl-C, SIGTERM and SIGHUP become exceptions that close every output,
never while a file is being finalised, and every end is one line and an exit status.

- `stop_on_signals()`: SIGINT raises KeyboardInterrupt, SIGTERM/SIGHUP raise `Stopped`, so the ordinary
  close-on-exception paths (context managers, finally) finalise the recording. After the first signal the others
  are ignored for the rest of the process: a second `kill`, or TERM+INT+HUP sent together, cannot cut the
  finalising short, and the process exits with the first one's status.
- `signals_deferred()`: a block that must not be torn (fsync then rename of a finished recording). A signal that
  arrives inside it is held and raised when the block ends. A flag rather than pthread_sigmask: the kernel hands a
  process signal to any thread that does not block it (tqdm's monitor, capture readers), and Python then runs the
  handler in the main thread anyway, so masking one thread defers nothing.
- `run_command(body)`: UserError / CheckpointError -> `error: <line>`, exit 2; stopped -> one line, 128 + signal.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from engines.errors import UserError

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # no SIGHUP on Windows: skipped there


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM/SIGHUP; a KeyboardInterrupt, so every path that closes outputs on
    Ctrl-C (finalising the mp4) does the same here."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)


_deferring = 0        # depth of signals_deferred blocks
_held: list[int] = []  # signals that arrived inside one, raised when the outermost ends


def _stop(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


@contextmanager
def signals_deferred():
    """Hold the signals `stop_on_signals` handles until the block ends; then raise the first one (unless the block
    is already ending with an exception of its own, which then wins: the process is stopping either way)."""
    global _deferring
    _deferring += 1
    try:
        yield
    except BaseException:
        _deferring -= 1
        if not _deferring:
            _held.clear()
        raise
    _deferring -= 1
    if not _deferring and _held:
        signum = _held[0]
        _held.clear()
        raise _stop(signum)


def _quiet_ignored_signals() -> None:
    """Signals that arrived together with the first one (TERM+INT+HUP sent at once) are already pending when the
    handler switches them to SIG_IGN; CPython then reports each as "OSError: Signal N ignored due to race
    condition" with a traceback on stderr (sys.unraisablehook). Ignoring them is what was asked for: those reports
    are dropped, every other unraisable error still goes to the previous hook."""
    previous_hook = sys.unraisablehook
    if getattr(previous_hook, "quiet_ignored_signals", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, OSError) and "ignored due to race condition" in str(value):
            return
        previous_hook(unraisable)
    hook.quiet_ignored_signals = True
    sys.unraisablehook = hook


@contextmanager
def stop_on_signals(names=STOP_SIGNALS):
    """Turn the named signals into exceptions while the block runs (see the module docstring). A signal already
    ignored (nohup, a background job's SIGINT) stays ignored. Once one arrived, all of them stay ignored after the
    block too: what follows is the process finishing its exit, which no later signal may interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {}
    received = []

    def handler(signum, frame):
        if received:
            return  # a late one: the stop is already under way
        received.append(signum)
        _quiet_ignored_signals()
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if _deferring:
            _held.append(signum)
            return
        raise _stop(signum)

    for name in names:
        sig = getattr(signal, name, None)
        if sig is None or signal.getsignal(sig) == signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        if not received:
            for sig, old in previous.items():
                signal.signal(sig, old)


def run_command(body) -> int:
    """Run `body()` (returns the exit status) under stop_on_signals; one line and a status for every way it ends
    that the user can act on."""
    from engines.checkpoint import CheckpointError
    try:
        with stop_on_signals():
            return body()
    except (UserError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"stopped ({exc.signame}); outputs closed", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("stopped (Ctrl-C); outputs closed", file=sys.stderr)
        return 130
