"""OpenVINO backend on the CPU: parity of its graphs with torch, bf16/int8 accuracy, selection per CPU (probe
replaced), the hidden-AMX probe, the IR cache (hit, miss, corrupt entry rebuilt) and the live app end to end.

Tolerances: fp32 graphs <= 1e-4 max |diff| (frame and keypoints) vs eager torch; bf16 and int8 frames PSNR >= 40 dB
vs eager fp32; bf16 keypoints max |diff| <= 0.02 normalised units (the detector runs at the float precision, never
int8, so int8 keypoints equal the float engine's exactly). The expensive conversions happen once per module (the
session's cache folder is shared with the app tests, conftest.isolated_cache).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

import engines.backends as backends  # noqa: E402
import engines.backends.builders as builders  # noqa: E402
from engines.backends import Machine, Request, plan  # noqa: E402
from engines.backends import openvino_backend as ovb  # noqa: E402
from engines.backends.common import AcceleratedEngine  # noqa: E402
from engines.backends.precision import Bf16Measurement  # noqa: E402
from engines.backends.switching import SwitchingEngine  # noqa: E402
from engines.keypoints import Keypoints  # noqa: E402

OV_OK = (True, "ok")
OV_MISSING = (False, "openvino cannot be used (ModuleNotFoundError: No module named 'openvino')")
TRT_MISSING = (False, "no CUDA GPU")
CPU = ovb.probe_cpu().cpu  # the real name: the app test below then reuses the cached models
FLAGS = ("BF16", "FP32", "INT8")
# The CPU classes, as their probe measurements (f32 ms, bf16 ms) would come out: the kernel name does not decide.
AMX = ovb.CpuCapabilities(cpu=CPU, capabilities=FLAGS, amx=True, kernel="brgconv_avx512_amx_bf16",
                          bf16=Bf16Measurement(10.0, 3.0))
ZEN4 = ovb.CpuCapabilities(cpu=CPU, capabilities=FLAGS, amx=False, kernel="brgconv_avx512_bf16",
                           bf16=Bf16Measurement(10.0, 5.0))
NO_AMX = ovb.CpuCapabilities(cpu=CPU, capabilities=FLAGS, amx=False, kernel="brgconv_avx512_bf16",
                             bf16=Bf16Measurement(10.0, 13.5))
NO_BF16 = ovb.CpuCapabilities(cpu=CPU, capabilities=("FP32", "INT8"), amx=False, kernel="")


def psnr(a, b) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# --- selection: the pure planner --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device,has_cuda,ov,first,skipped", [
    ("auto", "auto", False, OV_OK, "openvino/cpu", None),            # no CUDA: OpenVINO when it imports
    ("auto", "auto", False, OV_MISSING, "cpu/cpu", "No module named 'openvino'"),  # ... else the eager CPU backend
    ("auto", "cpu", True, OV_OK, "openvino/cpu", None),              # --device cpu on a CUDA machine
    ("auto", "auto", True, OV_OK, "cuda/cuda", "no CUDA GPU"),        # CUDA present: the GPU wins (no TensorRT here)
    ("openvino", "auto", True, OV_OK, "openvino/cpu", None),          # explicit: runs on the CPU anyway
    ("openvino", "cuda", True, OV_OK, "openvino/cpu", "--device cuda"),
    ("openvino", "auto", False, OV_MISSING, "cpu/cpu", "No module named 'openvino'"),
    ("tensorrt", "auto", False, OV_OK, "openvino/cpu", "no CUDA GPU"),
    ("cuda", "cpu", True, OV_OK, "openvino/cpu", "--device cpu"),
    ("cpu", "auto", False, OV_OK, "cpu/cpu", None),                  # an explicit eager CPU stays eager
    ("torch", "cpu", False, OV_OK, "torch/cpu", None),
])
def test_plan_with_openvino(backend, device, has_cuda, ov, first, skipped):
    chosen = plan(Request(backend, device), Machine(cuda=has_cuda, tensorrt=TRT_MISSING, openvino=ov))
    buildable = [f"{c.backend}/{c.device}" for c in chosen.candidates if c.skip is None]
    assert buildable[0] == first
    reasons = [c.skip for c in chosen.candidates if c.skip]
    assert (reasons == []) if skipped is None else any(skipped in r for r in reasons), reasons


@pytest.mark.parametrize("capabilities,expected", [(AMX, "bf16"), (ZEN4, "bf16"), (NO_AMX, "fp32"),
                                                    (NO_BF16, "fp32")])
def test_default_precision_follows_the_measurement_not_the_kernel_name(capabilities, expected):
    assert capabilities.default_precision == expected
    if capabilities is ZEN4:  # the same kernel name as NO_AMX, the opposite choice
        assert capabilities.reason == "measured 2.0x fp32 on this CPU"


def test_probe_measures_where_a_bf16_kernel_exists(tmp_path):
    from engines.cache import DecisionStore

    caps = ovb.probe_cpu(store=DecisionStore(tmp_path))
    assert caps.cpu and "FP32" in caps.capabilities and not caps.cached
    assert caps.amx == ("amx" in caps.kernel.lower())
    if "BF16" in caps.capabilities:
        assert caps.bf16.f32_ms > 0 and caps.bf16.bf16_ms > 0
        assert caps.default_precision == caps.bf16.precision
        again = ovb.probe_cpu(store=DecisionStore(tmp_path))  # the second start reads the decision
        assert again.cached and again.bf16 == caps.bf16 and again.reason.endswith(", cached")


def _probe_in_subprocess(env_extra: dict, cache) -> dict:
    code = ("import json; from engines.backends.openvino_backend import probe_cpu; c = probe_cpu(); "
            "print(json.dumps({'amx': c.amx, 'kernel': c.kernel, 'precision': c.default_precision, "
            "'speedup': c.bf16.speedup if c.bf16 else None, 'caps': list(c.capabilities)}))")
    env = {**os.environ, **env_extra, "LIVE_AVATAR_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("isa", ["AVX512_CORE_FP16", "AVX512_CORE"])  # AMX hidden; bf16 instructions hidden too
def test_the_measurement_picks_fp32_where_bf16_is_hidden(isa, tmp_path):
    if "avx512_bf16" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no bf16 instructions to hide")
    if isa == "AVX512_CORE_FP16" and "amx_bf16" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no AMX to hide")
    hidden = _probe_in_subprocess({"ONEDNN_MAX_CPU_ISA": isa}, tmp_path)
    # OpenVINO's capability list does not change with the variable: the measured speed does.
    assert "BF16" in hidden["caps"] and not hidden["amx"]
    assert hidden["precision"] == "fp32" and hidden["speedup"] < 1.25, hidden


def test_exposed_amx_measures_bf16_faster(tmp_path):
    if "amx_bf16" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no AMX")
    shown = _probe_in_subprocess({}, tmp_path)
    assert shown["amx"] and shown["precision"] == "bf16", shown


def test_threads_are_the_cores_this_process_may_use(monkeypatch):
    assert ovb.cpu_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert ovb.cpu_threads() == 5


@pytest.fixture(autouse=True)
def few_calibration_samples(monkeypatch):
    """int8 calibrations here use 4 samples, like ov_engines' module IR: the same code as the 32 users get (the
    bench runs those), a quarter of NNCF's statistics pass (~16 s of vox-256 renders per calibration here)."""
    monkeypatch.setattr(ovb, "DEFAULT_CALIBRATION_SAMPLES", 4)


