"""`auto` without CUDA: the CPU engine against each accelerator present (OpenVINO's Intel GPU / NPU, Apple's GPU),
one measured frame each; the fastest is kept and remembered per CPU, weights and device list, so the planner puts
it first at the next start (and nothing else is built then unless it fails)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..cache import DecisionStore, number_within
from ..protocol import Fallback
from .common import describe_error, measure_frame_ms
from .planner import Candidate
from .precision import cpu_identity

DECISION_KIND = "device-choice"
MAX_FRAME_MS = 600_000.0  # a frame of ten minutes is no measurement


@dataclass(frozen=True)
class Built:
    """What the selection loop ended with: the engine, its candidate, what came before it, the build's notices."""

    engine: object
    candidate: Candidate
    fell_back: tuple[Fallback, ...] = ()
    notices: tuple[str, ...] = ()


def _fields(config_hash: str, primary: str, contenders) -> dict:
    return {**cpu_identity(), "weights": config_hash, "primary": primary, "candidates": list(contenders),
            "torch": torch.__version__}


def remembered(store: DecisionStore, config_hash: str, primary: str, contenders: tuple[str, ...]) -> str | None:
    """The label measured fastest at an earlier start for this CPU, weights and device list, or None."""
    def valid(result: dict) -> bool:
        timings = result.get("frame_ms")
        return (result.get("choice") in (primary, *contenders) and isinstance(timings, dict)
                and all(number_within(ms, 0.0, MAX_FRAME_MS) for ms in timings.values()))
    found = store.load(DECISION_KIND, _fields(config_hash, primary, contenders), valid)
    return None if found is None else found["choice"]


def frame_ms(engine) -> float:
    """The engine's frame as measured at start, else measured now (and added to its report)."""
    measured = engine.report().frame_ms
    if measured is None:
        measured = round(measure_frame_ms(engine, 2), 1)
        engine.amend_report(frame_ms=measured)
    return measured


def fastest(built: Built, contenders, make: Callable[[Candidate], tuple], store: DecisionStore,
            config_hash: str) -> tuple[Built, list]:
    """(the fastest of `built` and the contenders, notices). `make(candidate)` -> (engine, notices) builds one; a
    contender that fails is one line and a fallback record; the losers are closed. The winner is remembered under
    `config_hash` (the weights) and the CPU."""
    primary = built.candidate.label
    timed, best, notices, failed = {primary: frame_ms(built.engine)}, built, [], []
    for candidate in contenders:
        try:
            engine, more = make(candidate)
        except Exception as error:  # noqa: BLE001 - a device that cannot compile must not stop the app
            failed.append(Fallback(candidate.label, describe_error(error), tried=True))
            notices.append(f"{failed[-1].describe()}: keeping the {best.candidate.label}")
            continue
        notices += more
        timed[candidate.label] = frame_ms(engine)
        if timed[candidate.label] < timed[best.candidate.label]:
            best.engine.close()
            best = Built(engine, candidate, built.fell_back, tuple(more))
        else:
            engine.close()
    if len(timed) > 1:
        store.save(DECISION_KIND, _fields(config_hash, primary, [c.label for c in contenders]),
                   {"choice": best.candidate.label, "frame_ms": timed})
        figures = ", ".join(f"{label} {ms:.0f} ms" for label, ms in timed.items())
        notices.append(f"device: the {best.candidate.label} is the fastest here ({figures} per frame)")
    return Built(best.engine, best.candidate, best.fell_back + tuple(failed), best.notices), notices
