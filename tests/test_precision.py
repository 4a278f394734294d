"""Precision by measurement (the decision store, the eager torch probe under oneDNN's ISA cap), the background
engine switch in the live loop, and accelerator devices (OpenVINO GPU/NPU, Apple MPS) chosen with faked device
lists and compiles. The real OpenVINO probe and the int8 quality gate run in test_openvino.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import engines.backends as backends
from engines.backends.precision import Bf16Measurement, DecisionStore, cached_measurement
from engines.backends.switching import SwitchingEngine
from engines.protocol import EngineBase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the decision -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f32,bf16,expected", [(10, 5, "bf16"), (10, 7.9, "bf16"), (10, 8.1, "fp32"),
                                               (10, 13.5, "fp32")])
def test_bf16_only_when_clearly_faster(f32, bf16, expected):
    measurement = Bf16Measurement(f32, bf16)
    assert measurement.precision == expected
    assert f"{measurement.speedup:.1f}x fp32" in measurement.reason or f"{measurement.speedup:.2f}x" in \
        measurement.reason


# --- the store ----------------------------------------------------------------------------------------------------
def test_store_round_trip_mismatch_and_corrupt_files(tmp_path):
    store = DecisionStore(tmp_path)
    fields = {"cpu_model": "X", "openvino": "1"}
    assert store.load("kind", fields) is None
    assert store.save("kind", fields, {"f32_ms": 1.0, "bf16_ms": 0.5})
    assert store.load("kind", fields) == {"f32_ms": 1.0, "bf16_ms": 0.5}
    assert store.load("kind", {**fields, "openvino": "2"}) is None          # another version: not this decision
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    path = store.path("kind", fields)
    record = json.loads(path.read_text())
    record["fields"]["cpu_model"] = "Y"                                      # a file that lies about its key
    path.write_text(json.dumps(record))
    assert store.load("kind", fields) is None
    for damage in ("{not json", "[]", json.dumps({"fields": record["fields"]})):
        path.write_text(damage)
        assert store.load("kind", fields) is None


def test_cached_measurement_measures_once_and_again_when_corrupt(tmp_path):
    store = DecisionStore(tmp_path)
    calls = []

    def measure():
        calls.append(1)
        return Bf16Measurement(9.0, 4.5)

    first, cached = cached_measurement("probe", {"v": 1}, measure, store)
    assert not cached and first.precision == "bf16"
    second, cached = cached_measurement("probe", {"v": 1}, measure, store)
    assert cached and second == first and len(calls) == 1
    (path,) = tmp_path.glob("probe-*.json")
    record = json.loads(path.read_text())
    record["result"]["bf16_ms"] = -1  # invalid figures are measured again
    path.write_text(json.dumps(record))
    _, cached = cached_measurement("probe", {"v": 1}, measure, store)
    assert not cached and len(calls) == 2


def test_the_key_names_the_onednn_isa_cap(tmp_path, monkeypatch):
    store = DecisionStore(tmp_path)
    cached_measurement("probe", {}, lambda: Bf16Measurement(9.0, 4.5), store)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    measured, cached = cached_measurement("probe", {}, lambda: Bf16Measurement(9.0, 30.0), store)
    assert not cached and measured.precision == "fp32"


def test_an_unwritable_store_still_decides(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    measured, cached = cached_measurement("probe", {}, lambda: Bf16Measurement(9.0, 4.5), DecisionStore(blocker))
    assert measured.precision == "bf16" and not cached


def _torch_probe(isa: str, cache) -> dict:
    code = ("import json; from engines.backends.precision import torch_bf16_decision as d; m = d(); "
            "print(json.dumps({'precision': m.precision, 'speedup': m.speedup}))")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "LIVE_AVATAR_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eager_bf16_hidden_is_measured_slower(tmp_path):
    if "avx512_bf16" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no bf16 instructions to hide")
    hidden = _torch_probe("AVX512_CORE", tmp_path)
    assert hidden["precision"] == "fp32" and hidden["speedup"] < 1.0, hidden


# --- the switch between frames ------------------------------------------------------------------------------------
class Tagged(EngineBase):
    """Wraps the loop tests' fake engine: records which engine detected and rendered each frame."""

    def __init__(self, inner, tag, log):
        self.inner, self.tag, self.log = inner, tag, log
        self.name = f"fake-{tag}"
        for attribute in ("image_size", "device", "config_hash", "weights_id"):
            setattr(self, attribute, getattr(inner, attribute))

    def detect(self, image):
        self.log.append(("detect", self.tag))
        return self.inner.detect(image)

    def encode(self, image):
        return self.inner.encode(image)

    def render(self, state, kp):
        self.log.append(("render", self.tag))
        return self.inner.render(state, kp)

    def forward_full(self, *args):
        return self.inner.forward_full(*args)


