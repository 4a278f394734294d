"""A delay line whose delay glides to a target: audio written at one rate, read at another, never clicking.

Audio is written into a ring buffer by the input callback and read by the output callback through a fractional
read head. The head advances by `in_rate / out_rate` input samples per output sample (so a sample-rate mismatch is
resampled) times `1 + speed`, where `speed` steers the delay towards the target: the delay changes by playing a
little faster or slower (at most `max_speed`, e.g. 5 %: a slight pitch change while it glides), never by a jump.
The same loop absorbs the drift between two sound cards' clocks. Samples between ring positions come from a
4-point cubic (Catmull-Rom) interpolation.

When the read head catches up with the write head (the input stalled) the output is silence; once audio comes
again the head restarts at the target delay (in step with the clock: audio that arrives late is played late by
the same delay, never twice) and fades in, so an underrun is a gap, not a click or a lasting shift.

When the input ends for good (`end_input`: the pass-through is closing) the output goes on at the normal speed
until everything written has played - the last words before quitting come out too - and then is silent;
`unplayed()` says how much is left.

Pure numpy and thread-safe (one lock around the ring), so the audio callbacks can call it and tests can drive it
with known signals; `now` arguments are the callers' clock in seconds, used to place the write head between two
input callbacks (without them the write head is where the last block ended).
"""
from __future__ import annotations

import threading

import numpy as np

_GUARD = 2  # samples after the read position the cubic interpolation needs


