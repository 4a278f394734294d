"""int8 behind a quality gate: where the best float engine is slower than real time, `auto` tries the int8
renderer, calibrated on the user's own avatars, and keeps it only if it renders like fp32.

- When: the float engine's measured frame (detect + render) takes longer than REALTIME_MS.
- Gate: on held-out frames (the same avatars under head motion drawn with another seed than calibration's),
  the int8 renderer's frames against the eager fp32 renderer's: the worst frame's PSNR >= GATE_PSNR_DB and SSIM
  >= GATE_SSIM (skimage.metrics.structural_similarity). Both figures are always printed.
- Background: calibration takes about a minute on 2 vCPUs, so `check_int8` runs in a child process
  (engines/backends/int8_worker.py, through background.py) while the float engine already serves frames through a
  `SwitchingEngine`; a passed gate builds the int8 engine from the IR the child cached and switches between two
  frames. Closing the engine kills the child at once (nothing is cached then: the next start checks again).
- Cache: the decision (figures and verdict) is stored per avatar set, weights, CPU and OpenVINO/NNCF versions
  (engines/cache.py DecisionStore, figures range-checked on read); the planner reads it: a pass puts the int8
  engine first, a failure keeps the float engine without calibrating again.
- Speed: int8 takes over only if its frame is also faster than the float engine's (both timed at start, by
  at least FASTER_THAN); one that passes the gate but is not faster is kept out and that is stored too
  (SPEED_KIND), so the next start does not build it first.
- `--precision int8` forces int8: the gate is measured and reported, not enforced.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..cache import DecisionStore, number_within
from ..protocol import GateVerdict
from .background import Cancel, Job, Stopped, run_child
from .common import describe_error, weights_digest
from .precision import cpu_identity
from .switching import SwitchingEngine

log = logging.getLogger(__name__)

REALTIME_MS = 40.0     # 25 frames/s: a float engine at or under this needs no int8
GATE_PSNR_DB = 38.0
GATE_SSIM = 0.97
HELD_OUT_SEED = 1      # calibration uses openvino_int8.SEED; the gate's motion is drawn apart from it
HELD_OUT_FRAMES = 6
DECISION_KIND = "int8-gate"
SPEED_KIND = "int8-speed"
FASTER_THAN = 0.95     # int8's frame must take at most this share of the float engine's to be worth switching to


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

    def verdict(self, *, enforced: bool = True, earlier: bool = False) -> GateVerdict:
        """For the engine's report."""
        return GateVerdict(self.psnr_db, self.ssim, self.passed, enforced=enforced, earlier=earlier)


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

    from .openvino_int8 import calibration_id, nncf_version

    return {**cpu_identity(), "weights": weights_digest(base), "openvino": ov.__version__,
            "nncf": nncf_version() or "none",
            "calibration": calibration, "held_out": f"{calibration_id(images, HELD_OUT_FRAMES)}:{HELD_OUT_SEED}",
            "gate": [GATE_PSNR_DB, GATE_SSIM]}


def _valid(result: dict) -> bool:
    """Figures a real gate can produce (PSNR of frames in [0,1] is >= 0 dB, inf when equal; SSIM within [-1, 1]),
    and a verdict that follows from them: anything else is a damaged or forged record."""
    psnr, ssim = result.get("psnr_db"), result.get("ssim")
    if not (number_within(psnr, 0.0) and number_within(ssim, -1.0, 1.0)):
        return False
    return result.get("passed") == GateResult(float(psnr), float(ssim)).passed


def cached_gate(store: DecisionStore, fields: dict) -> GateResult | None:
    found = store.load(DECISION_KIND, fields, _valid)
    return None if found is None else GateResult(float(found["psnr_db"]), float(found["ssim"]))


def save_gate(store: DecisionStore, fields: dict, result: GateResult) -> None:
    store.save(DECISION_KIND, fields, {"psnr_db": result.psnr_db, "ssim": result.ssim, "passed": result.passed})


def worth_switching(int8_ms: float, float_ms: float) -> bool:
    """Whether an int8 frame of `int8_ms` is enough faster than the float engine's `float_ms` to take over."""
    return int8_ms <= FASTER_THAN * float_ms


def _valid_speed(result: dict) -> bool:
    return (number_within(result.get("int8_ms"), 0.0) and number_within(result.get("float_ms"), 0.0)
            and result.get("faster") == worth_switching(result["int8_ms"], result["float_ms"]))


def slower_before(store: DecisionStore, fields: dict) -> dict | None:
    """The stored timing of an int8 renderer that passed its gate but was not faster here, or None."""
    found = store.load(SPEED_KIND, fields, _valid_speed)
    return found if found is not None and not found["faster"] else None


