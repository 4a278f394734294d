"""Reading the small files we keep or are handed (tokens, caches, decisions, preferences, calibrations) safely.

Every such file is hostile until read: a FIFO in its place would block the reader forever, a symlink to /dev/zero
would grow it without end, a 200 KB file of nested `[` would crash the parser's recursion. So each one is read
through `read_bounded`:
- opened with O_NONBLOCK (opening a FIFO does not wait for a writer) and checked with fstat on the open descriptor
  (no race with a swap after the check): regular files only, never a FIFO, device, socket or folder;
- its size checked against the caller's limit before reading, and at most limit + 1 bytes read (a file that grows
  while it is read is refused, not followed);
- JSON parsed only after its nesting depth was counted (`load_json`), so no input reaches the recursion limit.
- TOML (preferences) likewise only after its nesting was counted (`load_toml`); a UTF-8 byte-order mark, as Windows
  Notepad saves one, is skipped;
- a path typed by the user (`~other/...` included) is expanded by `user_path`, which turns an unknown user into
  one line instead of pathlib's RuntimeError.
What is refused raises `FileRefused` (a UserError: one line naming the file and why; `FileMissing` when there is
nothing at the path, which callers reading optional state treat as "none saved"); callers that keep a cache set
the entry aside (`set_aside`) and rebuild it.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

MAX_JSON_DEPTH = 32   # our JSON files nest 3-4 levels deep; anything near the parser's recursion limit is an attack


class FileRefused(UserError):
    """A file that is not a regular file of an acceptable size, or whose contents cannot be parsed safely."""


class FileMissing(FileRefused):
    """Nothing at the path (a FileRefused too: callers that need the file just report it)."""


def user_path(path, *, what: str = "file") -> Path:
    """`path` with a leading `~` or `~user` expanded; FileRefused (one line) when that user or home folder does not
    exist (pathlib raises RuntimeError there)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        head = Path(path).parts[0] if Path(path).parts else str(path)
        raise FileRefused(f"{what} {path}: cannot expand {head} (no such user, or no home folder)") from None


@contextmanager
def open_regular(path, *, what: str = "file"):
    """(descriptor, size) of `path` opened for reading, for the block; FileRefused unless it is a regular file.

    O_NONBLOCK: opening a FIFO does not wait for a writer; fstat on the descriptor: the file checked is the file
    read, whatever is swapped in at the path meanwhile."""
    path = user_path(path, what=what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileMissing(f"{what} {path} does not exist") from None
    except OSError as error:
        raise FileRefused(f"cannot open {what} {path}: {error.strerror or error}") from None
    try:
        try:
            info = os.fstat(fd)
        except OSError as error:
            raise FileRefused(f"cannot read {what} {path}: {error.strerror or error}") from None
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{what} {path} is not a regular file ({_kind(info.st_mode)})")
        yield fd, info.st_size
    finally:
        os.close(fd)


def read_bounded(path, limit: int, *, what: str = "file") -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; FileRefused (naming `what`) otherwise."""
    path = user_path(path, what=what)
    with open_regular(path, what=what) as (fd, declared):
        if declared > limit:
            raise FileRefused(f"{what} {path} has {declared:,} bytes, more than the {limit:,} it may have")
        return _read_at_most(fd, limit, path, what)


def _read_at_most(fd: int, limit: int, path: Path, what: str) -> bytes:
    try:
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


def read_text(path, limit: int, *, what: str = "file", encoding: str = "utf-8") -> str:
    """`read_bounded`, decoded (FileRefused when it is not text in `encoding`)."""
    data = read_bounded(path, limit, what=what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise FileRefused(f"{what} {user_path(path, what=what)} is not {encoding} text (byte {error.start})") from None


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
        raise FileRefused(f"{what} {user_path(path, what=what)} nests deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as error:
        raise FileRefused(f"{what} {user_path(path, what=what)} is not valid JSON ({error})") from None


def toml_nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { in TOML text (table headers count too), brackets inside strings and
    comments not counted."""
    depth = deepest = 0
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char == "#":  # a comment runs to the end of the line
            newline = text.find("\n", i)
            i = end if newline < 0 else newline
            continue
        if char in "\"'":
            quote = char * 3 if text.startswith(char * 3, i) else char
            i += len(quote)
            while i < end:
                if char == '"' and text[i] == "\\":  # basic strings escape; literal ('...') strings do not
                    i += 2
                elif text.startswith(quote, i):
                    i += len(quote)
                    break
                elif len(quote) == 1 and text[i] == "\n":  # unterminated: the parser says where
                    break
                else:
                    i += 1
            continue
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
        i += 1
    return deepest


def load_toml(path, limit: int, *, what: str = "file", max_depth: int = MAX_JSON_DEPTH) -> dict:
    """The TOML table in a bounded, regular, UTF-8 file (a leading byte-order mark skipped) whose nesting is at
    most `max_depth` deep; FileRefused otherwise (FileMissing when there is no file)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 reads TOML with the backport (requirements.txt installs it there)
        import tomli as tomllib
    data = read_bounded(path, limit, what=what)
    shown = user_path(path, what=what)
    try:
        text = data.decode("utf-8-sig")  # Windows Notepad starts UTF-8 files with a byte-order mark
    except UnicodeDecodeError as error:
        raise FileRefused(f"{what} {shown} is not UTF-8 text (byte {error.start})") from None
    if toml_nesting_depth(text) > max_depth:
        raise FileRefused(f"{what} {shown} nests deeper than {max_depth} levels")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message ends "(at line N, column M)"
        raise FileRefused(f"{what} {shown} is not valid TOML: {error}") from None
    except RecursionError:  # the count above keeps inputs far from this; a parser quirk must still be one line
        raise FileRefused(f"{what} {shown} nests too deeply") from None


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