# --- the real graphs (module-scoped: conversions take seconds) ---------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir():
    return ovb.default_cache_dir()  # under the session's LIVE_AVATAR_CACHE: the app tests below reuse it


@pytest.fixture(scope="module")
def frames():
    generator = torch.Generator().manual_seed(5)
    return torch.rand(1, 3, 256, 256, generator=generator), torch.rand(1, 3, 256, 256, generator=generator)


@pytest.fixture(scope="module")
def reference(deterministic_engine, frames):
    source, driving = frames
    state = deterministic_engine.encode(source)
    kp = deterministic_engine.detect(driving)
    return state, kp, deterministic_engine.render(state, kp).image


@pytest.fixture(scope="module")
def ov_engines(deterministic_engine, cache_dir):
    built = {}

    def get(precision, capabilities=AMX):
        key = (precision, capabilities)
        if key not in built:
            built[key] = ovb.build_openvino_engine(deterministic_engine, precision=precision, cache_dir=cache_dir,
                                                   capabilities=capabilities, warm_up=False,
                                                   calibration_samples=4)
        return built[key]
    return get


def test_fp32_graphs_match_torch(ov_engines, deterministic_engine, frames, reference):
    engine, notices = ov_engines("fp32")
    assert notices == [] and engine.name == "openvino-fp32" and isinstance(engine, AcceleratedEngine)
    # The Engine protocol, identical identity to the eager engine (saved calibrations stay valid).
    for member in ("name", "device", "image_size", "config_hash", "weights_id", "detect", "encode", "render",
                   "forward_full"):
        assert hasattr(engine, member), member
    assert engine.config_hash == deterministic_engine.config_hash and engine.image_size == 256
    state, kp, expected = reference
    own = engine.detect(frames[1])
    assert float((own.value - kp.value).abs().max()) <= 1e-4
    assert float((own.jacobian - kp.jacobian).abs().max()) <= 1e-4
    out = engine.render(state, kp).image
    assert out.shape == (1, 3, 256, 256) and out.dtype == torch.float32
    assert float((out - expected).abs().max()) <= 1e-4
    # It is OpenVINO that ran: fp32 hint, all of this process's cores.
    compiled = engine._renderer.compiled
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32", "float32")
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == len(os.sched_getaffinity(0))