def save_speed(store: DecisionStore, fields: dict, int8_ms: float, float_ms: float) -> None:
    store.save(SPEED_KIND, fields, {"int8_ms": int8_ms, "float_ms": float_ms,
                                    "faster": worth_switching(int8_ms, float_ms)})


def nncf_problem() -> str | None:
    """Why the int8 renderer cannot be built here (nncf is not installed), or None."""
    from .openvino_int8 import nncf_version

    return None if nncf_version() is not None else "the int8 renderer needs nncf, which is not installed"


def cached_verdict(store: DecisionStore, fields: dict) -> GateResult | None:
    """The stored verdict for these decision fields (avatars, weights, CPU; None: none, or int8 cannot be built
    here)."""
    if nncf_problem() is not None:
        return None
    return cached_gate(store, fields)


def check_int8(base, images, *, build_int8: Callable, calibration: str, store: DecisionStore,
               cancelled: Callable[[], bool] | None = None):
    """(int8 engine, gate result): calibrate (build_int8(cancelled) -> (engine, notices)), gate against eager fp32,
    store the verdict. What the background child runs, and a foreground check runs here."""
    engine, _ = build_int8(cancelled)
    result = measure_gate(base, engine, images)
    save_gate(store, decision_fields(base, images, calibration), result)
    return engine, result


WORKER = "engines.backends.int8_worker"


class Int8Upgrade(Job):
    """Background job: `check(cancel)` -> GateResult (the calibration and gate, in a child process: `in_child`),
    then, if it passed, `build()` -> the int8 engine (from the IR the check cached), offered to `target` between
    two frames. `state`: 'calibrating', 'passed', 'failed' (gate), 'error' or 'stopped'."""

    def __init__(self, target: SwitchingEngine, *, check: Callable[[Cancel], GateResult],
                 build: Callable[[], object], why: str = "auto: int8 passed the quality gate",
                 timed: Callable[[float, float], None] = lambda int8_ms, float_ms: None,
                 compare: Callable[[object, object], tuple] | None = None):
        super().__init__(self._run, "int8-check")
        self.target, self._check, self._build, self._why, self._timed = target, check, build, why, timed
        self._compare = compare or side_by_side  # (int8 engine, float engine) -> (int8 ms, float ms)
        self.state = "calibrating"
        self.result: GateResult | None = None
        self.notice = ""

    def status(self) -> str | None:
        """What the engine's report says while no verdict switched it: None once decided."""
        return {"calibrating": "running in the background",
                "stopped": "stopped before its verdict (it runs again at the next start)"}.get(self.state)

    def _run(self, cancel: Cancel) -> None:
        try:
            result = self.result = self._check(cancel)
            engine = self._build() if result.passed and not cancel.is_set() else None
            if cancel.is_set():
                raise Stopped("stopped")
        except Stopped:
            self.state, self.notice = "stopped", "int8 check stopped"
            return
        except Exception as error:  # noqa: BLE001 - the float engine keeps serving whatever went wrong
            if cancel.is_set():
                self.state, self.notice = "stopped", "int8 check stopped"
                return
            self.state = "error"
            self.notice = f"int8 renderer not used: calibration failed ({describe_error(error)})"
            log.debug("int8 upgrade failed", exc_info=True)
            self.target.offer(None, self.notice)
            return
        if engine is not None:
            int8_ms, float_ms = self._compare(engine, self.target.current)
            if int8_ms is not None and float_ms is not None:
                self._timed(int8_ms, float_ms)
                if not worth_switching(int8_ms, float_ms):  # as good, but no faster here: nothing to gain
                    self.state = "slower"
                    self.notice = (f"int8 renderer passed the quality gate but is not faster here ({int8_ms:.0f} "
                                   f"ms per frame vs {float_ms:.0f}): keeping {self.target.name}")
                    engine.close()
                    self.target.offer(None, self.notice)
                    return
            self.state = "passed"
            engine.amend_report(gate=result.verdict(), why=self._why)
            speed = f" ({int8_ms:.0f} ms per frame)" if int8_ms is not None else ""
            self.notice = f"switched to the int8 renderer{speed}: {result.describe()}"
            self.target.offer(engine, self.notice)
        else:
            self.state = "failed"
            self.notice = f"int8 renderer rejected, keeping {self.target.name}: {result.describe()}"
            self.target.offer(None, self.notice)


def side_by_side(int8_engine, float_engine, rounds: int = 3) -> tuple[float | None, float | None]:
    """(int8 ms, float ms) per frame (detect + render), timed in turns at the same moment: whatever else runs then
    (the live loop itself, on a small CPU) slows both alike. (None, None) when either cannot be timed."""
    from .precision import interleaved_minimum

    try:
        generator = torch.Generator().manual_seed(1)
        avatar, frame = (torch.rand(1, 3, float_engine.image_size, float_engine.image_size, generator=generator)
                         for _ in range(2))
        runs = {name: (lambda e=engine, s=engine.encode(avatar): e.render(s, e.detect(frame)))
                for name, engine in (("int8", int8_engine), ("float", float_engine))}
        best = interleaved_minimum(runs, rounds)
    except Exception:  # noqa: BLE001 - no timing is no reason to switch either way: the report's figures then
        log.debug("side-by-side timing failed", exc_info=True)
        return int8_engine.report().frame_ms, float_engine.report().frame_ms
    return best["int8"], best["float"]


