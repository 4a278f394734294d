"""Background work an engine owns: a thread that prepares something (the int8 renderer) while frames keep coming,
stopped in well under a second when the engine closes, and never left running when the interpreter exits.

Why the heavy part runs in a child process: a thread inside OpenVINO's or NNCF's native code cannot be interrupted,
and an interpreter that exits while one runs aborts ("terminate called without an active exception", exit 134).
So the calibration runs in `python -m <worker>` (its own session, lower priority, output discarded so no progress
bar lands in the user's terminal); the job's thread only waits for it, which a kill ends at once. The child also
ends itself when its parent goes away (its stdin closes). Every job still running at exit is cancelled and joined
by an atexit hook, registered when the first job starts (after torch and OpenVINO were imported, so it runs before
their own teardown).
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Callable

from ..files import FileRefused, load_json

RESULT = "result.json"
PARAMS = "params.json"
MAX_RESULT_BYTES = 64 << 10
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where `engines` is importable from, for the child

_live: "weakref.WeakSet[Job]" = weakref.WeakSet()
_hook = threading.Lock()
_hooked = False


class Stopped(Exception):
    """The job was cancelled (the engine closed): nothing it would have produced is used."""


class Cancel:
    """A cancellation flag whose `set()` also runs what was registered to stop work at once (kill a child)."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._actions: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def on_set(self, action: Callable[[], None]) -> None:
        """Run `action` when cancelled (now, if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._actions.append(action)
                return
        action()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            actions, self._actions = self._actions, []
        for action in actions:
            try:
                action()
            except OSError:  # the child ended on its own meanwhile
                pass


class Job:
    """`work(cancel)` in a daemon thread. `cancel()` sets the flag (killing what registered with it) and joins the
    thread; jobs still running at interpreter exit are cancelled and joined first."""

    def __init__(self, work: Callable[[Cancel], None], name: str):
        self._work = work
        self.cancel_flag = Cancel()
        self._thread = threading.Thread(target=self._work, args=(self.cancel_flag,), name=name, daemon=True)

    def start(self) -> "Job":
        _register(self)
        self._thread.start()
        return self

    def run_here(self) -> "Job":
        self._work(self.cancel_flag)
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def cancel(self, timeout: float | None = 30.0) -> bool:
        """Stop the work and wait for the thread: True once it has ended (not started: True)."""
        self.cancel_flag.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()


def _register(job: Job) -> None:
    global _hooked
    with _hook:
        _live.add(job)
        if not _hooked:
            atexit.register(stop_all)
            _hooked = True


def stop_all() -> None:
    """Cancel and join every job still running (the atexit hook; also safe to call any time)."""
    for job in list(_live):
        job.cancel(timeout=None)


def run_child(module: str, params: dict, cancel: Cancel, files: dict[str, Callable[[Path], None]] | None = None,
              ) -> dict:
    """Run `python -m module FOLDER` with `params` in FOLDER/params.json (and `files`: name -> writer), wait for
    it and return the JSON it left in FOLDER/result.json. Stopped when `cancel` is set (the child is killed at
    once); RuntimeError when it ends without a result."""
    with tempfile.TemporaryDirectory(prefix="live-avatar-job-") as folder:
        folder = Path(folder)
        (folder / PARAMS).write_text(json.dumps(params))
        for name, write in (files or {}).items():
            write(folder / name)
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [environ.get("PYTHONPATH")])])
        child = subprocess.Popen([sys.executable, "-m", module, str(folder)], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ,
                                 start_new_session=True)  # Ctrl-C in the terminal is the parent's to handle
        cancel.on_set(child.kill)
        try:
            code = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdin is not None:
                child.stdin.close()
        if cancel.is_set():
            raise Stopped("stopped")
        try:
            result = load_json(folder / RESULT, MAX_RESULT_BYTES, what="background job result")
        except FileRefused:
            raise RuntimeError(f"the background process ended (exit status {code}) without a result") from None
        if not isinstance(result, dict):
            raise RuntimeError("the background process left a malformed result")
        return result


def child_setup() -> tuple[Path, dict]:
    """For the child's main: (its folder, the params), at a lower priority, ending itself when the parent goes
    away (its stdin, a pipe from the parent, closes)."""
    folder = Path(sys.argv[1])
    try:
        os.nice(10)  # the frame loop comes first
    except (AttributeError, OSError):
        pass

    def watch_parent():
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)  # the parent is gone (or closed us off): nothing here is wanted any more

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    return folder, json.loads((folder / PARAMS).read_text())


def child_result(folder: Path, result: dict) -> None:
    """Write the child's result atomically (a parent never reads half of it)."""
    from ..storage import write_atomically

    write_atomically(folder / RESULT, json.dumps(result).encode(), prefix=".result.")