def test_frames_keep_coming_during_calibration_and_the_switch_falls_between_frames():
    from engines.backends.int8_gate import GateResult, Int8Upgrade
    from live.pipeline.loop import PipelineOptions
    from tests.support import FakeEngine
    from tests.test_live_loop import frames, make_pipeline

    calls = []
    inner = FakeEngine()
    float_engine, int8_engine = Tagged(inner, "float", calls), Tagged(inner, "int8", calls)
    switching = SwitchingEngine(float_engine)
    release, building = threading.Event(), threading.Event()

    def build(cancelled):  # the calibration: blocks until the test has seen frames served meanwhile
        building.set()
        assert release.wait(10)
        return int8_engine

    job = Int8Upgrade(switching, build=build, gate=lambda engine: GateResult(50.0, 0.999), save=lambda r: None)
    switching.job = job
    pipeline = make_pipeline(switching, options=PipelineOptions(calibrate_first_frame=True))
    job.start()
    assert building.wait(10)
    feed = frames([100, 110, 120, 130, 140, 150, 160, 170])

    def frames_with_release():
        for index, frame in enumerate(feed):
            if index == 4:  # calibration ends while the loop is running
                release.set()
                assert job.wait(10)
            yield frame

    stats = pipeline.run(frames_with_release())
    assert stats.frames == 8 and job.state == "passed" and switching.switches == 1
    assert len(pipeline.sinks[0].frames) == 8
    # Each frame is rendered by the engine that detected it: never one engine's keypoints and another's render.
    detected = None
    for kind, tag in calls:
        if kind == "detect":
            detected = tag
        else:
            assert tag == detected, calls
    tags = [tag for kind, tag in calls if kind == "detect"]
    # Frames 0-4 were served while calibrating (the 5th came as it finished), the rest by int8, never back.
    assert tags == ["float"] * 5 + ["int8"] * 3, tags
    assert any("switched to the int8 renderer" in m and "PSNR 50.0 dB" in m for m in pipeline.messages)


def test_a_failed_gate_keeps_the_float_engine_and_names_the_figures():
    from engines.backends.int8_gate import GateResult, Int8Upgrade
    from tests.support import FakeEngine

    switching = SwitchingEngine(FakeEngine())
    before = switching.current
    job = Int8Upgrade(switching, build=lambda cancelled: FakeEngine(), gate=lambda engine: GateResult(31.2, 0.91),
                      save=lambda r: None).run_here()
    notice = switching.between_frames()
    assert job.state == "failed" and switching.current is before
    assert "rejected" in notice and "PSNR 31.2 dB" in notice and "SSIM 0.9100" in notice


def test_closing_the_app_stops_a_running_calibration_and_caches_nothing():
    import time

    from engines.backends.int8_gate import Int8Upgrade
    from engines.backends.openvino_int8 import Cancelled
    from tests.support import FakeEngine

    saved = []

    def build(cancelled):  # like NNCF's calibration loop: checks before every sample
        while True:
            if cancelled():
                raise Cancelled("int8 calibration stopped")
            time.sleep(0.01)

    switching = SwitchingEngine(FakeEngine())
    job = Int8Upgrade(switching, build=build, gate=lambda engine: None, save=saved.append).start()
    assert job.running
    assert job.cancel(timeout=10) and not job.running
    assert job.state == "stopped" and saved == [] and switching.between_frames() is None


# --- devices: OpenVINO GPU / NPU and Apple MPS, faked -------------------------------------------------------------
TRT = (False, "no CUDA GPU")


@pytest.mark.parametrize("backend,device,accelerators,expected,notice", [
    ("auto", "gpu", ("gpu",), "openvino-gpu", None),
    ("openvino", "npu", ("npu",), "openvino-npu", None),
    ("auto", "gpu", (), "openvino", "no OpenVINO Intel GPU device here"),
    ("auto", "npu", ("gpu",), "openvino", "no OpenVINO NPU device here"),
    ("cpu", "gpu", ("gpu",), "cpu", "runs through OpenVINO"),
    ("auto", "mps", ("mps",), "mps", None),
    ("torch", "mps", ("mps",), "torch-mps", None),
    ("auto", "mps", (), "openvino", "MPS (Apple GPU) not available"),
    ("auto", "auto", ("gpu", "mps"), "openvino", None),  # auto: the CPU first, the accelerators as candidates
])
def test_plan_for_accelerator_devices(backend, device, accelerators, expected, notice):
    choice, notices = backends.plan(backend, device, has_cuda=False, tensorrt=TRT, openvino=(True, "ok"),
                                    accelerators=accelerators)
    assert choice == expected
    assert (notices == []) if notice is None else any(notice in n for n in notices), notices


