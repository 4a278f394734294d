"""Benchmark every backend available here against the plain eager fp32 engine, in one run.

    python -m engines.bench [--frames N] [--device auto|cpu|cuda] [--checkpoint PATH] [--cpu-study] [--json out.json]
                            [--source IMAGE --driving FRAMES.npy|VIDEO]

On a CPU the OpenVINO rows (fp32, bf16, int8 renderer) are included whenever openvino imports, plus the engine
`--backend auto` really builds here ("auto -> ..."; its precision measured, int8 behind its quality gate, checked
here rather than in the background); the report gives auto's frame against the fastest float row and against
the original full forward. Emulate other CPU classes on an Intel CPU with AMX by capping oneDNN's ISA:
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_FP16 python -m engines.bench   # AMX hidden (bf16 instructions stay)
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python -m engines.bench        # bf16 hidden too
`--bounds` adds what each precision reaches on this CPU (GFLOP/s, engines/bounds.py), the frame's GFLOP and how
many such threads 25 frames/s would need. `--binding` adds OpenVINO fp32 with the avatar state copied into the
request every frame (the path before per-avatar binding), to put a ratio on what binding saves.
The `composite` rows (engines/composite_bench.py; alone with `--composite-only`): what compositing the frame into
the avatar's photo adds per frame at 1280x720 with a ~500-px face square, and the oracle's sharpness figures.

Progress goes to stderr: first the rows and the expected total (from one baseline frame and each row's usual build
time), then a line as each row starts and is ready, then the timing rounds; the report goes to stdout.

Per backend: keypoint-detector ms, per-frame (cached-source) renderer ms, and for the eager fp32 baseline also the
full generator forward ms (the original FOMM path, no caching). Ratios are against the baseline measured in the
same run, and the backends are timed round-robin (one call each per round) so a machine whose load changes during
the run (shared CPUs) penalises all of them alike. Medians over the timed rounds, after warm-up rounds.
Accuracy: the renderer of each backend is fed the baseline's avatar state and keypoints, and its frame is compared
with the baseline's (max |diff| and PSNR on [0,1]); keypoints are compared as max |diff| in normalised units.
Default weights are the deterministic ones (same cost as the real checkpoint; the output is not a face); default
frames are synthetic (random, seeded) unless --source/--driving name real ones.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backends.openvino_backend import SUPPORTED_PRECISIONS as OPENVINO_PRECISIONS  # the rows it offers
from .cli import ArgumentParser, number, positive
from .engine import FOMMEngine
from .keypoints import Keypoints
from .options import add_engine_arguments
from .progress import to_stderr

@dataclass
class Row:
    name: str
    engine: object
    detect_ms: list = field(default_factory=list)
    render_ms: list = field(default_factory=list)
    full_ms: list = field(default_factory=list)
    kp_max_diff: float = float("nan")
    max_diff: float = float("nan")
    psnr: float = float("nan")
    note: str = ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    for module in ("torch_tensorrt", "tensorrt", "onnxruntime", "openvino", "nncf"):
        try:
            found[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - torch_tensorrt raises plain Exceptions when its libraries are missing
            pass
    return found


def cpu_flags() -> str:
    """The CPU features the figures depend on: AMX / AVX-512 flags, whether oneDNN is told to hide some
    (ONEDNN_MAX_CPU_ISA), and the bf16 kernel OpenVINO really picks here."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
             if f in flags]
    text = " ".join(shown) or "unknown"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        text += f"; ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}"
    try:
        from .backends.openvino_backend import probe_cpu
        caps = probe_cpu()
        text += (f"; OpenVINO bf16 kernel {caps.kernel or 'none'} -> auto precision {caps.default_precision} "
                 f"({caps.reason})")
    except Exception:  # noqa: BLE001 - no openvino: the flags alone
        pass
    return text


