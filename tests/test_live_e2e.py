"""End to end: a real talking-face clip drives the real pipeline (face crop, FOMM engine with deterministic weights,
smoothing, neutral pose) through the app's wiring, with a calibration key pressed mid-stream, into an mp4 file and a
pyvirtualcam camera whose backend is registered here, so the real pyvirtualcam.Camera API receives the frames."""

import cv2
import numpy as np
import pytest

from live.cli.app import Session, build_parser
from tests.conftest import carphone_path
from tests.support import MemoryCamera, read_video

FRAMES = 24
CALIBRATE_AT = 8            # the key arrives before frame 8 is processed
VCAM_SIZE = (320, 240)
VCAM_FPS = 24.0


class ScriptedKeys:
    def __init__(self, script):
        self.script, self.calls = dict(script), 0

    def __call__(self):
        keys = self.script.get(self.calls, [])
        self.calls += 1
        return keys


def mean_abs_diff(frames):
    return np.array([np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() for a, b in zip(frames, frames[1:])])


@pytest.mark.slow
def test_webcam_clip_to_mp4_and_virtual_camera(tmp_path, memory_backend, monkeypatch):
    from engines.image import to_uint8_image
    from live.pipeline import loop
    renders = []  # the engine's own frames, before they are composited into the photo
    composite = loop.LivePipeline._composite
    monkeypatch.setattr(loop.LivePipeline, "_composite", lambda self, avatar, rendered: (
        renders.append(avatar.image if rendered is None else to_uint8_image(rendered.image)),
        composite(self, avatar, rendered))[1])
    clip = carphone_path()
    avatar = tmp_path / "avatar.png"
    from skimage.data import astronaut  # bundled with scikit-image: a real portrait, no download
    cv2.imwrite(str(avatar), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.mp4"
    args = build_parser().parse_args([
        "--avatar", str(avatar), "--driving", str(clip), "--output", str(out),
        "--vcam", "--vcam-backend", memory_backend, "--vcam-size", "x".join(map(str, VCAM_SIZE)),
        "--vcam-fps", str(VCAM_FPS), "--no-preview", "--no-calibrate-first", "--max-frames", str(FRAMES),
        "--deterministic-weights", "--device", "cpu"])
    messages = []
    session = Session(args, key_sources=[ScriptedKeys({CALIBRATE_AT: ["c"]})], log=messages.append)
    assert session.run() == 0
    assert any(m.startswith("Calibrated") for m in messages), messages

    # --- the mp4: every driving frame, the canvas size (composited into the photo), the clip's frame rate -------
    written, fps = read_video(out)
    assert len(written) == FRAMES
    assert written[0].shape == (VCAM_SIZE[1], VCAM_SIZE[0], 3)
    assert fps == pytest.approx(30000 / 1001, abs=0.01)  # carphone is 29.97 fps

    # --- the virtual camera: the same frames, the requested canvas --------------------------------------------
    (cam,) = MemoryCamera.instances
    assert cam.closed and (cam.width, cam.height, cam.fps) == (*VCAM_SIZE, VCAM_FPS)
    assert len(cam.frames) == FRAMES and cam.frames[0].shape == (VCAM_SIZE[1], VCAM_SIZE[0], 3)
    side = VCAM_SIZE[1]
    left = (VCAM_SIZE[0] - side) // 2
    assert np.all(cam.frames[0][:, : left - 1] == cam.frames[0][0, 0])  # "fit": the square photo, borders beside
    # only the face's square moves: every other pixel is the photo's, in every frame
    from engines.framing import Canvas
    from live.pipeline.avatars import FaceFraming, load_avatar_image
    x0, y0, x1, y1 = load_avatar_image(avatar, canvas=Canvas(*VCAM_SIZE),
                                       framing=FaceFraming()).photo.layout.region()
    outside = np.ones(cam.frames[0].shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert all(np.array_equal(f[outside], cam.frames[0][outside]) for f in cam.frames)
    square = [f[y0:y1, x0:x1] for f in cam.frames]

    # --- before calibration: the avatar at rest; after: it moves with the driving face ------------------------
    vcam_motion = mean_abs_diff(square)
    assert np.all(vcam_motion[: CALIBRATE_AT - 1] == 0), "avatar must stay at rest until calibrated"
    after = vcam_motion[CALIBRATE_AT:]
    assert np.all(after > 0), "after calibration every frame must follow the driving motion"

    # the engine's frames follow the driving face (generated weights: their pixels barely move, so the tracking
    # is measured on them, not on the photo the composite moves with their deformation)
    driving, _ = read_video(clip)
    crops = [cv2.resize(f, (64, 64)) for f in driving[:FRAMES]]
    driving_motion = mean_abs_diff(crops)[CALIBRATE_AT:]
    assert len(renders) == FRAMES
    r = np.corrcoef(driving_motion, mean_abs_diff(renders)[CALIBRATE_AT:])[0, 1]
    assert r > 0.3, f"the rendered motion should track the driving motion (r={r:.2f})"
    # the mp4 holds the same pictures as the virtual camera (up to codec loss)
    assert np.abs(written[-1].astype(int) - cv2.cvtColor(cam.frames[-1], cv2.COLOR_RGB2BGR).astype(int)).mean() < 4


@pytest.mark.slow
def test_a_photo_renders_to_a_call_size_video_that_keeps_it_at_full_resolution_outside_the_face(tmp_path):
    """`run_live.py --avatar photo.png --driving clip.mp4 --output out.mp4 --deterministic-weights`: a 1280x720
    video whose frames hold the photo at full resolution outside the face."""
    from skimage.data import astronaut

    from engines.framing import Canvas
    from live.cli.app import main
    from live.pipeline.avatars import FaceFraming, load_avatar_image
    room = np.full((720, 1280, 3), 0, np.uint8)
    room[:] = np.linspace(60, 190, 1280, dtype=np.uint8)[None, :, None]
    room[100:612, 640:1152] = astronaut()                     # the photo: a person in a larger picture
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(room, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.mp4"
    assert main(["--avatar", str(photo), "--driving", str(carphone_path()), "--output", str(out), "--max-frames", "6",
                 "--deterministic-weights", "--device", "cpu", "--no-preview"]) == 0
    written, _ = read_video(out)
    assert len(written) == 6 and written[0].shape == (720, 1280, 3)
    x0, y0, x1, y1 = load_avatar_image(photo, canvas=Canvas(1280, 720), framing=FaceFraming()).photo.layout.region()
    assert 640 < x0 < x1 < 1152 and 100 < y0 < y1 < 612, "the animated square lies around her face"
    outside = np.ones((720, 1280), bool)
    outside[y0:y1, x0:x1] = False
    for frame in written:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float64)
        mse = ((rgb[outside] - room[outside]) ** 2).mean()
        assert 10 * np.log10(255 ** 2 / mse) > 38, "the photo itself, up to the video codec's loss"
    # full resolution: the photo's fine detail below the face (the suit's badges and stitching) is all there
    def detail(bgr):
        return cv2.Laplacian(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.CV_64F)[y1 + 4:608, 644:1148].var()
    assert y1 + 100 < 608 and detail(written[-1]) > 0.8 * detail(cv2.cvtColor(room, cv2.COLOR_RGB2BGR))