def test_auto_candidates_are_the_accelerators_present():
    assert backends.auto_candidates("auto", "auto", "openvino", ("gpu", "npu", "mps")) == [
        "openvino-gpu", "openvino-npu", "mps"]
    assert backends.auto_candidates("auto", "auto", "cpu", ("gpu", "mps")) == ["mps"]  # no OpenVINO: no GPU plugin
    assert backends.auto_candidates("auto", "cpu", "openvino", ("gpu",)) == []
    assert backends.auto_candidates("openvino", "auto", "openvino", ("gpu",)) == []


def test_present_accelerators_reads_the_device_lists(monkeypatch):
    monkeypatch.setattr(backends, "openvino_devices", lambda: ("CPU", "GPU.0", "GPU.1", "NPU"))
    monkeypatch.setattr(backends, "mps_available", lambda: True)
    assert backends.present_accelerators(True) == ("gpu", "npu", "mps")
    assert backends.present_accelerators(False) == ("mps",)


class FakeBuilt:
    """An engine as the builders return it, with a measured frame time."""

    def __init__(self, name, frame_ms, base):
        self.name, self.precision, self.base = name, "fp16", base
        self.details = {"frame_ms": frame_ms, "device": name.split("-")[1].upper() if "-" in name else "CPU"}
        self.config_hash = base.config_hash
        self.image_size = base.image_size
        self.device = base.device


@pytest.fixture
def accelerator_world(monkeypatch, deterministic_engine, tmp_path):
    """No CUDA; OpenVINO with the given extra devices; each build replaced by a fake with a set frame time, or
    a compile failure."""
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "openvino_status", lambda: (True, "ok"))
    monkeypatch.setattr(backends, "_base_engine", lambda *a: deterministic_engine)
    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path))
    built = []

    def setup(devices, times, mps=False, failing=()):
        monkeypatch.setattr(backends, "openvino_devices", lambda: devices)
        monkeypatch.setattr(backends, "mps_available", lambda: mps)

        def build(choice, base, **kwargs):
            built.append(choice)
            if choice in failing:
                raise RuntimeError(f"Exception from src/plugins/intel_gpu: cannot compile for {choice}\nmore")
            return FakeBuilt(choice, times[choice], base), []
        monkeypatch.setattr(backends, "_build_local", build)
        return built
    return setup


def test_auto_keeps_the_faster_device_and_the_next_start_builds_only_it(accelerator_world):
    built = accelerator_world(("CPU", "GPU"), {"openvino": 300.0, "openvino-gpu": 20.0})
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert built == ["openvino", "openvino-gpu"] and engine.name == "openvino-gpu"
    assert any("OpenVINO Intel GPU is the fastest here" in n and "300 ms" in n for n in notices), notices
    built.clear()
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert engine.name == "openvino-gpu" and built == ["openvino", "openvino-gpu"]
    assert any("chosen at an earlier start" in n for n in notices)


def test_auto_keeps_the_cpu_when_it_is_faster(accelerator_world):
    accelerator_world(("CPU", "NPU"), {"openvino": 30.0, "openvino-npu": 45.0})
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert engine.name == "openvino" and any("OpenVINO CPU backend is the fastest" in n for n in notices)


def test_a_device_that_fails_to_compile_falls_back_with_one_line(accelerator_world):
    accelerator_world(("CPU", "GPU"), {"openvino": 30.0, "openvino-gpu": 20.0}, failing=("openvino-gpu",))
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert engine.name == "openvino"
    (line,) = [n for n in notices if "failed" in n]
    assert line.startswith("OpenVINO Intel GPU failed (RuntimeError: Exception from src/plugins/intel_gpu")
    assert "keeping the OpenVINO CPU backend" in line and "\n" not in line
    # Asked for by name, it falls back the same way.
    engine, notices = backends.create_engine(device="gpu", deterministic_weights=True)
    assert engine.name == "openvino" and any("using the OpenVINO CPU backend" in n for n in notices)


