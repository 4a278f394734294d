"""Find the model checkpoint for ``--checkpoint``: an explicit file, the local cache, or a verified download.

The official FOMM checkpoints are on Google Drive / Yandex Disk, which have no stable direct-download link, so the
default URL points at a public mirror; the sha256 check (not the mirror) guarantees the bytes are the official ones.
Override the URL with ``url=`` or ``$LIVE_AVATAR_WEIGHTS_URL`` (any http(s):// or file:// URL) and the cache folder
with ``$LIVE_AVATAR_CACHE``.

Downloads go to ``<file>.part`` (resumed with an HTTP Range request after an interruption), are verified, then
atomically renamed, so the cache never holds a partial file under the real name. A verified cached file gets a
``.sha256-ok`` marker so later starts skip re-hashing 700 MB.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from engines.checkpoint import DEFAULT_URL, KNOWN_CHECKPOINTS
from engines.storage import CACHE_ENV, sha256_file, write_atomically
from engines.storage import cache_root as cache_dir
from engines.errors import WeightsError
from engines.files import FileRefused, read_text

__all__ = ["DEFAULT_URL", "KNOWN_CHECKPOINTS", "cached_checkpoint", "cached_path", "resolve_checkpoint"]
OFFICIAL_SOURCE = "https://drive.google.com/drive/folders/1PyQJmkdCsAkOYwUyaj_l-l0as-iLDgeH"
URL_ENV = "LIVE_AVATAR_WEIGHTS_URL"
MARKER_SUFFIX = ".sha256-ok"

_CHUNK = 1 << 20


def _marker(target: Path) -> Path:
    return target.with_name(target.name + MARKER_SUFFIX)


def _marker_text(target: Path, sha256: str) -> str:
    # Tied to size and mtime: a file replaced after verification is hashed again.
    st = target.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _write_marker(target: Path, sha256: str) -> None:
    try:  # renamed into place: whatever stood there (a FIFO would block a plain write) is replaced
        write_atomically(_marker(target), _marker_text(target, sha256).encode(), prefix=f".{target.name}.marker.",
                         mode=0o644)
    except OSError:
        pass  # only a speed-up: without it the next start verifies again


def _cached_problem(target: Path, sha256: str, size: int | None, verify: bool, progress: bool) -> str | None:
    """Why the cached file can't be used, or None if it can."""
    actual = target.stat().st_size
    if size is not None and actual != size:
        return f"{actual} bytes instead of {size}"
    if not verify:
        return None
    marker = _marker(target)
    try:
        if read_text(marker, 512, what="verification marker") == _marker_text(target, sha256):
            return None
    except (FileRefused, OSError):  # missing, or not a small regular file: verify the checkpoint again
        pass
    digest = sha256_file(target, progress)
    if digest != sha256:
        return f"sha256 {digest} instead of {sha256}"
    _write_marker(target, sha256)
    return None


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _total_size(resp, have: int) -> int | None:
    """Full file size the server reports, from Content-Range (206) or Content-Length (200)."""
    content_range = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    if length and length.isdigit():
        return int(length) + have
    return None


