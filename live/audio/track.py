"""The driving clip's audio track, re-encoded to AAC into a recording, in step with the rendered frames.

An offline render turns driving frame i into output frame i, so output time t is source time `video start + t`:
the audio is taken from there (the part before the clip's first frame dropped, a late start padded with
silence) and ends exactly with the last frame written, also when --max-frames cut the render short or the audio
is shorter than the video (padded). It is decoded only as far as the video has got, so memory stays bounded and
a recording cut off by a crash still has its sound up to there. A damaged audio stream ends the sound where the
damage is (`error` says why); the video is never lost for it.
"""
from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np

AAC_FRAME = 1024           # samples per AAC frame
# FFmpeg's AAC encoder starts with one frame of priming; a fragmented MP4 has no edit list to skip it, so players
# play it: the sound from the source starts after it (dropping its first 1024 samples) to stay in sync.
AAC_PRIMING = 1024
FALLBACK_RATE = 48000      # for source rates AAC cannot carry
BIT_RATE = 128_000


class AudioTrack:
    def __init__(self, source, stream, out_stream, start: float):
        self._source, self._in = source, stream
        self.stream = out_stream
        self.rate = out_stream.codec_context.sample_rate
        self.layout = out_stream.codec_context.layout.name
        self.channels = out_stream.codec_context.layout.nb_channels
        self._start = start + AAC_PRIMING / self.rate  # source time (s) of the first sample encoded
        self._packets = source.demux(stream)
        import av
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._pending = np.zeros((self.channels, 0), np.float32)  # decoded, not yet encoded
        self._first = None                  # source time of the first decoded audio
        self._placed = False
        self._exhausted = False
        self.samples = 0                    # samples encoded so far
        self.error: str | None = None

    @classmethod
    def open(cls, path, container) -> "AudioTrack | None":
        """An audio stream in `container` fed from the media file at `path`; None when it has no audio."""
        import av
        try:
            source = av.open(str(Path(path).expanduser()))
        except Exception:  # noqa: BLE001 - a folder of images, or not a media file PyAV reads: no audio
            return None
        try:
            if not source.streams.audio:
                source.close()
                return None
            stream = source.streams.audio[0]
            rate = stream.codec_context.sample_rate or FALLBACK_RATE
            if rate not in (av.codec.Codec("aac", "w").audio_rates or ()):
                rate = FALLBACK_RATE
            layout = "mono" if (stream.codec_context.channels or 1) == 1 else "stereo"
            out = container.add_stream("aac", rate=rate, layout=layout)
            out.codec_context.bit_rate = BIT_RATE
            video = source.streams.video[0] if source.streams.video else None
            start = (float(video.start_time * video.time_base)
                     if video is not None and video.start_time is not None else 0.0)
        except Exception:  # noqa: BLE001
            source.close()
            raise
        return cls(source, stream, out, start)

    # --- writing ---------------------------------------------------------------------------------------------
    def write_until(self, seconds: float, container) -> None:
        """Encode and mux whole AAC frames up to output time `seconds`."""
        wanted = round(seconds * self.rate) - AAC_PRIMING
        self._decode_to(wanted)
        while self.samples + AAC_FRAME <= wanted and self._pending.shape[1] >= AAC_FRAME:
            self._encode(self._take(AAC_FRAME), container)

    def finish(self, seconds: float, container) -> None:
        """Write the rest up to exactly `seconds` (silence where the source has no more), flush, close the
        source."""
        wanted = max(0, round(seconds * self.rate) - AAC_PRIMING)
        self._decode_to(wanted)
        missing = wanted - self.samples - self._pending.shape[1]
        if missing > 0:
            self._pending = np.concatenate([self._pending, np.zeros((self.channels, missing), np.float32)], axis=1)
        while self.samples < wanted:
            self._encode(self._take(min(AAC_FRAME, wanted - self.samples)), container)
        for packet in self.stream.encode(None):
            container.mux(packet)
        self.close()

    def close(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()

    # --- internals -------------------------------------------------------------------------------------------
    def _take(self, n: int) -> np.ndarray:
        chunk, self._pending = self._pending[:, :n], self._pending[:, n:]
        return chunk

    def _encode(self, samples: np.ndarray, container) -> None:
        import av
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.time_base = fractions.Fraction(1, self.rate)
        frame.pts = self.samples
        self.samples += samples.shape[1]
        for packet in self.stream.encode(frame):
            container.mux(packet)

    def _decode_to(self, wanted: int) -> None:
        while not self._exhausted and self.samples + self._pending.shape[1] < wanted:
            try:
                packet = next(self._packets)
                out = []
                for frame in packet.decode():  # the last (empty) packet flushes the decoder
                    if self._first is None:
                        self._first = frame.pts * frame.time_base if frame.pts is not None else self._start
                    out += self._resampler.resample(frame)
                if not packet.size:
                    out += self._resampler.resample(None)
                    self._exhausted = True
            except StopIteration:
                self._exhausted = True
                break
            except Exception as e:  # noqa: BLE001 - av.error.InvalidDataError and friends: the sound ends here
                self.error = f"{type(e).__name__}: {e}".replace("\n", " ")
                self._exhausted = True
                break
            for frame in out:
                self._append(frame.to_ndarray().astype(np.float32, copy=False).reshape(self.channels, -1))

    def _append(self, data: np.ndarray) -> None:
        if not self._placed:
            # the first audio: onto the output timeline (drop what precedes the first frame, pad a late start)
            self._placed = True
            offset = round((float(self._first) - self._start) * self.rate)
            if offset > 0:
                data = np.concatenate([np.zeros((self.channels, offset), np.float32), data], axis=1)
            elif offset < 0:
                data = data[:, -offset:]
        self._pending = np.concatenate([self._pending, data], axis=1)