class DelayLine:
    def __init__(self, channels: int, in_rate: float, out_rate: float | None = None, *, max_delay: float = 4.0,
                 max_speed: float = 0.05, time_constant: float = 0.3, speed_ramp: float = 0.25,
                 fade: float = 0.01):
        if channels < 1 or in_rate <= 0 or (out_rate is not None and out_rate <= 0):
            raise ValueError(f"invalid delay line format: {channels} channels, {in_rate} -> {out_rate} Hz")
        self.channels = int(channels)
        self.in_rate = float(in_rate)
        self.out_rate = float(out_rate or in_rate)
        self.max_delay = float(max_delay)
        self.max_speed = float(max_speed)          # largest relative speed change while gliding
        self.time_constant = float(time_constant)  # seconds: speed = delay error / time_constant (then capped)
        self.speed_ramp = float(speed_ramp)        # seconds for the speed to go from 0 to max_speed
        self.fade = float(fade)                    # seconds of fade-in after silence
        self._size = int(self.max_delay * self.in_rate) + int(self.in_rate) + 4 * _GUARD  # + 1 s of blocks
        self._ring = np.zeros((self._size, self.channels), np.float32)
        self._lock = threading.Lock()
        self._written = 0            # input samples written so far (the write head)
        self._written_at = None      # `now` of the last write
        self._read = None            # fractional read head in input samples; None: not started / after underrun
        self._played = -np.inf       # input position played up to (where a restart may begin)
        self._resume_after = -1      # after an underrun: restart once more than this was written
        self._speed = 0.0
        self._gain = 0.0             # fade-in gain, ramps to 1
        self._last_delay: float | None = None
        self._ended = False          # end_input(): no more input, play out what is there
        self.target: float | None = None  # seconds; None: silence until a target is known
        self.underruns = 0

    # --- configuration -----------------------------------------------------------------------------------
    def set_target(self, seconds: float | None) -> None:
        """The delay to glide to (clipped to 0 .. max_delay); None outputs silence."""
        self.target = None if seconds is None else min(max(float(seconds), 0.0), self.max_delay)

    def end_input(self) -> None:
        """No more input comes: play what was written at the normal speed, then silence (not an underrun)."""
        with self._lock:
            self._ended = True

    def unplayed(self) -> float:
        """Seconds of input written but not played yet (0 while silent)."""
        with self._lock:
            return 0.0 if self._read is None else max(0.0, (self._written - self._read) / self.in_rate)

    # --- the two ends --------------------------------------------------------------------------------------
    def write(self, block: np.ndarray, now: float | None = None) -> None:
        """Append input samples (frames x channels, or 1-D for one channel)."""
        data = np.asarray(block, np.float32)
        if data.ndim == 1:
            data = data[:, None]
        if data.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {data.shape[1]}")
        data = data[-(self._size - 4 * _GUARD):]  # a block longer than the ring keeps its newest part
        n = len(data)
        with self._lock:
            start = self._written % self._size
            first = min(n, self._size - start)
            self._ring[start:start + first] = data[:first]
            self._ring[:n - first] = data[first:]
            self._written += n
            self._written_at = now

    def delay(self, now: float | None = None) -> float | None:
        """The delay in use (seconds from the write head to the read head at the start of a read; `now`: the
        next read's), None while silent. Between reads the output callback uses the last read's."""
        with self._lock:
            return None if self._read is None else (self._head(now) - self._read) / self.in_rate

    @property
    def last_delay(self) -> float | None:
        """The delay the last read played at (None while silent)."""
        return self._last_delay

    def read(self, frames: int, now: float | None = None) -> np.ndarray:
        """The next `frames` output samples (frames x channels, float32)."""
        out = np.zeros((frames, self.channels), np.float32)
        if frames <= 0:
            return out
        with self._lock:
            if self.target is None:
                self._read = self._last_delay = None
                return out
            head = self._head(now)
            ratio = self.in_rate / self.out_rate
            # the shortest delay that works: one output block must lie between the read and the write head
            target = max(self.target, (frames * ratio + 2 * _GUARD) / self.in_rate)
            if self._read is None:
                if self._written <= self._resume_after:
                    return out  # still nothing new after an underrun
                self._start(head, target)
            self._last_delay = (head - self._read) / self.in_rate
            error = self._last_delay - target  # > 0: too much delay, read faster
            # after the input ended the delay shrinks as the rest plays: at the normal speed, not slowed down
            wanted = 0.0 if self._ended else float(np.clip(error / self.time_constant, -self.max_speed,
                                                           self.max_speed))
            limit = self.max_speed * frames / self.out_rate / self.speed_ramp if self.speed_ramp > 0 else np.inf
            speed = self._speed + float(np.clip(wanted - self._speed, -limit, limit))
            # the speed changes linearly across the block: the pitch glides instead of stepping
            speeds = self._speed + (speed - self._speed) * np.arange(1, frames + 1, dtype=np.float64) / frames
            steps = np.cumsum(ratio * (1.0 + speeds))
            positions = self._read + np.concatenate(([0.0], steps[:-1]))
            self._speed = speed
            available = self._written - _GUARD  # the interpolation needs two samples past the position
            missing = positions > available - 1
            good = frames if not missing.any() else int(np.argmax(missing))  # samples before the first missing
            # silent: what was played already (after a restart) or is no longer in the ring
            oldest = max(self._played, self._written - self._size + 2 * _GUARD)
            quiet = int(np.searchsorted(positions[:good], oldest, side="right"))
            if good > quiet:
                out[quiet:good] = self._interpolate(positions[quiet:good]) * self._gains(good - quiet)
                self._played = float(positions[good - 1])
            else:
                self._gain = 0.0  # fade in when the sound comes
            if good < frames:  # underrun: silence, and restart at the target delay once new audio comes
                self.underruns += not self._ended  # the end of the input is not a glitch
                self._resume_after = self._written
                self._read = self._last_delay = None
                return out
            self._read = self._read + steps[-1]
            return out

    # --- internals (lock held) -----------------------------------------------------------------------------
    def _head(self, now: float | None) -> float:
        """The write head now: where the last block ended, moved on by the time since it was written (at most
        half a second: an input that stopped must not look like one that goes on)."""
        if now is None or self._written_at is None or self._ended:
            return float(self._written)
        return self._written + min(max(now - self._written_at, 0.0), 0.5) * self.in_rate

    def _start(self, head: float, target: float) -> None:
        # at the target delay, in step with the clock; what was played before an underrun is not played again
        self._read = head - target * self.in_rate
        self._speed = 0.0
        self._gain = 0.0

    def _gains(self, frames: int) -> np.ndarray:
        step = 1.0 / max(1.0, self.fade * self.out_rate)
        gains = np.minimum(1.0, self._gain + step * np.arange(1, frames + 1, dtype=np.float32))
        self._gain = float(gains[-1])
        return gains[:, None]

    def _interpolate(self, positions: np.ndarray) -> np.ndarray:
        base = np.floor(positions).astype(np.int64)
        t = (positions - base).astype(np.float32)[:, None]
        p0, p1, p2, p3 = (self._ring[(base + k) % self._size] for k in (-1, 0, 1, 2))
        # Catmull-Rom: passes through the samples, continuous first derivative
        return p1 + 0.5 * t * (p2 - p0 + t * (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3 + t * (3.0 * (p1 - p2) + p3 - p0)))