def test_mps_is_a_candidate_and_falls_back_to_the_cpu(accelerator_world):
    accelerator_world(("CPU",), {"openvino": 300.0, "mps": 25.0}, mps=True)
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert engine.name == "mps"
    accelerator_world(("CPU",), {"openvino": 30.0, "mps": 25.0}, mps=True, failing=("mps",))
    engine, notices = backends.create_engine(device="mps", deterministic_weights=True)
    assert engine.name == "openvino" and any(n.startswith("Apple GPU (MPS) backend failed") for n in notices)


def test_the_mps_engine_code_runs_fp16_renderer_and_fp32_detector(deterministic_engine):
    """The MPS builder on the CPU device, where autocast has the same API (no Apple GPU here)."""
    from engines.backends.mps_backend import build_mps_engine, fallback_notice

    engine, notices = build_mps_engine(deterministic_engine, warm_up=False)
    assert engine.name == "torch-cpu-fp16" and engine.details["detector"] == "fp32"
    assert notices == [fallback_notice()]
    generator = torch.Generator().manual_seed(5)
    source, frame = (torch.rand(1, 3, 256, 256, generator=generator) for _ in range(2))
    state = deterministic_engine.encode(source)
    kp = engine.detect(frame)
    torch.testing.assert_close(kp.value, deterministic_engine.detect(frame).value, rtol=0, atol=0)
    out, reference = engine.render(state, kp).image, deterministic_engine.render(state, kp).image
    assert out.dtype == torch.float32 and 0 < float((out - reference).abs().max()) <= 0.05
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1" in fallback_notice({"PYTORCH_ENABLE_MPS_FALLBACK": "1"})
    assert "is not set" in fallback_notice({})


def test_openvino_gpu_build_uses_fp16_and_keys_the_cache_by_the_device(deterministic_engine, tmp_path):
    """build_openvino_engine for device GPU against a core whose GPU compiles on the real CPU plugin."""
    pytest.importorskip("openvino")
    import openvino as ov

    from engines.backends.openvino_backend import build_openvino_engine

    real = ov.Core()
    compiled = []

    class GpuOnCpu:
        def get_property(self, device, name):
            return "Intel(R) Arc(TM) Graphics (faked)" if device == "GPU" else real.get_property(device, name)

        def read_model(self, path):
            return real.read_model(path)

        def compile_model(self, model, device, config):
            compiled.append((device, dict(config)))
            config = {k: v for k, v in config.items() if k != "INFERENCE_PRECISION_HINT"}
            return real.compile_model(model, "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"})

    engine, notices = build_openvino_engine(deterministic_engine, device="GPU", core=GpuOnCpu(),
                                            cache_dir=tmp_path, warm_up=False)
    assert engine.name == "openvino-gpu-fp16" and engine.details["device"] == "GPU" and notices == []
    hints = {config["INFERENCE_PRECISION_HINT"] for device, config in compiled}
    assert all(device == "GPU" for device, _ in compiled) and hints == {"f32", "f16"}  # detector f32, renderer f16
    assert all("INFERENCE_NUM_THREADS" not in config for _, config in compiled)  # a CPU-only property
    metas = [json.loads(p.read_text()) for p in tmp_path.glob("*/meta.json")]
    assert metas and all(m["fields"]["cpu"] == "Intel(R) Arc(TM) Graphics (faked)" for m in metas)
    _, bf16_notices = build_openvino_engine(deterministic_engine, device="GPU", core=GpuOnCpu(), cache_dir=tmp_path,
                                            warm_up=False, precision="bf16")
    assert any("not offered on the OpenVINO GPU: using fp16" in n for n in bf16_notices)


# --- the bounds (bench --bounds) ----------------------------------------------------------------------------------
def test_bounds_probe_runs_int8_kernels_and_a_frame_costs_what_the_docs_say(deterministic_engine):
    pytest.importorskip("openvino")
    import openvino as ov

    from engines.bounds import bounds_report, frame_gflop, int8_probe_model

    compiled = ov.Core().compile_model(int8_probe_model(), "CPU", {"INFERENCE_NUM_THREADS": 1})
    precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model()
                  .get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
    assert precisions and precisions <= {"u8", "i8"}, precisions  # the int8 bound is really int8
    assert frame_gflop(deterministic_engine) == pytest.approx(89.3, abs=0.1)
    lines = bounds_report(deterministic_engine, threads=1, rounds=1)
    assert "89.3 GFLOP" in lines[0] and any(line.startswith("int8") for line in lines)
