"""The delay line behind the audio pass-through, driven with known signals the way the two audio callbacks drive
it: a block written, a block read, in turn. The output of a read is what plays from that moment on, so output
sample n plays at time (n + BLOCK) / RATE: one block after the input's first block arrived."""
import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from live.audio.delay_line import DelayLine

RATE = 48000
BLOCK = 480  # 10 ms callbacks


def band_noise(seconds, rate=RATE, seed=0):
    """Noise below 3 kHz: no periodicity, so a cross-correlation has one peak; smooth enough to interpolate."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * rate))
    return (0.3 * sosfilt(butter(6, 3000, fs=rate, output="sos"), x)).astype(np.float32)


def drive(line, signal, targets, block=BLOCK, out_block=None):
    """targets(t) -> seconds; returns the output (mono) and the delay in use after each read."""
    out_block = out_block or block
    out, delays = [], []
    for k in range(len(signal) // block):
        t = (k + 1) * block / line.in_rate
        line.set_target(targets(t))
        line.write(signal[k * block:(k + 1) * block])
        delays.append(line.delay())  # None before the first read
        out.append(line.read(out_block)[:, 0])
    return np.concatenate(out), np.array([np.nan if d is None else d for d in delays])


def delayed_input(signal, delay_s, n_out, rate=RATE, block=BLOCK):
    """What a perfect delay of delay_s gives at output samples 0..n_out (played at (n + block) / rate)."""
    t_in = (np.arange(n_out) + block) / rate - delay_s
    return np.interp(t_in * rate, np.arange(len(signal)), signal, left=0.0, right=0.0)


def measured_lag(out, signal, start, length, rate=RATE, block=BLOCK):
    """Delay (seconds) of out[start:start+length] against the input, from the cross-correlation peak."""
    seg = out[start:start + length]
    best, best_lag = -np.inf, None
    for lag in range(0, int(0.6 * rate)):
        i0 = start + block - lag
        if i0 < 0:
            break
        ref = signal[i0:i0 + length]
        score = float(np.dot(seg, ref))
        if score > best:
            best, best_lag = score, lag
    return best_lag / rate


def test_steady_state_equals_input_delayed_by_the_target_and_the_glide_is_smooth():
    signal = band_noise(14.0)
    line = DelayLine(1, RATE)
    # 120 ms, then the video latency rises to 300 ms at 3 s and falls to 180 ms at 9 s
    schedule = lambda t: 0.120 if t < 3.0 else (0.300 if t < 9.0 else 0.180)  # noqa: E731
    out, delays = drive(line, signal, schedule)

    for target, end in ((0.120, 3.0), (0.300, 9.0), (0.180, 14.0)):
        # steady state: the last half second before the next change
        start, length = int((end - 0.6) * RATE), int(0.5 * RATE)
        lag = measured_lag(out, signal, start, length)
        assert abs(lag - target) <= BLOCK / RATE, (target, lag)        # within one callback period
        assert abs(lag - target) <= 1.5 / RATE, (target, lag)          # in fact within a sample or so
        ideal = delayed_input(signal, target, len(out))
        last = slice(int((end - 0.3) * RATE), int((end - 0.05) * RATE))
        err = np.abs(out[last] - ideal[last]).max()
        assert err < 0.06 * np.abs(signal).max(), err  # sample for sample the delayed input (< 1 sample off)
        assert abs(delays[int(end * RATE / BLOCK) - 1] - target) < 0.001

    # while gliding: no jump larger than the signal's own steepest step (x the glide's speed-up), no gaps
    glide = slice(int(3.0 * RATE), int(8.0 * RATE))
    assert np.abs(np.diff(out[glide])).max() <= 1.1 * (1 + line.max_speed) * np.abs(np.diff(signal)).max()
    blocks = out[glide][: (len(out[glide]) // BLOCK) * BLOCK].reshape(-1, BLOCK)
    rms, ref = np.sqrt((blocks ** 2).mean(axis=1)), np.sqrt((signal ** 2).mean())
    assert rms.min() > 0.3 * ref, "the glide must not drop out"
    # the delay changes gradually: at most max_speed seconds per second
    steps = np.abs(np.diff(delays[int(3.0 * RATE / BLOCK):]))
    assert steps.max() <= line.max_speed * BLOCK / RATE + 1e-6


def test_no_target_is_silence_then_fades_in_at_the_target():
    signal = band_noise(2.0)
    line = DelayLine(1, RATE)
    out, _ = drive(line, signal, lambda t: None if t < 0.5 else 0.1)
    assert not out[: int(0.5 * RATE) - BLOCK].any()
    start = int(1.2 * RATE)
    assert abs(measured_lag(out, signal, start, int(0.5 * RATE)) - 0.1) <= 1.5 / RATE


def test_underrun_is_silence_and_resumes_without_a_click():
    signal = band_noise(5.0)
    line = DelayLine(1, RATE)
    out, written = [], []
    for k in range(len(signal) // BLOCK):
        line.set_target(0.05)
        t = k * BLOCK / RATE
        if not 1.0 <= t < 1.5:  # the microphone stalls for half a second (its samples are lost); reads go on
            written.append(signal[k * BLOCK:(k + 1) * BLOCK])
            line.write(written[-1])
        else:
            written.append(np.zeros(BLOCK, np.float32))  # what "delayed by 50 ms" means across the gap
        out.append(line.read(BLOCK)[:, 0])
    out, written = np.concatenate(out), np.concatenate(written)
    assert line.underruns >= 1
    assert not out[int(1.1 * RATE):int(1.5 * RATE)].any(), "nothing to play: silence"
    assert np.abs(out[int(1.5 * RATE):]).max() > 0.1, "plays again"
    assert np.abs(np.diff(out)).max() <= 1.1 * (1 + line.max_speed) * np.abs(np.diff(signal)).max(), "no click"
    # back at the target delay, and nothing from before the gap played twice
    assert abs(measured_lag(out, written, int(4.3 * RATE), int(0.5 * RATE)) - 0.05) <= 1.5 / RATE
    before_gap = signal[int(0.9 * RATE):int(1.0 * RATE)]
    after = out[int(1.5 * RATE):]
    replay = np.correlate(after, before_gap, mode="valid").max() / np.dot(before_gap, before_gap)
    assert replay < 0.5, replay


@pytest.mark.parametrize("in_rate,out_rate", [(44100, 48000), (48000, 44100)])
def test_sample_rate_mismatch_is_resampled(in_rate, out_rate):
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(int(3 * in_rate)) / in_rate).astype(np.float32)
    line = DelayLine(1, in_rate, out_rate)
    in_block, out_block = in_rate // 100, out_rate // 100
    out, delays = drive(line, tone, lambda t: 0.08, block=in_block, out_block=out_block)
    tail = out[-out_rate:]
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
    peak_hz = np.argmax(spectrum) * out_rate / len(tail)
    assert abs(peak_hz - 1000.0) < 2.0, peak_hz
    assert abs(np.sqrt((tail ** 2).mean()) - 0.5 / np.sqrt(2)) < 0.01
    assert abs(delays[-1] - 0.08) < 0.002


def test_bad_blocks_are_refused_and_stereo_passes():
    line = DelayLine(2, RATE)
    with pytest.raises(ValueError):
        line.write(np.zeros((10, 3), np.float32))
    line.set_target(0.0)
    stereo = np.stack([band_noise(0.5, seed=1), band_noise(0.5, seed=2)], axis=1)
    for k in range(len(stereo) // BLOCK):
        line.write(stereo[k * BLOCK:(k + 1) * BLOCK])
        block = line.read(BLOCK)
    assert block.shape == (BLOCK, 2) and np.abs(block[:, 0] - block[:, 1]).max() > 0.01


def test_input_delivered_late_plays_at_the_same_delay_after_the_gap():
    """A busy machine delays the input callback by 150 ms (3x the delay), then delivers the held blocks at once:
    the output has a gap, and right after it plays at the target delay again (in step with the clock), without
    a slow glide back and without playing anything twice."""
    signal = band_noise(3.0)
    line = DelayLine(1, RATE)
    line.set_target(0.05)
    out, held = [], []
    for k in range(len(signal) // BLOCK):
        now = (k + 1) * BLOCK / RATE
        held.append(signal[k * BLOCK:(k + 1) * BLOCK])
        if not 1.0 <= now < 1.15:  # the callbacks in between are late
            for block in held:
                line.write(block, now)
            held = []
        out.append(line.read(BLOCK, now)[:, 0])
    out = np.concatenate(out)
    assert line.underruns >= 1
    assert abs(measured_lag(out, signal, int(1.3 * RATE), int(0.3 * RATE)) - 0.05) <= 1.5 / RATE
    assert np.abs(np.diff(out)).max() <= 1.1 * (1 + line.max_speed) * np.abs(np.diff(signal)).max(), "no click"


def test_after_the_input_ends_the_rest_plays_at_the_normal_speed_then_silence():
    signal = band_noise(2.0)
    line = DelayLine(1, RATE)
    out, _ = drive(line, signal, lambda t: 0.2)
    assert line.unplayed() == pytest.approx(0.2 - BLOCK / RATE, abs=1.5 / RATE)  # the delay less the block read
    line.end_input()
    tail = np.concatenate([line.read(BLOCK)[:, 0] for _ in range(40)])  # 0.4 s more, no input
    heard = np.concatenate([out, tail])
    assert line.unplayed() == 0 and line.underruns == 0, "the end of the input is not a glitch"
    # the last 0.2 s written came out, at the delay the line had (not sped up or slowed down: no pitch change)
    ideal = delayed_input(signal, 0.2, len(heard))
    played = slice(len(out), len(out) + int(0.19 * RATE) - 2)
    assert np.abs(heard[played] - ideal[played]).max() < 0.06 * np.abs(signal).max()
    assert not tail[int(0.19 * RATE):].any(), "then silence"