def test_bf16_within_tolerance(ov_engines, frames, reference):
    engine, notices = ov_engines("bf16")
    report = engine.report()
    assert notices == [] and report.detector in ("fp32", "bf16") and report.renderer == "bf16"
    assert "still-face jitter" in report.fact("detector_check")
    state, kp, expected = reference
    own = engine.detect(frames[1])
    kp_diff = float((own.value - kp.value).abs().max())
    out = engine.render(state, kp).image
    assert psnr(out, expected) >= 40 and kp_diff <= 0.02
    if ovb.probe_cpu().amx:  # bf16 really ran (elsewhere OpenVINO may run it as f32)
        assert float((out - expected).abs().max()) > 1e-6


def test_int8_renderer_within_tolerance_and_detector_not_quantized(ov_engines, frames, reference):
    int8, notices = ov_engines("int8")
    float_engine, _ = ov_engines("bf16")
    assert int8.name == "openvino-int8" and int8.report().renderer == "int8"
    assert int8.report().detector == float_engine.report().detector  # a float one, never int8
    assert any("quantized the renderer to int8" in n for n in notices) or \
        int8.report().fact("cache_frame_renderer_int8") == "hit"
    state, kp, expected = reference
    # The detector is the float one: identical keypoints.
    torch.testing.assert_close(int8.detect(frames[1]).value, float_engine.detect(frames[1]).value, rtol=0, atol=0)
    out = int8.render(state, kp).image
    assert psnr(out, expected) >= 40
    assert not torch.equal(out, float_engine.render(state, kp).image)  # really a different (quantized) graph
    runtime = int8._renderer.compiled.get_runtime_model()
    precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                  if "runtimePrecision" in op.get_rt_info()}
    assert precisions & {"u8", "i8"}, precisions


def test_int8_calibration_moves_the_keypoints_like_a_head(deterministic_engine):
    from engines.backends.openvino_int8 import calibration_inputs, head_motion

    samples = calibration_inputs(deterministic_engine, samples=5)
    assert len(samples) == 5 and all(len(s) == 7 for s in samples)
    # First sample per avatar unmoved (driving == source keypoints), the others moved, features untouched.
    np.testing.assert_array_equal(samples[0][5], samples[0][3])
    assert np.abs(samples[3][5] - samples[3][3]).max() > 1e-3
    np.testing.assert_array_equal(samples[2][0], samples[0][0])
    kp = Keypoints(torch.zeros(1, 10, 2), torch.eye(2).expand(1, 10, 2, 2).clone())
    moved = head_motion(kp, np.random.default_rng(1))
    assert moved.value.abs().max() <= 0.15 * math.sqrt(2) + 0.1  # translation + jitter, never wild


# --- selection: create_engine end to end with the CPU probe replaced ---------------------------------------------
@pytest.fixture
def cpu_world(monkeypatch, deterministic_engine):
    """No CUDA, no accelerators, the session's weights; `setup(capabilities, ov)` plays a CPU class."""
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(builders, "load_weights", lambda *a: deterministic_engine)
    monkeypatch.setattr(backends, "present_accelerators", lambda ov_ok: ())
    monkeypatch.setattr(backends, "torch_bf16", lambda store=None: Bf16Measurement(10.0, 13.5))  # eager bf16 slower

    def setup(capabilities, ov=OV_OK):
        monkeypatch.setattr(backends, "openvino_status", lambda: ov)
        monkeypatch.setattr(backends, "cpu_capabilities", lambda store=None, progress=None: capabilities)
    return setup