def in_child(params: dict, images) -> Callable[[Cancel], GateResult]:
    """The check as a child process (int8_worker.py): `params` name the weights (checkpoint or generated,
    align_corners), cache folder, decision folder and calibration samples; `images` are written for it."""
    def write_images(path):
        np.save(path, np.stack([image.detach().cpu().float().numpy() for image in images]), allow_pickle=False)

    def check(cancel: Cancel) -> GateResult:
        result = run_child(WORKER, {**params, "images": images is not None}, cancel,
                           {"images.npy": write_images} if images is not None else None)
        if "error" in result:
            raise RuntimeError(str(result["error"])[:300])
        if not _valid(result):
            raise RuntimeError("the int8 check reported impossible figures")
        return GateResult(float(result["psnr_db"]), float(result["ssim"]))
    return check


def consider_int8(float_engine, base, *, build_int8: Callable, images=None, calibration: str,
                  store: DecisionStore, background: Callable[[Cancel], GateResult] | None = None):
    """(engine, notices) for `auto` where the OpenVINO CPU float engine leads: itself where it is fast enough (or
    int8 cannot be built, or was rejected at an earlier start); otherwise the int8 check - `background` (the child
    process check), while a SwitchingEngine serves the float engine, or here when None.
    `build_int8(cancelled=None)` -> (engine, notices) builds the int8 engine (calibrating it unless cached)."""
    frame_ms = float_engine.report().frame_ms
    if frame_ms is None or frame_ms <= REALTIME_MS:
        return float_engine, []
    problem = nncf_problem()
    if problem is not None:
        return float_engine, [f"{frame_ms:.0f} ms per frame; {problem}"]
    fields = decision_fields(base, images, calibration)
    cached = cached_gate(store, fields)
    if cached is not None:  # a pass was tried first by the planner unless it was no faster (or its build failed)
        float_engine.amend_report(gate=cached.verdict(earlier=True))
        slower = slower_before(store, fields) if cached.passed else None
        if slower is not None:
            return float_engine, [f"int8 renderer passed its quality gate at an earlier start but was not faster "
                                  f"here ({slower['int8_ms']:.0f} ms per frame vs {slower['float_ms']:.0f}): keeping "
                                  f"{float_engine.name}"]
        return float_engine, ([] if cached.passed else [
            f"int8 renderer rejected at an earlier start, keeping {float_engine.name}: {cached.describe()}"])
    why = (f"auto: the float engine took {frame_ms:.0f} ms per frame (real time needs <= {REALTIME_MS:g}), int8 "
           "passed the quality gate")
    switching = SwitchingEngine(float_engine)

    def timed(int8_ms, float_ms):
        save_speed(store, fields, int8_ms, float_ms)

    if background is None:
        built = []

        def check_here(cancel):
            engine, result = check_int8(base, images, build_int8=build_int8, calibration=calibration, store=store,
                                        cancelled=cancel.is_set)
            built.append(engine)
            return result
        job = Int8Upgrade(switching, check=check_here, build=lambda: built[0], why=why, timed=timed).run_here()
        switching.between_frames()
        if job.state != "passed":
            float_engine.amend_report(gate=job.result.verdict() if job.result else None)
        return switching.current, [job.notice]
    switching.attach(Int8Upgrade(switching, check=background, build=lambda: build_int8()[0], why=why, timed=timed))
    return switching, [f"{float_engine.name} takes {frame_ms:.0f} ms per frame (real time needs <= "
                       f"{REALTIME_MS:g}): calibrating the int8 renderer on your avatars in the background, frames "
                       "keep coming meanwhile; it takes over only if it passes the quality gate"]


def report_forced(engine, base, images=None, *, calibration: str, store: DecisionStore) -> str:
    """`--precision int8`: the gate's figures (measured once per avatar set and cached), not enforced."""
    fields = decision_fields(base, images, calibration)
    result = cached_gate(store, fields)
    if result is None:
        result = measure_gate(base, engine, images)
        save_gate(store, fields, result)
    engine.amend_report(gate=result.verdict(enforced=False))
    return f"{result.describe()}; --precision int8 keeps int8 either way"


def passed_before(engine, result: GateResult) -> str:
    """The int8 engine the planner put first: its report carries the earlier verdict."""
    engine.amend_report(gate=result.verdict(earlier=True))
    return f"int8 renderer (its quality gate passed at an earlier start: {result.describe()})"
