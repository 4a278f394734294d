"""int8 behind a quality gate: where the best float engine is slower than real time, `auto` tries the int8
renderer, calibrated on the user's own avatars, and keeps it only if it renders like fp32.

- When: the float engine's measured frame (detect + render) takes longer than REALTIME_MS.
- Gate: on held-out frames (the same avatars under head motion drawn with another seed than calibration's),
  the int8 renderer's frames against the eager fp32 renderer's: the worst frame's PSNR >= GATE_PSNR_DB and SSIM
  >= GATE_SSIM (skimage.metrics.structural_similarity). Both figures are always printed.
- Background: calibration takes about a minute on 2 vCPUs, so it runs in a thread (`Int8Upgrade`) while the float
  engine already serves frames through a `SwitchingEngine`; a passed gate switches between two frames.
- Cache: the decision (figures and verdict) is stored per avatar set, weights, CPU and OpenVINO/NNCF versions
  (precision.DecisionStore); the next start reads it: a pass builds the int8 engine from its cached IR at once,
  a failure keeps the float engine without calibrating again.
- `--precision int8` forces int8: the gate is measured and reported, not enforced.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .common import describe_error, weights_digest
from .precision import DecisionStore, cpu_identity
from .switching import SwitchingEngine

log = logging.getLogger(__name__)

REALTIME_MS = 40.0     # 25 frames/s: a float engine at or under this needs no int8
GATE_PSNR_DB = 38.0
GATE_SSIM = 0.97
HELD_OUT_SEED = 1      # calibration uses openvino_int8.SEED; the gate's motion is drawn apart from it
HELD_OUT_FRAMES = 6
DECISION_KIND = "int8-gate"


@dataclass(frozen=True)
class GateResult:
    psnr_db: float   # worst held-out frame
    ssim: float      # worst held-out frame

    @property
    def passed(self) -> bool:
        return self.psnr_db >= GATE_PSNR_DB and self.ssim >= GATE_SSIM

    def short(self) -> str:
        psnr = "inf" if math.isinf(self.psnr_db) else f"{self.psnr_db:.1f}"
        return f"gate {'passed' if self.passed else 'failed'}: PSNR {psnr} dB, SSIM {self.ssim:.4f} vs fp32"

    def describe(self) -> str:
        psnr = "inf" if math.isinf(self.psnr_db) else f"{self.psnr_db:.1f}"
        return (f"int8 vs fp32 on {HELD_OUT_FRAMES} held-out frames (the avatars under unseen motion): "
                f"PSNR {psnr} dB, SSIM {self.ssim:.4f} (gate >= {GATE_PSNR_DB:g} dB and >= {GATE_SSIM:g}: "
                f"{'passed' if self.passed else 'failed'})")


def frame_quality(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two [1,3,S,S] frames in [0,1]."""
    from skimage.metrics import structural_similarity

    a = reference[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    b = candidate[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    return psnr, float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def measure_gate(reference, candidate, images=None, frames: int = HELD_OUT_FRAMES) -> GateResult:
    """Worst-frame PSNR/SSIM of `candidate.render` against `reference.render` (eager fp32) on held-out motion of
    `images` (default: the generated avatars)."""
    from .openvino_int8 import avatar_motion

    worst_psnr, worst_ssim = math.inf, 1.0
    for state, kp in avatar_motion(reference, images, frames, seed=HELD_OUT_SEED, neutral=False):
        psnr, ssim = frame_quality(reference.render(state, kp).image, candidate.render(state, kp).image)
        worst_psnr, worst_ssim = min(worst_psnr, psnr), min(worst_ssim, ssim)
    return GateResult(worst_psnr, worst_ssim)


def decision_fields(base, images, calibration: str) -> dict:
    import openvino as ov

    try:
        import nncf
        nncf_version = nncf.__version__
    except Exception:  # noqa: BLE001
        nncf_version = "none"
    from .openvino_int8 import calibration_id

    return {**cpu_identity(), "weights": weights_digest(base), "openvino": ov.__version__, "nncf": nncf_version,
            "calibration": calibration, "held_out": f"{calibration_id(images, HELD_OUT_FRAMES)}:{HELD_OUT_SEED}",
            "gate": [GATE_PSNR_DB, GATE_SSIM]}


def _valid(result: dict) -> bool:
    return all(isinstance(result.get(k), (int, float)) for k in ("psnr_db", "ssim"))


def cached_gate(store: DecisionStore, fields: dict) -> GateResult | None:
    found = store.load(DECISION_KIND, fields, _valid)
    return None if found is None else GateResult(float(found["psnr_db"]), float(found["ssim"]))


def save_gate(store: DecisionStore, fields: dict, result: GateResult) -> None:
    store.save(DECISION_KIND, fields, {"psnr_db": result.psnr_db, "ssim": result.ssim, "passed": result.passed})


class Int8Upgrade:
    """Background job: build (calibrate) the int8 engine, gate it against fp32, store the decision and offer the
    engine to `target` if it passed. `state`: 'calibrating', 'passed', 'failed' (gate) or 'error'."""

    def __init__(self, target: SwitchingEngine, *, build: Callable[[], object], gate: Callable[[object], GateResult],
                 save: Callable[[GateResult], None]):
        self.target, self._build, self._gate, self._save = target, build, gate, save
        self.state = "calibrating"
        self.stop = threading.Event()  # set by cancel(); the build checks it between calibration samples
        self.result: GateResult | None = None
        self.notice = ""
        self._thread = threading.Thread(target=self._run, name="int8-calibration", daemon=True)

    def start(self) -> "Int8Upgrade":
        self._thread.start()
        return self

    def run_here(self) -> "Int8Upgrade":
        self._run(lower_priority=False)
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def cancel(self, timeout: float = 60.0) -> bool:
        """Stop the calibration (the app is closing) and wait for the thread: True once it has ended. Nothing
        is cached for a stopped calibration: the next start runs it again."""
        self.stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (it had not started: also True)."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self, lower_priority: bool = True) -> None:
        if lower_priority and hasattr(os, "setpriority"):
            try:  # this thread's own work (encoding, NNCF's Python side) yields to the frame loop
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except OSError:
                pass
        try:
            engine = self._build(self.stop.is_set)
            if self.stop.is_set():
                self.state, self.notice = "stopped", "int8 check stopped"
                return
            result = self.result = self._gate(engine)
            self._save(result)
        except Exception as error:  # noqa: BLE001 - the float engine keeps serving whatever went wrong
            if self.stop.is_set():
                self.state, self.notice = "stopped", "int8 check stopped"
                return
            self.state = "error"
            self.notice = f"int8 renderer not used: calibration failed ({describe_error(error)})"
            log.debug("int8 upgrade failed", exc_info=True)
            self.target.offer(None, self.notice)
            return
        if result.passed:
            self.state = "passed"
            frame_ms = (getattr(engine, "details", None) or {}).get("frame_ms")
            speed = f" ({frame_ms:.0f} ms per frame)" if frame_ms is not None else ""
            self.notice = f"switched to the int8 renderer{speed}: {result.describe()}"
            self.target.offer(engine, self.notice)
        else:
            self.state = "failed"
            self.notice = f"int8 renderer rejected, keeping {self.target.name}: {result.describe()}"
            self.target.offer(None, self.notice)


def consider_int8(float_engine, base, *, build_int8: Callable[[], tuple], images=None, calibration: str,
                  store: DecisionStore | None = None, background: bool = True):
    """(engine, notices) for `auto`: `float_engine` itself where it is fast enough (or int8 cannot be built);
    else the int8 engine where a cached gate passed, the float engine where it failed, and otherwise a
    SwitchingEngine over the float engine with an Int8Upgrade running (in the background, or here when not
    `background`). `build_int8(cancelled=None)` -> (engine, notices) calibrates on `images`."""
    frame_ms = float_engine.details.get("frame_ms")
    if frame_ms is None or frame_ms <= REALTIME_MS:
        return float_engine, []
    try:
        import nncf  # noqa: F401
    except Exception as error:  # noqa: BLE001
        return float_engine, [f"{frame_ms:.0f} ms per frame; the int8 renderer needs nncf ({describe_error(error)})"]
    store = store or DecisionStore()
    fields = decision_fields(base, images, calibration)
    cached = cached_gate(store, fields)
    if cached is not None and not cached.passed:
        return float_engine, [f"int8 renderer rejected at an earlier start, keeping {float_engine.name}: "
                              f"{cached.describe()}"]
    if cached is not None:
        engine, notices = build_int8()
        return engine, notices + [passed_before(engine, cached)]

    switching = SwitchingEngine(float_engine)

    def build(cancelled):
        engine, _ = build_int8(cancelled=cancelled)
        return engine

    def gate(engine):
        result = measure_gate(base, engine, images)
        engine.details["gate"] = result.short()
        return result

    job = Int8Upgrade(switching, build=build, gate=gate, save=lambda result: save_gate(store, fields, result))
    switching.job = job
    if not background:
        job.run_here()
        switching.between_frames()
        return switching.current, [job.notice]
    job.start()
    return switching, [f"{float_engine.name} takes {frame_ms:.0f} ms per frame (real time needs <= "
                       f"{REALTIME_MS:g}): calibrating the int8 renderer on your avatars in the background, frames "
                       "keep coming meanwhile; it takes over only if it passes the quality gate"]


def passed_before(engine, result: GateResult) -> str:
    engine.details["gate"] = result.short()
    return f"int8 renderer (its quality gate passed at an earlier start: {result.describe()})"


def cached_pass(base, images, calibration: str, store: DecisionStore | None = None) -> GateResult | None:
    """The stored verdict for these avatars, weights and CPU where it was a pass (else None): then the float
    engine need not even be built."""
    try:
        import nncf  # noqa: F401
    except Exception:  # noqa: BLE001
        return None
    result = cached_gate(store or DecisionStore(), decision_fields(base, images, calibration))
    return result if result is not None and result.passed else None


def report_forced(engine, base, images=None, *, calibration: str, store: DecisionStore | None = None) -> str:
    """`--precision int8`: the gate's figures (measured once per avatar set and cached), not enforced."""
    store = store or DecisionStore()
    fields = decision_fields(base, images, calibration)
    result = cached_gate(store, fields)
    if result is None:
        result = measure_gate(base, engine, images)
        save_gate(store, fields, result)
    engine.details["gate"] = result.short()
    return f"{result.describe()}; --precision int8 keeps int8 either way"