def _download(url: str, part: Path, size: int | None, progress: bool, timeout: float, fail) -> None:
    """Fetch url into part, resuming from what part already holds. `fail(reason)` builds the error to raise."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        _remove(part)
        have = 0
    if size is not None and have == size:
        return  # a complete .part from an earlier run: only verification and the rename are left
    headers = {"User-Agent": "live-avatar"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return  # nothing left to fetch: the .part is the whole file, verification decides
        raise fail(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise fail(str(getattr(e.reason, "strerror", None) or e.reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise fail(str(e) or type(e).__name__) from None
    with resp:
        resumed = bool(have) and getattr(resp, "status", None) == 206
        if not resumed:
            have = 0  # server ignored the Range request: start over
        total = _total_size(resp, have)
        if size is not None and total is not None and total != size:
            raise fail(f"the server offers {total} bytes, expected {size}: it is not this checkpoint")
        free = shutil.disk_usage(part.parent).free
        need = (total or size or 0) - have
        if need > free:
            raise WeightsError(f"not enough disk space in {part.parent} for the checkpoint: need "
                               f"{need / 2**20:.0f} MB, {free / 2**20:.0f} MB free (set {CACHE_ENV} to another "
                               f"folder)")
        try:
            with open(part, "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=f"downloading {part.name[:-len('.part')]}", disable=not progress) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            got = part.stat().st_size if part.exists() else 0
            raise fail(f"interrupted after {got / 2**20:.1f} MB: {e or type(e).__name__}; run again to resume") \
                from None
    got = part.stat().st_size
    if size is not None and got != size:
        raise fail(f"the connection closed after {got} of {size} bytes; run again to resume")


def cached_path(name: str = "vox-cpk", *, cache=None) -> Path:
    """Where the known checkpoint `name` lives in the cache (downloaded there on first use)."""
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    return folder / KNOWN_CHECKPOINTS[name]["filename"]


def cached_checkpoint(name: str = "vox-cpk", *, cache=None, verify: bool = True) -> tuple[Path, str | None]:
    """(where the known checkpoint `name` lives in the cache, None if it is there and verified, else why not:
    "not downloaded yet" or what is wrong with it). Never downloads or deletes (`live-avatar doctor`)."""
    entry = KNOWN_CHECKPOINTS[name]
    target = cached_path(name, cache=cache)
    if not target.is_file():
        return target, "not downloaded yet"
    return target, _cached_problem(target, entry["sha256"].lower(), entry.get("size"), verify, progress=False)


def resolve_checkpoint(path=None, *, name: str = "vox-cpk", url: str | None = None, cache=None,
                       progress: bool = True, verify: bool = True, sha256: str | None = None,
                       size: int | None = None, timeout: float = 30.0) -> Path:
    """Path of a usable checkpoint.

    path: an explicit file (must exist; used as is). Otherwise the known checkpoint `name` is taken from the cache
    folder (`cache`, default cache_dir()) or downloaded from `url` (default $LIVE_AVATAR_WEIGHTS_URL, else the
    mirror). sha256/size override the known values (tests use small files). Raises WeightsError with a one-line
    explanation of where to put the file when it can't be had.
    """
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.exists():
            raise WeightsError(f"checkpoint not found: {p}")
        if not p.is_file():
            raise WeightsError(f"checkpoint is not a file: {p}")
        return p
    if name not in KNOWN_CHECKPOINTS:
        raise WeightsError(f"unknown checkpoint {name!r} (known: {', '.join(KNOWN_CHECKPOINTS)}); pass a file "
                           f"path with --checkpoint")
    entry = KNOWN_CHECKPOINTS[name]
    expected_sha = (sha256 or entry["sha256"]).lower()
    expected_size = entry.get("size") if size is None else size
    url = url or os.environ.get(URL_ENV) or entry["url"]
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    target = folder / entry["filename"]
    part = target.with_name(target.name + ".part")

    note = ""
    if target.is_file():
        problem = _cached_problem(target, expected_sha, expected_size, verify, progress)
        if problem is None:
            return target
        _remove(target, _marker(target))
        note = f" (the cached copy had {problem} and was removed)"

    size_text = f" ({expected_size / 2**20:.0f} MB)" if expected_size else ""

    def fail(reason: str) -> WeightsError:
        return WeightsError(
            f"cannot download the {name} checkpoint from {url}: {reason}{note}. Get {entry['filename']}{size_text} "
            f"from {url} or {OFFICIAL_SOURCE} and put it at {target} (or pass --checkpoint PATH, or set "
            f"{URL_ENV})")

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the checkpoint cache folder {folder}: {e.strerror or e} (set {CACHE_ENV} "
                           f"to a writable folder, or pass --checkpoint PATH)") from None
    _download(url, part, expected_size, progress, timeout, fail)
    if verify:
        digest = sha256_file(part, progress)
        if digest != expected_sha:
            _remove(part)
            raise fail(f"checksum mismatch (sha256 {digest}, expected {expected_sha}); the download was deleted")
    os.replace(part, target)
    if verify:
        _write_marker(target, expected_sha)
    return target
