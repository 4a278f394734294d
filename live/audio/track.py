"""The driving clip's audio track, re-encoded to AAC into a recording, in step with the rendered frames.

An offline render turns driving frame i into output frame i, so output time t is source time `video start + t`:
the audio is taken from there (the part before the clip's first frame dropped, a late start padded with
silence) and ends exactly with the last frame written, also when --max-frames cut the render short or the audio
is shorter than the video (padded). It is decoded only as far as the video has got, and silence is made only as
it is written, so memory stays bounded whatever the clip says (a sound track that starts hours after the picture
is a count of samples owed, not an array) and a recording cut off by a crash still has its sound up to there.

Bad audio costs only the sound: samples that are not numbers (NaN, infinities) become silence and the rest is
limited to full scale before the encoder sees them, and a stream that fails to decode or to encode ends the sound
there (`error` says why). Only a failure to write the file itself (a full disk) is the recording's failure.
"""
from __future__ import annotations

import fractions
import math
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
        self._silence_owed = 0              # samples of silence due before _pending (a late start)
        self._skip_owed = 0                 # samples still to drop from what is decoded (an early start)
        self._first = None                  # source time of the first decoded audio
        self._placed = False
        self._exhausted = False
        self._encoding = True               # False once the encoder failed: the sound ends there
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
        while self._encoding and self.samples + AAC_FRAME <= wanted and self._available() >= AAC_FRAME:
            self._encode(self._take(AAC_FRAME), container)

    def finish(self, seconds: float, container) -> None:
        """Write the rest up to exactly `seconds` (silence where the source has no more), flush, close the
        source."""
        wanted = max(0, round(seconds * self.rate) - AAC_PRIMING)
        self._decode_to(wanted)
        self._silence_owed += max(0, wanted - self.samples - self._available())  # the source ended early
        while self._encoding and self.samples < wanted:
            self._encode(self._take(min(AAC_FRAME, wanted - self.samples)), container)
        if self._encoding:
            self._mux(self._encoded(None), container)
        self.close()

    def close(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()

    # --- internals -------------------------------------------------------------------------------------------
    def _available(self) -> int:
        """Samples ready to encode: silence owed, then what was decoded."""
        return self._silence_owed + self._pending.shape[1]

    def _take(self, n: int) -> np.ndarray:
        silence = min(n, self._silence_owed)
        self._silence_owed -= silence
        chunk, self._pending = self._pending[:, :n - silence], self._pending[:, n - silence:]
        if silence:
            chunk = np.concatenate([np.zeros((self.channels, silence), np.float32), chunk], axis=1)
        return chunk

    def _encode(self, samples: np.ndarray, container) -> None:
        import av
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.time_base = fractions.Fraction(1, self.rate)
        frame.pts = self.samples
        self.samples += samples.shape[1]
        self._mux(self._encoded(frame), container)

    def _encoded(self, frame) -> list:
        """The encoder's packets for `frame` (None: flush); [] once it has failed, which ends the sound."""
        try:
            return list(self.stream.encode(frame))
        except Exception as e:  # noqa: BLE001 - av.error.* from the codec: the sound ends, the video goes on
            self.error = self.error or f"the audio encoder failed: {type(e).__name__}: {e}".replace("\n", " ")
            self._encoding = False
            return []

    @staticmethod
    def _mux(packets: list, container) -> None:
        for packet in packets:
            container.mux(packet)  # a write error (disk full) is the recording's: it propagates

    def _decode_to(self, wanted: int) -> None:
        while not self._exhausted and self.samples + self._available() < wanted:
            try:
                packet = next(self._packets)
                out = []
                for frame in packet.decode():  # the last (empty) packet flushes the decoder
                    if self._first is None:
                        self._first = (float(frame.pts * frame.time_base) if frame.pts is not None
                                       and frame.time_base is not None else self._start)
                    out += self._resampler.resample(frame)
                if not packet.size:
                    out += self._resampler.resample(None)
                    self._exhausted = True
                data = [frame.to_ndarray().astype(np.float32, copy=False).reshape(self.channels, -1)
                        for frame in out]
            except StopIteration:
                self._exhausted = True
                break
            except Exception as e:  # noqa: BLE001 - av.error.InvalidDataError and friends: the sound ends here
                self.error = f"{type(e).__name__}: {e}".replace("\n", " ")
                self._exhausted = True
                break
            for samples in data:
                self._append(samples)

    def _append(self, data: np.ndarray) -> None:
        if not self._placed:
            # the first audio: onto the output timeline (what precedes the first frame dropped, a late start
            # padded), as counts: the silence is made only when it is written, the skipped audio as it comes
            self._placed = True
            offset = (self._first - self._start) * self.rate
            offset = round(offset) if math.isfinite(offset) else 0
            self._silence_owed, self._skip_owed = max(offset, 0), max(-offset, 0)
        if self._skip_owed:
            skipped = min(self._skip_owed, data.shape[1])
            self._skip_owed -= skipped
            data = data[:, skipped:]
        # not numbers -> silence, the rest within full scale: the encoder refuses NaN and infinities (and energy
        # sums that overflow to them), which used to end the recording, not just its sound
        data = np.clip(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
        self._pending = np.concatenate([self._pending, data], axis=1)
