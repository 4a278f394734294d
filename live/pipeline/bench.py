"""What the live loop itself costs per frame, apart from the two networks: `python -m live.pipeline.bench`.

    python -m live.pipeline.bench [--frames 200] [--camera 1280x720] [--canvas 1280x720] [--device cpu|cuda]

Everything `LivePipeline.step` does for a webcam frame runs for real - the face tracker (Haar detection every few
frames, the steady crop), the conversions to and from the model's tensors, smoothing, calibration, the face-loss
glide, compositing into the avatar's photo, the virtual camera sink (through pyvirtualcam's own Camera API, into a
backend that drops the frames) - except the keypoint detector and the renderer: their outputs are computed once by
the real engine (generated weights) and handed back at no cost. So the figures are the loop's own overhead, the
part no faster network can remove. Two rows are timed round-robin, one frame each in turn, so a machine whose load
changes hurts both alike: `--composite on` (the photo at call resolution) and `--composite off` (the model's square
on the canvas). Medians and 90th percentiles over the timed frames, after warm-up frames; per stage as the HUD
names them. Absolute times hold for this machine only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.cli import ArgumentParser, dimensions, number, positive
from engines.keypoints import Keypoints
from engines.protocol import EngineBase, RenderedFrame
from live.devices.capture import CapturedFrame
from live.ui.hud import Timings

BACKEND = "live-avatar-bench"  # the pyvirtualcam backend that drops frames
GOAL_OVERHEAD_MS = 2.0        # the loop without compositing, on a 2-core CPU
GOAL_COMPOSITE_MS = 5.0       # what compositing may add on top


class FrozenEngine(EngineBase):
    """The real engine's encoder, and its detector's and renderer's outputs computed once: the networks cost
    nothing here, everything around them runs as in a live run."""

    def __init__(self, engine, keypoints: Keypoints, rendered: RenderedFrame):
        self._engine, self._keypoints, self._rendered = engine, keypoints, rendered
        self.name, self.device, self.image_size = f"frozen {engine.name}", engine.device, engine.image_size
        self.config_hash, self.weights_id = engine.config_hash, engine.weights_id
        self.align_corners = engine.align_corners
        self._report = engine.report()

    def detect(self, image):
        return self._keypoints

    def encode(self, image):
        return self._engine.encode(image)

    def render(self, state, kp_driving):
        return self._rendered

    def forward_full(self, source, kp_driving, kp_source=None):
        return self._engine.forward_full(source, kp_driving, kp_source)


class DroppingCamera:
    """A pyvirtualcam backend that takes frames like a driver would and drops them."""

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height = width, height

    def send(self, frame):
        pass

    def device(self):
        return "bench"

    def native_fourcc(self):
        return None

    def close(self):
        pass


class StageTimings(Timings):
    """The HUD's timings, also keeping every stage's raw milliseconds of every frame."""

    def __init__(self):
        super().__init__()
        self.raw: dict[str, list[float]] = defaultdict(list)

    def record(self, stage: str, ms: float) -> None:
        super().record(stage, ms)
        self.raw[stage].append(ms)


def camera_frames(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """A head (scikit-image's astronaut's) as large as a webcam shows one, in a webcam-sized BGR picture, drifting a
    few pixels from frame to frame like a person sitting still: the tracker finds it and follows."""
    from skimage.data import astronaut

    width, height = size
    side = min(height, width) * 5 // 6
    head = np.ascontiguousarray(astronaut()[0:320, 100:420, ::-1])
    face = cv2.resize(head, (side, side), interpolation=cv2.INTER_CUBIC)
    frames = []
    for index in range(count):
        frame = np.full((height, width, 3), 70, np.uint8)
        dx = int(round(6 * np.sin(index / 9.0)))
        x0, y0 = (width - side) // 2 + dx, (height - side) // 2
        frame[y0:y0 + side, x0:x0 + side] = face
        frames.append(frame)
    return frames


def build_pipelines(device: str, camera: tuple[int, int], canvas: tuple[int, int], folder: Path, engine=None):
    """{'composite on': pipeline, 'composite off': pipeline}, both over the same frozen engine (made from `engine`,
    default: the eager engine on generated weights)."""
    import pyvirtualcam

    from engines.engine import FOMMEngine
    from engines.image import to_model_input
    from live.devices.sinks import VirtualCameraSink
    from live.pipeline.avatar_set import AvatarSet, load_avatars
    from live.pipeline.avatars import loading_options
    from live.pipeline.crop import FaceTracker
    from live.pipeline.loop import LivePipeline, PipelineOptions

    from skimage.data import astronaut

    engine = engine or FOMMEngine.from_deterministic_weights(device=device)
    photo = folder / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    first = camera_frames(camera, 1)[0]
    tracker = FaceTracker(out_size=engine.image_size)
    crop, _ = tracker.crop(first)
    keypoints = engine.detect(to_model_input(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), engine.image_size, device))
    state = engine.encode(to_model_input(load_avatars(photo, engine.image_size)[0].image, engine.image_size, device))
    moved = Keypoints(state.kp.value + 0.03, state.kp.jacobian)  # a head turned a little: a real, moving frame
    frozen = FrozenEngine(engine, keypoints, engine.render(state, moved))
    pyvirtualcam.register_backend(BACKEND, DroppingCamera)
    pipelines = {}
    for composite in (True, False):
        options = loading_options(composite=composite, canvas_size=canvas)
        avatars = AvatarSet(load_avatars(photo, engine.image_size, **options), frozen)
        sink = VirtualCameraSink(*canvas, 30, backend=BACKEND)
        pipelines["composite on" if composite else "composite off"] = LivePipeline(
            frozen, avatars, sinks=[sink], tracker=FaceTracker(out_size=engine.image_size),
            options=PipelineOptions(calibrate_first_frame=True), log=lambda message: None,
            timings=StageTimings(), composite=options["canvas"])
    return pipelines


def run(frames: int = 200, warmup: int = 20, camera=(1280, 720), canvas=(1280, 720), device: str = "cpu",
        engine=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="live-avatar-loop-bench-") as folder:
        pipelines = build_pipelines(device, camera, canvas, Path(folder), engine)
        pictures = camera_frames(camera, 64)
        per_frame = {name: [] for name in pipelines}
        for index in range(warmup + frames):
            for name, pipeline in pipelines.items():  # round-robin: load changes hit both rows alike
                frame = CapturedFrame(pictures[index % len(pictures)], index, time.perf_counter())
                start = time.perf_counter()
                pipeline.step(frame)
                if device == "cuda":
                    torch.cuda.synchronize()
                if index >= warmup:
                    per_frame[name].append((time.perf_counter() - start) * 1000.0)
        rows = {}
        for name, pipeline in pipelines.items():
            times = sorted(per_frame[name])
            # means: the face detector runs on every 3rd frame, and a frame budget has to pay for it on average
            stages = {stage: statistics.fmean(ms[warmup:]) for stage, ms in pipeline.timings.raw.items()
                      if len(ms) > warmup}
            rows[name] = {"mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
                          "p90_ms": times[int(0.9 * (len(times) - 1))], "stages_mean_ms": stages,
                          "face_found": bool(pipeline.tracker.face_found)}
            pipeline.close()
    return {"camera": list(camera), "canvas": list(canvas), "device": device, "frames": frames, "warmup": warmup,
            "torch_threads": torch.get_num_threads(), "rows": rows,
            "goals_ms": {"composite off": GOAL_OVERHEAD_MS, "composite on": GOAL_OVERHEAD_MS + GOAL_COMPOSITE_MS}}


def report(result: dict) -> list[str]:
    lines = [f"loop overhead per frame (everything but the two networks), camera "
             f"{'x'.join(map(str, result['camera']))} -> canvas {'x'.join(map(str, result['canvas']))}, "
             f"{result['device']}, {result['frames']} frames (mean / median / p90 ms; goal for the mean):"]
    for name, row in result["rows"].items():
        stages = ", ".join(f"{stage} {ms:.2f}" for stage, ms in row["stages_mean_ms"].items() if stage != "render")
        lines.append(f"  {name:14s} {row['mean_ms']:6.2f} / {row['median_ms']:6.2f} / {row['p90_ms']:6.2f} ms  "
                     f"(goal <= {result['goals_ms'][name]:g})   stage means: {stages}"
                     + ("" if row["face_found"] else "   [no face found: the tracker searched every time]"))
    return lines


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m live.pipeline.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=positive(int), default=200, help="timed frames per row (default 200)")
    parser.add_argument("--warmup", type=number(int, low=0), default=20, help="untimed frames first (default 20)")
    parser.add_argument("--camera", type=dimensions(low=64), default=(1280, 720), metavar="WxH",
                        help="webcam frames (1280x720)")
    parser.add_argument("--canvas", type=dimensions(low=64), default=(1280, 720), metavar="WxH",
                        help="output canvas, --vcam-size (1280x720)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    print(f"loop bench: {2 * (args.warmup + args.frames)} frames, two rows round-robin ...", file=sys.stderr)
    result = run(args.frames, args.warmup, args.camera, args.canvas, args.device)
    print("\n".join(report(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
