"""Deterministic FOMM weights generated from state_dict key names, so tests and demos need no 240 MB file.

Implements the rules published with the golden cases (shared/reference/deterministic_weights.py): each tensor is
drawn from numpy's PCG64 seeded with crc32(salt + key). A test checks this module against that reference bit for
bit, so the golden outputs of the original implementation apply to weights built here.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np
import torch


def is_config_buffer(key: str) -> bool:
    """Anti-alias blur kernels are fixed by the config, never generated."""
    return key.endswith("down.weight")


def _generator(salt: str, key: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(zlib.crc32((salt + key).encode("utf-8"))))


def _fan_in(shape) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def _draw(key: str, shape, shapes: Mapping[str, tuple], batchnorm_prefixes: set, net: str, salt: str):
    prefix, _, leaf = key.rpartition(".")
    prefix += "."
    rng = _generator(salt, key)
    if prefix in batchnorm_prefixes:
        if leaf in ("weight", "running_var"):
            values = rng.uniform(0.75, 1.25, shape)
        else:
            values = rng.normal(0.0, 0.1, shape)
    elif leaf == "weight":
        values = rng.normal(0.0, 1.0, shape) / np.sqrt(3.0 * _fan_in(shape))
    elif leaf == "bias":
        weight_shape = shapes.get(prefix + "weight")
        values = rng.uniform(-1.0, 1.0, shape) / np.sqrt(_fan_in(weight_shape) if weight_shape else 1)
    else:
        raise KeyError(f"no generation rule for {key}")
    # Rescaled layers, so that heatmaps are peaky and every path of the network does real work.
    if net == "kp_detector":
        if key == "kp.weight":
            values = values * 10.0
        elif key == "jacobian.weight":
            values = rng.normal(0.0, 0.01, shape)
        elif key == "jacobian.bias":
            values = np.tile([1.0, 0.0, 0.0, 1.0], shape[0] // 4) + rng.normal(0.0, 0.05, shape)
    elif net == "generator" and key in ("dense_motion_network.mask.weight",
                                         "dense_motion_network.occlusion.weight", "final.weight"):
        values = values * 5.0
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def deterministic_state_dict(reference: Mapping, net: str, salt: str = "") -> dict:
    """reference: a state_dict (or {key: shape}); net: 'kp_detector' or 'generator'. Config buffers are left out."""
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in reference.items()}
    batchnorm_prefixes = {k[: -len("running_mean")] for k in shapes if k.endswith("running_mean")}
    keys = [key for key in shapes if not is_config_buffer(key)]
    drawn = [key for key in keys if not key.endswith("num_batches_tracked")]
    # Each tensor has its own generator, and numpy draws without the GIL: on threads the ~60 M values take about
    # half the time on two cores (every start with --deterministic-weights, every test process), values unchanged.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        values = dict(zip(drawn, pool.map(lambda key: _draw(key, shapes[key], shapes, batchnorm_prefixes, net, salt),
                                          drawn)))
    return {key: values[key] if key in values else torch.zeros((), dtype=torch.int64) for key in keys}


def load_deterministic_weights(module: torch.nn.Module, net: str, salt: str = "") -> None:
    """Fill `module` in place; only the config buffers keep their own values."""
    state = deterministic_state_dict(module.state_dict(), net, salt)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or any(not is_config_buffer(k) for k in missing):
        raise RuntimeError(f"deterministic weights do not fit {net}: missing={missing} unexpected={unexpected}")
