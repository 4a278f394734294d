"""LivePipeline behaviour with injected frames, keys and sinks (a tiny fake engine keeps these fast; the real engine
runs in test_live_e2e.py)."""
import time
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import torch

from calibration.neutral_pose import NeutralPose
from calibration.smoothing import KeypointSmoother
from live.pipeline.avatar_set import Avatar, AvatarSet
from live.devices.capture import CapturedFrame, FrameSource, LatestFrameReader
from live.pipeline.crop import CropBox, FaceTracker
from live.errors import CaptureError
from live.pipeline.loop import LivePipeline, PipelineOptions, RealtimePacer, file_feed, live_feed
from live.ui import preview as preview_module
from live.ui.preview import STATUS_HEIGHT, PreviewWindow, compose

from tests.support import K, PATTERN, SIZE, FakeEngine  # noqa: F401 - K, PATTERN: used by the tests below


class ListSink:
    def __init__(self, fail_on_send=False, fail_on_close=False):
        self.frames = []
        self.closed = False
        self.fail_on_send = fail_on_send
        self.fail_on_close = fail_on_close

    def send(self, frame):
        if self.fail_on_send:
            raise OSError("disk full")
        self.frames.append(frame.copy())

    def close(self):
        self.closed = True
        if self.fail_on_close:
            raise OSError("close failed")


class ScriptedKeys:
    """Key source: returns script[n] on its n-th call (the loop polls once per frame)."""

    def __init__(self, script):
        self.script = dict(script)
        self.calls = 0

    def __call__(self):
        keys = self.script.get(self.calls, [])
        self.calls += 1
        return list(keys)


def frames(levels, shape=(48, 64)):
    """Flat gray frames of the given brightness levels (0..255), stamped like a 30 fps camera."""
    return [CapturedFrame(np.full((*shape, 3), level, np.uint8), i, i / 30.0) for i, level in enumerate(levels)]


def avatar_images(n):
    return [Avatar(f"a{i}.png", np.full((SIZE, SIZE, 3), 40 * (i + 1), np.uint8)) for i in range(n)]


def make_pipeline(engine=None, *, n_avatars=1, keys=None, options=None, sinks=None, **kwargs):
    engine = engine or FakeEngine()
    avatars = AvatarSet(avatar_images(n_avatars), engine)
    sinks = sinks if sinks is not None else [ListSink()]
    messages = []
    pipeline = LivePipeline(engine, avatars, sinks=sinks,
                            tracker=FaceTracker(tracking=False, out_size=SIZE),
                            key_sources=[keys] if keys else [], options=options or PipelineOptions(),
                            log=messages.append, **kwargs)
    pipeline.messages = messages
    return pipeline


def test_avatar_at_rest_until_calibration_then_animated():
    keys = ScriptedKeys({3: ["c"]})
    p = make_pipeline(keys=keys)
    sink = p.sinks[0]
    stats = p.run(frames([100, 110, 120, 130, 140, 150, 90]))
    assert stats.frames == 7 and len(sink.frames) == 7
    avatar = p.avatars.current.image
    for out in sink.frames[:3]:
        assert np.array_equal(out, avatar), "before calibration the avatar is shown at rest"
    assert stats.calibrations == 1 and p.neutral.is_calibrated
    levels = [int(f.mean()) for f in sink.frames[3:]]
    assert levels[0] == 128, "the calibration frame renders the neutral pose"
    assert levels[1] > levels[0] and levels[2] > levels[1] and levels[3] < levels[0], "follows the driving"
    assert sink.closed
    assert any("Calibrated" in m for m in p.messages)


def test_calibrate_first_frame_option_and_media_clock():
    p = make_pipeline(options=PipelineOptions(calibrate_first_frame=True, media_fps=25.0))
    p.run(frames([100, 100, 140]))
    assert p.stats.calibrations == 1
    assert int(p.sinks[0].frames[0].mean()) == 128


def test_quit_key_stops_and_all_sinks_are_closed():
    sinks = [ListSink(), ListSink()]
    p = make_pipeline(keys=ScriptedKeys({2: ["q"]}), sinks=sinks)
    stats = p.run(frames([100] * 10))
    assert stats.frames == 2 and stats.stopped_by_user
    assert all(s.closed and len(s.frames) == 2 for s in sinks)


def test_sink_error_propagates_after_closing_every_sink():
    good, bad = ListSink(), ListSink(fail_on_send=True)
    p = make_pipeline(sinks=[good, bad])
    with pytest.raises(OSError, match="disk full"):
        p.run(frames([100] * 3))
    assert good.closed and bad.closed


def test_close_error_does_not_hide_the_running_error():
    bad_close = ListSink(fail_on_close=True)

    def feed():
        yield from frames([100])
        raise KeyboardInterrupt

    p = make_pipeline(sinks=[bad_close, ListSink()])
    with pytest.raises(KeyboardInterrupt):
        p.run(feed())
    assert all(s.closed for s in p.sinks)
    assert any("close failed" in m for m in p.messages)


