"""Loading the official FOMM checkpoints (vox-cpk.pth.tar, vox-adv-cpk.pth.tar) safely and with clear errors."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from .storage import sha256_file

# Published digests, for optional verification (the file name selects the entry).
KNOWN_CHECKPOINTS = {
    "vox-cpk.pth.tar": {
        "sha256": "abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23",
        "size": 728_766_691,
    },
}
NETWORKS = ("kp_detector", "generator")


class CheckpointError(Exception):
    """A checkpoint problem, with a one-line message naming the file and what is wrong."""


def verify_checkpoint(path, expected_sha256: str | None = None, expected_size: int | None = None) -> None:
    """Compare size and sha256 with the expected values, or with the published ones for a known file name."""
    path = Path(path)
    known = KNOWN_CHECKPOINTS.get(path.name, {})
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


def _read(path: Path):
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (interrupted download?)")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unknown file format)")
    try:
        # weights_only: never unpickle arbitrary code from a downloaded file. Works for both the zip and the
        # legacy (torch 1.0) serialisations.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _names_code(str(error)):
            raise CheckpointError(f"{path}: refused: contains Python code/objects, not only tensors (not a plain "
                                  "FOMM checkpoint; it was not unpickled, nothing in it ran)") from None
        raise CheckpointError(f"{path}: file is truncated or corrupt (re-download it)") from None
    except (EOFError, zipfile.BadZipFile, KeyError, IndexError):
        raise CheckpointError(f"{path}: file is truncated or corrupt (re-download it)") from None
    except RuntimeError as error:
        text = str(error)
        if "central directory" in text or "zip archive" in text or "unexpected eof" in text.lower() or "corrupted" in text:
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
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: {network} key '{key}' has shape {tuple(state[key].shape)}, "
                                  f"expected {tuple(value.shape)} (wrong model or config?)")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: {network} has unexpected key '{unexpected[0]}' (wrong model or config?)")
    module.load_state_dict(state, strict=True)


def load_checkpoint(path, kp_detector: torch.nn.Module, generator: torch.nn.Module, *, verify: bool = False,
                    expected_sha256: str | None = None) -> None:
    states = read_checkpoint(path, verify=verify, expected_sha256=expected_sha256)
    load_state(kp_detector, states["kp_detector"], network="kp_detector", path=path)
    load_state(generator, states["generator"], network="generator", path=path)