@pytest.mark.parametrize("capabilities,precision", [(AMX, "bf16"), (ZEN4, "bf16"), (NO_AMX, "fp32")])
def test_auto_picks_openvino_with_the_cpu_s_precision(cpu_world, cache_dir, capabilities, precision):
    cpu_world(capabilities)
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir, warm_up=False)
    report = engine.report()
    assert engine.name == f"openvino-{precision}" and report.fact("kernel") == capabilities.kernel
    assert (report.backend, report.device, report.renderer, report.why) == ("openvino", "cpu", precision,
                                                                            capabilities.reason)
    (line,) = [n for n in notices if n.startswith("backend:")]
    assert line == f"backend: {report.summary()}"
    assert f"OpenVINO on the CPU, {precision} ({capabilities.reason})" in line and "built in" in line


def test_auto_without_openvino_keeps_the_cpu_backend(cpu_world):
    cpu_world(AMX, OV_MISSING)
    engine, notices = backends.create_engine(deterministic_weights=True, warm_up=False)
    assert not engine.name.startswith("openvino")
    (fallback,) = engine.report().fell_back
    assert fallback.candidate == "OpenVINO CPU backend" and "No module named 'openvino'" in fallback.reason


def test_int8_on_another_backend_says_so(cpu_world):
    cpu_world(AMX, OV_MISSING)
    engine, notices = backends.create_engine(backend="cpu", deterministic_weights=True, precision="int8",
                                             warm_up=False)
    assert engine.report().precision == "fp32" and any("int8 is an OpenVINO backend option" in n for n in notices)


def test_a_failing_openvino_build_falls_back_to_the_cpu_backend(cpu_world, monkeypatch):
    cpu_world(AMX)

    def broken(*args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:112:\nno CPU plugin")
    monkeypatch.setattr(ovb, "build_openvino_engine", broken)
    engine, notices = backends.create_engine(deterministic_weights=True, precision="int8", warm_up=False)
    assert engine.name == "torch-cpu-fp32"
    (failed,) = engine.report().fell_back
    assert failed.tried and failed.candidate == "OpenVINO CPU backend with the int8 renderer"
    assert any("OpenVINO CPU backend with the int8 renderer failed" in n and "core.cpp" in n for n in notices)


# --- int8 behind the quality gate ---------------------------------------------------------------------------------
def test_the_real_int8_renderer_passes_the_gate_and_an_inaccurate_one_is_rejected(ov_engines, deterministic_engine):
    from engines.backends.int8_gate import GATE_PSNR_DB, GATE_SSIM, measure_gate

    int8, _ = ov_engines("int8")
    result = measure_gate(deterministic_engine, int8)
    print(result.describe())
    assert result.passed and result.psnr_db >= GATE_PSNR_DB and result.ssim >= GATE_SSIM
    assert not math.isinf(result.psnr_db)  # really another graph
    # The same int8 graph made inaccurate on purpose: grain of 3% std, like activations clipped by a bad calibration.
    noise = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 0.03

    def grainy_renderer(*inputs):
        prediction, deformation, occlusion = int8._renderer(*inputs)
        return (prediction + noise).clamp(0, 1), deformation, occlusion

    grainy = AcceleratedEngine(deterministic_engine, name="bad-int8", renderer=grainy_renderer, report=int8.report())
    bad = measure_gate(deterministic_engine, grainy)
    print(bad.describe())
    assert not bad.passed and bad.psnr_db < GATE_PSNR_DB and bad.ssim < GATE_SSIM, bad.describe()


@pytest.fixture
def int8_world(cpu_world, monkeypatch, tmp_path):
    """auto on a CPU whose float frame is 'slower than real time', with a fresh decision store; calibration with
    the module's 4-sample int8 IR (cached by ov_engines) instead of 32 samples."""
    from engines.backends import int8_gate

    cpu_world(AMX)
    monkeypatch.setattr(int8_gate, "REALTIME_MS", 0.0)
    monkeypatch.setattr(ovb, "DEFAULT_CALIBRATION_SAMPLES", 4)
    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path))
    return int8_gate