def load_frames(size: int, source_path=None, driving_path=None, max_driving: int = 8):
    """(source [1,3,S,S], driving [T,3,S,S], description). `source_path`: an image; `driving_path`: a .npy of
    [T,H,W,3] RGB floats in [0,1] (like the golden reference's driving.npy) or a video (first `max_driving` frames).
    Either one missing: seeded random frames instead (timings do not depend on the content)."""
    import cv2

    from .image import to_model_input

    generator = torch.Generator().manual_seed(0)
    if source_path is None:
        source = torch.rand(1, 3, size, size, generator=generator)
    else:
        image = cv2.imread(str(source_path), cv2.IMREAD_COLOR) if Path(source_path).is_file() else None
        if image is None:
            raise ValueError(f"{source_path}: missing or not a readable image")
        source = to_model_input(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size)
    if driving_path is None:
        driving = torch.rand(4, 3, size, size, generator=generator)
    elif not Path(driving_path).is_file():
        raise ValueError(f"{driving_path}: file not found")
    elif str(driving_path).endswith(".npy"):
        frames = np.load(driving_path)
        driving = torch.cat([to_model_input(np.asarray(f, np.float32), size) for f in frames])
    else:
        capture, frames = cv2.VideoCapture(str(driving_path)), []
        while len(frames) < max_driving:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(to_model_input(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size))
        capture.release()
        if not frames:
            raise ValueError(f"{driving_path}: no frames could be read")
        driving = torch.cat(frames)
    names = [Path(p).name for p in (source_path, driving_path) if p is not None]
    return source, driving, " + ".join(names) if names else "synthetic"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) * 1000.0




@dataclass(frozen=True)
class Planned:
    """A row to build: its name, how to build it ((engine, notices), or None when it does not apply here) and what
    building it costs in seconds with warm and with empty caches (measured on a 2-vCPU machine; for the estimate
    printed before anything starts)."""

    name: str
    build: object
    cost_s: tuple[float, float] = (1.0, 1.0)


def openvino_rows(base: FOMMEngine, args) -> list[Planned]:
    """OpenVINO fp32, bf16 and int8 (renderer) rows; the precision `--backend auto` picks here is marked; with
    --binding also fp32 with the avatar state copied into the request every frame (the path before binding)."""
    from .backends import cpu_capabilities, openvino_status
    from .backends.openvino_backend import build_openvino_engine

    ok, reason = openvino_status()
    if not ok:
        return [Planned(f"openvino (not benchmarked: {reason})", lambda: None, (0.0, 0.0))]
    rows, auto_float = [], cpu_capabilities().default_precision
    for index, precision in enumerate(args.openvino):
        # the first OpenVINO row converts both graphs on an empty cache; int8 adds the quantization
        cost = (5.0, 90.0) if precision == "int8" else (4.0, 35.0 if index == 0 else 4.0)
        rows.append(Planned(f"openvino {precision}" + (" [auto float]" if precision == auto_float else ""),
                            lambda p=precision: build_openvino_engine(base, precision=p,
                                                                      capabilities=cpu_capabilities()), cost))
    if args.binding:
        rows.append(Planned("openvino fp32 (copied inputs)", lambda: build_openvino_engine(
            base, precision="fp32", capabilities=cpu_capabilities(), bind=False), (4.0, 4.0)))
    return rows


def label_of(planned: Planned, engine) -> str:
    """The row's label: the engine's name, the int8 engine's detector precision (from its report) and the
    planned row's marks ([default], [auto float], copied inputs)."""
    if planned.name.startswith("auto"):
        return f"auto -> {engine.name}"
    report = engine.report()
    label = f"{planned.name.split(' ')[0]} {engine.name}"
    if report.renderer == "int8":
        label += f" (+{report.detector} detector)"
    marks = [mark for mark in ("[default]", "[auto float]", "(copied inputs)") if mark in planned.name]
    return " ".join([label, *marks])


