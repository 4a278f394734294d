"""The one way we keep what a start computed for the next one: keyed by everything it depends on, checked before it
is trusted, written atomically, set aside when bad.

Two shapes, one scheme:
- `EntryCache`: a folder per entry, `<prefix>-<key>/`, holding payload files and `meta.json` (the fields the entry
  was built for, each payload's size and sha256). The OpenVINO IR cache (model.xml + model.bin) and the TensorRT
  engine cache (engine.ep) are two of them.
- `DecisionStore`: one JSON record per decision, `<kind>-<key>.json` ({fields, result}): the bf16 measurements,
  the detector check, the int8 gate's verdict, the fastest device.
Common to both: `cache_key` (sha256 of the canonical JSON of the fields); every small file read through
engines/files.py (regular files only, never blocking on a FIFO, size-capped, bounded JSON depth); results
range-checked by the caller's `validate`; a bad entry or record renamed aside (`files.set_aside`, never read
again) and rebuilt, with one notice; writes staged and renamed, so a crash leaves the old entry or the new one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .files import FileRefused, load_json, set_aside
from .storage import cache_root, sha256_file, staged_directory, write_atomically

log = logging.getLogger(__name__)

KEY_LENGTH = 20                  # hex digits of the key in a file name: unique enough, short enough to read
MAX_META_BYTES = 256 << 10       # meta.json and decision records are a few KB
META = "meta.json"
Notify = Callable[[str], None]


def cache_key(fields: dict) -> str:
    """Digest of the fields (canonical JSON): two lookups with equal fields find the same entry."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def canonical(fields: dict) -> dict:
    """The fields as they read back from JSON (tuples become lists, other values their str), for comparisons."""
    return json.loads(json.dumps(fields, default=str))


def differing(expected: dict, found: dict) -> list[str]:
    """Names of the fields whose values differ (present in one only included)."""
    return sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))