def test_auto_takes_int8_behind_the_gate_and_the_second_start_reads_the_decision(int8_world, ov_engines, cache_dir,
                                                                                 monkeypatch):
    ov_engines("int8")  # the int8 IR in the cache: the calibration cost is paid once per module
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir, int8_check="now")
    assert engine.name == "openvino-int8", notices
    (line,) = [n for n in notices if n.startswith("switched to the int8 renderer")]
    assert "PSNR" in line and "SSIM" in line and "passed" in line
    report = engine.report()
    assert report.gate.passed and not report.gate.earlier and report.why.startswith("auto: the float engine took")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the second start calibrated or gated again")
    monkeypatch.setattr(int8_world, "measure_gate", must_not_run)
    monkeypatch.setattr("engines.backends.openvino_int8.quantize_renderer", must_not_run)
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir)
    assert engine.name == "openvino-int8" and not isinstance(engine, SwitchingEngine)
    assert any("passed at an earlier start" in n and "PSNR" in n for n in notices), notices
    report = engine.report()
    assert report.gate.passed and report.gate.earlier and "earlier start" in report.why and report.fell_back == ()
    # Forced int8: the (cached) gate is reported, not enforced.
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir, precision="int8")
    assert engine.name == "openvino-int8" and any("keeps int8 either way" in n for n in notices)
    assert not engine.report().gate.enforced


def test_a_failed_gate_is_cached_and_keeps_the_float_engine(int8_world, ov_engines, cache_dir, monkeypatch):
    ov_engines("int8")
    monkeypatch.setattr(int8_world, "measure_gate", lambda *a, **k: int8_world.GateResult(30.5, 0.93))
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir, int8_check="now")
    assert engine.name == "openvino-bf16" and any("rejected" in n and "PSNR 30.5 dB" in n for n in notices)
    assert not engine.report().gate.passed

    def must_not_run(*args, **kwargs):
        raise AssertionError("the int8 renderer was checked again at the second start")
    monkeypatch.setattr(int8_world, "check_int8", must_not_run)
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir)
    assert engine.name == "openvino-bf16" and not isinstance(engine, SwitchingEngine)
    assert any("rejected at an earlier start" in n and "SSIM 0.9300" in n for n in notices)
    assert engine.report().gate.earlier and not engine.report().gate.passed


@pytest.mark.slow
def test_the_background_check_runs_in_a_child_and_switches_between_frames(int8_world, ov_engines, cache_dir):
    """The real thing: the child process calibrates (from the module's cached 4-sample IR), gates and stores the
    verdict; the parent builds the int8 engine and offers it; the switch is taken between two frames."""
    ov_engines("int8")
    engine, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir)
    assert isinstance(engine, SwitchingEngine) and engine.report().int8_check == "running in the background"
    assert any("calibrating the int8 renderer on your avatars in the background" in n for n in notices)
    with engine:
        assert engine.job.wait(300), "the background check did not end"
        assert engine.job.state == "passed", engine.job.notice
        notice = engine.between_frames()
        assert notice.startswith("switched to the int8 renderer") and engine.name == "openvino-int8"
        assert engine.report().gate.passed and engine.report().int8_check is None
    # stored by the child: the next start takes int8 at once
    again, notices = backends.create_engine(deterministic_weights=True, cache_dir=cache_dir)
    assert again.name == "openvino-int8" and again.report().gate.earlier


EXIT_DURING_CHECK = """
import sys, time
sys.path.insert(0, {repo!r})
from engines.backends import create_engine, int8_gate, openvino_backend
int8_gate.REALTIME_MS = 0.0                        # every CPU is 'slower than real time' here
openvino_backend.DEFAULT_CALIBRATION_SAMPLES = 4   # the module's cached int8 IR
engine, notices = create_engine(deterministic_weights=True, cache_dir={cache!r}, progress=lambda line: None)
assert engine.report().int8_check == "running in the background", notices
moment = sys.argv[1]
if moment == "verdict":           # the child has answered: the parent builds (compiles) the int8 engine
    while engine.job.running and engine.job.result is None:
        time.sleep(0.01)
    time.sleep(float(sys.argv[2]))
else:                             # seconds into the child's check (importing, calibrating, gating)
    time.sleep(float(moment))
print("answered" if engine.job.result is not None else "unanswered", engine.job.state, flush=True)
"""  # and exits without closing the engine: the atexit hook must stop the check