def planned_rows(base: FOMMEngine, args) -> list[Planned]:
    """One planned row per backend available on base.device (the baseline is not among them)."""
    from .backends import create_engine, cuda_available, tensorrt_status

    if base.device.type == "cpu":
        from .backends.cpu_backend import DEFAULT_OPTIONS, CpuOptions, build_cpu_engine

        variants = [DEFAULT_OPTIONS]
        if args.cpu_study:
            study = [CpuOptions("fp32", True, False), CpuOptions("bf16", False, False),
                     CpuOptions("bf16", True, False), CpuOptions("fp32", False, True),
                     CpuOptions("fp32", True, True), CpuOptions("bf16", False, True)]
            variants += [o for o in study if o != DEFAULT_OPTIONS]
        rows = [Planned(f"cpu {options.label}" + (" [default]" if options == DEFAULT_OPTIONS else ""),
                        lambda o=options: build_cpu_engine(base, options=o), (30.0, 30.0) if options.torch_compile
                        else (1.0, 1.0)) for options in variants]
        rows += openvino_rows(base, args)
        # the engine `run_live.py --backend auto` gets here, built the way the app builds it (int8 checked now)
        rows.append(Planned("auto", lambda: create_engine(
            backend="auto", device="cpu", checkpoint=args.checkpoint, deterministic_weights=args.checkpoint is None,
            int8_check="now", progress=lambda line: None), (8.0, 150.0)))
        return rows
    if not cuda_available():
        return []
    from .backends.cuda_backend import build_cuda_engine
    from .backends.tensorrt_backend import build_tensorrt_engine

    rows = [Planned("cuda", lambda: build_cuda_engine(base, precision=args.precision), (60.0, 60.0))]
    ok, reason = tensorrt_status()
    trt_precision = args.precision if args.precision != "bf16" else None
    rows.append(Planned("tensorrt", lambda: build_tensorrt_engine(base, precision=trt_precision), (15.0, 600.0))
                if ok else Planned(f"tensorrt (not benchmarked: {reason})", lambda: None, (0.0, 0.0)))
    return rows


def build_rows(base: FOMMEngine, args, say=None) -> tuple[list[Row], list[str]]:
    """The baseline row plus the planned rows, each announced as it starts and ends (`say`, default stderr); the
    expected total is said before the first one."""
    from .backends.common import describe_error

    say = say or to_stderr
    planned = planned_rows(base, args)
    frame_ms = _baseline_frame_ms(base)
    say(expected_total(planned, frame_ms, args))
    rows, notices = [Row("torch eager fp32 (baseline)", base)], []
    for index, row in enumerate(planned, 1):
        started = time.perf_counter()
        say(f"bench: row {index}/{len(planned)}: {row.name} ...")
        try:
            built = row.build()
        except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
            notices.append(f"{row.name} not benchmarked: {describe_error(error)}")
            say(f"bench: row {index}/{len(planned)}: {row.name} failed ({describe_error(error)})")
            continue
        if built is None:
            notices.append(row.name)
            continue
        engine, more = built
        notices += [f"{row.name}: {n}" for n in more]
        setup = time.perf_counter() - started
        rows.append(Row(label_of(row, engine), engine, note=f"setup {setup:.1f} s"))
        say(f"bench: row {index}/{len(planned)}: {row.name} ready in {setup:.1f} s")
    return rows, notices


def _baseline_frame_ms(base: FOMMEngine) -> float:
    from .backends.common import measure_frame_ms

    return measure_frame_ms(base, 1)


def expected_total(planned: list[Planned], frame_ms: float, args) -> str:
    """The line said before anything is built: rows, and how long building and timing them should take."""
    warm, cold = (sum(p.cost_s[i] for p in planned) for i in (0, 1))
    # timing: every round runs the baseline (plus its full forward, ~1.3 frames) and each row once; the rows took
    # 0.2-0.9 of the baseline's frame where measured, so half of it each; the accuracy pass is one more round
    per_round = frame_ms * (1 + (0 if args.no_full else 1.3) + 0.5 * len(planned))
    timing = (args.warmup + args.frames + 1) * per_round / 1000.0
    return (f"bench: {len(planned) + 1} rows (baseline + {', '.join(p.name for p in planned)}); expected about "
            f"{warm + timing:.0f} s in all ({warm:.0f} s to build the rows, up to {cold:.0f} s with empty caches; "
            f"~{timing:.0f} s of timing: {args.warmup + args.frames} rounds, a baseline frame takes {frame_ms:.0f} "
            "ms)")