def _regular_file(path: Path) -> os.stat_result | None:
    """lstat of `path` when it is a regular file itself (not a symlink to one, never a FIFO or a device)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


@dataclass(frozen=True)
class Lookup:
    """What `EntryCache.load_or_build` found: the value, 'hit' | 'miss' | 'rebuilt', and notices to show."""
    value: Any
    status: str
    notices: tuple[str, ...]


class EntryCache:
    """Entries under `root`, each a folder `<prefix>-<key>/` of `payloads` and meta.json.

    meta.json = {"fields": the fields it was built for, "files": {name: {"size", "sha256"}}, "created"}. An entry
    is used only when meta.json is a bounded regular JSON file naming exactly the expected fields and every payload
    is a regular file of the recorded size and sha256 (and, on load, deserialises)."""

    def __init__(self, root, payloads: tuple[str, ...]):
        self.root = Path(root)
        self.payloads = tuple(payloads)

    def directory(self, prefix: str, fields: dict) -> Path:
        # the readable prefix is for people looking into the folder; the key makes it unique
        return self.root / f"{prefix}-{cache_key(fields)}"

    def check(self, directory: Path, fields: dict) -> tuple[str, str]:
        """('ok' | 'missing' | 'corrupt' | 'mismatch', reason) for the entry in `directory`."""
        directory = Path(directory)
        if not os.path.lexists(directory):
            return "missing", "nothing cached"
        if directory.is_symlink() or not directory.is_dir():
            return "corrupt", "it is not a folder"
        try:
            meta = load_json(directory / META, MAX_META_BYTES, what="cache metadata")
            found, files = meta["fields"], meta["files"]
            recorded = {name: (int(files[name]["size"]), str(files[name]["sha256"])) for name in self.payloads
                        if name in files}
            if not isinstance(found, dict):
                raise TypeError("fields is not an object")
        except FileRefused as error:
            return "corrupt", f"unreadable {META} ({error})"
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return "corrupt", f"unreadable {META} ({type(error).__name__})"
        expected = canonical(fields)
        if found != expected:
            return "mismatch", f"built for a different {', '.join(differing(expected, found))}"
        for name in self.payloads:
            info = _regular_file(directory / name)
            if name not in recorded or info is None:
                return "corrupt", f"{name} is missing or not a regular file"
            size, sha = recorded[name]
            if info.st_size != size:
                return "corrupt", f"{name} has {info.st_size} bytes, expected {size}"
            if sha256_file(directory / name) != sha:
                return "corrupt", f"{name} checksum differs"
        return "ok", "valid"

    def write(self, directory: Path, fields: dict, save: Callable[[Path], None]) -> None:
        """`save(staging)` writes the payloads into an empty temporary sibling; meta.json is added and the folder
        renamed into place: a crash or a failed write never leaves half an entry."""
        with staged_directory(directory) as staging:
            save(staging)
            files = {name: {"size": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
                     for name in self.payloads}
            meta = {"fields": canonical(fields), "files": files, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
            (staging / META).write_text(json.dumps(meta, indent=1, sort_keys=True))

    def newest_other(self, prefix_pattern: str, fields: dict) -> list[str] | None:
        """For a missing entry: the fields in which the newest entry matching `prefix_pattern` (a glob of entry
        folder names) differs, so a notice can say 'built for a different gpu, tensorrt'; None when there is none."""
        newest, newest_time = None, -1.0
        for meta_path in self.root.glob(f"{prefix_pattern}/{META}"):
            try:
                other = load_json(meta_path, MAX_META_BYTES, what="cache metadata")["fields"]
                mtime = meta_path.stat().st_mtime
            except (FileRefused, OSError, KeyError, TypeError):
                continue
            if isinstance(other, dict) and mtime > newest_time:
                newest, newest_time = other, mtime
        return None if newest is None else (differing(canonical(fields), newest) or None)

    def load_or_build(self, prefix: str, fields: dict, *, label: str, build: Callable[[], Any],
                      save: Callable[[Any, Path], None], load: Callable[[Path], Any],
                      reload_after_save: bool = False, on_missing: Callable[[], str | None] | None = None) -> Lookup:
        """The cached value (`load(directory)`) when the entry is valid and loads; else `build()`, saved with
        `save(value, staging)`. A bad entry is set aside first (one notice naming why); an unwritable cache only
        costs the next start. `reload_after_save`: return `load(directory)` of the fresh entry instead of the built
        value (OpenVINO compiles from a path, which its own blob cache can skip). `on_missing()`: the notice for a
        plain miss (None: say nothing)."""
        notices = []
        directory = self.directory(prefix, fields)
        status, reason = self.check(directory, fields)
        if status == "ok":
            try:
                return Lookup(load(directory), "hit", ())
            except Exception as error:  # noqa: BLE001 - an entry that does not deserialise is as bad as a corrupt one
                status, reason = "corrupt", f"it does not load ({_one_line(error)})"
        if status == "missing":
            said = on_missing() if on_missing is not None else None
            notices += [said] if said else []
        else:
            aside = set_aside(directory)
            where = f"set aside as {aside.name}" if aside is not None else "removed"
            notices.append(f"cached {label} at {directory} was unusable ({reason}): {where}, rebuilding it")
        value = build()
        try:
            self.write(directory, fields, lambda staging: save(value, staging))
        except Exception as error:  # noqa: BLE001 - an unwritable cache must not stop the app
            notices.append(f"could not save the {label} to {directory}: {_one_line(error)}")
            return Lookup(value, "miss", tuple(notices))
        if reload_after_save:
            value = load(directory)
        return Lookup(value, "miss" if status == "missing" else "rebuilt", tuple(notices))


def _one_line(error: BaseException, limit: int = 160) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


# --- decisions ---------------------------------------------------------------------------------------------------
DECISION_FORMAT = 2  # 2: keyed by cache_key, records read bounded and range-checked


def default_decisions_dir(environ=None) -> Path:
    return cache_root(environ) / "decisions"


class DecisionStore:
    """JSON records {fields, result} under one folder, one file per (kind, fields).

    `load` returns the result only when the file is a bounded regular JSON file that names exactly these fields
    and whose result passes `validate` (the caller's range check); a file that fails any of that is set aside and
    reported once through `notify` (default: a logged warning), and the caller measures again. `save` writes a
    temporary sibling and renames it; a store that cannot be written is only a slower next start."""

    def __init__(self, directory=None, *, notify: Notify | None = None):
        self.directory = Path(directory) if directory is not None else default_decisions_dir()
        self.notify = notify or log.warning

    def _fields(self, kind: str, fields: dict) -> dict:
        return {"format": DECISION_FORMAT, "kind": kind, **fields}

    def path(self, kind: str, fields: dict) -> Path:
        return self.directory / f"{kind}-{cache_key(self._fields(kind, fields))}.json"

    def load(self, kind: str, fields: dict, validate: Callable[[dict], bool] = lambda result: True) -> dict | None:
        path = self.path(kind, fields)
        if not os.path.lexists(path):
            return None
        try:
            record = load_json(path, MAX_META_BYTES, what="decision record")
            if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
                raise ValueError("no result in it")
            if record.get("fields") != canonical(self._fields(kind, fields)):
                raise ValueError("it names other fields than its key")
            if not validate(record["result"]):
                raise ValueError(f"impossible values {_short(record['result'])}")
        except (FileRefused, ValueError, TypeError, AttributeError) as error:
            aside = set_aside(path)
            where = f"set aside as {aside.name}" if aside is not None else "removed"
            self.notify(f"the cached {kind} decision {path} was unusable ({error}): {where}, measuring again")
            return None
        return record["result"]

    def save(self, kind: str, fields: dict, result: dict) -> bool:
        path = self.path(kind, fields)
        record = {"fields": canonical(self._fields(kind, fields)), "result": result,
                  "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(record, indent=1, sort_keys=True, default=str).encode(),
                             prefix=f".{path.name}.", mode=0o644)
            return True
        except OSError:
            return False


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def number_within(value, low: float = float("-inf"), high: float = float("inf")) -> bool:
    """A JSON number (not a bool) within [low, high] (NaN never is): what a cached figure must be to be trusted."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