@pytest.mark.slow
def test_a_program_that_exits_while_the_int8_check_runs_never_aborts(ov_engines, cache_dir, tmp_path):
    """Programs that exit at each moment of the background check - the child starting, the child calibrating and
    gating, the parent compiling the int8 engine (where an exit once aborted) - without closing the engine: exit
    status 0 every time, never 134 ('terminate called without an active exception')."""
    from tests.conftest import REPO

    ov_engines("int8")
    script = EXIT_DURING_CHECK.format(repo=str(REPO), cache=str(cache_dir))
    states = {}
    for moment in (("0",), ("3",), ("verdict", "0.2")):
        shutil.rmtree(tmp_path / "decisions", ignore_errors=True)  # no verdict: the check starts every time
        done = subprocess.run([sys.executable, "-c", script, *moment], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "LIVE_AVATAR_CACHE": str(tmp_path)})
        assert done.returncode == 0, (moment, done.returncode, done.stderr[-2000:])
        assert "terminate called" not in done.stderr
        states[moment] = done.stdout.split()[-2:]  # [answered|unanswered, job state]
    assert states[("0",)] == ["unanswered", "calibrating"], states
    assert states[("verdict", "0.2")][0] == "answered", states  # the exit really fell into the parent's build


def test_fp16_is_refused_with_a_notice(ov_engines):
    engine, notices = ov_engines("fp16", NO_AMX)
    assert engine.report().precision == "fp32" and "fp16 is not supported" in notices[0]


def test_quantizing_writes_nothing_on_stdout(capfd):
    """NNCF draws progress bars on stdout: they must not land in the user's lines or above the bench's report."""
    pytest.importorskip("nncf")
    from engines.backends.openvino_int8 import quantize_renderer

    quantize_renderer(tiny_model(), [np.ones((1, 4), np.float32)] * 4)
    assert capfd.readouterr().out == ""


def test_int8_without_nncf_keeps_openvino_at_the_cpu_s_precision(ov_engines, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    engine, notices = ov_engines("int8", NO_AMX)
    assert engine.name == "openvino-fp32" and "int8 needs nncf" in notices[0]


# --- the IR cache ------------------------------------------------------------------------------------------------
def tiny_model():
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="x")
    return ov.Model([ops.matmul(x, ops.constant(np.arange(16, dtype=np.float32).reshape(4, 4)), False, False)], [x])


def tiny_fields(**overrides):
    values = dict(graph="tiny", weights="a" * 64, config_hash="0123456789abcdef", precision="fp32",
                  shapes=[(1, 4)], cpu=CPU, versions={"openvino": "2026.4.1"})
    values.update(overrides)
    return ovb.cache_fields(**values)


def entry(tmp_path, fields):
    return ovb.ir_cache(tmp_path).directory(ovb.entry_prefix(fields), fields)


def test_cache_key_depends_on_everything_that_invalidates_a_model(tmp_path):
    base = entry(tmp_path, tiny_fields())
    assert base == entry(tmp_path, tiny_fields())
    for change in ({"weights": "b" * 64}, {"precision": "int8"}, {"cpu": "Other CPU"}, {"shapes": [(1, 5)]},
                   {"versions": {"openvino": "2027.0"}}, {"config_hash": "f" * 16}):
        assert entry(tmp_path, tiny_fields(**change)) != base, change
    assert entry(tmp_path, tiny_fields(calibration="generated-v1:32")) != base


def test_cache_hit_miss_and_bad_entries(tmp_path):
    """(Every kind of hostile entry: tests/test_cache.py; here what is OpenVINO's own: the XML must parse.)"""
    import openvino as ov

    core, fields, builds = ov.Core(), tiny_fields(), []

    def build():
        builds.append(1)
        return tiny_model()

    first = ovb.load_or_convert(tmp_path, fields, build=build, label="tiny", core=core)
    assert (first.status, len(builds), first.notices) == ("miss", 1, ()) and first.value.name == "model.xml"
    second = ovb.load_or_convert(tmp_path, fields, build=build, label="tiny", core=core)
    assert (second.status, len(builds), second.value) == ("hit", 1, first.value)
    compiled = core.compile_model(str(second.value), "CPU")
    assert np.allclose(compiled([np.ones((1, 4), np.float32)])[0], np.arange(16).reshape(4, 4).sum(0))

    directory = second.value.parent
    bin_path = directory / "model.bin"
    data = bytearray(bin_path.read_bytes())
    data[3] ^= 0xFF
    bin_path.write_bytes(bytes(data))
    assert ovb.ir_cache(tmp_path).check(directory, fields) == ("corrupt", "model.bin checksum differs")
    third = ovb.load_or_convert(tmp_path, fields, build=build, label="tiny", core=core)
    assert third.status == "rebuilt" and len(builds) == 2 and "checksum differs" in third.notices[0]
    assert ovb.ir_cache(tmp_path).check(directory, fields)[0] == "ok"

    # An entry whose checksums match but whose XML does not parse is rebuilt too.
    (directory / "model.xml").write_text("<net>")
    meta = json.loads((directory / "meta.json").read_text())
    meta["files"]["model.xml"] = {"size": 5, "sha256": __import__("hashlib").sha256(b"<net>").hexdigest()}
    (directory / "meta.json").write_text(json.dumps(meta))
    fourth = ovb.load_or_convert(tmp_path, fields, build=build, label="tiny", core=core)
    assert fourth.status == "rebuilt" and "does not load" in fourth.notices[0] and len(builds) == 3
    assert ovb.ir_cache(tmp_path).check(directory, tiny_fields(cpu="Other CPU"))[0] == "mismatch"
    assert ovb.ir_cache(tmp_path).check(tmp_path / "nothing", fields)[0] == "missing"


