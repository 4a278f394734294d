"""Reading the small files we keep or are handed (tokens, caches, decisions, preferences, calibrations) safely.

Every such file is hostile until read: a FIFO in its place would block the reader forever, a symlink to /dev/zero
would grow it without end, a 200 KB file of nested `[` would crash the parser's recursion. So each one is read
through `read_bounded`:
- opened with O_NONBLOCK (opening a FIFO does not wait for a writer) and checked with fstat on the open descriptor
  (no race with a swap after the check): regular files only, never a FIFO, device, socket or folder;
- its size checked against the caller's limit before reading, and at most limit + 1 bytes read (a file that grows
  while it is read is refused, not followed);
- JSON parsed only after its nesting depth was counted (`load_json`), so no input reaches the recursion limit.
What is refused raises `FileRefused` (a UserError: one line naming the file and why); callers that keep a cache set
the entry aside (`set_aside`) and rebuild it.
"""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from .errors import UserError

MAX_JSON_DEPTH = 32   # our JSON files nest 3-4 levels deep; anything near the parser's recursion limit is an attack


class FileRefused(UserError):
    """A file that is not a regular file of an acceptable size, or whose contents cannot be parsed safely."""


def read_bounded(path, limit: int, *, what: str = "file") -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; FileRefused (naming `what`) otherwise."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise FileRefused(f"{what} {path} does not exist") from None
    except OSError as error:
        raise FileRefused(f"cannot open {what} {path}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{what} {path} is not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise FileRefused(f"{what} {path} has {info.st_size:,} bytes, more than the {limit:,} it may have")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"{what} {path} grew past {limit:,} bytes while it was read")
        return b"".join(chunks)
    except OSError as error:
        raise FileRefused(f"cannot read {what} {path}: {error.strerror or error}") from None
    finally:
        os.close(fd)


def read_text(path, limit: int, *, what: str = "file", encoding: str = "utf-8") -> str:
    """`read_bounded`, decoded (FileRefused when it is not text in `encoding`)."""
    data = read_bounded(path, limit, what=what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise FileRefused(f"{what} {Path(path).expanduser()} is not {encoding} text (byte {error.start})") from None


def nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_json(path, limit: int, *, what: str = "file", max_depth: int = MAX_JSON_DEPTH):
    """JSON from a bounded, regular file whose nesting is at most `max_depth` deep; FileRefused otherwise."""
    text = read_text(path, limit, what=what)
    if nesting_depth(text) > max_depth:
        raise FileRefused(f"{what} {Path(path).expanduser()} nests deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as error:
        raise FileRefused(f"{what} {Path(path).expanduser()} is not valid JSON ({error})") from None


def set_aside(path) -> Path | None:
    """Rename a bad cache entry to `<name>.bad-<time>` beside it (kept for a look, never read again); None when
    that fails too (then it is removed if possible)."""
    path = Path(path)
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, target)
        return target
    except OSError:
        try:
            path.unlink()
        except OSError:
            pass
        return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK,
                       "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"
