"""engines/composite.py: the animated square back into the avatar's own photo, at the output size.

The photo outside the mask is exact; the mask's border shows no seam; a rigid motion through the real engine moves
the photo's full-resolution detail exactly as the engine's own deformation, upsampled, moves it; the oracle
renderer's true frame is matched far better than by upscaling; both resamplers compute the same picture; the
canvas is one buffer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from engines.composite import Compositor
from engines.composite_bench import call_scene, oracle_report, sample_photo, whole_photo_layout
from engines.framing import (Canvas, CropBox, PhotoLayout, Placement, canvas_placement, crop_placement,
                             crop_square)
from engines.image import to_model_input
from engines.protocol import RenderedFrame, identity_motion
from live.pipeline.avatars import FaceFraming, frame_avatar

S = 256


# --- geometry ---------------------------------------------------------------------------------------------------
def test_placements_chain_and_invert():
    a, b = Placement(2.0, 3.0, 5.0, -1.0), Placement(0.5, 0.25, 10.0, 20.0)
    x, y = 7.0, 11.0
    assert a.then(b).point(x, y) == pytest.approx(b.point(*a.point(x, y)))
    assert a.inverse().point(*a.point(x, y)) == pytest.approx((x, y))


def test_crop_placement_is_where_crop_square_takes_its_pixels():
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[..., 0] = np.arange(400)[None, :] % 256       # x in red, y in green: each pixel says where it is
    frame[..., 1] = np.arange(300)[:, None] % 256
    box = CropBox(190.0, 140.0, 128.0)
    crop = crop_square(frame, box, 64)                  # 2x shrink: model pixel i averages frame pixels 2i, 2i+1
    place = crop_placement(box, 64)
    for i in (0, 17, 63):
        x, y = place.point(i + 0.5, i + 0.5)            # the model pixel's centre, in frame pixel-edge coordinates
        assert crop[i, i, 0] == pytest.approx(x - 0.5, abs=0.6) and crop[i, i, 1] == pytest.approx(y - 0.5, abs=0.6)


@pytest.mark.parametrize("mode", ["fit", "fill"])
def test_canvas_placement_covers_or_fits(mode):
    placement, (w, h) = canvas_placement(400, 300, 1280, 720, mode)
    x0, y0, x1, y1 = placement.rect(0, 0, 400, 300)
    if mode == "fit":
        assert (y0, y1) == (0, 720) and 0 < x0 < x1 < 1280 and (w, h) == (960, 720)
    else:
        assert (x0, x1) == (0, 1280) and y0 < 0 and y1 > 720 and (w, h) == (1280, 960)


# --- scenes ------------------------------------------------------------------------------------------------------
def photo_scene(canvas=(480, 320)):
    """The astronaut on a canvas, framed around her face (the avatar loader's own way): faded on every side."""
    loaded = frame_avatar(sample_photo()[..., ::-1].copy(), S, canvas=Canvas(*canvas), framing=FaceFraming())
    assert loaded.face_found and all(loaded.photo.layout.feathered_sides())
    return loaded.photo.backdrop, loaded.photo.layout, loaded.crop


def border_steps(image: np.ndarray, support: np.ndarray) -> np.ndarray:
    """|difference| across every pair of 4-neighbours of which exactly one lies in `support` (the mask's border)."""
    image = image.astype(np.int32)
    steps = []
    for axis in (0, 1):
        a, b = [np.take(image, range(0, image.shape[axis] - 1), axis), np.take(image, range(1, image.shape[axis]),
                                                                             axis)]
        sa, sb = np.take(support, range(0, support.shape[axis] - 1), axis), np.take(support, range(1,
                                                                                             support.shape[axis]),
                                                                                      axis)
        steps.append(np.abs(a - b).max(axis=-1)[sa != sb])
    return np.concatenate(steps)


@pytest.mark.parametrize("resampler", ["opencv", "torch"])
def test_at_rest_the_photo_outside_the_mask_is_exact_and_its_border_shows_no_seam(deterministic_engine, resampler):
    engine = deterministic_engine
    backdrop, layout, crop = photo_scene()
    state = engine.encode(to_model_input(crop))
    at_rest = engine.render(state, state.kp)  # driving = calibration: the relative keypoints equal the source's
    compositor = Compositor(layout.canvas, S, align_corners=engine.align_corners, resampler=resampler)
    plate = compositor.plate("a", backdrop, layout, crop)
    out = compositor.compose(plate, at_rest).copy()
    mask = np.zeros(out.shape[:2], np.float32)
    x0, y0, x1, y1 = plate.region
    mask[y0:y1, x0:x1] = compositor.mask(plate)
    outside = mask == 0
    assert outside.sum() > 0.9 * mask.size - (x1 - x0) * (y1 - y0)  # the region's own outer ring is outside too
    assert np.array_equal(out[outside], backdrop[outside]), "every pixel outside the mask is the photo's"
    assert not np.array_equal(out, backdrop), "the render shows inside (generated weights: not a face)"
    # no seam: the largest step across the mask's border is no larger than the photo's own steps there
    assert border_steps(out, ~outside).max() <= border_steps(backdrop, ~outside).max()
    # and across the whole fading band no step is larger than the photo's largest step in the region
    band = (mask > 0) & (mask < 1)
    region = (slice(y0, y1), slice(x0, x1))
    assert np.abs(np.diff(out[region].astype(int), axis=1)).max(axis=-1)[band[region][:, 1:]].max() <= \
        np.abs(np.diff(backdrop[region].astype(int), axis=1)).max()


def reference_warp(photo: np.ndarray, deformation: torch.Tensor, layout: PhotoLayout) -> np.ndarray:
    """The photo moved by the deformation as the spec's `deformed` does it, written out independently: the 64x64
    field interpolated bilinearly at each canvas pixel's position in the model square (the engine's
    align_corners=True coordinates), its source position taken back to the canvas, the photo sampled there."""
    height, width = photo.shape[:2]
    crop = layout.crop
    field = deformation[0].double().numpy()  # [h, w, 2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    model_x, model_y = (xs + 0.5 - crop.dx) / crop.sx - 0.5, (ys + 0.5 - crop.dy) / crop.sy - 0.5  # model pixels
    lattice = [model_y * 63 / (S - 1), model_x * 63 / (S - 1)]                                   # field index
    gx = ndimage.map_coordinates(field[..., 0], lattice, order=1, mode="nearest")
    gy = ndimage.map_coordinates(field[..., 1], lattice, order=1, mode="nearest")
    source_x = ((gx + 1) / 2 * (S - 1) + 0.5) * crop.sx + crop.dx - 0.5                          # canvas pixels
    source_y = ((gy + 1) / 2 * (S - 1) + 0.5) * crop.sy + crop.dy - 0.5
    return np.dstack([ndimage.map_coordinates(photo[..., c].astype(np.float64), [source_y, source_x], order=1,
                                              mode="nearest") for c in range(3)])


def test_a_rigid_motion_moves_the_photos_detail_as_the_engines_own_deformation_upsampled(deterministic_engine):
    engine = deterministic_engine
    photo = sample_photo()                                   # 512 px: twice the model's square
    layout = whole_photo_layout(photo.shape[0])            # no side fades: the motion applies everywhere
    crop = sample_photo(S)
    state = engine.encode(to_model_input(crop))
    shift = torch.tensor([0.06, -0.04])
    moved = state.kp.__class__(state.kp.value + shift, state.kp.jacobian.clone())  # every keypoint alike
    frame = engine.render(state, moved)
    identity, _ = identity_motion(1)
    offset = frame.deformation - identity
    # every local motion is that translation (source = driving - shift), blended with the identity only by the
    # background mask: the offset is -shift scaled by a weight in [0, 1]
    weight = -(offset * shift).sum(-1) / (shift * shift).sum()
    assert weight.min() > -1e-3 and weight.max() < 1 + 1e-3 and weight.max() > 0.5
    assert (offset + weight[..., None] * shift).abs().max() < 1e-4

    reference = reference_warp(photo, frame.deformation, layout)
    inner = (slice(1, -1), slice(1, -1))  # the outermost half pixel lies beyond the field's outermost samples
    warped = {}
    for resampler in ("torch", "opencv"):
        compositor = Compositor(layout.canvas, S, align_corners=True, resampler=resampler)
        warped[resampler] = compositor.warp(compositor.plate("a", photo, layout, crop), frame.deformation)
    assert np.abs(warped["torch"][inner] - reference[inner]).max() < 0.01, "exactly as the upsampled deformation"
    difference = np.abs(warped["opencv"][inner] - reference[inner])
    # OpenCV's fixed-point weights: positions on a 1/32-pixel grid, a step of up to a few levels at sharp edges
    assert difference.mean() < 0.3 and difference.max() < 12
    # the detail moved: the warped photo is not the photo, and its fine detail is the photo's, moved
    assert np.abs(warped["torch"] - photo).mean() > 2.0


def test_the_composite_keeps_the_detail_the_render_agrees_with(deterministic_engine):
    """A render that agrees with the warped photo (an oracle): the output's fine detail is the warped photo's."""
    photo = sample_photo()
    layout = whole_photo_layout(photo.shape[0])
    compositor = Compositor(layout.canvas, S, resampler="torch")
    plate = compositor.plate("a", photo, layout, sample_photo(S))
    deformation = identity_motion(1)[0] + torch.tensor([0.02, 0.01])
    warped = compositor.warp(plate, deformation)
    soft = F.avg_pool2d(torch.from_numpy(warped).permute(2, 0, 1)[None] / 255.0, 2)  # the render: 256 px, soft
    out = compositor.compose(plate, RenderedFrame(soft, deformation, torch.ones(1, 1, 64, 64))).astype(np.float64)
    detail = lambda image: image - ndimage.uniform_filter(image, size=(5, 5, 1))  # noqa: E731
    correlation = np.corrcoef(detail(out).ravel(), detail(warped.astype(np.float64)).ravel())[0, 1]
    assert correlation > 0.97


def test_the_oracle_is_matched_far_better_than_by_upscaling():
    figures, pictures = oracle_report()
    assert figures["composite_db"] > figures["bicubic_db"] + 8.0, figures
    assert figures["composite_laplacian"] > 10 * figures["bicubic_laplacian"], figures
    assert figures["composite_laplacian"] < 1.2 * figures["truth_laplacian"], "sharp, not over-sharpened"
    # where the oracle paints new content (low occlusion) its render wins: no worse than the upscale there
    assert figures["composite_new_db"] >= figures["bicubic_new_db"], figures


def test_both_resamplers_compute_the_same_picture():
    scene = call_scene((640, 360), 250)
    outputs = []
    for resampler in ("opencv", "torch"):
        compositor = Compositor(scene["layout"].canvas, S, resampler=resampler)
        plate = compositor.plate("a", scene["backdrop"], scene["layout"], scene["crop"])
        outputs.append(compositor.compose(plate, scene["frame"]).astype(int))
    difference = np.abs(outputs[0] - outputs[1])
    assert difference.mean() < 0.1 and difference.max() <= 8


def test_a_square_off_the_pixel_grid_takes_the_general_path_and_agrees():
    scene = call_scene((640, 360), 250)
    layout = scene["layout"]
    shifted = PhotoLayout(layout.canvas, layout.photo_rect, layout.crop.then(Placement(1.0, 1.0, 0.37, 0.21)), S)
    outputs = []
    for resampler in ("opencv", "torch"):
        compositor = Compositor(layout.canvas, S, resampler=resampler)
        plate = compositor.plate("a", scene["backdrop"], shifted, scene["crop"])
        assert plate.square is None
        outputs.append(compositor.compose(plate, scene["frame"]).astype(int))
    difference = np.abs(outputs[0] - outputs[1])
    assert difference.mean() < 0.1 and difference.max() <= 8


def test_the_canvas_is_one_buffer_and_rest_restores_the_photo():
    scene = call_scene((640, 360), 250)
    compositor = Compositor(scene["layout"].canvas, S)
    first = compositor.plate("a", scene["backdrop"], scene["layout"], scene["crop"])
    out = compositor.compose(first, scene["frame"])
    assert out is compositor.canvas and compositor.compose(first, scene["frame"]) is out, "no canvas per frame"
    assert not np.array_equal(out, scene["backdrop"])
    assert np.array_equal(compositor.rest(first), scene["backdrop"])
    other = np.full_like(scene["backdrop"], 90)
    second = compositor.plate("b", other, scene["layout"], scene["crop"])
    assert np.array_equal(compositor.rest(second), other), "another avatar: its own photo"
    assert compositor.plate("a", scene["backdrop"], scene["layout"], scene["crop"]) is first, "kept for switching"


def test_an_empty_region_shows_the_photo():
    backdrop = np.full((100, 200, 3), 50, np.uint8)
    layout = PhotoLayout((200, 100), (0, 0, 50, 100), Placement(0.25, 0.25, 120.0, 10.0), 128)  # beside the photo
    compositor = Compositor((200, 100), 128)
    plate = compositor.plate("a", backdrop, layout, np.zeros((128, 128, 3), np.uint8))
    frame = RenderedFrame(torch.rand(1, 3, 128, 128), *identity_motion(1, 32))
    assert np.array_equal(compositor.compose(plate, frame), backdrop)


def test_a_plate_must_fit_the_canvas():
    scene = call_scene((640, 360), 250)
    with pytest.raises(ValueError, match="plate"):
        Compositor((320, 180), S).plate("a", scene["backdrop"], scene["layout"], scene["crop"])
    with pytest.raises(ValueError, match="CPU"):
        Compositor((320, 180), S, device="meta", resampler="opencv")


@pytest.mark.slow
def test_the_readme_pictures_are_the_scripts(tmp_path):
    import subprocess
    import sys

    import cv2

    from tests.conftest import REPO
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_pictures.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("before", "after"):
        made, committed = tmp_path / f"{name}.png", REPO / "docs" / "pictures" / f"{name}.png"
        assert made.stat().st_size < 300 * 1024 and committed.stat().st_size < 300 * 1024
        made, committed = cv2.imread(str(made)), cv2.imread(str(committed))
        assert made.shape == committed.shape == (360, 640, 3)
        assert np.abs(made.astype(int) - committed.astype(int)).mean() < 1.0, f"docs/pictures/{name}.png is stale"


def test_the_bench_reports_the_composite_rows(capsys, tmp_path):
    import json

    from engines.bench import main
    assert main(["--composite-only", "--frames", "2", "--composite-canvas", "320x180", "--composite-face", "120",
                 "--device", "cpu", "--json", str(tmp_path / "c.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines[:2]] == ["composite 320x180"] * 2  # opencv, then torch
    assert "ms per frame" in lines[0] and "PSNR bicubic upscale" in lines[2] and "Laplacian variance" in lines[2]
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["timings"][0]["region"] == [120, 120] and result["oracle"]["composite_db"] > 30
