"""Remember the neutral pose between runs, so a restart with the same camera and model needs no recalibration.

The file is small JSON (a few KB): human-inspectable, no pickle, and trivially validated. A saved pose is only
meaningful for the same camera and the same keypoint model/config, so both are recorded and checked; anything
unexpected (stale, corrupt, truncated) is ignored with a one-line notice rather than crashing the live loop.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.keypoints import Keypoints
from engines.storage import cache_root as cache_dir, write_atomically

FORMAT_NAME = "live-avatar-calibration"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoadResult:
    """kp: the saved neutral keypoints (float32, CPU) or None. notice: why a file was ignored, else None."""

    kp: Keypoints | None
    notice: str | None = None


def default_calibration_path(camera_id) -> Path:
    """One file per camera; the id is made filename-safe and a short hash keeps distinct ids apart."""
    camera_id = str(camera_id)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", camera_id).strip("._")[:40] or "camera"
    digest = hashlib.sha1(camera_id.encode("utf-8")).hexdigest()[:8]
    return cache_dir() / f"calibration-{safe}-{digest}.json"


# A temp file younger than this may belong to another process saving right now (a save takes milliseconds).
STALE_TEMP_SECONDS = 60.0


def _temp_prefix(path: Path) -> str:
    return path.name + "."


def clean_stale_temp_files(path, *, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the temp files a killed save of `path` left behind (`<name>.<random>.tmp` beside it); never raises.

    save_calibration removes its own temp file on any exception, but SIGKILL or a power cut leave it; this runs
    on start (load_calibration) and before every save, so orphans do not pile up in the cache."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(glob.escape(_temp_prefix(path)) + "*.tmp"))
    except OSError:
        return removed
    now = time.time()
    for candidate in candidates:
        try:
            if now - candidate.stat().st_mtime >= older_than and candidate.is_file():
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass  # gone already, or not ours to remove
    return removed


def save_calibration(path, kp_initial: Keypoints, *, config_hash: str, camera_id: str) -> Path:
    """Write the neutral keypoints atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config_hash": str(config_hash),
        "camera_id": str(camera_id),
        "created": time.time(),
        "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # float32 -> Python float -> JSON repr round-trips exactly.
        "value": kp_initial.value.detach().to("cpu", torch.float32).tolist(),
        "jacobian": kp_initial.jacobian.detach().to("cpu", torch.float32).tolist(),
    }
    data = json.dumps(record, allow_nan=False).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(path)
    write_atomically(path, data, prefix=_temp_prefix(path))
    return path


class _Invalid(Exception):
    pass


def _tensor(data, name: str, tail: tuple[int, ...]) -> torch.Tensor:
    try:
        t = torch.tensor(data, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise _Invalid(f"'{name}' is not a numeric array") from None
    if t.dim() != 1 + len(tail) + 1 or tuple(t.shape[2:]) != tail or t.shape[0] < 1 or t.shape[1] < 1:
        raise _Invalid(f"'{name}' has shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise _Invalid(f"'{name}' holds non-finite numbers")
    return t


# A saved pose is ~2 KB (10 keypoints); anything far larger is not one, and must not cost seconds to parse.
MAX_FILE_BYTES = 64 * 1024


def _read_small_regular_file(path: Path) -> bytes:
    """The file's bytes; OSError for anything that is not a regular file of at most MAX_FILE_BYTES. Opened
    non-blocking and checked through the open descriptor: a FIFO at the path must not block start-up, and a file
    swapped in after a check is still the one checked."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("it is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(f"it is {info.st_size:,} bytes, far larger than a calibration "
                          f"(at most {MAX_FILE_BYTES:,})")
        data = os.read(fd, MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise OSError(f"it is larger than a calibration (at most {MAX_FILE_BYTES:,} bytes)")
        return data
    finally:
        os.close(fd)


def load_calibration(path, *, config_hash: str, camera_id: str, num_kp: int | None = None) -> LoadResult:
    """Read a saved neutral pose; never raises. Missing file -> (None, None); unusable file -> (None, notice).

    num_kp: the model's keypoint count; a pose of another shape (or more than one pose) is ignored with a notice.
    """
    path = Path(path)
    clean_stale_temp_files(path)  # the start of a run: orphans of a killed earlier save go now
    ignore = f"Ignoring saved calibration {path}"
    try:
        raw = _read_small_regular_file(path)
    except FileNotFoundError:
        return LoadResult(None, None)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return LoadResult(None, f"{ignore}: cannot read it ({reason}); please calibrate again.")
    try:
        record = json.loads(raw.decode("utf-8"))
        if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
            raise _Invalid("not a calibration file")
    except (UnicodeDecodeError, ValueError, RecursionError, _Invalid):
        return LoadResult(None, f"{ignore}: the file is corrupt or truncated; please calibrate again.")

    if record.get("version") != FORMAT_VERSION:
        reason = f"it has format version {record.get('version')!r}, this build reads {FORMAT_VERSION}"
    elif record.get("config_hash") != str(config_hash):
        reason = "it was made with a different model/config"
    elif record.get("camera_id") != str(camera_id):
        reason = f"it was made for camera {record.get('camera_id')!r}, not {str(camera_id)!r}"
    else:
        reason = None
    if reason:
        return LoadResult(None, f"{ignore}: {reason}; please calibrate again.")

    try:
        created = record.get("created")
        if not isinstance(created, (int, float)) or not math.isfinite(created):
            raise _Invalid("'created' is missing")
        value = _tensor(record.get("value"), "value", (2,))
        jacobian = _tensor(record.get("jacobian"), "jacobian", (2, 2))
        if value.shape[:2] != jacobian.shape[:2]:
            raise _Invalid("'value' and 'jacobian' disagree on batch/keypoint count")
        expected = (1, num_kp) if num_kp is not None else (1, value.shape[1])
        if tuple(value.shape[:2]) != expected:
            # one neutral pose of the model's keypoints: another shape would fail later, inside normalize
            raise _Invalid(f"it holds {value.shape[0]} pose(s) of {value.shape[1]} keypoints, the model needs "
                           f"{expected[0]} of {expected[1]}")
    except _Invalid as exc:
        return LoadResult(None, f"{ignore}: the file is damaged ({exc}); please calibrate again.")
    return LoadResult(Keypoints(value, jacobian), None)