def test_engine_rebuilds_a_corrupt_cached_detector(ov_engines, deterministic_engine, cache_dir, tmp_path, frames,
                                                   reference):
    ov_engines("fp32")  # the entries exist
    copy = tmp_path / "ov"
    shutil.copytree(cache_dir, copy, ignore=shutil.ignore_patterns("compiled"))
    for detector_bin in copy.glob("keypoint_detector-fp32-*/model.bin"):
        detector_bin.write_bytes(detector_bin.read_bytes()[:-100])  # truncated, like an interrupted copy
    engine, notices = ovb.build_openvino_engine(deterministic_engine, precision="fp32", cache_dir=copy,
                                                capabilities=AMX, warm_up=False)
    report = engine.report()
    assert (report.fact("cache_keypoint_detector"), report.fact("cache_frame_renderer")) == ("rebuilt", "hit")
    assert any("keypoint detector" in n and "rebuilding" in n for n in notices)
    assert float((engine.detect(frames[1]).value - reference[1].value).abs().max()) <= 1e-4


# --- the live app end to end -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_live_app_on_the_carphone_clip_with_openvino(tmp_path):
    import cv2

    from live.cli.app import Session, build_parser
    from tests.conftest import carphone_path
    from tests.support import read_video

    clip = carphone_path()
    avatar = tmp_path / "avatar.png"
    from skimage.data import astronaut
    cv2.imwrite(str(avatar), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.mp4"
    frames = 12
    args = build_parser().parse_args([
        "--avatar", str(avatar), "--driving", str(clip), "--output", str(out), "--backend", "openvino",
        "--no-vcam", "--no-preview", "--max-frames", str(frames), "--deterministic-weights"])
    messages = []
    assert Session(args, log=messages.append).run() == 0
    assert any("backend: OpenVINO on the CPU" in m for m in messages), messages
    assert any(m.startswith("ready: the first frame went out") for m in messages), messages
    written, _ = read_video(out)
    assert len(written) == frames and written[0].shape == (720, 1280, 3)  # the photo at call resolution
    motion = [np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() for a, b in zip(written, written[1:])]
    assert max(motion) > 0  # the avatar follows the driving face (calibrated on the first frame)


@pytest.mark.slow
def test_run_live_auto_cold_then_warm_reports_the_precision_and_reads_the_int8_decision(tmp_path, monkeypatch):
    """run_live --backend auto offline on the carphone clip: the first start serves float frames while int8 is
    checked in the background and, ending first, exits without waiting (the check stopped, nothing cached); once a
    verdict is stored (the check run to its end, as a longer run would), the next start is int8 from the start."""
    import cv2
    from skimage.data import astronaut

    from engines.backends import int8_gate
    from engines.image import to_model_input
    from live.cli.app import Session, avatar_options, build_parser
    from live.pipeline.avatar_set import load_avatars
    from tests.conftest import carphone_path

    monkeypatch.setattr(int8_gate, "REALTIME_MS", 0.0)  # every CPU is 'slower than real time' here
    monkeypatch.setattr(ovb, "DEFAULT_CALIBRATION_SAMPLES", 4)  # a short calibration
    monkeypatch.setenv("LIVE_AVATAR_CACHE", str(tmp_path / "cache"))
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))

    def run(name):
        args = build_parser().parse_args([
            "--avatar", str(avatar), "--driving", str(carphone_path()), "--output", str(tmp_path / f"{name}.mp4"),
            "--backend", "auto", "--no-vcam", "--no-preview", "--max-frames", "3", "--deterministic-weights"])
        messages = []
        assert Session(args, log=messages.append).run() == 0
        return messages

    cold = run("cold")
    assert any("calibrating the int8 renderer on your avatars in the background" in m for m in cold), cold
    (done,) = [m for m in cold if m.startswith("done: 3 frames")]
    assert "engine openvino-" in done and "ms per frame at start" in done
    assert "int8 check stopped before its verdict" in done, done
    assert any(m.startswith("ready: the first frame went out") for m in cold)
    # the check, run to its end on the same avatar (what the child stores when the run outlasts it)
    args = build_parser().parse_args(["--avatar", str(avatar), "--deterministic-weights"])
    images = [to_model_input(a.image) for a in load_avatars(str(avatar), 256, **avatar_options(args))]  # the app's
    checked, _ = backends.create_engine(deterministic_weights=True, calibration_images=images, int8_check="now",
                                        progress=lambda line: None)
    passed = checked.report().gate.passed
    switched = checked.report().precision == "int8"  # a pass that is no faster here keeps the float renderer
    checked.close()
    warm = run("warm")
    assert not any("calibrating" in m for m in warm), warm
    (done,) = [m for m in warm if m.startswith("done: 3 frames")]
    assert ("engine openvino-int8" in done) == switched and ("gate passed" in done) == passed, done


