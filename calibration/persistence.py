"""Remember the neutral pose between runs, so a restart with the same camera and model needs no recalibration.

The file is small JSON (a few KB): human-inspectable, no pickle, and trivially validated. A saved pose is only
meaningful for the same camera and the same keypoint model/config, so both are recorded and checked; anything
unexpected (stale, corrupt, truncated) is ignored with a one-line notice rather than crashing the live loop.

The file is hostile input like every small file (engines/files.py: a regular file, at most MAX_FILE_BYTES, opened
without blocking, JSON nesting counted before parsing), and what it holds must be one pose of exactly the model's
keypoints ([1, K, 2] values inside the frame, [1, K, 2, 2] invertible jacobians): `num_kp` is required, so no
caller can load a pose without the shape check - a pose of another K once loaded and crashed the loop at its
first frame ("The size of tensor a (10) must match the size of tensor b (5)").
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.files import MAX_JSON_DEPTH, FileMissing, FileRefused, nesting_depth, read_bounded
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


# What a pose of the keypoint detector can hold: values are heatmap-weighted means of the [-1, 1] grid (a little
# slack for half-precision engines); jacobians are inverted by relative motion, so they must be invertible, and
# are of the order of 1 (the detector starts them at the identity).
MAX_VALUE = 1.01
MAX_JACOBIAN = 1e3
MIN_JACOBIAN_DET = 1e-6


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


def _in_range(value: torch.Tensor, jacobian: torch.Tensor) -> None:
    if float(value.abs().max()) > MAX_VALUE:
        raise _Invalid(f"'value' holds keypoints outside the frame (|v| up to {float(value.abs().max()):.3g})")
    if float(jacobian.abs().max()) > MAX_JACOBIAN:
        raise _Invalid(f"'jacobian' holds entries up to {float(jacobian.abs().max()):.3g}")
    if float(torch.linalg.det(jacobian.double()).abs().min()) < MIN_JACOBIAN_DET:
        raise _Invalid("'jacobian' holds a matrix that cannot be inverted")


# A saved pose is ~2 KB (10 keypoints); anything far larger is not one, and must not cost seconds to parse.
MAX_FILE_BYTES = 64 * 1024


def load_calibration(path, *, config_hash: str, camera_id: str, num_kp: int) -> LoadResult:
    """Read a saved neutral pose; never raises. Missing file -> (None, None); unusable file -> (None, notice).

    num_kp: the model's keypoint count (required: there is no pose without the model to check it against); a pose
    of another shape (or more than one pose), or values no detector gives, are ignored with a notice.
    """
    path = Path(path)
    clean_stale_temp_files(path)  # the start of a run: orphans of a killed earlier save go now
    ignore = f"Ignoring saved calibration {path}"
    try:
        raw = read_bounded(path, MAX_FILE_BYTES, what="calibration file")
    except FileMissing:
        return LoadResult(None, None)
    except FileRefused as exc:
        return LoadResult(None, f"Ignoring the saved calibration: {exc}; please calibrate again.")
    try:
        text = raw.decode("utf-8")
        if nesting_depth(text) > MAX_JSON_DEPTH:  # json.loads would recurse once per bracket
            raise _Invalid("nested too deeply")
        record = json.loads(text)
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
        if tuple(value.shape[:2]) != (1, int(num_kp)):
            # one neutral pose of the model's keypoints: another shape would fail later, inside normalize
            raise _Invalid(f"it holds {value.shape[0]} pose(s) of {value.shape[1]} keypoints, the model needs "
                           f"1 of {num_kp}")
        _in_range(value, jacobian)
    except _Invalid as exc:
        return LoadResult(None, f"{ignore}: the file is damaged ({exc}); please calibrate again.")
    return LoadResult(Keypoints(value, jacobian), None)
