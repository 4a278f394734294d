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
from engines.backends import Machine, Request, plan
from engines.backends.precision import Bf16Measurement, cached_measurement
from engines.backends.switching import SwitchingEngine
from engines.cache import DecisionStore
from engines.protocol import EngineBase, EngineReport

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the decision -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f32,bf16,expected", [(10, 5, "bf16"), (10, 7.9, "bf16"), (10, 8.1, "fp32"),
                                               (10, 13.5, "fp32")])
def test_bf16_only_when_clearly_faster(f32, bf16, expected):
    measurement = Bf16Measurement(f32, bf16)
    assert measurement.precision == expected
    assert f"{measurement.speedup:.1f}x fp32" in measurement.reason or f"{measurement.speedup:.2f}x" in \
        measurement.reason


# --- the stored measurement (the store itself: tests/test_cache.py) -------------------------------------------------
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
    record["result"]["bf16_ms"] = -1  # impossible figures are set aside and measured again
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

    def report(self):
        return EngineReport(backend=f"fake-{self.tag}", device="cpu", detector="fp32", renderer=self.tag)


def test_frames_keep_coming_during_calibration_and_the_switch_falls_between_frames():
    from engines.backends.int8_gate import GateResult, Int8Upgrade
    from live.pipeline.loop import PipelineOptions
    from tests.support import FakeEngine
    from tests.test_live_loop import frames, make_pipeline

    calls = []
    inner = FakeEngine()
    float_engine, int8_engine = Tagged(inner, "float", calls), Tagged(inner, "int8", calls)
    switching = SwitchingEngine(float_engine)
    release, checking = threading.Event(), threading.Event()

    def check(cancel):  # the calibration and gate: blocks until the test has seen frames served meanwhile
        checking.set()
        assert release.wait(10)
        return GateResult(50.0, 0.999)

    pipeline = make_pipeline(switching, options=PipelineOptions(calibrate_first_frame=True))
    job = switching.attach(Int8Upgrade(switching, check=check, build=lambda: int8_engine,
                                       compare=lambda int8, current: (100.0, 200.0)))  # int8 twice as fast
    assert checking.wait(10)
    assert switching.report().int8_check == "running in the background"
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
    assert switching.report().renderer == "int8" and switching.report().int8_check is None


def test_a_failed_gate_keeps_the_float_engine_and_names_the_figures():
    from engines.backends.int8_gate import GateResult, Int8Upgrade
    from tests.support import FakeEngine

    switching = SwitchingEngine(FakeEngine())
    before = switching.current

    def never():
        raise AssertionError("a rejected int8 renderer is not built")
    job = switching.attach(Int8Upgrade(switching, check=lambda cancel: GateResult(31.2, 0.91), build=never),
                           start=False).run_here()
    notice = switching.between_frames()
    assert job.state == "failed" and switching.current is before
    assert "rejected" in notice and "PSNR 31.2 dB" in notice and "SSIM 0.9100" in notice
    gate = switching.report().gate
    assert gate is not None and not gate.passed and gate.psnr_db == 31.2


def test_an_int8_renderer_that_passes_but_is_no_faster_is_kept_out_and_that_is_remembered(tmp_path):
    from engines.backends import int8_gate
    from engines.backends.int8_gate import GateResult, Int8Upgrade, save_speed, side_by_side, slower_before
    from engines.cache import DecisionStore
    from tests.support import FakeEngine

    store, fields = DecisionStore(tmp_path), {"weights": "w", "calibration": "c"}
    switching = SwitchingEngine(FakeEngine())
    before, int8_engine = switching.current, FakeEngine()
    timed = []
    job = switching.attach(Int8Upgrade(switching, check=lambda cancel: GateResult(50.0, 0.999),
                                       build=lambda: int8_engine, compare=lambda int8, current: (333.0, 288.0),
                                       timed=lambda int8_ms, float_ms: (timed.append((int8_ms, float_ms)),
                                                                        save_speed(store, fields, int8_ms, float_ms))),
                           start=False).run_here()
    notice = switching.between_frames()
    assert job.state == "slower" and switching.current is before and int8_engine.closed == 1
    assert "not faster" in notice and "333" in notice and "288" in notice and timed == [(333.0, 288.0)]
    assert slower_before(store, fields) == {"int8_ms": 333.0, "float_ms": 288.0, "faster": False}
    save_speed(store, fields, 150.0, 288.0)  # faster after all (another moment): no longer held against it
    assert slower_before(store, fields) is None
    assert int8_gate.FASTER_THAN < 1.0
    # the real timing: both engines in turns, each a positive figure
    int8_ms, float_ms = side_by_side(FakeEngine(), FakeEngine(), rounds=2)
    assert int8_ms > 0 and float_ms > 0


