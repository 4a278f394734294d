"""Which engines to try, in which order: a pure function of what was asked for and what the machine has.

    plan(Request(backend, device, precision), machine) -> Plan(candidates, race, notes)

`candidates` are tried in order by one loop (engines/backends/__init__.py `build_first`): the first that builds is
the engine, and every candidate before it - ruled out here (`skip`: the probe's answer, or the request that
excludes it) or failed to build - becomes one `Fallback` in the engine's report, from which the notices are made.
The orders are the project's choices:
  CUDA present (device auto/cuda):  TensorRT -> CUDA (fp16 autocast + torch.compile) -> plain torch CUDA
  on the CPU:                       OpenVINO (bf16 where measured faster) -> eager CPU backend -> plain torch CPU
  --device gpu/npu:                 OpenVINO on that device -> the CPU chain;  --device mps: torch MPS -> the CPU chain
  auto without CUDA:                the CPU chain, and every accelerator present as a `race` contender (built,
                                    timed, the fastest kept and remembered: the next start tries the winner first)
  int8 (auto):                      where the OpenVINO CPU engine leads and its int8 renderer passed the quality
                                    gate at an earlier start, the int8 engine is tried first
`Machine` answers each question once, on first use, so nothing is probed that the plan never reaches (importing
TensorRT is slow and prints); tests give it plain values.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

BACKENDS = ("auto", "tensorrt", "cuda", "openvino", "cpu", "torch")
DEVICES = ("auto", "cuda", "cpu", "gpu", "npu", "mps")
ACCELERATORS = ("gpu", "npu", "mps")  # devices auto considers without CUDA, when present
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16", "int8")  # int8: the OpenVINO renderer on the CPU only

LABELS = {("tensorrt", "cuda"): "TensorRT backend", ("cuda", "cuda"): "CUDA backend (torch fp16 + torch.compile)",
          ("torch", "cuda"): "plain torch CUDA engine", ("openvino", "cpu"): "OpenVINO CPU backend",
          ("openvino", "gpu"): "OpenVINO Intel GPU", ("openvino", "npu"): "OpenVINO NPU",
          ("mps", "mps"): "Apple GPU (MPS) backend", ("torch", "mps"): "plain torch MPS engine",
          ("cpu", "cpu"): "CPU backend", ("torch", "cpu"): "plain torch CPU engine"}


@dataclass(frozen=True)
class Request:
    """What the user asked for (run_live.py --backend/--device/--precision)."""

    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None  # None or 'auto': the backend's default or measured precision

    def __post_init__(self):
        for name, value, choices in (("backend", self.backend, BACKENDS), ("device", self.device, DEVICES),
                                     ("precision", self.precision or "auto", PRECISION_CHOICES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        if self.precision == "auto":
            object.__setattr__(self, "precision", None)


@dataclass(frozen=True)
class Candidate:
    """One engine to try: a backend on a device, the precision its builder is asked for."""

    backend: str                 # tensorrt | cuda | openvino | mps | cpu | torch
    device: str                  # cuda | cpu | gpu | npu | mps
    precision: str | None = None  # None: the backend's default (or its measured choice)
    why: str = ""                # where the plan chose the precision: why (goes into the engine's report)
    skip: str | None = None      # ruled out without building it: why

    @property
    def label(self) -> str:
        text = LABELS.get((self.backend, self.device), f"{self.backend} backend on {self.device}")
        return text + (" with the int8 renderer" if self.precision == "int8" and not self.skip else "")

    @property
    def base_device(self) -> str:
        """Where its weights must live: OpenVINO takes them from the CPU whatever device it compiles for."""
        return {"cuda": "cuda", "mps": "mps"}.get(self.device, "cpu")


@dataclass(frozen=True)
class Plan:
    candidates: tuple[Candidate, ...]   # tried in order; the first that builds is the engine
    race: tuple[Candidate, ...] = ()    # also built and timed against it; the fastest is kept (and remembered)
    notes: tuple[str, ...] = ()         # what the request could not have, said once


def once(value):
    """A fixed answer, or a zero-argument probe asked once (its answer kept)."""
    if not callable(value):
        return lambda: value
    answer = []

    def ask():
        if not answer:
            answer.append(value())
        return answer[0]
    return ask


@dataclass
class Machine:
    """What this machine has and what earlier starts learned on it. Each field is an answer or a zero-argument
    probe, asked on first use only (and once). `remembered_device(primary, contenders)` -> the contender (or
    primary) measured fastest at an earlier start, or None; `int8_passed()` -> whether the OpenVINO int8 renderer
    passed its quality gate on these avatars at an earlier start."""

    cuda: bool | Callable[[], bool]
    tensorrt: tuple[bool, str] | Callable[[], tuple[bool, str]] = (False, "not probed")
    openvino: tuple[bool, str] | Callable[[], tuple[bool, str]] = (False, "not probed")
    accelerators: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    remembered_device: Callable[[str, tuple[str, ...]], str | None] = field(default=lambda primary, contenders: None)
    int8_passed: bool | Callable[[], bool] = False

    def __post_init__(self):
        self._cuda, self._tensorrt, self._openvino = once(self.cuda), once(self.tensorrt), once(self.openvino)
        self._accelerators, self._int8 = once(self.accelerators), once(self.int8_passed)

    def has_cuda(self) -> bool:
        return bool(self._cuda())

    def tensorrt_status(self) -> tuple[bool, str]:
        return self._tensorrt()

    def openvino_status(self) -> tuple[bool, str]:
        return self._openvino()

    def present(self) -> tuple[str, ...]:
        return tuple(self._accelerators())

    def int8_passed_before(self) -> bool:
        return bool(self._int8())


def plan(request: Request, machine: Machine) -> Plan:
    """The candidates for `request` on `machine`, in the order they are tried (module docstring)."""
    notes = []
    chain = _named_accelerator(request, machine) + _cuda_chain(request, machine)
    if not any(c.skip is None and c.device == "cuda" for c in chain):  # a usable CUDA chain ends in plain torch
        chain += _cpu_chain(request, machine)
    race = _contenders(request, machine, chain)
    if race:
        primary = _first(chain)
        remembered = machine.remembered_device(primary.label, tuple(c.label for c in race))
        if remembered in (primary.label, *(c.label for c in race)):
            notes.append(f"device: the {remembered} was measured fastest here at an earlier start")
            chain = [c for c in race if c.label == remembered] + chain
            race = []
    chain = _with_precision(request, machine, chain, notes, bool(race))
    race = [replace(c, precision=request.precision if request.precision != "int8" else None) for c in race]
    return Plan(tuple(chain), tuple(race), tuple(notes))


def _first(chain) -> Candidate | None:
    return next((c for c in chain if c.skip is None), None)


def _named_accelerator(request: Request, machine: Machine) -> list[Candidate]:
    backend, device = request.backend, request.device
    if device in ("gpu", "npu"):
        name = "Intel GPU" if device == "gpu" else "NPU"
        if backend not in ("auto", "openvino"):
            return [Candidate("openvino", device, skip=f"--device {device} runs through OpenVINO, not --backend "
                                                       f"{backend}")]
        ok, reason = machine.openvino_status()
        if not ok:
            return [Candidate("openvino", device, skip=f"it needs OpenVINO: {reason}")]
        if device not in machine.present():
            return [Candidate("openvino", device, skip=f"no OpenVINO {name} device here")]
        return [Candidate("openvino", device)]
    if device == "mps":
        chosen = "torch" if backend == "torch" else "mps"
        if backend not in ("auto", "torch", "cpu"):
            return [Candidate("mps", "mps", skip=f"--device mps runs torch, not --backend {backend}")]
        if "mps" not in machine.present():
            return [Candidate(chosen, "mps", skip="no Apple GPU (MPS) here")]
        return [Candidate(chosen, "mps")]
    return []


def _cuda_chain(request: Request, machine: Machine) -> list[Candidate]:
    backend, device = request.backend, request.device
    if device not in ("auto", "cuda"):
        if device == "cpu" and backend in ("tensorrt", "cuda"):
            return [Candidate(backend, "cuda", skip=f"the {backend} backend needs a CUDA GPU and --device cpu was "
                                                    "given")]
        return []
    if backend in ("openvino", "cpu"):
        return [Candidate(backend, "cuda", skip=f"--backend {backend} runs on the CPU although --device cuda was "
                                                "given")] if device == "cuda" else []
    if not machine.has_cuda():
        if device == "cuda" or backend in ("tensorrt", "cuda"):
            first = "cuda" if backend == "cuda" else ("torch" if backend == "torch" else "tensorrt")
            return [Candidate(first, "cuda", skip="no CUDA GPU")]
        return []
    chain = []
    if backend in ("auto", "tensorrt"):
        ok, reason = machine.tensorrt_status()
        chain.append(Candidate("tensorrt", "cuda") if ok else Candidate("tensorrt", "cuda", skip=reason))
    if backend != "torch":
        chain.append(Candidate("cuda", "cuda"))
    return chain + [Candidate("torch", "cuda")]


def _cpu_chain(request: Request, machine: Machine) -> list[Candidate]:
    if request.backend == "torch":
        return [Candidate("torch", "cpu")]
    chain = []
    if request.backend != "cpu":
        ok, reason = machine.openvino_status()
        chain.append(Candidate("openvino", "cpu") if ok else Candidate("openvino", "cpu", skip=reason))
    return chain + [Candidate("cpu", "cpu"), Candidate("torch", "cpu")]


def _contenders(request: Request, machine: Machine, chain) -> list[Candidate]:
    """auto without CUDA: each accelerator present, timed against the CPU engine (OpenVINO's GPU/NPU plugins only
    where OpenVINO leads the CPU chain)."""
    if request.backend != "auto" or request.device != "auto" or any(c.device == "cuda" for c in chain):
        return []
    first = _first(chain)
    contenders = []
    for device in machine.present():
        if device == "mps":
            contenders.append(Candidate("mps", "mps"))
        elif first is not None and first.backend == "openvino":
            contenders.append(Candidate("openvino", device))
    return contenders


def _with_precision(request: Request, machine: Machine, chain, notes: list, race: bool) -> list[Candidate]:
    """The precision each candidate is asked for. int8 is an OpenVINO CPU option: forced there, the default
    elsewhere (said once); under auto, a renderer that passed its quality gate before is tried first."""
    precision = request.precision
    first = _first(chain)
    openvino_cpu = first is not None and (first.backend, first.device) == ("openvino", "cpu")
    if precision == "int8":
        if not openvino_cpu:
            notes.append(f"int8 is an OpenVINO backend option (on the CPU): the {first.label if first else 'engine'} "
                         "uses its default precision")
        return [replace(c, precision="int8" if (c.backend, c.device, c.skip) == ("openvino", "cpu", None) else None)
                for c in chain]
    chain = [replace(c, precision=precision) for c in chain]
    if precision is None and openvino_cpu and not race and machine.int8_passed_before():
        chain.insert(chain.index(first), replace(first, precision="int8",
                                                 why="auto: passed the quality gate at an earlier start"))
    return chain
