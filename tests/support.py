"""Test helpers with state (kept out of conftest.py, which pytest imports under a second module name)."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from engines.keypoints import Keypoints
from engines.protocol import EngineBase, EngineReport, RenderedFrame, identity_motion

SIZE = 32
K = 5
PATTERN = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.0], [-0.4, 0.5], [0.4, 0.5]])


def tiny_engine():
    """The real FOMM networks at 64x64 with a few channels (generated weights): every layer of the code path, a
    hundredth of vox-256's work. For tests of what a backend does with the networks, not of the networks' output
    (parity with the golden outputs needs VOX_256: tests/test_engine_parity.py)."""
    from engines.config import DenseMotionConfig, FOMMConfig, GeneratorConfig, KeypointDetectorConfig
    from engines.engine import FOMMEngine

    tiny = FOMMConfig(name="tiny-64", image_size=64,
                      kp_detector=KeypointDetectorConfig(block_expansion=8, max_features=64, num_blocks=3),
                      generator=GeneratorConfig(block_expansion=8, max_features=64, num_bottleneck_blocks=2,
                                                dense_motion=DenseMotionConfig(block_expansion=8, max_features=64,
                                                                               num_blocks=3)))
    return FOMMEngine.from_deterministic_weights(config=tiny, device="cpu", align_corners=True)


def read_video(path) -> tuple[list, float]:
    """(every BGR frame, fps) of a video file, read back with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


class MemoryCamera:
    """An in-memory pyvirtualcam backend: frames arrive here through the real pyvirtualcam.Camera API.

    Devices 'mem0' (the default) and 'mem1' exist; any other name fails like a missing device does."""

    instances = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        if device not in (None, "mem0", "mem1"):
            raise RuntimeError(f"Device {device} does not exist.")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "mem0"
        self.frames = []
        self.closed = 0
        MemoryCamera.instances.append(self)

    def send(self, frame):
        self.frames.append(np.asarray(frame).reshape(self.height, self.width, 3).copy())

    def device(self):
        return self._device

    def native_fourcc(self):
        return None

    def close(self):
        self.closed += 1


MEMORY_BACKEND = "memory-test"



def peak_rss_growth_mb(setup: str, action: str, *, timeout: float = 120) -> tuple[float, str]:
    """(MB by which the peak RSS of a fresh interpreter grows while `action` runs, what it printed). `setup` runs
    first (imports, warm-up), so only `action` is measured.

    Linux keeps ru_maxrss across fork+exec, so a child of a big pytest process would start at the parent's peak:
    the peak is reset (/proc/self/clear_refs) and read as VmHWM where the kernel allows, else ru_maxrss."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = "\n".join([
        "import resource, sys", f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})",
        textwrap.dedent(setup),
        "def _status(key):",
        "    for line in open('/proc/self/status'):",
        "        if line.startswith(key):",
        "            return int(line.split()[1])",
        "try:",
        "    open('/proc/self/clear_refs', 'w').write('5')",
        "    _before, _peak = _status('VmRSS:'), lambda: _status('VmHWM:')",
        "except OSError:",
        "    _peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "    _before = _peak()",
        "try:", textwrap.indent(textwrap.dedent(action), "    "),
        "except Exception as _e:", "    print('raised', type(_e).__name__, _e)",
        "print('growth_kib', _peak() - _before)"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    growth = [int(line.split()[1]) for line in lines if line.startswith("growth_kib")][-1]
    return growth / 1024, "\n".join(line for line in lines if not line.startswith("growth_kib"))


class FakeEngine(EngineBase):
    """detect: keypoints moved by the input's mean brightness; render: brightness follows the keypoint shift."""

    image_size = SIZE
    device = torch.device("cpu")
    config_hash = "fake-config"
    weights_id = "fake-weights"
    name = "fake"

    def __init__(self):
        self.detect_calls = 0
        self.render_calls = 0
        self.status_text = None  # what status() says (a remote engine while its server is away)
        self.closed = 0
        self._report = EngineReport(backend="fake", device="cpu", detector="fp32", renderer="fp32",
                                    why="a test double")

    def detect(self, image):
        self.detect_calls += 1
        shift = float(image.mean()) - 0.5
        value = (PATTERN + shift)[None].clone()
        value[0, 2] += shift  # the middle point moves twice as far: the face *shape* changes, not just its place
        return Keypoints(value, torch.eye(2).expand(1, K, 2, 2).clone())

    def encode(self, image):
        return SimpleNamespace(kp=self.detect(image), image=image)

    def render(self, state, kp_driving):
        self.render_calls += 1
        level = float((kp_driving.value - state.kp.value).mean()) + 0.5
        image = torch.full((1, 3, SIZE, SIZE), min(max(level, 0.0), 1.0))
        return RenderedFrame(image, *identity_motion(1, 8))

    def status(self):
        return self.status_text

    def close(self):
        self.closed += 1

    def forward_full(self, source, kp_driving, kp_source=None):
        state = self.encode(source)
        if kp_source is not None:
            state.kp = kp_source
        return {"prediction": self.render(state, kp_driving).image}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=4)
def _gray_png_bytes(side: int) -> bytes:
    import struct
    import zlib
    compressor = zlib.compressobj(6)  # zeros: as small as level 9, and compressing 2.5 GB of them takes seconds
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def gray_png_bomb(path, side: int):
    """A valid 8-bit gray PNG of side x side zeros: a few hundred KB that decode to side^2 x 3 bytes in colour
    (made once per size per session)."""
    path.write_bytes(_gray_png_bytes(side))
    return path
