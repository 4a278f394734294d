"""GPU backends: the compiled CUDA path and TensorRT (compile, engine cache roundtrip, parity with eager fp32).

Skipped with the reason where there is no CUDA GPU or TensorRT. Tolerances: fp16 renderers within max |diff|
2e-2 and PSNR >= 40 dB of the eager fp32 frame (fp16 on this project's CPU gives ~1e-3 / 76 dB on the same inputs;
a wrong channel order or warp gives > 0.1 / < 25 dB); fp32 detectors within 1e-3 in normalised coordinates
(TF32 and kernel choice, ~0.1 px).
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from engines.backends import tensorrt_backend as trt

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
_TRT_OK, _TRT_REASON = trt.tensorrt_status() if CUDA else (False, "needs a CUDA GPU first")
requires_tensorrt = pytest.mark.skipif(not _TRT_OK, reason=f"needs TensorRT: {_TRT_REASON}")

FP16_MAX_DIFF = 2e-2
FP16_MIN_PSNR = 40.0
KP_TOLERANCE = 1e-3


def psnr(a, b) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.fixture(scope="module")
def cuda_engine():
    from engines.engine import FOMMEngine

    torch.manual_seed(0)
    return FOMMEngine.from_deterministic_weights(device="cuda", align_corners=True)


@pytest.fixture(scope="module")
def cases(cuda_engine):
    """(source, [driving frames]) on the GPU: the golden astronaut when the reference is there, else noise."""
    from engines.bench import load_frames
    from tests.conftest import GOLDEN

    golden = (GOLDEN / "source.png", GOLDEN / "driving.npy") if (GOLDEN / "driving.npy").exists() else (None, None)
    source, driving, _ = load_frames(cuda_engine.image_size, *golden)
    return source.cuda(), [driving[i:i + 1].cuda() for i in range(len(driving))]


def assert_close_to_eager(engine, eager, cases, *, max_diff, min_psnr, kp_tolerance=KP_TOLERANCE):
    source, frames = cases
    state = eager.encode(source)
    for frame in frames:
        kp = eager.detect(frame)
        own = engine.detect(frame)
        assert float((own.value - kp.value).abs().max()) <= kp_tolerance
        assert float((own.jacobian - kp.jacobian).abs().max()) <= 10 * kp_tolerance
        reference, out = eager.render(state, kp).image, engine.render(state, kp).image
        assert out.shape == reference.shape and out.dtype == torch.float32 and out.device == reference.device
        assert float((out - reference).abs().max()) <= max_diff
        assert psnr(out, reference) >= min_psnr


@pytest.mark.gpu
@requires_cuda
def test_cuda_backend_matches_eager_within_fp16_tolerance(cuda_engine, cases):
    from engines.backends.cuda_backend import build_cuda_engine

    engine, notices = build_cuda_engine(cuda_engine)
    assert not any("failed" in n for n in notices), notices
    assert engine.name.startswith("torch-cuda-fp16")
    assert_close_to_eager(engine, cuda_engine, cases, max_diff=FP16_MAX_DIFF, min_psnr=FP16_MIN_PSNR)


@pytest.mark.gpu
@requires_cuda
def test_cuda_graph_outputs_survive_the_next_frame(cuda_engine, cases):
    from engines.backends.cuda_backend import build_cuda_engine

    engine, _ = build_cuda_engine(cuda_engine)
    source, frames = cases
    state = engine.encode(source)
    first = engine.render(state, engine.detect(frames[0])).image
    kept = first.clone()
    engine.render(state, engine.detect(frames[-1]))  # replays the graph into its static buffers
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


@pytest.mark.gpu
@requires_cuda
def test_create_engine_auto_picks_a_gpu_backend(monkeypatch, tmp_path):
    from engines.backends import create_engine

    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path))
    engine, notices = create_engine(deterministic_weights=True)
    assert engine.device.type == "cuda"
    assert engine.name.startswith("tensorrt" if _TRT_OK else "torch-cuda"), (engine.name, notices)
    report = engine.report()
    assert report.backend == ("tensorrt" if _TRT_OK else "cuda") and report.detector == "fp32"
    assert [f.candidate for f in report.fell_back] == ([] if _TRT_OK else ["TensorRT backend"])


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.slow
@requires_tensorrt
def test_tensorrt_fp16_compiles_caches_and_reloads(cuda_engine, cases, tmp_path):
    first, notices = trt.build_tensorrt_engine(cuda_engine, cache_dir=tmp_path)
    assert first.name == "tensorrt-fp16"
    assert sum("building the TensorRT" in n for n in notices) == 2  # detector and renderer
    assert_close_to_eager(first, cuda_engine, cases, max_diff=FP16_MAX_DIFF, min_psnr=FP16_MIN_PSNR)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 2 and entries[0].startswith("frame_renderer-fp16-") \
        and entries[1].startswith("keypoint_detector-fp32-")

    started = time.perf_counter()
    second, notices = trt.build_tensorrt_engine(cuda_engine, cache_dir=tmp_path)
    load_seconds = time.perf_counter() - started
    assert notices == [], notices
    assert load_seconds < 60, f"loading cached engines took {load_seconds:.0f} s"
    source, frames = cases
    state = cuda_engine.encode(source)
    kp = cuda_engine.detect(frames[1])
    torch.testing.assert_close(second.render(state, kp).image, first.render(state, kp).image, rtol=0, atol=1e-6)
    torch.testing.assert_close(second.detect(frames[1]).value, first.detect(frames[1]).value, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.slow
@requires_tensorrt
def test_tensorrt_rebuilds_a_corrupt_cached_engine(cuda_engine, cases, tmp_path):
    trt.build_tensorrt_engine(cuda_engine, cache_dir=tmp_path)
    renderer_entry = next(tmp_path.glob("frame_renderer-*"))
    payload = renderer_entry / trt.PAYLOAD
    payload.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
    engine, notices = trt.build_tensorrt_engine(cuda_engine, cache_dir=tmp_path)
    assert any("renderer engine" in n and "unusable" in n and "bytes" in n for n in notices), notices
    assert not any("keypoint detector engine" in n and "unusable" in n for n in notices)
    assert_close_to_eager(engine, cuda_engine, cases, max_diff=FP16_MAX_DIFF, min_psnr=FP16_MIN_PSNR)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.slow
@requires_tensorrt
def test_tensorrt_fp32_matches_eager_closely(cuda_engine, cases, tmp_path):
    engine, _ = trt.build_tensorrt_engine(cuda_engine, precision="fp32", cache_dir=tmp_path)
    assert engine.name == "tensorrt-fp32"
    assert_close_to_eager(engine, cuda_engine, cases, max_diff=2e-3, min_psnr=60.0)


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires_tensorrt
def test_tensorrt_cache_fields_describe_this_machine(cuda_engine):
    gpu = trt.gpu_identity(cuda_engine.device)
    versions = trt.runtime_versions()
    assert gpu["gpu"] == torch.cuda.get_device_name(cuda_engine.device)
    assert versions["tensorrt"] != "unknown" and versions["torch_tensorrt"]