def run(args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    to_stderr("bench: loading the weights and the frames, timing one baseline frame for the estimate ...")
    torch.manual_seed(0)
    if args.checkpoint:
        base = FOMMEngine.from_checkpoint(args.checkpoint, device=device)
        weights = Path(args.checkpoint).name
    else:
        base = FOMMEngine.from_deterministic_weights(device=device)
        weights = "deterministic (generated; same cost as a checkpoint)"
    source, driving, frames_name = load_frames(base.image_size, args.source, args.driving)
    rows, notices = build_rows(base, args)

    # Reference outputs of the baseline on every driving frame.
    to_stderr(f"bench: accuracy of {len(rows) - 1} rows against the baseline on {len(driving)} frames ...")
    state = base.encode(source)
    kps = [base.detect(driving[i:i + 1]) for i in range(len(driving))]
    references = [base.render(state, kp).image for kp in kps]
    for row in rows[1:]:
        engine = row.engine
        kp_diff, out_diff, errors = 0.0, 0.0, []
        for frame, kp, reference in zip(driving, kps, references):
            own = engine.detect(frame[None])
            kp_diff = max(kp_diff, float((own.value.cpu() - kp.value.cpu()).abs().max()))
            out = engine.render(state, Keypoints(kp.value, kp.jacobian)).image.cpu()
            out_diff = max(out_diff, float((out - reference.cpu()).abs().max()))
            errors.append(float(((out - reference.cpu()) ** 2).mean()))
        row.kp_max_diff, row.max_diff = kp_diff, out_diff
        mse = statistics.fmean(errors)
        row.psnr = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
    rows[0].kp_max_diff, rows[0].max_diff, rows[0].psnr = 0.0, 0.0, float("inf")

    # Round-robin timing.
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    frames = [driving[i % len(driving)][None].to(device) for i in range(args.warmup + args.frames)]
    engine_states = {id(row): row.engine.encode(source) for row in rows}
    timing_started = time.perf_counter()
    to_stderr(f"bench: timing {len(rows)} rows round-robin, {len(frames)} rounds ...")
    for index, frame in enumerate(frames):
        timed = index >= args.warmup
        if index and index % 5 == 0:
            to_stderr(f"  bench: round {index}/{len(frames)}, {time.perf_counter() - timing_started:.0f} s so far")
        for row in rows:
            kp, detect_ms = _timed(lambda: row.engine.detect(frame), device)
            _, render_ms = _timed(lambda: row.engine.render(engine_states[id(row)], kp), device)
            if timed:
                row.detect_ms.append(detect_ms)
                row.render_ms.append(render_ms)
        if not args.no_full:
            kp = rows[0].engine.detect(frame)
            _, full_ms = _timed(lambda: base.forward_full(source, kp, state.kp), device)
            if timed:
                rows[0].full_ms.append(full_ms)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    to_stderr(f"bench: timing done in {time.perf_counter() - timing_started:.0f} s")
    bounds = None
    if args.bounds and device.type == "cpu":
        from .backends.openvino_backend import cpu_threads
        from .bounds import bounds_report
        bounds = bounds_report(base, cpu_threads())
    from .composite_bench import run as composite_run
    to_stderr("bench: the composite rows (compositing into the photo, the oracle's figures) ...")
    composite = composite_run(canvas=args.composite_canvas, face=args.composite_face, frames=args.frames,
                              device=device.type)
    return {"composite": composite, "bounds": bounds, "device": device_name(device), "device_type": device.type,
            "versions": versions(),
            "cpu_flags": cpu_flags() if device.type == "cpu" else None,
            "load_average": [load_before, load] if load else None,
            "weights": weights, "frames": frames_name, "timed_rounds": args.frames, "warmup_rounds": args.warmup,
            "notices": notices,
            "rows": [{"backend": r.name, "detect_ms": statistics.median(r.detect_ms),
                      "render_ms": statistics.median(r.render_ms), "render_min_ms": min(r.render_ms),
                      "full_ms": statistics.median(r.full_ms) if r.full_ms else None,
                      "kp_max_diff": r.kp_max_diff, "max_diff": r.max_diff, "psnr_db": r.psnr, "note": r.note,
                      "report": r.engine.report().as_dict()}
                     for r in rows]}


def format_report(result: dict) -> str:
    rows = result["rows"]
    base = rows[0]
    lines = [f"device: {result['device']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             *([f"cpu flags: {result['cpu_flags']}"] if result.get("cpu_flags") else []),
             f"weights: {result['weights']}; frames: {result['frames']}; medians of {result['timed_rounds']} "
             f"round-robin rounds after {result['warmup_rounds']} warm-up rounds"]
    if result.get("load_average"):
        (before, after) = result["load_average"]
        lines.append(f"load average (1/5/15 min) before timing {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f}, "
                     f"after {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f}: above the thread count means other "
                     "processes shared the CPU (compare ratios, and the min column)")
    lines.append("")
    header = (f"{'backend':44s} {'kp ms':>7s} {'x base':>7s} {'frame ms':>9s} {'x base':>7s} {'min ms':>7s} "
              f"{'x base':>7s} {'kp max|d|':>10s} {'max|d|':>9s} {'PSNR dB':>8s}")
    lines += [header, "-" * len(header)]
    for row in rows:
        psnr_text = "inf" if math.isinf(row["psnr_db"]) else f"{row['psnr_db']:.1f}"
        lines.append(f"{row['backend']:44s} {row['detect_ms']:7.1f} {base['detect_ms'] / row['detect_ms']:6.2f}x "
                     f"{row['render_ms']:9.1f} {base['render_ms'] / row['render_ms']:6.2f}x "
                     f"{row['render_min_ms']:7.1f} {base['render_min_ms'] / row['render_min_ms']:6.2f}x "
                     f"{row['kp_max_diff']:10.2e} {row['max_diff']:9.2e} {psnr_text:>8s}"
                     + (f"  ({row['note']})" if row["note"] else ""))
    if base["full_ms"]:
        lines += ["", f"baseline full generator forward (no caching): {base['full_ms']:.1f} ms; cached per-frame "
                      f"renderer: {base['render_ms']:.1f} ms = {base['render_ms'] / base['full_ms']:.2f} of it "
                      f"({base['full_ms'] / base['render_ms']:.2f}x faster)",
                  "per frame (detector + renderer) vs baseline full path (detector + full forward):"]
        full = base["detect_ms"] + base["full_ms"]
        # The original FOMM frame: keypoints of source and driving, then the whole generator.
        original = 2 * base["detect_ms"] + base["full_ms"]
        for row in rows:
            frame = row["detect_ms"] + row["render_ms"]
            lines.append(f"  {row['backend']:42s} {frame:8.1f} ms  {full / frame:5.2f}x  ({1000 / frame:.1f} fps)"
                         f"  = {frame / original:.3f} of detect source + detect driving + full forward "
                         f"({original:.0f} ms)")
        auto = next((r for r in rows if r["backend"].startswith("auto -> ")), None)
        floats = [r for r in rows if r is not auto and "int8" not in r["backend"]]
        if auto is not None and floats:
            fastest = min(floats, key=lambda r: r["detect_ms"] + r["render_ms"])
            auto_frame = auto["detect_ms"] + auto["render_ms"]
            lines.append(f"auto picks {auto['backend'][8:]}: {auto_frame:.1f} ms per frame = "
                         f"{auto_frame / (fastest['detect_ms'] + fastest['render_ms']):.2f}x the fastest float row "
                         f"({fastest['backend']}), {auto_frame / original:.3f} of the original full forward")
    if result.get("composite"):
        from .composite_bench import format_report as composite_lines
        lines += ["", *composite_lines(result["composite"])]
    if result.get("bounds"):
        lines += ["", "bounds of each precision on this CPU (--bounds):", *result["bounds"]]
    lines += [f"notice: {n}" for n in result["notices"]]
    lines.append("x base = baseline ms / backend ms (higher is faster); frame = the cached per-frame renderer; "
                 "differences vs the eager fp32 baseline")
    return "\n".join(lines)


def _openvino_precisions(text: str) -> tuple:
    if text.strip().lower() == "none":
        return ()
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in chosen if p not in OPENVINO_PRECISIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(OPENVINO_PRECISIONS)} or none, not {text!r}")
    return chosen