@pytest.fixture
def sleeper(tmp_path, monkeypatch):
    """A child-process job module that takes a minute (like a calibration) unless told to answer at once."""
    (tmp_path / "slow_job.py").write_text(
        "import json, sys, time\n"
        "from engines.backends.background import child_result, child_setup\n"
        "folder, params = child_setup()\n"
        "time.sleep(params['sleep'])\n"
        "if params['answer']: child_result(folder, {'psnr_db': 50.0, 'ssim': 0.99, 'passed': True})\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "slow_job"


def test_closing_the_engine_kills_the_check_at_once_and_caches_nothing(sleeper):
    import time

    from engines.backends.background import run_child
    from engines.backends.int8_gate import Int8Upgrade
    from tests.support import FakeEngine

    children = []

    def check(cancel):
        cancel.on_set(lambda: children.append("killed"))
        return run_child(sleeper, {"sleep": 60, "answer": True}, cancel)

    switching = SwitchingEngine(FakeEngine())
    switching.attach(Int8Upgrade(switching, check=check, build=lambda: FakeEngine()))
    time.sleep(1.0)  # the child is running (importing, then sleeping)
    assert switching.job.running
    started = time.perf_counter()
    switching.close()
    stopped_in = time.perf_counter() - started
    assert stopped_in < 1.0, f"closing took {stopped_in:.2f} s"
    assert not switching.job.running and switching.job.state == "stopped" and children == ["killed"]
    assert switching.between_frames() is None and "stopped before its verdict" in switching.report().int8_check


def test_a_child_job_answers_through_its_result_file(sleeper):
    from engines.backends.background import Cancel, run_child

    assert run_child(sleeper, {"sleep": 0, "answer": True}, Cancel()) == {"psnr_db": 50.0, "ssim": 0.99,
                                                                           "passed": True}
    with pytest.raises(RuntimeError, match="without a result"):
        run_child(sleeper, {"sleep": 0, "answer": False}, Cancel())


def test_a_cached_verdict_with_impossible_figures_is_not_trusted(tmp_path):
    from engines.backends.int8_gate import DECISION_KIND, GateResult, cached_gate, save_gate

    said = []
    store = DecisionStore(tmp_path, notify=said.append)
    fields = {"weights": "a" * 64}
    save_gate(store, fields, GateResult(45.0, 0.99))
    assert cached_gate(store, fields) == GateResult(45.0, 0.99)
    path = store.path(DECISION_KIND, fields)
    for result in ({"psnr_db": -12.0, "ssim": 0.99, "passed": False}, {"psnr_db": 45.0, "ssim": 7.5, "passed": True},
                   {"psnr_db": 20.0, "ssim": 0.5, "passed": True}, {"psnr_db": "50", "ssim": 0.99, "passed": True}):
        save_gate(store, fields, GateResult(45.0, 0.99))
        record = json.loads(path.read_text())
        record["result"] = result
        path.write_text(json.dumps(record))
        assert cached_gate(store, fields) is None, result  # int8 is checked again, not skipped for ever
    assert len(said) == 4 and all("impossible values" in n for n in said)
    save_gate(store, fields, GateResult(float("inf"), 1.0))  # identical frames: a real, perfect verdict
    assert cached_gate(store, fields).passed


# --- devices: OpenVINO GPU / NPU and Apple MPS, faked -------------------------------------------------------------
def on(accelerators, remembered=None) -> Machine:
    """A machine without CUDA, with OpenVINO and the given accelerators."""
    return Machine(cuda=False, openvino=(True, "ok"), accelerators=accelerators,
                   remembered_device=lambda primary, contenders: remembered)


def order(chosen) -> list[str]:
    return [("!" if c.skip else "") + f"{c.backend}/{c.device}" for c in chosen.candidates]


CPU = ["openvino/cpu", "cpu/cpu", "torch/cpu"]


@pytest.mark.parametrize("backend,device,accelerators,expected,reason", [
    ("auto", "gpu", ("gpu",), ["openvino/gpu", *CPU], None),
    ("openvino", "npu", ("npu",), ["openvino/npu", *CPU], None),
    ("auto", "gpu", (), ["!openvino/gpu", *CPU], "no OpenVINO Intel GPU device here"),
    ("auto", "npu", ("gpu",), ["!openvino/npu", *CPU], "no OpenVINO NPU device here"),
    ("cpu", "gpu", ("gpu",), ["!openvino/gpu", "cpu/cpu", "torch/cpu"], "runs through OpenVINO"),
    ("auto", "mps", ("mps",), ["mps/mps", *CPU], None),
    ("torch", "mps", ("mps",), ["torch/mps", "torch/cpu"], None),
    ("auto", "mps", (), ["!mps/mps", *CPU], "no Apple GPU (MPS) here"),
    ("auto", "auto", ("gpu", "mps"), CPU, None),  # auto: the CPU chain, the accelerators race it
])
def test_plan_for_accelerator_devices(backend, device, accelerators, expected, reason):
    chosen = plan(Request(backend, device), on(accelerators))
    assert order(chosen) == expected
    skipped = [c.skip for c in chosen.candidates if c.skip]
    assert (skipped == []) if reason is None else any(reason in s for s in skipped), skipped


def test_auto_races_the_accelerators_present_and_remembers_the_winner():
    race = plan(Request(), on(("gpu", "npu", "mps"))).race
    assert [f"{c.backend}/{c.device}" for c in race] == ["openvino/gpu", "openvino/npu", "mps/mps"]
    no_openvino = Machine(cuda=False, openvino=(False, "missing"), accelerators=("mps",))
    assert [c.device for c in plan(Request(), no_openvino).race] == ["mps"]  # no OpenVINO: no GPU plugin
    assert plan(Request("auto", "cpu"), on(("gpu",))).race == ()
    assert plan(Request("openvino", "auto"), on(("gpu",))).race == ()
    # the next start: the winner first, nothing raced, the CPU chain behind it
    chosen = plan(Request(), on(("gpu", "npu"), remembered="OpenVINO Intel GPU"))
    assert order(chosen) == ["openvino/gpu", *CPU] and chosen.race == ()
    assert "OpenVINO Intel GPU was measured fastest" in chosen.notes[0]
    kept = plan(Request(), on(("gpu",), remembered="OpenVINO CPU backend"))
    assert order(kept) == CPU and kept.race == ()
    stale = plan(Request(), on(("gpu",), remembered="a device no longer here"))
    assert [c.device for c in stale.race] == ["gpu"] and stale.notes == ()


def test_present_accelerators_reads_the_device_lists(monkeypatch):
    monkeypatch.setattr(backends, "openvino_devices", lambda: ("CPU", "GPU.0", "GPU.1", "NPU"))
    monkeypatch.setattr(backends, "mps_available", lambda: True)
    assert backends.present_accelerators(True) == ("gpu", "npu", "mps")
    assert backends.present_accelerators(False) == ("mps",)


class Timed(EngineBase):
    """An engine as the builders return it, with a frame time measured at start."""

    def __init__(self, label, frame_ms):
        self.name, self.closed = label, 0
        self._report = EngineReport(backend="openvino", device="cpu", detector="fp32", renderer="fp16",
                                    frame_ms=frame_ms)

    def close(self):
        self.closed += 1


def test_the_race_keeps_the_fastest_remembers_it_and_closes_the_others(tmp_path):
    from engines.backends.race import Built, fastest, remembered

    store = DecisionStore(tmp_path)
    chosen = plan(Request(), on(("gpu", "npu")))
    cpu = Timed("OpenVINO CPU backend", 300.0)
    times = {"OpenVINO Intel GPU": 20.0}

    def make(candidate):
        if candidate.label not in times:
            raise RuntimeError(f"Exception from src/plugins/intel_npu: cannot compile for {candidate.label}\nmore")
        return Timed(candidate.label, times[candidate.label]), [f"{candidate.label} built"]
    built, notices = fastest(Built(cpu, chosen.candidates[0]), chosen.race, make, store, "weights")
    assert built.engine.name == "OpenVINO Intel GPU" and built.candidate.device == "gpu" and cpu.closed == 1
    (failed,) = built.fell_back
    assert failed.candidate == "OpenVINO NPU" and failed.tried and "\n" not in failed.reason
    assert any(n.startswith("OpenVINO NPU failed (RuntimeError: Exception from src/plugins/intel_npu") and
               "keeping the OpenVINO Intel GPU" in n for n in notices), notices
    assert "the OpenVINO Intel GPU is the fastest here" in notices[-1] and "300 ms" in notices[-1]
    labels = tuple(c.label for c in chosen.race)
    assert remembered(store, "weights", "OpenVINO CPU backend", labels) == "OpenVINO Intel GPU"
    # a faster CPU keeps the CPU engine and closes the accelerator's
    fast_cpu = Timed("OpenVINO CPU backend", 10.0)
    built, _ = fastest(Built(fast_cpu, chosen.candidates[0]), chosen.race[:1], make, DecisionStore(tmp_path / "b"),
                       "weights")
    assert built.engine is fast_cpu


def test_create_engine_races_once_then_builds_only_the_winner(monkeypatch, deterministic_engine, tmp_path):
    """The wiring: probes play a machine with an Intel GPU, builds are fakes with set frame times."""
    import engines.backends.builders as builders

    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path))
    monkeypatch.setattr(builders, "load_weights", lambda *args: deterministic_engine)
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "openvino_status", lambda: (True, "ok"))
    monkeypatch.setattr(backends, "openvino_devices", lambda: ("CPU", "GPU"))
    monkeypatch.setattr(backends, "mps_available", lambda: False)
    built = []

    def build(candidate, base, settings):
        built.append(candidate.device)
        return Timed(candidate.label, {"cpu": 300.0, "gpu": 20.0}[candidate.device]), []
    monkeypatch.setattr(backends, "build", build)
    engine, notices = backends.create_engine(deterministic_weights=True, int8_check="off")
    assert built == ["cpu", "gpu"] and engine.name == "OpenVINO Intel GPU"
    built.clear()
    engine, notices = backends.create_engine(deterministic_weights=True, int8_check="off")
    assert built == ["gpu"] and engine.name == "OpenVINO Intel GPU"
    assert any("measured fastest here at an earlier start" in n for n in notices)


def test_the_mps_engine_code_runs_fp16_renderer_and_fp32_detector():
    """The MPS builder on the CPU device, where autocast has the same API (no Apple GPU here). On the tiny networks:
    fp16 autocast on a CPU without avx512_fp16 takes minutes for one vox-256 frame, and the code path is the same."""
    from engines.backends.mps_backend import build_mps_engine, fallback_notice
    from tests.support import tiny_engine

    base = tiny_engine()
    engine, notices = build_mps_engine(base, warm_up=False)
    assert engine.name == "torch-cpu-fp16" and engine.report().detector == "fp32"
    assert notices == [fallback_notice()]
    generator = torch.Generator().manual_seed(5)
    source, frame = (torch.rand(1, 3, base.image_size, base.image_size, generator=generator) for _ in range(2))
    state = base.encode(source)
    kp = engine.detect(frame)
    torch.testing.assert_close(kp.value, base.detect(frame).value, rtol=0, atol=0)
    out, reference = engine.render(state, kp).image, base.render(state, kp).image
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
    assert engine.name == "openvino-gpu-fp16" and engine.report().device == "gpu" and notices == []
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
