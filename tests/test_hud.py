"""HUD numbers: FPS from new frames actually sent over a sliding window, stage times only for stages that ran
recently, and a latency that restarts with them."""
import pytest

from live.ui.hud import Timings


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _frame(timings, clock, seconds, stages=("detect", "render"), ms=None):
    """One frame of `seconds` wall time during which `stages` ran (each taking `ms` or its share)."""
    for name in stages:
        timings.record(name, ms if ms is not None else seconds * 1000.0 / len(stages))
    clock.t += seconds
    timings.frame_done(clock.t - seconds)


def test_fps_is_frames_sent_over_the_window_not_an_average_of_rates():
    clock = FakeClock()
    t = Timings(clock=clock, window=10.0)
    for _ in range(10):
        _frame(t, clock, 0.1)   # intervals vary a lot: 10 fps bursts...
        _frame(t, clock, 2.9)   # ...then a slow frame
    # 2 frames per 3 s. An average of 1/interval says ~5 fps.
    assert t.fps == pytest.approx(2 / 3, rel=0.1)


def test_fps_follows_the_real_rate_after_the_fast_uncalibrated_start():
    clock = FakeClock()
    t = Timings(clock=clock, window=3.0)
    for _ in range(30):
        _frame(t, clock, 0.2, stages=("detect",))   # not calibrated: no render, fast
    for _ in range(4):
        _frame(t, clock, 1.5)                       # rendering: 1.5 s a frame
    assert t.fps == pytest.approx(1 / 1.5, rel=0.01)
    assert "FPS   0.7" in t.lines()[0]


def test_fps_with_frames_slower_than_the_window_uses_the_last_two():
    clock = FakeClock()
    t = Timings(clock=clock, window=1.0)
    assert t.fps is None
    _frame(t, clock, 4.0)
    assert t.fps is None and t.lines()[0].startswith("FPS   -")
    _frame(t, clock, 4.0)
    assert t.fps == pytest.approx(0.25)


def test_skipped_stages_disappear_and_restart_their_average():
    clock = FakeClock()
    t = Timings(clock=clock)
    for _ in range(5):
        _frame(t, clock, 1.0, stages=("crop", "detect", "render", "sinks"), ms=400)
    assert "render 400" in t.lines()[1]
    _frame(t, clock, 0.05, stages=("crop", "sinks"), ms=10)   # passthrough: no detect, no render
    assert t.lines()[1] == "ms: crop 10 sinks 10"             # another mode: every average starts afresh
    assert "render" not in t.lines()[1] and "detect" not in t.lines()[1]
    _frame(t, clock, 0.05, stages=("crop", "sinks", "render"), ms=20)
    assert "render 20" in t.lines()[1], "a resumed stage starts afresh, not from its stale average"
    assert "detect" not in t.lines()[1]


def test_summary_uses_the_whole_run_average():
    clock = FakeClock()
    t = Timings(clock=clock, window=1.0)
    for _ in range(5):
        _frame(t, clock, 0.1)
    for _ in range(5):
        _frame(t, clock, 1.0)
    assert t.average_fps == pytest.approx(9 / 5.4)
    assert t.summary().startswith("FPS   1.7")


def test_latency_restarts_with_the_stages_and_is_never_below_their_sum():
    """After calibrating, render (2 s) joins the stages: the latency must not stay near the fast frames before."""
    clock = FakeClock()
    t = Timings(clock=clock)
    data_path = ("crop", "detect", "normalize", "sinks")
    for _ in range(50):
        _frame(t, clock, 0.1, stages=data_path)                       # not calibrated: ~100 ms a frame
    for _ in range(5):
        _frame(t, clock, 2.1, stages=(*data_path, "render"), ms=None)  # rendering
        stages = {k: v for k, v in t.recent_stages().items() if k not in ("wait", "rtt")}
        assert t.latency_ms >= sum(stages.values()) - 1e-6, (t.latency_ms, stages)
    assert t.latency_ms == pytest.approx(2100)
    assert "latency 2100 ms" in t.lines()[0]


def test_overlapping_stages_do_not_restart_the_averages():
    """rtt (an earlier frame's round trip) comes and goes with the answers; it is no change of mode."""
    clock = FakeClock()
    t = Timings(clock=clock)
    for i in range(20):
        _frame(t, clock, 0.1 if i < 10 else 0.3, stages=("detect", "render", "rtt") if i % 2 else ("detect", "render"))
    assert 100 < t.latency_ms < 300, "an EMA over the frames, not restarted every other frame"


def test_repeated_frames_count_for_neither_fps_nor_latency():
    clock = FakeClock()
    t = Timings(clock=clock, window=10.0)
    for _ in range(5):
        _frame(t, clock, 0.5)                       # new frames at 2 per second
    for _ in range(20):                             # the server is away: the last frame again, fast
        t.record("detect", 1.0)
        t.record("render", 1.0)
        clock.t += 0.05
        t.frame_done(clock.t - 0.05, fresh=False)
    assert t.fresh_frames == 5 and t.frames == 25
    assert t.fps == pytest.approx(2.0)
    assert t.latency_ms == pytest.approx(500)


def test_fps_goes_blank_when_only_repeats_are_sent_for_a_while():
    clock = FakeClock()
    t = Timings(clock=clock, window=3.0)
    for _ in range(30):
        _frame(t, clock, 0.1)                       # 10 new frames per second
    assert t.fps == pytest.approx(10.0)
    for _ in range(40):                             # then 4 s of the last frame again (the server is away)
        t.record("detect", 1.0)
        t.record("render", 1.0)
        clock.t += 0.1
        t.frame_done(clock.t - 0.1, fresh=False)
    assert t.fps is None and t.lines()[0] == "FPS   -    latency -", "no frozen 10 fps of a frozen frame"
