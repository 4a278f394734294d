"""The pass-through's life cycle on fake PortAudio streams that run in lockstep on a virtual clock (one thread
calls the input callback, then the output callback, 10 ms of samples each): what the microphone delivered, and
what the output played, are known sample for sample, whatever the machine's load. (On a real audio server:
test_audio_e2e.py.)"""
import threading
import time
import types

import numpy as np
import pytest

from live.audio import pass_through as audio
from live.audio.pass_through import AudioDevice, AudioPassThrough

RATE = 48000
BLOCK = 480


class Lockstep:
    """The fake sound cards: input blocks from `signal`, output blocks collected, a virtual clock."""

    def __init__(self, signal):
        self.signal, self.now = signal, 0.0
        self.captured = 0           # input samples the fake microphone has captured
        self.delivered = 0          # input samples handed to the input callback
        self.hold = 0               # steps the input callback is held back for (a busy machine), then gets it all
        self.played = []            # output blocks
        self.streams = []
        self._thread = None

    def module(self):
        cards = self

        class Stream:
            def __init__(self, *, samplerate, blocksize, latency, callback, finished_callback, channels=1, **kw):
                self.samplerate, self.blocksize, self.latency = float(samplerate), blocksize, float(latency)
                self.callback, self.finished_callback, self.channels = callback, finished_callback, channels
                self.active = False
                cards.streams.append(self)

            def start(self):
                self.active = True
                cards.run()

            def abort(self):
                self.active = False

            def close(self):
                self.active = False

        return types.SimpleNamespace(InputStream=type("InputStream", (Stream,), {"input": True}),
                                     OutputStream=type("OutputStream", (Stream,), {"input": False}),
                                     CallbackAbort=type("CallbackAbort", (Exception,), {}))

    def run(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def _loop(self):
        status = types.SimpleNamespace(input_overflow=False, output_underflow=False)
        while any(s.active for s in self.streams) or not self.streams:
            for stream in list(self.streams):
                if not stream.active:
                    continue
                if stream.input:
                    self.captured += BLOCK
                    if self.hold:
                        self.hold -= 1
                        continue
                    while self.delivered < self.captured and stream.active:
                        block = self.signal[self.delivered:self.delivered + BLOCK]
                        if len(block) < BLOCK:
                            block = np.zeros(BLOCK, np.float32)
                        stream.callback(block[:, None], BLOCK, None, status)
                        self.delivered += BLOCK
                else:
                    out = np.zeros((BLOCK, stream.channels), np.float32)
                    stream.callback(out, BLOCK, None, status)
                    self.played.append(out[:, 0].copy())
            self.now += BLOCK / RATE
            time.sleep(0.0005)  # faster than real time, but lets the test's thread run

    def join(self):
        if self._thread is not None:
            self._thread.join(5)


def bursts_every(period_s, seconds, seed=3):
    rng = np.random.default_rng(seed)
    signal = np.zeros(int(seconds * RATE), np.float32)
    for start in range(int(0.05 * RATE), len(signal) - BLOCK, int(period_s * RATE)):
        signal[start:start + 960] = 0.5 * rng.standard_normal(960) * np.hanning(960)
    return signal


@pytest.fixture
def lockstep(monkeypatch):
    cards = Lockstep(bursts_every(0.1, 20.0))
    monkeypatch.setattr(audio, "portaudio", cards.module)
    yield cards
    for stream in cards.streams:
        stream.active = False
    cards.join()


def start_pass_through(cards, latency_ms=150.0):
    device = AudioDevice(0, "fake", 1, float(RATE))
    return AudioPassThrough(device, device, lambda: latency_ms, clock=lambda: cards.now, notify=lambda m: None).start()


def test_closing_plays_out_the_delayed_tail_before_the_output_stops(lockstep):
    passthrough = start_pass_through(lockstep)
    while lockstep.now < 1.0:  # a second of virtual time, with the target set
        time.sleep(0.01)
    passthrough.close()
    lockstep.join()
    heard, said = np.concatenate(lockstep.played), lockstep.signal[:lockstep.delivered]
    assert passthrough.line.underruns == 0
    # everything the microphone delivered after the pass-through started to play comes out, the last words too
    last = said[-int(0.12 * RATE):]  # within the delay (150 ms less the fake devices' 60 ms) of the end
    assert np.abs(last).max() > 0.1, "the test needs a burst in the tail"
    match = np.correlate(heard, last, mode="valid")
    assert match.max() > 0.98 * np.dot(last, last), "the delayed tail came out whole"
    where = int(np.argmax(match)) + len(last)
    assert np.abs(heard[where + BLOCK:]).max() == 0, "then silence: nothing played twice"


def test_a_failed_device_is_not_drained(lockstep):
    passthrough = start_pass_through(lockstep)
    while lockstep.now < 0.5:
        time.sleep(0.01)
    passthrough.stopped_reason = "fake stopped"  # what _finished records when a device goes away
    began = time.monotonic()
    passthrough.close()
    assert time.monotonic() - began < 0.05, "closing waits for nothing when the output is gone"
    assert not any(s.active for s in lockstep.streams)


def test_closing_waits_for_what_the_microphone_captured_but_a_busy_machine_had_not_delivered(lockstep):
    passthrough = start_pass_through(lockstep, latency_ms=300.0)  # the line holds 230 ms: 120 ms late is no gap
    while lockstep.now < 1.0:
        time.sleep(0.01)
    lockstep.hold = 12  # the input callback waits 120 ms for the CPU: the close comes in the middle of it
    while lockstep.hold > 6:
        time.sleep(0.001)
    said = lockstep.signal[:lockstep.captured]  # captured before the close
    passthrough.close()
    lockstep.join()
    heard = np.concatenate(lockstep.played)
    last = said[-int(0.12 * RATE):]
    assert lockstep.delivered >= len(said), "the held blocks were taken before the microphone stopped"
    assert passthrough.line.underruns == 0
    assert np.abs(last).max() > 0.1, "the test needs a burst in the tail"
    assert np.correlate(heard, last, mode="valid").max() > 0.98 * np.dot(last, last), "and they came out"
