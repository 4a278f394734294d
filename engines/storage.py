"""Files the tool keeps between runs: the one cache folder they live in, and how their bytes are checked."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

CACHE_ENV = "LIVE_AVATAR_CACHE"
_CHUNK = 1 << 20


def cache_root(environ=None) -> Path:
    """$LIVE_AVATAR_CACHE, else ~/.cache/live-avatar: checkpoints, calibrations and compiled engines live here."""
    environ = os.environ if environ is None else environ
    root = environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "live-avatar"


def sha256_file(path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in chunks (a checkpoint is 700 MB); optionally with a progress bar."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=f"verifying {path.name}", disable=not progress) as bar:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def write_atomically(path, data: bytes, *, prefix: str, mode: int | None = None) -> None:
    """Write `data` to `path` through a temporary file in the same folder (named `prefix`...`.tmp`), flushed to
    disk, then renamed over it: readers see the old file or the new one, never half. The temporary file is removed
    when anything fails. `mode`: the new file's permissions (default: mkstemp's 0o600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def interprocess_lock(path):
    """Hold an exclusive lock on `path` (created if needed) against other processes; released when the block ends
    or the process dies. Where the OS has no fcntl (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: OpenVINO's own cache there is the only writer we know of
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def staged_directory(directory):
    """Write a cache entry atomically: yields an empty temporary sibling folder to fill; when the block ends
    without error it replaces `directory`, so a crash or a failed write never leaves a half-written entry."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