BENCH_DEVICES = ("auto", "cpu", "cuda")  # what the rows are timed on; OpenVINO's rows run on the CPU


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m engines.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=positive(int), default=20,
                        help="timed round-robin rounds (default 20: 2-4 min on a 2-core CPU; the estimate is printed)")
    parser.add_argument("--warmup", type=number(int, low=0), default=2, help="untimed rounds first (default 2)")
    # the engine flags of every command; here --device picks where the rows are timed (auto, cpu or cuda) and
    # --precision the GPU backends' (auto = their fp16)
    add_engine_arguments(parser, flags=("checkpoint", "device", "precision"),
                         checkpoint_default="generated weights (the same cost as the checkpoint)")
    parser.add_argument("--cpu-study", action="store_true",
                        help="CPU: every option combination (channels_last, bf16 autocast, torch.compile)")
    parser.add_argument("--openvino", type=_openvino_precisions, default=OPENVINO_PRECISIONS, metavar="LIST",
                        help="CPU: OpenVINO precisions to add as rows, comma-separated from fp32,bf16,int8 "
                             "(default all three; 'none' for no OpenVINO rows)")
    parser.add_argument("--binding", action="store_true",
                        help="CPU: add an OpenVINO fp32 row that copies the avatar state into the request every "
                             "frame (the path before per-avatar binding), to measure what binding saves")
    parser.add_argument("--no-full", action="store_true", help="skip the baseline's full generator forward")
    parser.add_argument("--bounds", action="store_true",
                        help="CPU: GFLOP/s of each precision, GFLOP per frame, threads 25 frames/s needs")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--composite-only", action="store_true",
                        help="only the composite rows: compositing's cost per frame and the oracle's figures")
    from .composite_bench import add_arguments as composite_arguments
    composite_arguments(parser)
    parser.add_argument("--source", metavar="IMAGE", help="avatar image for the accuracy columns (default: random)")
    parser.add_argument("--driving", metavar="FRAMES.npy|VIDEO",
                        help="driving frames: a .npy [T,H,W,3] in [0,1] or a video (default: random)")
    return parser


def check_args(args) -> str | None:
    """The one-line problem with flags this benchmark cannot serve, or None."""
    if args.device not in BENCH_DEVICES:
        return (f"--device {args.device}: the benchmark times rows on {', '.join(BENCH_DEVICES[1:])} (an Intel "
                "GPU/NPU or Apple GPU is timed by the app's doctor: live-avatar doctor --device ...)")
    if args.precision == "int8":
        return "--precision int8: the OpenVINO int8 renderer is a row of its own on a CPU (--openvino int8)"
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda but CUDA is not available"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.composite_only:
        from .composite_bench import main as composite_main
        return composite_main([f"--frames={args.frames}", f"--device={args.device}",
                               "--composite-canvas={}x{}".format(*args.composite_canvas),
                               f"--composite-face={args.composite_face}"]
                              + ([f"--json={args.json}"] if args.json else []))
    args.precision = None if args.precision == "auto" else args.precision  # the GPU backends' own default
    try:
        result = run(args)
    except (ValueError, OSError) as error:  # unreadable --source/--driving/--checkpoint
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
