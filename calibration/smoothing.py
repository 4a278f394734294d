"""Anti-jitter: One-Euro filtering of the driving keypoints (Casiez, Roussel & Vogel, CHI 2012).

The keypoint detector jitters by a pixel or two on a still face, and that jitter makes the avatar shimmer. A fixed
low-pass would remove it but make real head motion lag. The One-Euro filter is a low-pass whose cutoff rises with
the signal's speed: heavy smoothing when still, little lag when moving.

    cutoff = min_cutoff + beta * |smoothed derivative|        (per element, in Hz)
    x_hat  = x_hat_prev + a * (x - x_hat_prev),  a = 1 / (1 + tau / dt),  tau = 1 / (2 pi cutoff)

Defaults (for FOMM keypoints in normalised -1..1 coordinates at 25-30 fps, tuned on synthetic jitter of ~0.003
plus head motion of ~0.5 units/s):
- min_cutoff = 1.0 Hz: at rest each frame moves the estimate ~17% of the way (30 fps), cutting frame-to-frame
  jitter variance ~30x. Lower = steadier at rest but slower to settle; higher = more residual jitter.
- beta = 20.0 (Hz per normalised unit/s): at 0.5 units/s the cutoff rises to ~11 Hz, so a steady ramp lags by
  only ~0.006 (< 1 px at 256); a 1 Hz nod of amplitude 0.15 lags by at most ~0.025. Higher = less lag in motion,
  more jitter let through while moving.
- d_cutoff = 1.0 Hz (the paper's value): smoothing of the speed estimate, so jitter alone does not open the filter.
The jacobian uses the same parameters (its entries are O(1), like the values' range).
"""
from __future__ import annotations

import math

import torch

from engines.keypoints import Keypoints

DEFAULT_MIN_CUTOFF = 1.0
DEFAULT_BETA = 20.0
DEFAULT_D_CUTOFF = 1.0


def _smoothing_factor(cutoff, dt: float):
    # Works for Python floats, numpy arrays and torch tensors alike (cutoff may be per element).
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def _copy(x):
    return x.clone() if isinstance(x, torch.Tensor) else x.copy() if hasattr(x, "copy") else x


class OneEuroFilter:
    """Elementwise One-Euro filter for a numpy array, torch tensor or float; output has the input's type."""

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF):
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("need min_cutoff > 0, d_cutoff > 0 and beta >= 0")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the history; the next sample passes through unchanged."""
        self._x = None
        self._dx = None
        self._t = None

    def __call__(self, x, t: float):
        """Filter sample x taken at time t (seconds, increasing)."""
        if self._x is None or getattr(self._x, "shape", None) != getattr(x, "shape", None):
            # First sample (or the shape changed, e.g. a new model): nothing to smooth against yet.
            self._x, self._dx, self._t = _copy(x), x * 0, float(t)
            return _copy(x)
        dt = float(t) - self._t
        if dt <= 0:
            # Repeated/out-of-order timestamp: no time passed, so keep the current estimate.
            return _copy(self._x)
        dx = (x - self._x) / dt
        self._dx = self._dx + _smoothing_factor(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * abs(self._dx)
        self._x = self._x + _smoothing_factor(cutoff, dt) * (x - self._x)
        self._t = float(t)
        return _copy(self._x)


class KeypointSmoother:
    """One-Euro filtering of Keypoints, value and jacobian each with its own filter state."""

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF, enabled: bool = True):
        self.enabled = enabled
        self._value = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self._jacobian = OneEuroFilter(min_cutoff, beta, d_cutoff)

    def __call__(self, kp: Keypoints, t: float) -> Keypoints:
        if not self.enabled:
            return kp
        return Keypoints(self._value(kp.value.detach(), t), self._jacobian(kp.jacobian.detach(), t))

    def reset(self) -> None:
        """Call on camera/avatar change or after tracking loss so stale history is not blended in."""
        self._value.reset()
        self._jacobian.reset()
