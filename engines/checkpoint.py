"""Loading the official FOMM checkpoints (vox-cpk.pth.tar, vox-adv-cpk.pth.tar) safely and with clear errors.

A checkpoint is hostile until checked: no code is unpickled (weights_only), its size and (zip) archive entries are
checked before torch.load expands anything, and every weight must be a dense tensor of the dtype and shape the
model has, with finite values. Each refusal is one CheckpointError line naming the file."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from .storage import sha256_file

# The one table of published checkpoints: verification (by file name), the download (engines/weights.py), the
# cached copy the render server defaults to, the doctor. The official files are on Google Drive, which has no stable
# direct-download link: the URL is a public mirror; the sha256, not the mirror, guarantees the bytes.
DEFAULT_URL = ("https://github.com/graphemecluster/first-order-model-demo/releases/download/checkpoints/"
               "vox-cpk.pth.tar")
KNOWN_CHECKPOINTS = {
    "vox-cpk": {
        "filename": "vox-cpk.pth.tar",
        "sha256": "abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23",
        "size": 728_766_691,
        "url": DEFAULT_URL,
    },
}


def known_by_filename(filename: str) -> dict | None:
    """The published entry whose file is called `filename`, or None."""
    return next((entry for entry in KNOWN_CHECKPOINTS.values() if entry["filename"] == filename), None)
NETWORKS = ("kp_detector", "generator")


class CheckpointError(Exception):
    """A checkpoint problem, with a one-line message naming the file and what is wrong."""


def verify_checkpoint(path, expected_sha256: str | None = None, expected_size: int | None = None) -> None:
    """Compare size and sha256 with the expected values, or with the published ones for a known file name."""
    path = Path(path)
    known = known_by_filename(path.name) or {}
    expected_sha256 = expected_sha256 or known.get("sha256")
    expected_size = expected_size if expected_size is not None else known.get("size")
    if expected_sha256 is None:
        raise CheckpointError(f"{path}: no known sha256 for this file name; pass the expected digest")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise CheckpointError(f"{path}: size {size:,} bytes, expected {expected_size:,} (incomplete download?)")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise CheckpointError(f"{path}: sha256 {actual} does not match the expected {expected_sha256}")


# torch.save writes either a zip archive or (legacy, torch < 1.6) a pickle that starts with this magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    return head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC


# How torch's weights_only unpickler names a refused global; its wording changes between releases ("Unsupported
# global: GLOBAL builtins.print", "unsupported GLOBAL posix.system whose module posix is blocked", "... was not an
# allowed global"), so match lower-cased fragments.
_CODE_MARKERS = ("unsupported global", "unsupported class", "allowed global", "is blocked")


def _names_code(message: str) -> bool:
    text = message.lower()
    return any(marker in text for marker in _CODE_MARKERS)


# What a vox checkpoint can be: the official files are 695 MiB (generator, kp_detector, discriminator and the
# optimisers' state). Anything that is, or unpacks to, more than this is refused before torch.load expands it.
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_PICKLE_BYTES = 64 << 20      # the pickled structure (names, shapes); the official one is a few hundred KB
MAX_ARCHIVE_ENTRIES = 100_000    # one entry per tensor storage: a few thousand in the official files


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 10 << 20 else f"{n / 2**20:,.0f} MiB"


def _check_archive(path: Path, size: int) -> None:
    """Refuse, from sizes alone, what cannot be a vox checkpoint: a file above the limit, or a zip archive whose
    entries are compressed (torch.save never compresses: a 2 MB zip bomb declares gigabytes) or declare more than
    the limit. The legacy serialisation reads each storage from the file itself, so its file size bounds it."""
    refused = f"{path}: refused before unpacking it:"
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{refused} {_mib(size)} is larger than any FOMM vox checkpoint "
                              f"(the official ones are 695 MiB; limit {_mib(MAX_CHECKPOINT_BYTES)})")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"{path}: file is truncated or corrupt (re-download it)") from None
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise CheckpointError(f"{refused} {len(entries):,} archive entries (a vox checkpoint has a few thousand)")
    packed = [e for e in entries if e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size]
    declared = sum(e.file_size for e in entries)
    if packed:
        raise CheckpointError(f"{refused} {len(packed)} compressed archive entries declaring {_mib(declared)} in "
                              f"a {_mib(size)} file (torch.save never compresses; a zip bomb?)")
    if declared > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{refused} its entries declare {_mib(declared)}, more than any FOMM vox checkpoint")
    pickles = [e for e in entries if e.filename.endswith(".pkl") and e.file_size > MAX_PICKLE_BYTES]
    if pickles:
        raise CheckpointError(f"{refused} its pickled structure {pickles[0].filename} declares "
                              f"{_mib(pickles[0].file_size)} (limit {_mib(MAX_PICKLE_BYTES)})")


def _read(path: Path):
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: file is empty (interrupted download?)")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unknown file format)")
    _check_archive(path, size)
    try:
        # weights_only: never unpickle arbitrary code from a downloaded file. Works for both the zip and the
        # legacy (torch 1.0) serialisations; zip archives are memory-mapped (their storages are read on use).
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if _names_code(str(error)):
            raise CheckpointError(f"{path}: refused: contains Python code/objects, not only tensors (not a plain "
                                  "FOMM checkpoint; it was not unpickled, nothing in it ran)") from None
        raise CheckpointError(f"{path}: file is truncated or corrupt (re-download it)") from None
    except (EOFError, zipfile.BadZipFile, KeyError, IndexError):
        raise CheckpointError(f"{path}: file is truncated or corrupt (re-download it)") from None
    except RuntimeError as error:
        text = str(error)
        if ("central directory" in text or "zip archive" in text or "unexpected eof" in text.lower()
                or "corrupted" in text):
            raise CheckpointError(f"{path}: file is truncated or corrupt (re-download it)") from None
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({text.splitlines()[0]})") from None
    except (ValueError, TypeError, UnicodeDecodeError, OSError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(error).__name__})") from None


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict:
    """Checkpoints saved from DataParallel wrappers carry a `module.` prefix; the official ones do not."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def read_checkpoint(path, *, verify: bool = False, expected_sha256: str | None = None) -> dict:
    """Return {'kp_detector': state_dict, 'generator': state_dict}; other entries (discriminator, optimisers,
    epoch) are ignored."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    if verify or expected_sha256:
        verify_checkpoint(path, expected_sha256)
    content = _read(path)
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: not a FOMM checkpoint (top level is {type(content).__name__}, "
                              "expected a dict with 'generator' and 'kp_detector')")
    missing = [name for name in NETWORKS if name not in content]
    if missing:
        raise CheckpointError(f"{path}: not a FOMM checkpoint (missing {' and '.join(repr(m) for m in missing)}; "
                              f"has {sorted(map(str, content))[:6]})")
    result = {}
    for name in NETWORKS:
        if not isinstance(content[name], Mapping):
            raise CheckpointError(f"{path}: entry '{name}' is not a state_dict")
        result[name] = _strip_prefix(content[name])
    return result


def load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, network: str, path) -> None:
    """Strict load with a one-line error naming the first differing key."""
    expected = module.state_dict()
    state = dict(state)
    for key, value in expected.items():
        # BatchNorm's counter only matters for training; some exports drop it.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(f"{path}: {network} is missing key '{key}' (wrong model or config?)")
        if not isinstance(state[key], torch.Tensor):
            raise CheckpointError(f"{path}: {network} key '{key}' is not a tensor")
        tensor = state[key]
        if tensor.layout != torch.strided or tensor.dtype != value.dtype:
            # the official checkpoints hold dense float32 weights (and int64 BatchNorm counters): a sparse,
            # complex, bool or integer weight would be cast silently or fail deep inside torch
            kind = f"{tensor.dtype}" if tensor.layout == torch.strided else f"{tensor.layout} {tensor.dtype}"
            raise CheckpointError(f"{path}: {network} key '{key}' is a {kind} tensor, expected a dense "
                                  f"{value.dtype} one like the official checkpoints")
        if tuple(tensor.shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: {network} key '{key}' has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(value.shape)} (wrong model or config?)")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: {network} key '{key}' holds {bad} non-finite values (NaN or inf): "
                                  "the file is damaged or not a trained model")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: {network} has unexpected key '{unexpected[0]}' (wrong model or config?)")
    module.load_state_dict(state, strict=True)


def load_checkpoint(path, kp_detector: torch.nn.Module, generator: torch.nn.Module, *, verify: bool = False,
                    expected_sha256: str | None = None) -> None:
    states = read_checkpoint(path, verify=verify, expected_sha256=expected_sha256)
    load_state(kp_detector, states["kp_detector"], network="kp_detector", path=path)
    load_state(generator, states["generator"], network="generator", path=path)
