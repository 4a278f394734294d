"""Compositing: the animated crop goes back into the avatar's own photo, at the output size.

The model sees a 256-px square cut around the face (engines/framing.py PhotoLayout says where it lies on the
canvas); the call should see the whole photo at the canvas' resolution, with only the face moving. Per frame:

1. The photo's own pixels, moved by the model's motion. The generator's deformation (64x64: for each output
   position the avatar position it came from, RenderedFrame.deformation) is sampled at every canvas pixel of the
   crop square and used to warp the photo at full resolution: detail the 256-px render never had (hair, skin,
   eyelashes) moves with the face instead of being upscaled.
2. The render decides what the photo cannot know. Its low frequencies (4-px cells of the 256 square) replace the
   warped photo's, so lighting and shading changes and any colour drift of the render show; where the generator
   paints new content (low occlusion: an opened mouth, uncovered background) or its render disagrees with the
   warped photo (eyes closed in the render, open in the photo), the render's own pixels win. The render's colour
   is shifted to the photo's, measured in the outer ring of the square, so the pasted region matches around it.
3. No seam. A soft mask, built once per avatar and locked to the crop square (never from per-frame landmarks),
   tapers the *motion* itself to zero towards every side of the square beyond which the photo goes on: the warp
   stretches like a rubber sheet into the still photo instead of cross-fading two pictures (which would show
   hair, neck and shoulders twice). The render's weight fades out inside that band, except where the model's
   occlusion says it paints new content, which keeps showing as far as the motion reaches. Outside the mask every
   pixel is exactly the photo's; sides where the square meets the photo's own edge are not faded at all (an
   avatar already framed like the crop animates to its edges, as it did without compositing).

The decisions (motion taper, trust, colour, weights) are torch on the engine's device, on the small maps (the 64x64
field and cells, the 256x256 render). What is left at full resolution is upsampling those maps to the crop's
region of the canvas, warping the photo, and one multiply-add. On a GPU that is torch too (`grid_sample`; one
transfer of the changed region to the host: the frame's one device sync). On the CPU it is OpenCV into buffers
allocated once per avatar: separable `resize` when the square sits on whole canvas pixels (the avatar loader
always places it so), `remap` for the photo - several times faster than torch's CPU `grid_sample` (measured by
`python -m engines.bench --composite-only`). Both compute the same picture (tests/test_composite.py holds them
together). The canvas (numpy, what the sinks send) is allocated once per output size and only the crop's region
of it is rewritten per frame. Prepared per avatar (a `Plate`): the photo patch the warp samples, the masks, the
sampling grids - a few ms, once; a few plates are kept so that switching avatars is instant.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .framing import PhotoLayout

# The mask, as fractions of the crop side measured from each faded side of the square.
MOTION_ZERO, MOTION_RAMP = 0.03, 0.15   # no motion in the outer 3% (the photo, exactly), full motion from 18% in
RENDER_ZERO, RENDER_RAMP = 0.05, 0.15   # none of the render in the outer 5%, all of it (as decided) from 20% in
RING = 0.25                             # the render's colour is compared with the photo's in the outer quarter
MISMATCH = (0.04, 0.16)                 # mean |render - warped photo| of a cell: trusted below, the render's above
COLOUR_LIMIT = 0.2                      # the largest colour shift applied to the render (per channel, of 1.0)
COLOUR_FOLLOW = 0.05                    # per frame, how far the shift follows the latest measurement (~1 s at
                                        # 25 fps): a steady tint goes, the render's own changes of light stay
PATCH_MARGIN = 0.3                      # the photo patch the warp samples: the square plus this much of its side


@contextmanager
def _one_torch_thread():
    """torch's own threads off for the small maps on the CPU: tens of microseconds of work per operation, where
    waking a second thread costs as much - and when another process holds that core (a call app, the capture),
    the operation waits for it. OpenCV keeps its threads for the full-resolution work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _to_normalized(m: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """Model-square pixel-edge coordinate -> the engine's normalized coordinate (grid_sample semantics)."""
    if align_corners:
        return 2.0 * (m - 0.5) / (size - 1) - 1.0
    return 2.0 * m / size - 1.0


def _from_normalized(size: int, align_corners: bool) -> tuple[float, float]:
    """(scale, shift) such that model pixel-edge coordinate = g * scale + shift for the engine's normalized g."""
    if align_corners:
        return (size - 1) / 2.0, (size - 1) / 2.0 + 0.5
    return size / 2.0, size / 2.0


def _faded_distance(mx: torch.Tensor, my: torch.Tensor, size: int, sides) -> torch.Tensor:
    """Distance (as a fraction of the square's side) from model position (mx, my) to the nearest faded side."""
    left, top, right, bottom = sides
    far = torch.full_like(mx, 10.0)
    d = far
    if left:
        d = torch.minimum(d, mx / size)
    if right:
        d = torch.minimum(d, (size - mx) / size)
    if top:
        d = torch.minimum(d, my / size)
    if bottom:
        d = torch.minimum(d, (size - my) / size)
    return d


def _edge_distance(mx: torch.Tensor, my: torch.Tensor, size: int) -> torch.Tensor:
    return torch.minimum(torch.minimum(mx, size - mx), torch.minimum(my, size - my)) / size


def _box_blur(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over a `factor`-pixel box centred on each pixel (a [1/2, 1, ..., 1, 1/2] / factor kernel, separable):
    the band the render's 4-px cells hold, so a cell of the render and of the warped photo compare alike."""
    if factor <= 1:
        return image
    if factor % 2:
        taps = torch.ones(factor, dtype=image.dtype, device=image.device)
    else:  # an even box is not centred on a pixel: half weights at both ends centre it
        taps = torch.ones(factor + 1, dtype=image.dtype, device=image.device)
        taps[0] = taps[-1] = 0.5
    taps /= factor
    channels = image.shape[1]
    pad = factor // 2
    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(padded, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(out, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)


@dataclass
class FieldMaps:
    """What depends on the size h x w of the model's motion field (64x64 for vox), made on the first frame."""

    identity: torch.Tensor      # [1,2,h,w] the coordinate grid: the field of "nothing moves"
    taper: torch.Tensor         # [1,1,h,w] how much of the model's motion applies at each field position
    to_patch: torch.Tensor      # [1,2,1,1] scale and ...
    shift: torch.Tensor         # [1,2,1,1] ... shift: engine-normalized source -> photo patch pixels
    cells: torch.Tensor         # [1,h,w,2] engine-normalized centres of the render's h x w cells
    ring: torch.Tensor          # [1,1,h,w] the outer ring of cells, where the render's colour meets the photo's
    render_weight: torch.Tensor  # [1,1,h,w] the render's weight at the cells (before the motion decides)
    motion_weight: torch.Tensor  # [1,1,h,w] the motion taper at the cells
    crop_cells: torch.Tensor    # [1,3,S,S] the model's input square, blurred to the band of the render's cells
    pixels: torch.Tensor        # [1,S,S,2] engine-normalized centres of the model's pixels
    still: torch.Tensor         # [1,2,S,S] where each model pixel lies in the photo patch (pixels)


@dataclass
class Plate:
    """One avatar prepared for one output size: everything the per-frame work needs that does not change."""

    layout: PhotoLayout
    backdrop: np.ndarray        # uint8 [H,W,3]: the photo on the canvas (what every pixel outside the mask shows)
    region: tuple[int, int, int, int]
    patch: object               # the photo around the square, what the warp samples: [1,3,ph,pw] float tensor
                                # (torch) or uint8 [ph,pw,3] (OpenCV)
    patch_box: tuple[int, int, int, int]   # (x0, y0, width, height) of the patch on the canvas
    crop: torch.Tensor          # [1,3,S,S] the model's input square (what the engine encoded)
    sides: tuple[bool, bool, bool, bool]
    field_grid: torch.Tensor | None = None  # torch: [1,n_h,n_w,2] engine-normalized positions of region pixels
    still_grid: torch.Tensor | None = None  # torch: [1,2,n_h,n_w] the region pixels' own places in the patch
    pixel_grid: torch.Tensor | None = None  # torch: [1,n_h,n_w,2] the same on the model's pixel grid
    square: tuple[int, int, int] | None = None  # OpenCV: (x, y, side) when the square is on whole pixels
    pixel_affine: np.ndarray | None = None  # OpenCV otherwise: 2x3 region pixel -> model pixel
    buffers: dict = field(default_factory=dict)  # OpenCV: the arrays each frame writes into
    fields: dict = field(default_factory=dict)   # (h, w) -> FieldMaps
    colour: torch.Tensor | None = None           # [1,3,1,1] the render's colour shift against the photo, followed


RESAMPLERS = ("auto", "torch", "opencv")


def _on_whole_pixels(layout: PhotoLayout) -> tuple[int, int, int] | None:
    """(x, y, side) of the crop square on the canvas when it starts on a whole pixel and its side is a whole number
    of pixels (so the model's pixel grid scales onto the canvas' with cv2.resize's own alignment), else None."""
    crop, size = layout.crop, layout.image_size
    side = crop.sx * size
    values = (crop.dx, crop.dy, side, crop.sy * size)
    if any(abs(v - round(v)) > 1e-6 for v in values) or round(side) != round(crop.sy * size):
        return None
    return int(round(crop.dx)), int(round(crop.dy)), int(round(side))


class Compositor:
    """Puts rendered frames of each avatar into that avatar's photo on a canvas of `canvas` = (width, height).

    `plate(key, backdrop, layout, crop_rgb)` prepares an avatar once (kept for the `keep` most recent avatars);
    `compose(plate, frame)` returns the canvas with the frame composited, `rest(plate)` the photo alone. The canvas
    returned is the compositor's own buffer: valid until the next call (sinks send or copy it at once).
    `resampler`: "torch" (grid_sample on the device), "opencv" (CPU only), "auto" = OpenCV on the CPU, else torch.
    """

    def __init__(self, canvas: tuple[int, int], image_size: int, *, device="cpu", align_corners: bool = True,
                 keep: int = 3, resampler: str = "auto"):
        if resampler not in RESAMPLERS:
            raise ValueError(f"unknown resampler {resampler!r} (one of {', '.join(RESAMPLERS)})")
        self.width, self.height = int(canvas[0]), int(canvas[1])
        self.image_size = int(image_size)
        self.device = torch.device(device)
        if resampler == "auto":
            resampler = "opencv" if self.device.type == "cpu" else "torch"
        if resampler == "opencv" and self.device.type != "cpu":
            raise ValueError("the OpenCV resampler runs on the CPU only")
        self.resampler = resampler
        self.align_corners = bool(align_corners)
        self.keep = max(1, int(keep))
        self.canvas = np.zeros((self.height, self.width, 3), np.uint8)
        self._canvas_view = torch.from_numpy(self.canvas)  # the same memory, for copies straight from the device
        self._plates: OrderedDict = OrderedDict()
        self._shown: Plate | None = None      # the plate whose backdrop the canvas holds
        self._changed = False                 # the shown plate's region holds a composite, not the photo

    # --- per avatar -------------------------------------------------------------------------------------------
    def plate(self, key, backdrop: np.ndarray, layout: PhotoLayout, crop_rgb: np.ndarray) -> Plate:
        """The prepared avatar for `key` (made on first use, then kept while among the `keep` most recent)."""
        plate = self._plates.get(key)
        if plate is None or plate.backdrop is not backdrop or plate.layout != layout:
            plate = self._prepare(backdrop, layout, crop_rgb)
            self._plates[key] = plate
        self._plates.move_to_end(key)
        for old_key in list(self._plates)[:-self.keep]:
            if self._plates[old_key] is not self._shown:  # the one on the canvas stays until another is shown
                del self._plates[old_key]
        return plate

    @torch.inference_mode()
    def _prepare(self, backdrop: np.ndarray, layout: PhotoLayout, crop_rgb: np.ndarray) -> Plate:
        if backdrop.shape != (self.height, self.width, 3) or tuple(layout.canvas) != (self.width, self.height):
            raise ValueError(f"a plate for {layout.canvas} / backdrop {backdrop.shape} on a "
                             f"{self.width}x{self.height} compositor")
        size, dev = self.image_size, self.device
        x0, y0, x1, y1 = region = layout.region()
        crop = layout.crop
        # the photo patch: the square and a margin around it (motion may bring in what lies just outside), clipped
        # to the photo so that sampling beyond it repeats the photo's edge, never the canvas border colour
        cx0, cy0, cx1, cy1 = layout.crop_rect
        margin = PATCH_MARGIN * max(cx1 - cx0, cy1 - cy0)
        px0, py0, px1, py1 = layout.photo_rect
        qx0, qy0 = max(px0, math.floor(cx0 - margin)), max(py0, math.floor(cy0 - margin))
        qx1, qy1 = max(min(px1, math.ceil(cx1 + margin)), qx0 + 1), max(min(py1, math.ceil(cy1 + margin)), qy0 + 1)
        patch_u8 = np.ascontiguousarray(backdrop[qy0:qy1, qx0:qx1])
        crop_t = torch.from_numpy(np.ascontiguousarray(crop_rgb)).to(dev).permute(2, 0, 1)[None].float() / 255.0
        if crop_t.shape[-1] != size or crop_t.shape[-2] != size:
            crop_t = F.interpolate(crop_t, size=(size, size), mode="area")
        plate = Plate(layout=layout, backdrop=backdrop, region=region, patch=patch_u8,
                      patch_box=(qx0, qy0, qx1 - qx0, qy1 - qy0), crop=crop_t, sides=layout.feathered_sides())
        n_w, n_h = x1 - x0, y1 - y0
        f32 = dict(device=dev, dtype=torch.float32)
        if self.resampler == "torch":
            plate.patch = torch.from_numpy(patch_u8).to(dev).permute(2, 0, 1)[None].float().div_(255.0)
            # model-square positions of the region's pixel centres
            xs = (torch.arange(x0, x1, dtype=torch.float64) + 0.5 - crop.dx) / crop.sx
            ys = (torch.arange(y0, y1, dtype=torch.float64) + 0.5 - crop.dy) / crop.sy
            my, mx = torch.meshgrid(ys, xs, indexing="ij")
            plate.field_grid = torch.stack([_to_normalized(mx, size, self.align_corners),
                                            _to_normalized(my, size, self.align_corners)], dim=-1)[None].to(**f32)
            plate.pixel_grid = torch.stack([2.0 * mx / size - 1.0, 2.0 * my / size - 1.0], dim=-1)[None].to(**f32)
            jy, jx = torch.meshgrid(torch.arange(y0 - qy0, y1 - qy0), torch.arange(x0 - qx0, x1 - qx0),
                                    indexing="ij")
            plate.still_grid = torch.stack([jx, jy])[None].to(**f32)
            return plate
        plate.square = _on_whole_pixels(layout)
        if plate.square is not None:
            full = (plate.square[2], plate.square[2])  # the whole square is scaled; the region is a view of it
        else:
            full = (n_h, n_w)
            # region pixel (i, j) -> model pixel index ((x0 + i + 0.5 - dx) / sx - 0.5, likewise for y)
            plate.pixel_affine = np.array([[1.0 / crop.sx, 0.0, (x0 + 0.5 - crop.dx) / crop.sx - 0.5],
                                           [0.0, 1.0 / crop.sy, (y0 + 0.5 - crop.dy) / crop.sy - 0.5]], np.float64)
        # the photo's own position of each region pixel, in patch pixels: what "nothing moves" samples
        jx, jy = np.meshgrid(np.arange(x0 - qx0, x1 - qx0, dtype=np.float32),
                             np.arange(y0 - qy0, y1 - qy0, dtype=np.float32))
        plate.buffers = {"still": np.dstack([jx, jy]), "map": np.empty((n_h, n_w, 2), np.float32),
                         "warped": np.empty((n_h, n_w, 3), np.uint8), "product": np.empty((n_h, n_w, 3), np.float32),
                         "pixels": np.empty((n_h, n_w, 3), np.uint8), "offset": np.empty((*full, 2), np.float32),
                         "keep": np.empty((*full, 3), np.float32), "add": np.empty((*full, 3), np.float32)}
        return plate

    def _fields(self, plate: Plate, h: int, w: int) -> FieldMaps:
        maps = plate.fields.get((h, w))
        if maps is not None:
            return maps
        size, align = self.image_size, self.align_corners
        f32 = dict(device=self.device, dtype=torch.float32)
        gy = torch.linspace(-1.0, 1.0, h, dtype=torch.float64)
        gx = torch.linspace(-1.0, 1.0, w, dtype=torch.float64)
        grid_y, grid_x = torch.meshgrid(gy, gx, indexing="ij")
        scale, offset = _from_normalized(size, align)
        taper = smoothstep((_faded_distance(grid_x * scale + offset, grid_y * scale + offset, size, plate.sides)
                            - MOTION_ZERO) / MOTION_RAMP)
        # engine-normalized source position -> model edge -> canvas -> photo patch pixel (index) coordinates
        crop = plate.layout.crop
        qx0, qy0 = plate.patch_box[:2]
        ax, bx = scale * crop.sx, offset * crop.sx + crop.dx - qx0 - 0.5
        ay, by = scale * crop.sy, offset * crop.sy + crop.dy - qy0 - 0.5
        # the render's cells: cell (i, j) averages the model pixels of its 1/h x 1/w of the square
        cell_y = (torch.arange(h, dtype=torch.float64) + 0.5) * size / h
        cell_x = (torch.arange(w, dtype=torch.float64) + 0.5) * size / w
        cyy, cxx = torch.meshgrid(cell_y, cell_x, indexing="ij")
        cells = torch.stack([_to_normalized(cxx, size, align), _to_normalized(cyy, size, align)], dim=-1)[None]
        at_cells = _faded_distance(cxx, cyy, size, plate.sides)
        centres = torch.arange(size, dtype=torch.float64) + 0.5
        py, px = torch.meshgrid(centres, centres, indexing="ij")
        pixels = torch.stack([_to_normalized(px, size, align), _to_normalized(py, size, align)], dim=-1)[None]
        still = torch.stack([px * crop.sx + crop.dx - qx0 - 0.5, py * crop.sy + crop.dy - qy0 - 0.5])[None]
        maps = FieldMaps(identity=torch.stack([grid_x, grid_y])[None].to(**f32), taper=taper[None, None].to(**f32),
                         to_patch=torch.tensor([ax, ay], **f32).view(1, 2, 1, 1),
                         shift=torch.tensor([bx, by], **f32).view(1, 2, 1, 1), cells=cells.to(**f32),
                         ring=(_edge_distance(cxx, cyy, size) < RING)[None, None].to(**f32),
                         render_weight=smoothstep((at_cells - RENDER_ZERO) / RENDER_RAMP)[None, None].to(**f32),
                         motion_weight=smoothstep((at_cells - MOTION_ZERO) / MOTION_RAMP)[None, None].to(**f32),
                         crop_cells=_box_blur(plate.crop, max(1, round(size / max(h, w)))),
                         pixels=pixels.to(**f32), still=still.to(**f32))
        plate.fields[(h, w)] = maps
        return maps

    # --- per frame ----------------------------------------------------------------------------------------------
    def rest(self, plate: Plate) -> np.ndarray:
        """The canvas showing the avatar's photo as it is (before calibration, a frame that failed)."""
        self._show(plate)
        if self._changed:
            x0, y0, x1, y1 = plate.region
            self.canvas[y0:y1, x0:x1] = plate.backdrop[y0:y1, x0:x1]
            self._changed = False
        return self.canvas

    @torch.inference_mode()
    def compose(self, plate: Plate, frame) -> np.ndarray:
        """The canvas with `frame` (a RenderedFrame of this plate's avatar) composited into the photo."""
        x0, y0, x1, y1 = plate.region
        if x1 <= x0 or y1 <= y0:
            return self.rest(plate)
        with _one_torch_thread() if self.device.type == "cpu" else nullcontext():
            return self._compose(plate, frame)

    def _compose(self, plate: Plate, frame) -> np.ndarray:
        x0, y0, x1, y1 = plate.region
        image, deformation, occlusion = (t[:1].to(self.device, torch.float32)
                                         for t in (frame.image, frame.deformation, frame.occlusion))
        maps = self._fields(plate, deformation.shape[1], deformation.shape[2])
        field = deformation.permute(0, 3, 1, 2)
        motion = self._motion(maps, field)
        a, low = self._weights(plate, maps, image, field, occlusion)
        # on the model's pixel grid: what the render adds, 255 (a * render + low frequencies it changes)
        up = F.interpolate(torch.cat([a, low], dim=1), size=(self.image_size, self.image_size), mode="bilinear",
                           align_corners=False)
        add = up[:, 1:].addcmul_(up[:, :1], image).mul_(255.0)
        self._show(plate)
        if self.resampler == "torch":
            warped = self._warp_torch(plate, maps, motion)
            weights = F.grid_sample(torch.cat([add, 1.0 - up[:, :1]], dim=1), plate.pixel_grid, mode="bilinear",
                                    padding_mode="border", align_corners=False)
            pixels = warped.mul_(255.0 * weights[:, 3:]).add_(weights[:, :3]).add_(0.5).clamp_(0.0, 255.0)
            # to 8 bit on the device, then straight into the canvas: the frame's one device sync
            self._canvas_view[y0:y1, x0:x1].copy_(pixels.to(torch.uint8)[0].permute(1, 2, 0))
        else:
            buffers = plate.buffers
            warped = self._warp_opencv(plate, maps, motion)
            keep = self._to_region(plate, _hwc((1.0 - up[:, :1]).expand(-1, 3, -1, -1)), buffers["keep"])
            add = self._to_region(plate, _hwc(add), buffers["add"])
            product = cv2.multiply(warped, keep, dst=buffers["product"], dtype=cv2.CV_32F)
            # float -> uint8 rounds and saturates here, into the buffer the canvas region is copied from
            self.canvas[y0:y1, x0:x1] = cv2.add(product, add, dst=buffers["pixels"], dtype=cv2.CV_8U)
        self._changed = True
        return self.canvas

    def warp(self, plate: Plate, deformation: torch.Tensor) -> np.ndarray:
        """float32 [n_h,n_w,3] in 0..255: the photo's own pixels in the region, moved by the deformation
        ([1,h,w,2], the engine's grid_sample coordinates) sampled at each canvas pixel, the motion tapered by the
        mask. The layer the detail comes from (tests and the benchmark look at it on its own)."""
        with torch.inference_mode():
            deformation = deformation[:1].to(self.device, torch.float32)
            maps = self._fields(plate, deformation.shape[1], deformation.shape[2])
            motion = self._motion(maps, deformation.permute(0, 3, 1, 2))
            if self.resampler == "torch":
                return self._warp_torch(plate, maps, motion)[0].permute(1, 2, 0).mul(255.0).cpu().numpy()
            return self._warp_opencv(plate, maps, motion).astype(np.float32)

    @torch.inference_mode()
    def mask(self, plate: Plate, field_size: tuple[int, int] = (64, 64)) -> np.ndarray:
        """float32 [n_h,n_w] in 0..1 over the region: how far a frame may change each pixel (the motion's taper,
        and the render's largest weight, where it paints new content). 0: the photo's pixel, always."""
        maps = self._fields(plate, *field_size)
        size, crop = self.image_size, plate.layout.crop
        x0, y0, x1, y1 = plate.region
        xs = (torch.arange(x0, x1, dtype=torch.float64) + 0.5 - crop.dx) / crop.sx
        ys = (torch.arange(y0, y1, dtype=torch.float64) + 0.5 - crop.dy) / crop.sy
        my, mx = torch.meshgrid(ys, xs, indexing="ij")
        at_field = torch.stack([_to_normalized(mx, size, self.align_corners),
                                _to_normalized(my, size, self.align_corners)], dim=-1)[None].float()
        at_pixels = torch.stack([2.0 * mx / size - 1.0, 2.0 * my / size - 1.0], dim=-1)[None].float()
        taper = F.grid_sample(maps.taper.cpu(), at_field, mode="bilinear", padding_mode="border", align_corners=True)
        largest = maps.render_weight + (1.0 - maps.render_weight) * maps.motion_weight
        largest = F.interpolate(largest.cpu(), size=(size, size), mode="bilinear", align_corners=False)
        largest = F.grid_sample(largest, at_pixels, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.maximum(taper, largest)[0, 0].numpy()

    @staticmethod
    def _motion(maps: FieldMaps, field: torch.Tensor) -> torch.Tensor:
        """[1,2,h,w]: the field with its motion tapered (not its pixels) towards the faded sides, as positions in
        the photo patch (pixels). Both steps are affine per axis, so they commute with the upsampling and run on
        the small field."""
        return torch.lerp(maps.identity, field, maps.taper).mul_(maps.to_patch).add_(maps.shift)

    @staticmethod
    def _warp_torch(plate: Plate, maps: FieldMaps, motion: torch.Tensor) -> torch.Tensor:
        # only the displacement from "nothing moves" is upsampled and added to each pixel's own place: at the
        # square's outer half pixel, beyond the field's outermost samples, clamping then repeats a displacement
        # (zero where the motion is tapered), never a position
        displacement = motion - (maps.identity * maps.to_patch + maps.shift)
        grid = F.grid_sample(displacement, plate.field_grid, mode="bilinear", padding_mode="border",
                             align_corners=True).add_(plate.still_grid)
        width, height = plate.patch_box[2:]
        scale = torch.tensor([2.0 / width, 2.0 / height], device=grid.device).view(1, 2, 1, 1)
        grid = grid.add_(0.5).mul_(scale).sub_(1.0)  # patch pixels -> grid_sample's normalized coordinates
        return F.grid_sample(plate.patch, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                             align_corners=False)

    def _warp_opencv(self, plate: Plate, maps: FieldMaps, motion: torch.Tensor) -> np.ndarray:
        # the field goes onto the model's pixel grid (small), then only its displacement from "nothing moves" is
        # upsampled (the still positions are exact whole pixels): resampling rounds a small, smooth offset, never
        # a position
        at_pixels = F.grid_sample(motion, maps.pixels, mode="bilinear", padding_mode="border", align_corners=True)
        buffers = plate.buffers
        offset = self._to_region(plate, _hwc(at_pixels.sub_(maps.still)), buffers["offset"])
        positions = cv2.add(offset, buffers["still"], dst=buffers["map"])
        return cv2.remap(plate.patch, positions, None, cv2.INTER_LINEAR, dst=buffers["warped"],
                         borderMode=cv2.BORDER_REPLICATE)

    def _to_region(self, plate: Plate, source: np.ndarray, buffer: np.ndarray) -> np.ndarray:
        """A map over the model's square (HWC float32, on its pixel grid or any regular grid of cells covering
        it) bilinearly resampled onto the region's pixels."""
        if plate.square is not None:  # separable: the whole square at once, the region is a view of it
            cv2.resize(source, buffer.shape[1::-1], dst=buffer, interpolation=cv2.INTER_LINEAR)
            x0, y0, x1, y1 = plate.region
            sx, sy = plate.square[:2]
            return buffer[y0 - sy:y1 - sy, x0 - sx:x1 - sx]
        fx, fy = self.image_size / source.shape[1], self.image_size / source.shape[0]  # model pixels per cell
        (ax, _, bx), (_, ay, by) = plate.pixel_affine
        affine = np.array([[ax / fx, 0.0, (bx + 0.5) / fx - 0.5], [0.0, ay / fy, (by + 0.5) / fy - 0.5]])
        return cv2.warpAffine(source, affine, buffer.shape[1::-1], dst=buffer,
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def _weights(self, plate: Plate, maps: FieldMaps, image: torch.Tensor, field: torch.Tensor,
                 occlusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a [1,1,h,w], low [1,3,h,w]) on the render's cells: the region's output is
        warped photo * (1 - a) + a * render + low, upsampled. `a` is the render's weight (where it paints new
        content or disagrees with the warped photo, within the mask), `low` the low frequencies it changes where
        the photo is trusted, colour-matched to the photo. Decided on the h x w cells: smooth maps, so the
        full-resolution work stays one warp, two lookups and one multiply-add."""
        size = self.image_size
        h, w = field.shape[-2:]
        render_cells = (F.avg_pool2d(image, size // h) if size % h == 0 and h == w
                        else F.adaptive_avg_pool2d(image, (h, w)))
        at_cells = F.grid_sample(field, maps.cells, mode="bilinear", padding_mode="border", align_corners=True)
        photo_cells = F.grid_sample(maps.crop_cells, at_cells.permute(0, 2, 3, 1), mode="bilinear",
                                    padding_mode="border", align_corners=self.align_corners)
        difference = render_cells - photo_cells
        # the render's colour shift against the photo, where the model says it shows the (moved) avatar
        weight = maps.ring * occlusion
        total = weight.sum()
        colour = (difference * weight).sum(dim=(2, 3), keepdim=True) / total.clamp_min(1e-6)
        colour = colour.clamp(-COLOUR_LIMIT, COLOUR_LIMIT) * (total > 1e-3)
        # followed slowly: a tint of the render is steady, a change of the whole face's light from frame to frame
        # is the render's to show (and a shift that jumped with each frame would make the face flicker)
        colour = colour if plate.colour is None else torch.lerp(plate.colour, colour, COLOUR_FOLLOW)
        plate.colour = colour
        difference = difference - colour
        mismatch = difference.abs().mean(dim=1, keepdim=True)
        low, high = MISMATCH
        trust = occlusion * ((high - mismatch) / (high - low)).clamp(0.0, 1.0)
        # where the model paints new content the render shows as far as the motion reaches, else as the mask says
        shown = maps.render_weight + (1.0 - maps.render_weight) * (1.0 - occlusion) * maps.motion_weight
        a = shown * (1.0 - trust)
        return a, shown * trust * difference - a * colour

    def _show(self, plate: Plate) -> None:
        if self._shown is not plate:
            np.copyto(self.canvas, plate.backdrop)
            self._shown, self._changed = plate, False


def _hwc(tensor: torch.Tensor) -> np.ndarray:
    """[1,C,H,W] (CPU) -> a contiguous float32 HxWxC array for OpenCV."""
    return tensor[0].permute(1, 2, 0).contiguous().numpy()
