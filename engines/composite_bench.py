"""Compositing, measured: what it costs per frame at call resolution, and how sharp it is against an oracle.

    python -m engines.composite_bench [--frames N] [--canvas 1280x720] [--face 500] [--json out.json]
    python -m engines.bench --composite-only                       (the same, as the `composite` rows of the bench)

Cost: one avatar photo on a `--canvas` frame with its crop square `--face` pixels wide, a rendered frame with
motion and occlusion, `Compositor.compose` timed (median and fastest of `--frames`, after warm-up) for each
resampler this device offers; `rest` (the photo alone, what a frame at rest costs) beside it.

Quality (the oracle): a renderer that knows the truth. A 512-px photo is warped by a smooth motion (the head turns
and shifts, the rest stays) and an ellipse of new content (an opened mouth) is painted in: that is the true frame.
The oracle renders it the way FOMM does - at 256 px, softened - and reports the motion it used at 64x64 and the
new content as low occlusion. Plain bicubic upscaling of that render and the compositor (photo + the oracle's
motion and occlusion) are compared with the true 512-px frame: PSNR in dB (higher is closer) and the variance of
the Laplacian (sharpness; the true frame's own is printed for scale). Nothing here downloads anything.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .cli import ArgumentParser, dimensions
from .composite import Compositor
from .framing import CropBox, PhotoLayout, canvas_placement, crop_placement, crop_square
from .protocol import RenderedFrame

ORACLE_SIZE = 512          # the photo and the true frame
MODEL_SIZE = 256           # what the oracle renders, like FOMM
FIELD_SIZE = 64            # the motion field it reports, like FOMM's dense motion
SOFTNESS = 1.0             # Gaussian sigma (model pixels) of the oracle's render: FOMM's output is this soft


def sample_photo(size: int = ORACLE_SIZE) -> np.ndarray:
    """uint8 RGB portrait: scikit-image's astronaut (bundled, no download), resized to size x size."""
    from skimage.data import astronaut

    photo = astronaut()
    return photo if photo.shape[0] == size else cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)


def laplacian_variance(rgb: np.ndarray) -> float:
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


# --- the oracle -----------------------------------------------------------------------------------------------
def _true_motion(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) [size, size] float32: for each pixel of the true frame, the photo position (pixel index) it
    shows. The head (around the face) turns by 4 degrees and moves 7 px right, 5 px up; the mouth area stretches
    down; the weight of the motion falls smoothly to zero away from the head, like FOMM's background mask."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = 0.43 * size, 0.30 * size                 # the face in the astronaut photo
    angle = math.radians(4.0)
    dx, dy = x - cx, y - cy
    # backward map: output -> source, so rotate by -angle and shift back
    src_x = cx + math.cos(angle) * dx + math.sin(angle) * dy - 0.014 * size
    src_y = cy - math.sin(angle) * dx + math.cos(angle) * dy + 0.010 * size
    mouth = np.exp(-(((x - cx) / (0.06 * size)) ** 2 + ((y - (cy + 0.075 * size)) / (0.03 * size)) ** 2))
    src_y -= 0.012 * size * mouth                     # the lower lip moves down
    weight = np.exp(-(((x - cx) / (0.28 * size)) ** 2 + ((y - cy) / (0.34 * size)) ** 2) ** 2)
    return ((x + weight * (src_x - x)).astype(np.float32), (y + weight * (src_y - y)).astype(np.float32))


