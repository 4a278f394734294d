"""live/signals.py: HUP, INT and TERM arriving together stop the command once, with the first one's status and one
line, and nothing else on stderr (CPython reports signals pending when they were switched to SIG_IGN as
"Signal N ignored due to race condition" with a traceback: those reports are dropped)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    from live.signals import run_command
    stops = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
    for sig in stops:  # as in a terminal, whatever the test runner's own process ignores
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)

    def body():
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        for sig in stops:
            os.kill(os.getpid(), sig)  # all three pending at once ...
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # ... and delivered together
        time.sleep(5)
        return 0
    sys.exit(run_command(body))
""")


STOPPED = {129: "stopped (SIGHUP); outputs closed", 130: "stopped (Ctrl-C); outputs closed",
           143: "stopped (SIGTERM); outputs closed"}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask") or os.name == "nt", reason="POSIX signals")
def test_three_signals_at_once_stop_once_with_one_line():
    for _ in range(5):  # how the kernel interleaves the three with the interpreter varies from run to run
        result = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO))], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode in STOPPED, result.stderr  # the first one's status
        assert result.stderr.splitlines() == [STOPPED[result.returncode]], result.stderr