@pytest.mark.parametrize("precision, calibrated", [("int8", True), ("auto", True), ("fp32", False)])
def test_the_app_calibrates_int8_on_the_user_s_avatar(tmp_path, monkeypatch, capsys, deterministic_engine,
                                                       precision, calibrated):
    """--precision int8 and auto (which may try int8 behind its gate) hand the avatar images to create_engine as
    the int8 calibration set."""
    import cv2

    from engines.image import to_model_input
    from live.cli.app import main
    from tests.conftest import carphone_path

    face = np.zeros((256, 256, 3), np.uint8)
    cv2.circle(face, (128, 120), 70, (120, 160, 220), -1)
    cv2.imwrite(str(tmp_path / "face.png"), face)
    seen = {}

    def fake_create_engine(**kwargs):
        seen.update(kwargs)
        return deterministic_engine, []
    monkeypatch.setattr(backends, "create_engine", fake_create_engine)
    code = main(["--avatar", str(tmp_path / "face.png"), "--driving", str(carphone_path()), "--max-frames", "1",
                 "--precision", precision, "--deterministic-weights", "--no-vcam", "--no-preview", "--no-track"])
    assert code == 0, capsys.readouterr().err
    if calibrated:
        images = seen["calibration_images"]
        assert len(images) == 1
        expected = to_model_input(cv2.cvtColor(face, cv2.COLOR_BGR2RGB))
        torch.testing.assert_close(images[0], expected, rtol=0, atol=0)
    else:
        assert seen["calibration_images"] is None


# --- an unusable cache folder costs the cache, never OpenVINO -----------------------------------------------------
def test_a_compile_cache_path_that_is_a_file_is_named_with_its_cause(tmp_path):
    blocker = tmp_path / "compiled"
    blocker.write_text("not a folder")
    folder, notice = ovb.usable_compile_cache(blocker)
    assert folder is None and f"cannot create directory {blocker}" in notice and "File exists" in notice
    folder, notice = ovb.usable_compile_cache(blocker / "below")
    assert folder is None and f"cannot create directory {blocker / 'below'}" in notice and "Not a directory" in notice
    assert ovb.usable_compile_cache(tmp_path / "fine") == (tmp_path / "fine", None)


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only mount (chmod does not stop root); skipped where mounting is not permitted."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_compile_cache_is_named_with_its_cause(read_only_folder):
    folder, notice = ovb.usable_compile_cache(read_only_folder)
    assert folder is None and f"cannot write in {read_only_folder}" in notice and "Read-only" in notice


def test_openvino_still_runs_when_its_compile_cache_cannot_be_created(ov_engines, deterministic_engine, cache_dir,
                                                                     tmp_path, frames, reference):
    ov_engines("fp32")  # the IR entries exist
    copy = tmp_path / "ov"
    shutil.copytree(cache_dir, copy, ignore=shutil.ignore_patterns("compiled"))
    (copy / "blocker").write_text("a file where a folder should be")
    (copy / "compiled").symlink_to(copy / "blocker" / "compiled")  # a folder that cannot be created
    engine, notices = ovb.build_openvino_engine(deterministic_engine, precision="fp32", cache_dir=copy,
                                                capabilities=AMX, warm_up=False)
    assert engine.name == "openvino-fp32"
    assert any(f"cannot create directory {copy / 'compiled'}" in n and "compiling without a cache" in n
               for n in notices), notices
    assert float((engine.detect(frames[1]).value - reference[1].value).abs().max()) <= 1e-4