def _new_content(size: int) -> np.ndarray:
    """[size, size] float in [0, 1]: where the true frame shows what the photo does not (the opened mouth)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = 0.43 * size, 0.30 * size + 0.078 * size
    inside = ((x - cx) / (0.030 * size)) ** 2 + ((y - cy) / (0.011 * size)) ** 2
    return np.clip(1.5 - inside, 0.0, 1.0).astype(np.float32)


def oracle_case(photo: np.ndarray | None = None, *, align_corners: bool = True) -> dict:
    """The true frame, the oracle's RenderedFrame for it, and the photo: what every method is compared on."""
    photo = sample_photo() if photo is None else photo
    size = photo.shape[0]
    map_x, map_y = _true_motion(size)
    truth = cv2.remap(photo, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    new = _new_content(size)[..., None]
    truth = (truth * (1.0 - new) + np.array([70.0, 20.0, 25.0]) * new + 0.5).astype(np.uint8)
    render = cv2.resize(truth, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
    render = cv2.GaussianBlur(render, (0, 0), SOFTNESS)
    # the field FOMM would report: at each 64-grid position (the engine's normalized coordinates), the source
    # position, sampled from the true motion (photo pixels -> model pixels -> normalized)
    lattice = np.linspace(-1.0, 1.0, FIELD_SIZE)
    scale = size / MODEL_SIZE
    to_model = (MODEL_SIZE - 1) / 2.0 if align_corners else MODEL_SIZE / 2.0
    model_pixels = (lattice + 1.0) * to_model + (0.0 if align_corners else -0.5)  # model pixel index
    photo_pixels = (model_pixels + 0.5) * scale - 0.5
    at = [a.astype(np.float32) for a in np.meshgrid(photo_pixels, photo_pixels)]
    sx = cv2.remap(map_x, *at, cv2.INTER_LINEAR).astype(np.float64)
    sy = cv2.remap(map_y, *at, cv2.INTER_LINEAR).astype(np.float64)

    def normalized(source_photo_pixel):
        model = (source_photo_pixel + 0.5) / scale - 0.5
        return (model - (0.0 if align_corners else -0.5)) / to_model - 1.0

    deformation = torch.from_numpy(np.stack([normalized(sx), normalized(sy)], axis=-1)).float()[None]
    occlusion = 1.0 - cv2.resize(new[..., 0], (FIELD_SIZE, FIELD_SIZE), interpolation=cv2.INTER_AREA)
    frame = RenderedFrame(torch.from_numpy(render).permute(2, 0, 1)[None].float() / 255.0, deformation,
                          torch.from_numpy(np.ascontiguousarray(occlusion)).float()[None, None])
    return {"photo": photo, "truth": truth, "render": render, "frame": frame, "new_content": new[..., 0]}


def whole_photo_layout(size: int, image_size: int = MODEL_SIZE) -> PhotoLayout:
    """The photo is the canvas and the crop is the whole photo (every side meets the photo's edge: nothing fades)."""
    return PhotoLayout((size, size), (0, 0, size, size), crop_placement(CropBox(size / 2, size / 2, size), image_size),
                       image_size)


def oracle_report(*, resampler: str = "auto", align_corners: bool = True) -> tuple[dict, dict]:
    """(figures, pictures): PSNR (dB) and Laplacian variance of bicubic upscaling and of the compositor against the
    true frame; the three pictures (uint8 RGB) to look at."""
    case = oracle_case(align_corners=align_corners)
    photo, truth, frame = case["photo"], case["truth"], case["frame"]
    size = photo.shape[0]
    bicubic = cv2.resize(case["render"], (size, size), interpolation=cv2.INTER_CUBIC)
    compositor = Compositor((size, size), MODEL_SIZE, align_corners=align_corners, resampler=resampler)
    crop = cv2.resize(photo, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
    composite = compositor.compose(compositor.plate("oracle", photo, whole_photo_layout(size), crop), frame).copy()
    mouth = case["new_content"] > 0.5
    return {"size": size, "resampler": compositor.resampler,
            "bicubic_db": psnr(bicubic, truth), "composite_db": psnr(composite, truth),
            "bicubic_new_db": psnr(bicubic[mouth], truth[mouth]),
            "composite_new_db": psnr(composite[mouth], truth[mouth]),
            "bicubic_laplacian": laplacian_variance(bicubic), "composite_laplacian": laplacian_variance(composite),
            "truth_laplacian": laplacian_variance(truth)}, {"bicubic": bicubic, "composite": composite,
                                                             "truth": truth}


def call_oracle(backdrop: np.ndarray, layout: PhotoLayout, *, turn: float = 5.0) -> tuple[RenderedFrame, np.ndarray]:
    """The oracle at call resolution: (the rendered frame of the avatar's square, the true canvas frame). The head
    (the middle of the square, a little above) turns by `turn` degrees and moves a little; the motion's weight
    falls off smoothly around the head and reaches past the square (hair, collar), as a real head's would."""
    height, width = backdrop.shape[:2]
    x0, y0, x1, y1 = layout.crop_rect
    side = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.05 * side
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = math.radians(turn)
    dx, dy = x - cx, y - cy
    src_x = cx + math.cos(angle) * dx + math.sin(angle) * dy - 0.03 * side
    src_y = cy - math.sin(angle) * dx + math.cos(angle) * dy + 0.02 * side
    weight = np.exp(-((dx / (0.45 * side)) ** 2 + (dy / (0.55 * side)) ** 2))
    map_x, map_y = (x + weight * (src_x - x)).astype(np.float32), (y + weight * (src_y - y)).astype(np.float32)
    truth = cv2.remap(backdrop, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    size, crop = layout.image_size, layout.crop
    # the square as the model would render it: cut like the avatar's own square, at 256 px, softened
    square = cv2.warpAffine(truth, np.array([[crop.sx, 0, crop.dx + 0.5 * crop.sx - 0.5],
                                             [0, crop.sy, crop.dy + 0.5 * crop.sy - 0.5]]), (size, size),
                            flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    render = cv2.GaussianBlur(square, (0, 0), SOFTNESS)
    lattice = np.linspace(0.0, size - 1.0, FIELD_SIZE)  # field positions in model pixels (align_corners=True)
    at = [a.astype(np.float32) for a in np.meshgrid((lattice + 0.5) * crop.sx + crop.dx - 0.5,
                                                    (lattice + 0.5) * crop.sy + crop.dy - 0.5)]
    source_x = (cv2.remap(map_x, *at, cv2.INTER_LINEAR) + 0.5 - crop.dx) / crop.sx - 0.5
    source_y = (cv2.remap(map_y, *at, cv2.INTER_LINEAR) + 0.5 - crop.dy) / crop.sy - 0.5
    deformation = np.stack([source_x, source_y], axis=-1) / (size - 1) * 2.0 - 1.0
    frame = RenderedFrame(torch.from_numpy(render).permute(2, 0, 1)[None].float() / 255.0,
                          torch.from_numpy(deformation.astype(np.float32))[None], torch.ones(1, 1, FIELD_SIZE,
                                                                                               FIELD_SIZE))
    return frame, truth


# --- cost at call resolution ------------------------------------------------------------------------------------
def call_scene(canvas=(1280, 720), face: int = 500, image_size: int = MODEL_SIZE) -> dict:
    """A portrait on a `canvas` frame (fit), its crop square `face` canvas pixels wide on whole pixels (as the
    avatar loader places it), and a rendered frame with motion and occlusion."""
    width, height = canvas
    photo = sample_photo(min(width, height))
    placement, (new_w, new_h) = canvas_placement(photo.shape[1], photo.shape[0], width, height, "fit")
    scaled = cv2.resize(photo, (new_w, new_h), interpolation=cv2.INTER_AREA)
    backdrop = np.full((height, width, 3), 32, np.uint8)
    left, top = int(placement.dx), int(placement.dy)
    backdrop[top:top + new_h, left:left + new_w] = scaled
    side = min(face, new_w, new_h)
    box = CropBox(0.43 * new_w, min(max(0.36 * new_h, side / 2), new_h - side / 2), side)
    crop = crop_square(scaled, box, image_size)
    layout = PhotoLayout(canvas, (left, top, left + new_w, top + new_h),
                         crop_placement(box, image_size).then(placement), image_size)
    generator = torch.Generator().manual_seed(0)
    field = torch.stack(torch.meshgrid(torch.linspace(-1, 1, FIELD_SIZE), torch.linspace(-1, 1, FIELD_SIZE),
                                       indexing="xy"), dim=-1)[None]
    wobble = torch.nn.functional.interpolate(0.02 * torch.randn(1, 2, 8, 8, generator=generator),
                                             size=(FIELD_SIZE, FIELD_SIZE), mode="bicubic", align_corners=True)
    field = field + wobble.permute(0, 2, 3, 1)  # a smooth motion, like the dense motion network's
    render = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    occlusion = 0.6 + 0.4 * torch.rand(1, 1, FIELD_SIZE, FIELD_SIZE, generator=generator)
    return {"backdrop": backdrop, "layout": layout, "crop": crop, "frame": RenderedFrame(render, field, occlusion)}


def time_compose(scene: dict, *, device="cpu", resampler: str = "auto", frames: int = 30, warmup: int = 3) -> dict:
    compositor = Compositor(scene["layout"].canvas, scene["layout"].image_size, device=device,
                            resampler=resampler)
    frame = RenderedFrame(*(t.to(device) for t in (scene["frame"].image, scene["frame"].deformation,
                                                    scene["frame"].occlusion)))
    plate = compositor.plate("bench", scene["backdrop"], scene["layout"], scene["crop"])
    compose_ms, cpu_ms, rest_ms = [], [], []
    for index in range(warmup + frames):
        start, cpu = time.perf_counter(), time.process_time()
        compositor.compose(plate, frame)  # ends with the region on the host: includes the device sync
        middle, cpu_end = time.perf_counter(), time.process_time()
        compositor.rest(plate)
        end = time.perf_counter()
        if index >= warmup:
            compose_ms.append((middle - start) * 1000.0)
            cpu_ms.append((cpu_end - cpu) * 1000.0)  # every thread's CPU time: what other processes cannot inflate
            rest_ms.append((end - middle) * 1000.0)
    x0, y0, x1, y1 = plate.region
    return {"resampler": compositor.resampler, "device": str(torch.device(device)), "ms": statistics.median(compose_ms),
            "min_ms": min(compose_ms), "cpu_ms": statistics.median(cpu_ms), "rest_ms": statistics.median(rest_ms),
            "region": (x1 - x0, y1 - y0)}


def run(*, canvas=(1280, 720), face: int = 500, frames: int = 30, device: str = "auto") -> dict:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    scene = call_scene(canvas, face)
    resamplers = ("opencv", "torch") if torch.device(device).type == "cpu" else ("torch",)
    timings = [time_compose(scene, device=device, resampler=r, frames=frames) for r in resamplers]
    quality, _ = oracle_report()
    return {"canvas": list(canvas), "face": face, "frames": frames, "threads": torch.get_num_threads(),
            "timings": timings, "oracle": quality}


def format_report(result: dict) -> list[str]:
    width, height = result["canvas"]
    lines = []
    for t in result["timings"]:
        region = "x".join(map(str, t["region"]))
        lines.append(f"composite {width}x{height}, region {region} px, {t['resampler']} on {t['device']}: "
                     f"{t['ms']:.1f} ms per frame (min {t['min_ms']:.1f}; CPU time {t['cpu_ms']:.1f} ms, all "
                     f"threads); the photo at rest {t['rest_ms']:.2f} ms")
    q = result["oracle"]
    lines.append(f"composite oracle ({q['size']} px true frame from a 256-px render, {q['resampler']}): "
                 f"PSNR bicubic upscale {q['bicubic_db']:.1f} dB, composite {q['composite_db']:.1f} dB "
                 f"(new content: {q['bicubic_new_db']:.1f} / {q['composite_new_db']:.1f} dB); Laplacian variance "
                 f"bicubic {q['bicubic_laplacian']:.0f}, composite {q['composite_laplacian']:.0f} "
                 f"({q['composite_laplacian'] / q['bicubic_laplacian']:.1f}x), true frame {q['truth_laplacian']:.0f}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--composite-canvas", dest="composite_canvas", type=dimensions(low=16),
                        default=(1280, 720), metavar="WxH",
                        help="output frame of the composite rows (default 1280x720)")
    parser.add_argument("--composite-face", dest="composite_face", type=int, default=500, metavar="PX",
                        help="side of the crop square on that frame (default 500)")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m engines.composite_bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--frames", type=int, default=30, help="timed frames (default 30)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.frames < 1 or not 16 <= args.composite_face <= 4096:
        print("error: --frames must be >= 1 and --composite-face 16..4096", file=sys.stderr)
        return 2
    result = run(canvas=args.composite_canvas, face=args.composite_face, frames=args.frames, device=args.device)
    print("\n".join(format_report(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