def test_avatar_keys_switch_and_update_the_neutral_pose():
    engine = FakeEngine()
    keys = ScriptedKeys({0: ["c"], 1: ["2"], 2: ["9"], 3: ["n"], 4: ["p"]})
    p = make_pipeline(engine, n_avatars=3, keys=keys)
    seen = []
    for frame in frames([100] * 5):
        p.poll_keys()
        p.step(frame)
        seen.append(p.avatars.index)
    assert seen == [0, 1, 1, 2, 1]
    assert torch.equal(p.neutral.kp_source.value, p.avatars.current.state.kp.value)
    assert any("no avatar 9" in m for m in p.messages)
    assert engine.detect_calls == 3 + 5, "each avatar encoded exactly once (up front), then one detect per frame"


def test_passthrough_sends_the_camera_crop_without_running_the_engine():
    engine = FakeEngine()
    p = make_pipeline(engine, keys=ScriptedKeys({0: ["o"]}))
    calls_before = engine.detect_calls
    p.run(frames([77, 77]))
    assert engine.detect_calls == calls_before
    assert all(f.shape == (SIZE, SIZE, 3) and (f == 77).all() for f in p.sinks[0].frames)


def test_mirror_flips_the_driving_frame():
    p = make_pipeline(keys=ScriptedKeys({0: ["o", "m"]}))
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    frame[:, : SIZE // 2] = 200  # bright left half
    p.run([CapturedFrame(frame, 0, 0.0)])
    out = p.sinks[0].frames[0]
    assert out[:, -1].mean() == 200 and out[:, 0].mean() == 0


def test_crop_keys_reach_the_tracker():
    p = make_pipeline(keys=ScriptedKeys({0: ["+", "+", "d", "w"], 1: ["0"]}))
    p.poll_keys()
    assert p.tracker.zoom > 1 and p.tracker.pan_x > 0 and p.tracker.pan_y < 0
    p.poll_keys()
    assert p.tracker.zoom == 1 and p.tracker.pan_x == 0 and p.tracker.pan_y == 0


def test_calibration_is_saved_loaded_and_forgotten(tmp_path):
    path = tmp_path / "calib.json"
    options = PipelineOptions(calibration_path=path, camera_id="camera 0")
    p = make_pipeline(keys=ScriptedKeys({0: ["c"]}), options=options)
    p.run(frames([120, 120]))
    assert path.exists()

    p2 = make_pipeline(options=options)
    assert p2.neutral.is_calibrated, "a restart with the same camera/model needs no recalibration"
    assert torch.allclose(p2.neutral.kp_initial.value, p.neutral.kp_initial.value)
    p2.handle_keys(["x"])
    assert not p2.neutral.is_calibrated and not path.exists()

    path.write_text("{not json")
    p3 = make_pipeline(options=options)
    assert not p3.neutral.is_calibrated
    assert any("corrupt" in m for m in p3.messages)


def test_stale_calibration_for_another_camera_is_ignored_with_a_notice(tmp_path):
    path = tmp_path / "calib.json"
    make_pipeline(keys=ScriptedKeys({0: ["c"]}),
                  options=PipelineOptions(calibration_path=path, camera_id="camera 0")).run(frames([120]))
    p = make_pipeline(options=PipelineOptions(calibration_path=path, camera_id="camera 1"))
    assert not p.neutral.is_calibrated
    assert any("camera" in m and "Ignoring" in m for m in p.messages)


def test_auto_calibration_after_holding_still():
    p = make_pipeline(neutral=NeutralPose(auto_calibrate_frames=3))
    p.run(frames([100, 140, 100, 100, 100, 100, 130]))
    assert p.stats.calibrations == 1
    outs = [int(f.mean()) for f in p.sinks[0].frames]
    assert outs[:4] == [40] * 4  # avatar at rest while moving and until 3 still frames were seen
    assert outs[4] == 128 and outs[6] > 128


def test_best_frame_mode_recalibrates_on_better_matches():
    # the avatar is level 40; driving frames approaching level 40 match its keypoints better and better
    p = make_pipeline(keys=ScriptedKeys({0: ["b"], 4: ["b"]}))
    p.run(frames([200, 150, 100, 160, 60, 40]))
    assert p.stats.calibrations == 3  # 200, 150, 100 each improved; 160 did not; then the mode was off
    assert p.calibration.selector is None
    assert "best-frame" in " ".join(p.messages)


def test_status_line_tells_how_to_calibrate_first():
    p = make_pipeline()
    assert "press C" in p.status
    p.handle_keys(["c"])
    p.step(frames([100])[0])
    assert "Calibrated" in p.status


class DyingCamera(FrameSource):
    """A 'camera' that delivers a few frames, then fails like an unplugged USB webcam."""

    is_live = True
    name = "camera 0"
    fps = 200.0

    def __init__(self, n):
        self.n = n

    def read(self):
        if self.n == 0:
            raise CaptureError("camera 0 stopped delivering frames (unplugged?)")
        self.n -= 1
        time.sleep(0.005)
        return np.full((48, 64, 3), 100, np.uint8)


def test_camera_unplugged_mid_run_raises_a_clear_error_and_closes_sinks():
    p = make_pipeline()
    with LatestFrameReader(DyingCamera(3)) as reader:
        with pytest.raises(CaptureError, match="unplugged"):
            p.run(live_feed(reader))
    assert p.sinks[0].closed and 1 <= p.stats.frames <= 3


def test_stalled_camera_still_polls_keys():
    keys = ScriptedKeys({3: ["q"]})
    p = make_pipeline(keys=keys)
    p.run(iter([None, None, None, None, None]))
    assert keys.calls == 4 and p.stats.frames == 0 and p.stats.stopped_by_user


def test_file_feed_yields_every_frame_in_order():
    class Three(FrameSource):
        def __init__(self):
            self.i = 0

        def read(self):
            self.i += 1
            return np.full((4, 4, 3), self.i, np.uint8) if self.i <= 3 else None

    got = list(file_feed(Three()))
    assert [f.index for f in got] == [0, 1, 2] and [int(f.image[0, 0, 0]) for f in got] == [1, 2, 3]


def test_hud_timings_cover_every_stage():
    p = make_pipeline(keys=ScriptedKeys({0: ["c"]}))
    p.run(frames([100, 120, 140]))
    assert {"wait", "crop", "detect", "normalize", "render", "sinks"} <= set(p.timings.stage_ms)
    assert p.timings.fps is not None and p.timings.latency_ms is not None


def test_realtime_pacer_repeats_frames_when_slow_and_drops_when_fast():
    now = {"t": 0.0}
    inner = ListSink()
    pacer = RealtimePacer(inner, fps=10, clock=lambda: now["t"])
    for t, level in [(0.0, 1), (0.35, 2), (0.36, 3), (0.52, 4)]:
        now["t"] = t
        pacer.send(np.full((2, 2, 3), level, np.uint8))
    # slots 0..5 of a 10 fps timeline: frame 1 once, frame 2 fills slots 1-3, frame 3 is dropped, frame 4 two
    assert [int(f[0, 0, 0]) for f in inner.frames] == [1, 2, 2, 2, 4, 4]
    pacer.close()
    assert inner.closed


class FakePreview:
    """Like PreviewWindow: keys typed while a frame is shown are returned by the next poll()."""

    def __init__(self, keys_per_frame):
        self.keys = list(keys_per_frame)
        self.pending = []
        self.shown = []
        self.framings = []
        self.closed = False

    def show(self, camera, box, output, *, hud_lines=(), status="", framing=None):
        self.shown.append((camera.shape, box, output.shape, list(hud_lines), status))
        self.framings.append(framing)
        self.pending += self.keys.pop(0) if self.keys else []

    def poll(self):
        keys, self.pending = self.pending, []
        return keys

    def close(self):
        self.closed = True


def test_preview_gets_camera_box_output_hud_and_its_keys_are_applied():
    preview = FakePreview([[], ["h"], ["q"]])
    p = make_pipeline(preview=preview)
    p.run(frames([100] * 5))
    assert p.stats.frames == 3 and preview.closed
    camera_shape, box, output_shape, hud, status = preview.shown[0]
    assert camera_shape == (48, 64, 3) and output_shape == (SIZE, SIZE, 3) and box.size == 48
    assert hud and hud[0].startswith("FPS") and "press C" in status
    assert hud[-2] == "engine fake (fake cpu fp32)"  # which engine renders: its report's backend, device, precision
    assert hud[-1].startswith("composite off")  # and what the sinks get
    assert preview.shown[2][3] == [], "h hides the HUD"


def test_compose_puts_camera_and_avatar_side_by_side():
    camera = np.zeros((120, 160, 3), np.uint8)
    output = np.full((SIZE, SIZE, 3), 255, np.uint8)
    image = compose(camera, CropBox(80, 60, 100), output, hud_lines=["FPS 30"], status="hello", panel_height=240)
    assert image.shape == (240 + STATUS_HEIGHT, 320 + 240, 3)
    assert (image[100:200, 400:500] == 255).all(), "avatar panel on the right"
    assert image[120, 58:64, 1].max() == 255, "crop box (left edge x=30 -> 60 at 2x) drawn in green"
    assert image[120, 70:250].max() == 0, "inside the box the camera picture is untouched"


def test_compose_keeps_the_output_shape_and_outlines_the_animated_square():
    camera = np.zeros((120, 160, 3), np.uint8)
    output = np.full((360, 640, 3), 255, np.uint8)  # a composited canvas, 16:9
    framing = preview_module.Framing(np.zeros((SIZE, SIZE, 3), np.uint8), 50.0, (320.0, 60.0, 480.0, 220.0))
    image = compose(camera, CropBox(80, 60, 100), output, panel_height=240, framing=framing)
    assert image.shape == (240 + STATUS_HEIGHT, 320 + 427, 3), "the output panel keeps the canvas' shape"
    left = 320 + 213  # x = 320 at 240/360 scale
    assert image[100, left - 1:left + 2].min() < 255, "the animated square is outlined"
    assert (image[100, 320 + 300:320 + 310] == 255).all()


# --- non-finite engine output never reaches a sink ------------------------------------------------------------------
class NaNEngine(FakeEngine):
    """Renders (or detects) NaN on the frames whose index is listed."""

    def __init__(self, nan_renders=(), nan_detects=()):
        super().__init__()
        self.nan_renders, self.nan_detects = set(nan_renders), set(nan_detects)
        self.frame = -1  # detect calls per driving frame (after the avatar encodings)

    def detect(self, image):
        kp = super().detect(image)
        if getattr(self, "_driving", False):
            self.frame += 1
            if self.frame in self.nan_detects:
                kp.value[0, 0, 0] = float("nan")
        return kp

    def render(self, state, kp_driving):
        out = super().render(state, kp_driving)
        if self.frame in self.nan_renders:
            return replace(out, image=torch.full_like(out.image, float("inf")))
        return out


def _nan_pipeline(engine, **kwargs):
    p = make_pipeline(engine, options=PipelineOptions(calibrate_first_frame=True), **kwargs)
    engine._driving = True  # count driving frames from here on (the avatar was encoded above)
    return p


def test_a_non_finite_render_sends_the_avatar_at_rest_and_says_why_once():
    engine = NaNEngine(nan_renders={1, 2, 3})
    p = _nan_pipeline(engine)
    p.run(frames([100, 120, 120, 120, 140]))
    outs = p.sinks[0].frames
    avatar = p.avatars.current.image
    assert all(np.isfinite(f).all() for f in outs)
    assert int(outs[0].mean()) == 128 and int(outs[4].mean()) > 128, "good frames are rendered as usual"
    assert all(np.array_equal(f, avatar) for f in outs[1:4]), "broken frames: the avatar at rest"
    said = [m for m in p.messages if "NaN/inf" in m]
    assert len(said) == 1 and "renderer" in said[0] and "at rest" in said[0]


def test_non_finite_keypoints_neither_calibrate_nor_poison_the_smoother():
    engine = NaNEngine(nan_detects={0, 2})
    p = _nan_pipeline(engine, smoother=KeypointSmoother())
    p.run(frames([100, 100, 100, 100]))
    outs = p.sinks[0].frames
    avatar = p.avatars.current.image
    assert np.array_equal(outs[0], avatar) and np.array_equal(outs[2], avatar)
    assert p.stats.calibrations == 1, "frame 0 (NaN) was not taken as the neutral pose; frame 1 was"
    assert int(outs[1].mean()) == 128 and int(outs[3].mean()) == 128, "the smoother history stayed finite"
    said = [m for m in p.messages if "NaN/inf" in m]
    assert len(said) == 2 and all("keypoint detector" in m for m in said), "said again after a good frame"


# --- preview keys: every pending key per poll ----------------------------------------------------------------------
def test_preview_poll_drains_a_burst_of_keys_so_three_presses_toggle_three_times(monkeypatch):
    codes = [ord("o"), ord("o"), ord("o"), -1, ord("o"), -1]
    monkeypatch.setattr(preview_module.cv2, "waitKeyEx", lambda delay: codes.pop(0) if codes else -1)
    monkeypatch.setattr(preview_module.cv2, "getWindowProperty", lambda *a: 1.0)
    window = PreviewWindow()
    window._open = True  # as after the first show(); no real window is needed to read keys
    p = make_pipeline(preview=window)
    p.poll_keys()
    assert [m for m in p.messages if "passthrough" in m] == ["passthrough on: sending the camera",
                                                             "passthrough off", "passthrough on: sending the camera"]
    assert p.passthrough
    p.poll_keys()
    assert not p.passthrough and codes == []


def test_keys_typed_while_a_frame_is_shown_are_kept_for_the_next_poll(monkeypatch):
    codes = [-1, ord("h"), ord("o"), -1]
    monkeypatch.setattr(preview_module.cv2, "waitKeyEx", lambda delay: codes.pop(0) if codes else -1)
    monkeypatch.setattr(preview_module.cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(preview_module.cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(preview_module.cv2, "imshow", lambda *a: None)
    window = PreviewWindow()
    out = np.zeros((SIZE, SIZE, 3), np.uint8)
    window.show(np.zeros((48, 64, 3), np.uint8), None, out)  # reads nothing yet
    window.show(np.zeros((48, 64, 3), np.uint8), None, out)  # h and o arrive while painting
    assert window.poll() == ["h", "o"] and window.poll() == []


# --- the smoother starts over when the keypoints jump for other reasons than motion --------------------------------
@pytest.mark.parametrize("key", ["2", "m", "c"])
def test_smoother_history_is_dropped_on_avatar_switch_mirror_and_recalibration(key):
    """Frames at level 100, then the key, then level 180 held: with the history dropped the first 180 frame
    passes through unfiltered, so it renders exactly like an unsmoothed pipeline's."""
    levels = [100] * 6 + [180, 180]
    script = {0: ["c"], 6: [key]}
    smoothed = make_pipeline(n_avatars=2, keys=ScriptedKeys(script), smoother=KeypointSmoother(min_cutoff=0.1))
    plain = make_pipeline(n_avatars=2, keys=ScriptedKeys(script))
    smoothed.run(frames(levels))
    plain.run(frames(levels))
    assert np.array_equal(smoothed.sinks[0].frames[6], plain.sinks[0].frames[6])
    # ...whereas without a reset the filter lags behind a jump (the same jump with no key in between)
    lagging = make_pipeline(n_avatars=2, keys=ScriptedKeys({0: ["c"]}), smoother=KeypointSmoother(min_cutoff=0.1))
    lagging.run(frames(levels))
    assert not np.array_equal(lagging.sinks[0].frames[6], plain.sinks[0].frames[6])


def test_options_stay_current_after_toggles():
    p = make_pipeline(keys=ScriptedKeys({0: ["m", "o", "h"]}))
    p.poll_keys()
    assert p.options.mirror and p.options.passthrough and not p.options.show_hud
    assert p.mirror and p.passthrough and not p.show_hud


def test_absolute_mode_animates_without_calibration():
    p = make_pipeline(options=PipelineOptions(absolute=True))
    p.run(frames([100, 140]))
    assert p.stats.calibrations == 0 and not p.neutral.is_calibrated
    outs = [int(f.mean()) for f in p.sinks[0].frames]
    assert outs[0] != 40 and outs[1] > outs[0], "rendered from the raw keypoints, not the avatar at rest"
    assert "press C" not in p.status


def test_auto_calibration_calibrates_once_and_saves_that_pose(tmp_path):
    class CountingPose(NeutralPose):
        calls = 0

        def calibrate(self, kp_frame):
            CountingPose.calls += 1
            return super().calibrate(kp_frame)

    path = tmp_path / "calib.json"
    p = make_pipeline(neutral=CountingPose(auto_calibrate_frames=2),
                      options=PipelineOptions(calibration_path=path, camera_id="camera 0"))
    p.run(frames([100, 100, 100, 130]))
    assert CountingPose.calls == 1 and p.stats.calibrations == 1
    assert any("auto: you held still" in m and "movement scale" in m for m in p.messages)
    saved = make_pipeline(options=PipelineOptions(calibration_path=path, camera_id="camera 0"))
    assert torch.equal(saved.neutral.kp_initial.value, p.neutral.kp_initial.value)


# --- k: the face crop becomes a new avatar ---------------------------------------------------------------------
def colour_frames(n, shape=(48, 64)):
    """Frames whose blue and red channels differ (a BGR/RGB swap shows) with a left-right gradient in green."""
    out = []
    for i in range(n):
        image = np.zeros((*shape, 3), np.uint8)
        image[..., 0] = 30 + i
        image[..., 1] = np.linspace(0, 255, shape[1], dtype=np.uint8)[None, :]
        image[..., 2] = 200
        out.append(CapturedFrame(image, i, i / 30.0))
    return out


def test_k_keeps_the_face_crop_as_a_new_avatar_encodes_it_and_switches_to_it(tmp_path):
    from live.pipeline.avatars import load_avatar
    engine = FakeEngine()
    p = make_pipeline(engine, n_avatars=2, keys=ScriptedKeys({2: ["k"]}),
                      options=PipelineOptions(snapshot_folder=tmp_path))
    detects = engine.detect_calls
    feed = colour_frames(4)
    p.run(feed)
    saved = sorted(tmp_path.glob("snapshot-*.png"))
    assert len(saved) == 1 and len(p.avatars) == 3 and p.avatars.index == 2
    assert p.avatars.current.name == saved[0].name
    image = load_avatar(saved[0], size=SIZE)
    # the crop of the frame before the key (tracking off: the centred square), as the model saw it (RGB)
    expected_rgb = FaceTracker(tracking=False, out_size=SIZE).crop(feed[1].image)[0][..., ::-1]
    assert np.array_equal(image, expected_rgb) and np.array_equal(p.avatars.current.image, expected_rgb)
    assert image[..., 0].mean() == 200, "red stays red: written as RGB, not BGR"
    assert engine.detect_calls == detects + 4 + 1, "the new avatar is encoded once"
    assert torch.equal(p.neutral.kp_source.value, p.avatars.current.state.kp.value), "calibration follows it"
    assert any(f"saved {saved[0]} as avatar 3" in m for m in p.messages), "the notice names the file"


def test_snapshots_never_overwrite_a_file(tmp_path):
    from live.pipeline.snapshot import save_snapshot
    now = time.strptime("2026-12-01 10:15:00", "%Y-%m-%d %H:%M:%S")
    mine = tmp_path / "snapshot-20261201-101500.png"
    mine.write_bytes(b"not yours")
    image = np.full((SIZE, SIZE, 3), 90, np.uint8)
    first, second = save_snapshot(tmp_path, image, now), save_snapshot(tmp_path, image, now)
    assert (first.name, second.name) == ("snapshot-20261201-101500-2.png", "snapshot-20261201-101500-3.png")
    assert mine.read_bytes() == b"not yours"


@pytest.mark.parametrize("failure", ["read-only", "disk full", "folder gone"])
def test_a_snapshot_that_cannot_be_written_is_one_notice_and_the_run_goes_on(tmp_path, monkeypatch, failure):
    import errno
    from live.pipeline import snapshot
    folder = tmp_path / "avatars"
    folder.mkdir()
    if failure == "read-only":  # by the errno, not chmod: root (CI containers) may write anyway
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(snapshot.os, "open", refuse)
    elif failure == "disk full":
        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(snapshot.os, "write", full)
    else:
        folder.rmdir()
    p = make_pipeline(keys=ScriptedKeys({1: ["k"], 2: ["k"]}), options=PipelineOptions(snapshot_folder=folder))
    stats = p.run(frames([100] * 4))
    assert stats.frames == 4 and len(p.sinks[0].frames) == 4, "the run went on"
    assert len(p.avatars) == 1 and p.avatars.index == 0
    notices = [m for m in p.messages if m.startswith("could not save the face crop")]
    assert len(notices) == 2 and str(folder) in notices[0]
    assert not folder.exists() or list(folder.iterdir()) == [], "no partial file left"


def test_k_without_a_folder_or_before_any_frame_says_so():
    p = make_pipeline(options=PipelineOptions(snapshot_folder=None))
    p.handle_keys(["k"])
    assert "no avatar folder" in p.messages[-1]
    q = make_pipeline(options=PipelineOptions(snapshot_folder=Path(".")))
    q.handle_keys(["k"])
    assert "no face crop" in q.messages[-1] and len(q.avatars) == 1


def test_snapshot_folder_is_the_avatar_folder_or_the_single_files_folder(tmp_path):
    from live.pipeline.snapshot import snapshot_folder
    (tmp_path / "face.png").write_bytes(b"x")
    assert snapshot_folder(tmp_path) == tmp_path and snapshot_folder(tmp_path / "face.png") == tmp_path


# --- g: the framing guide, in the preview only ---------------------------------------------------------------------
def test_g_shows_the_avatar_and_match_score_in_the_preview_and_never_in_the_sinks():
    from calibration.best_frame import pose_match
    levels = [100, 90, 60, 45, 40]
    guided = make_pipeline(preview=FakePreview([]), keys=ScriptedKeys({2: ["g"]}))
    plain = make_pipeline(preview=FakePreview([]))
    for p in (guided, plain):
        p.run(frames(levels))
    assert [f is None for f in guided.preview.framings] == [True, True, False, False, False]
    assert all(f is None for f in plain.preview.framings)
    framing = guided.preview.framings[-1]
    assert np.array_equal(framing.avatar_rgb, guided.avatars.current.image)
    scores = [f.score for f in guided.preview.framings[2:]]
    assert all(0.0 <= s <= 100.0 for s in scores) and scores[0] < scores[1] < scores[2], \
        "the score rises as the pose nears the avatar's (level 40)"
    avatar_kp = guided.avatars.current.state.kp.value
    frame_kp = guided.engine.detect(torch.full((1, 3, SIZE, SIZE), 40 / 255.0)).value
    assert scores[2] == pytest.approx(pose_match(avatar_kp, frame_kp))
    assert len(guided.sinks[0].frames) == len(plain.sinks[0].frames) == 5
    for a, b in zip(guided.sinks[0].frames, plain.sinks[0].frames):
        assert np.array_equal(a, b), "the sinks get the same frames with the guide on"
    guided.handle_keys(["g"])
    assert not guided.options.framing and not guided.calibration.measure_match


def test_framing_score_is_best_frame_modes_own_score_while_it_is_on():
    p = make_pipeline(preview=FakePreview([]), keys=ScriptedKeys({0: ["b", "g"]}))
    p.run(frames([200, 150, 100]))
    assert p.preview.framings[-1].score == p.calibration.best_score is not None
    assert p.calibration._match is None, "no second score computed beside best-frame mode's"


def test_framing_has_no_score_in_passthrough():
    p = make_pipeline(preview=FakePreview([]), options=PipelineOptions(framing=True, passthrough=True))
    p.run(frames([100]))
    assert p.preview.framings[0] is not None and p.preview.framings[0].score is None


def test_compose_blends_the_avatar_into_the_crop_box_only():
    from live.ui.preview import Framing
    camera = np.zeros((120, 160, 3), np.uint8)
    output = np.zeros((SIZE, SIZE, 3), np.uint8)
    avatar = np.full((SIZE, SIZE, 3), 250, np.uint8)
    box = CropBox(80, 60, 100)  # x 30..130, y 10..110 -> 60..260, 20..220 at 2x
    plain = compose(camera, box, output, panel_height=240)
    guided = compose(camera, box, output, panel_height=240, framing=Framing(avatar, 72.4))
    assert guided.shape == plain.shape
    changed = np.argwhere((guided != plain).any(axis=2))
    assert changed[:, 0].min() >= 20 and changed[:, 0].max() < 220 and changed[:, 1].min() >= 60 \
        and changed[:, 1].max() < 260, "nothing changes outside the crop box"
    assert 90 <= guided[60, 150, 0] <= 110, "inside: the avatar at 40% over the black camera"
    assert (guided[190:218, 60:200] >= 240).all(axis=2).any(), "the score is written inside the box, in white"
    # a box past the frame's edge is clipped, not an error
    edge = compose(camera, CropBox(150, 110, 100), output, panel_height=240, framing=Framing(avatar, None))
    assert edge.shape == plain.shape


class RepeatingEngine(FakeEngine):
    """Like a remote engine while its server is away: render answers with the last frame again."""

    def __init__(self, fresh_pattern):
        super().__init__()
        self.fresh_pattern = list(fresh_pattern)
        self._last = None

    def render(self, state, kp_driving):
        fresh = self.fresh_pattern[self.render_calls % len(self.fresh_pattern)]
        frame = super().render(state, kp_driving)
        if fresh or self._last is None:
            self._last = frame
        return replace(self._last, fresh=fresh)


def test_fps_counts_new_renders_only_not_repeats():
    engine = RepeatingEngine([True, False, False, False])  # one new frame in four
    p = make_pipeline(engine, options=PipelineOptions(calibrate_first_frame=True))
    stats = p.run(frames([100 + i for i in range(40)]))
    assert stats.frames == 40 and len(p.sinks[0].frames) == 40, "every frame is still sent"
    assert p.timings.fresh_frames == 10 and p.timings.frames == 40


def test_the_avatar_at_rest_is_no_new_frame():
    p = make_pipeline()  # never calibrated
    p.run(frames([100] * 5))
    assert p.timings.fresh_frames == 0 and p.timings.fps is None and p.timings.latency_ms is None


def test_hud_latency_is_never_below_the_stages_of_the_same_frames_after_calibrating():
    from live.ui.hud import Timings

    clock = {"t": 1000.0}
    timings = Timings(clock=lambda: clock["t"])

    class SlowRenderer(FakeEngine):
        def detect(self, image):
            clock["t"] += 0.02
            return super().detect(image)

        def render(self, state, kp_driving):
            clock["t"] += 2.0
            return super().render(state, kp_driving)

    p = make_pipeline(SlowRenderer(), timings=timings)
    for i in range(40):
        if i == 30:
            p.calibration.request()  # key C
        frame = CapturedFrame(np.full((48, 64, 3), 100 + i, np.uint8), i, clock["t"])
        clock["t"] += 0.01  # queued for 10 ms
        p.step(frame)
        if i >= 30:
            stages = {k: v for k, v in timings.recent_stages().items() if k not in ("wait", "rtt")}
            assert "render" in stages
            assert timings.latency_ms >= sum(stages.values()), (i, timings.latency_ms, stages)


def test_the_status_line_keeps_saying_the_render_server_is_away():
    engine = FakeEngine()
    p = make_pipeline(engine)
    engine.status_text = "RENDER SERVER UNREACHABLE for 3 s: reconnecting"
    assert p.status.startswith("RENDER SERVER UNREACHABLE")
    p.notify("avatar 1: a0.png")
    assert p.status.startswith("RENDER SERVER UNREACHABLE") and "avatar 1" in p.status, "notices do not hide it"
    engine.status_text = None
    p._notice_until = 0.0
    assert "UNREACHABLE" not in p.status


# --- compositing: the render goes back into the avatar's own photo on the canvas ---------------------------------
def photo_avatar(name: str, seed: int, canvas):
    """An avatar with its own photo (a textured 150x100 picture, framed without a face search: centre square)."""
    from live.pipeline.avatars import frame_avatar
    photo = np.random.default_rng(seed).integers(0, 256, (100, 150, 3), np.uint8)
    loaded = frame_avatar(photo, SIZE, canvas=canvas)
    return Avatar(name, loaded.crop, photo=loaded.photo)


def composite_pipeline(avatars, canvas, *, keys=None, options=None, tracker=None):
    engine = FakeEngine()
    messages = []
    pipeline = LivePipeline(engine, AvatarSet(avatars, engine), sinks=[ListSink()],
                            tracker=tracker or FaceTracker(tracking=False, out_size=SIZE),
                            key_sources=[keys] if keys else [], options=options or PipelineOptions(),
                            log=messages.append, composite=canvas)
    pipeline.messages = messages
    return pipeline


def test_composited_the_sinks_get_the_canvas_the_photo_at_rest_and_only_the_square_moves():
    from engines.framing import Canvas
    canvas = Canvas(96, 64)
    avatar = photo_avatar("p.png", 0, canvas)
    p = composite_pipeline([avatar], canvas, keys=ScriptedKeys({3: ["c"]}))
    p.run(frames([100, 110, 120, 130, 150, 90]))
    sent = p.sinks[0].frames
    assert len(sent) == 6 and all(f.shape == (64, 96, 3) for f in sent), "the canvas, sent as it is"
    backdrop = avatar.photo.backdrop
    assert all(np.array_equal(f, backdrop) for f in sent[:3]), "before calibration: the photo itself"
    x0, y0, x1, y1 = avatar.photo.layout.region()
    outside = np.ones((64, 96), bool)
    outside[y0:y1, x0:x1] = False
    assert all(np.array_equal(f[outside], backdrop[outside]) for f in sent), "only the square ever changes"
    assert not np.array_equal(sent[4], sent[3]) and not np.array_equal(sent[5], sent[4]), "it follows the driving"
    assert "composite" in p.timings.stage_ms
    assert p.output_mode().startswith("composite 96x64 fit")


def test_composited_each_avatar_keeps_its_own_photo_when_switching():
    from engines.framing import Canvas
    canvas = Canvas(96, 64)
    first, second = photo_avatar("a.png", 1, canvas), photo_avatar("b.png", 2, canvas)
    p = composite_pipeline([first, second], canvas, keys=ScriptedKeys({2: ["2"], 4: ["1"]}))
    p.run(frames([100] * 6))
    sent = p.sinks[0].frames
    assert np.array_equal(sent[0], first.photo.backdrop) and np.array_equal(sent[2], second.photo.backdrop)
    assert np.array_equal(sent[4], first.photo.backdrop)


def test_composited_a_snapshot_is_a_crop_sized_avatar_on_the_canvas(tmp_path):
    from engines.framing import Canvas
    from live.pipeline.avatars import crop_sized_photo
    canvas = Canvas(96, 64)
    p = composite_pipeline([photo_avatar("p.png", 0, canvas)], canvas, keys=ScriptedKeys({1: ["k"]}),
                           options=PipelineOptions(snapshot_folder=tmp_path))
    p.run(frames([100] * 3))
    snapshot = p.avatars.current
    assert p.avatars.index == 1 and snapshot.photo is not None
    assert np.array_equal(p.sinks[0].frames[-1], crop_sized_photo(snapshot.image, canvas).backdrop)
    assert snapshot.photo.layout.region() == (16, 0, 80, 64), "the square itself, fitted on the canvas"


def test_composited_passthrough_sends_the_whole_camera_picture():
    from engines.framing import Canvas
    canvas = Canvas(96, 64)
    p = composite_pipeline([photo_avatar("p.png", 0, canvas)], canvas, keys=ScriptedKeys({0: ["o"]}))
    p.run(frames([100] * 2, shape=(48, 64)))
    assert p.sinks[0].frames[-1].shape == (48, 64, 3)  # the sinks place it on their canvas


class ScriptedFaces:
    """A face detector that sees a face on the calls `script(call)` says."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def __call__(self, frame, near=None):
        self.calls += 1
        return [(16.0, 8.0, 32.0, 32.0)] if self.script(self.calls - 1) else []


def test_face_lost_the_avatar_glides_to_rest_says_so_and_glides_back():
    from calibration.face_loss import GLIDE_S, LOST_AFTER_S
    # the detector runs on every 3rd frame; the face is gone on frames 30..89 (2 s at 30 fps)
    detector = ScriptedFaces(lambda call: not 10 <= call < 30)
    tracker = FaceTracker(tracking=True, detector=detector, out_size=SIZE)
    statuses = []
    p = make_pipeline(options=PipelineOptions(calibrate_first_frame=True))
    p.tracker = tracker
    p.sinks[0].send = lambda frame, sent=p.sinks[0].frames: (sent.append(frame.copy()),
                                                               statuses.append(p.status))
    p.run(frames([100] + [140] * 149))
    levels = [float(f.mean()) for f in p.sinks[0].frames]
    driven, rest = levels[20], levels[0]
    assert driven > rest + 10, "the driving frames move the avatar"
    glide_frames = GLIDE_S * 30
    steps = np.abs(np.diff(levels[1:]))  # after the calibration frame itself
    assert steps.max() <= 1.5 * (driven - rest) / glide_frames + 1.0, "no jump when the face goes or comes back"
    gone = 30 + int((LOST_AFTER_S + GLIDE_S) * 30) + 2
    assert levels[gone] == pytest.approx(rest, abs=0.5) and any("no face" in s for s in statuses[gone:90])
    assert levels[-1] == pytest.approx(driven, abs=0.5) and "no face" not in statuses[-1]
