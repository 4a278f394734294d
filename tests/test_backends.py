"""Backend selection: the pure planner's candidate order for each machine (its inputs), the one fallback loop with
fake builds, create_engine's report on this machine; the CPU backend's parity; the TensorRT engine cache (keys,
entry validation, rebuilds) with fake payloads: all on CPU."""
from __future__ import annotations

import json

import pytest
import torch

import engines.backends as backends
from engines.backends import Machine, Request, build_first, plan
from engines.backends import tensorrt_backend as trt
from engines.backends.common import AcceleratedEngine, weights_digest
from engines.backends.cpu_backend import DEFAULT_OPTIONS, CpuOptions, build_cpu_engine
from engines.backends.precision import Bf16Measurement
from engines.cache import cache_key

TRT_MISSING = (False, "torch_tensorrt cannot be imported (Exception: libnvinfer.so.10: cannot open shared object)")
OV_MISSING = (False, "openvino cannot be used (ModuleNotFoundError: No module named 'openvino')")


# --- selection: the pure planner (inputs: what the machine has; output: the candidates in order) ----------------
def machine(*, cuda=False, trt=TRT_MISSING, ov=OV_MISSING, accelerators=(), remembered=None, int8=False):
    return Machine(cuda=cuda, tensorrt=trt, openvino=ov, accelerators=accelerators,
                   remembered_device=lambda primary, contenders: remembered, int8_passed=int8)


def order(chosen) -> list[str]:
    """'backend/device' per candidate, '!' before those ruled out."""
    return [("!" if c.skip else "") + f"{c.backend}/{c.device}" for c in chosen.candidates]


GPU = ["tensorrt/cuda", "cuda/cuda", "torch/cuda"]
CPU_NO_OV = ["!openvino/cpu", "cpu/cpu", "torch/cpu"]
CPU_OV = ["openvino/cpu", "cpu/cpu", "torch/cpu"]


@pytest.mark.parametrize("backend,device,cuda,trt_ok,ov_ok,expected,reason", [
    # auto picks the fastest available: TensorRT -> CUDA -> plain torch on a GPU, OpenVINO -> CPU -> torch without
    ("auto", "auto", True, True, False, GPU, None),
    ("auto", "auto", True, False, False, ["!tensorrt/cuda", *GPU[1:]], "libnvinfer"),
    ("auto", "auto", False, False, False, CPU_NO_OV, "No module named 'openvino'"),
    ("auto", "auto", False, False, True, CPU_OV, None),
    ("auto", "cuda", True, True, False, GPU, None),
    ("auto", "cpu", True, True, True, CPU_OV, None),                                  # --device cpu on a CUDA machine
    # an explicit backend falls back and names why
    ("tensorrt", "auto", True, False, False, ["!tensorrt/cuda", *GPU[1:]], "libnvinfer"),
    ("tensorrt", "auto", False, False, True, ["!tensorrt/cuda", *CPU_OV], "no CUDA GPU"),
    ("tensorrt", "auto", True, True, False, GPU, None),
    ("cuda", "auto", True, False, False, GPU[1:], None),                              # TensorRT not considered
    ("cuda", "auto", False, False, True, ["!cuda/cuda", *CPU_OV], "no CUDA GPU"),
    ("openvino", "auto", True, False, True, CPU_OV, None),                            # runs on the CPU anyway
    ("openvino", "auto", False, False, False, CPU_NO_OV, "No module named 'openvino'"),
    ("cpu", "auto", False, False, True, ["cpu/cpu", "torch/cpu"], None),             # explicit eager stays eager
    ("torch", "auto", True, False, False, ["torch/cuda"], None),
    ("torch", "auto", False, False, False, ["torch/cpu"], None),
    # --device cpu forces the CPU whatever the backend; --device cuda without CUDA says so
    ("tensorrt", "cpu", True, True, True, ["!tensorrt/cuda", *CPU_OV], "--device cpu"),
    ("cuda", "cpu", True, True, True, ["!cuda/cuda", *CPU_OV], "--device cpu"),
    ("torch", "cpu", True, True, True, ["torch/cpu"], None),
    ("auto", "cuda", False, False, True, ["!tensorrt/cuda", *CPU_OV], "no CUDA GPU"),
    ("torch", "cuda", False, False, True, ["!torch/cuda", "torch/cpu"], "no CUDA GPU"),
    ("cpu", "cuda", True, False, True, ["!cpu/cuda", "cpu/cpu", "torch/cpu"], "--backend cpu runs on the CPU"),
    ("openvino", "cuda", True, False, True, ["!openvino/cuda", *CPU_OV], "--device cuda was given"),
])
def test_plan(backend, device, cuda, trt_ok, ov_ok, expected, reason):
    chosen = plan(Request(backend, device), machine(cuda=cuda, trt=(True, "ok") if trt_ok else TRT_MISSING,
                                                    ov=(True, "ok") if ov_ok else OV_MISSING))
    assert order(chosen) == expected
    skipped = [c.skip for c in chosen.candidates if c.skip]
    assert (skipped == []) if reason is None else any(reason in s for s in skipped), skipped
    assert chosen.race == () and chosen.notes == ()


def test_nothing_is_probed_that_the_plan_does_not_reach():
    def never():
        raise AssertionError("probed although the plan could not use it")
    cpu_only = Machine(cuda=never, tensorrt=never, openvino=(True, "ok"), accelerators=never)
    assert order(plan(Request("auto", "cpu"), cpu_only)) == CPU_OV
    no_cuda = Machine(cuda=False, tensorrt=never, openvino=(True, "ok"), accelerators=())
    assert order(plan(Request("tensorrt", "auto"), no_cuda))[0] == "!tensorrt/cuda"
    calls = []
    counted = Machine(cuda=lambda: calls.append(1) or True, tensorrt=(True, "ok"))
    plan(Request(), counted)
    assert calls == [1], "each probe is asked once"


@pytest.mark.parametrize("kwargs", [{"backend": "onnx"}, {"device": "tpu"}, {"precision": "int4"}])
def test_unknown_names_are_rejected(kwargs):
    with pytest.raises(ValueError, match="unknown"):
        Request(**kwargs)
    with pytest.raises(ValueError, match="unknown"):
        backends.create_engine(deterministic_weights=True, **kwargs)


def test_int8_is_an_openvino_cpu_option():
    forced = plan(Request(precision="int8"), machine(ov=(True, "ok")))
    assert [c.precision for c in forced.candidates] == ["int8", None, None] and forced.notes == ()
    elsewhere = plan(Request(precision="int8"), machine(ov=OV_MISSING))
    assert all(c.precision is None for c in elsewhere.candidates)
    (note,) = elsewhere.notes
    assert "int8 is an OpenVINO backend option" in note and "the CPU backend" in note
    on_gpu = plan(Request(precision="int8"), machine(cuda=True, trt=(True, "ok")))
    assert all(c.precision is None for c in on_gpu.candidates) and "TensorRT backend" in on_gpu.notes[0]


def test_a_gate_passed_at_an_earlier_start_puts_the_int8_engine_first():
    chosen = plan(Request(), machine(ov=(True, "ok"), int8=True))
    assert order(chosen) == ["openvino/cpu", *CPU_OV]
    first, second = chosen.candidates[:2]
    assert (first.precision, second.precision) == ("int8", None) and "earlier start" in first.why
    assert plan(Request(precision="fp32"), machine(ov=(True, "ok"), int8=True)).candidates[0].precision == "fp32"
    with_race = plan(Request(), machine(ov=(True, "ok"), accelerators=("gpu",), int8=True))
    assert [c.precision for c in with_race.candidates] == [None, None, None]  # the race decides first


def test_other_precisions_go_to_every_candidate():
    chosen = plan(Request(precision="fp16"), machine(cuda=True, trt=(True, "ok")))
    assert {c.precision for c in chosen.candidates} == {"fp16"}
    assert plan(Request(precision="auto"), machine()).candidates[1].precision is None


# --- the one fallback loop ---------------------------------------------------------------------------------------
class Built:
    def __init__(self, name):
        self.name, self.amended = name, {}

    def amend_report(self, **changes):
        self.amended.update(changes)


def test_the_loop_records_every_candidate_before_the_one_that_builds():
    chosen = plan(Request("auto", "auto"), machine(cuda=True, trt=TRT_MISSING))
    tried = []

    def make(candidate, base):
        tried.append((candidate.backend, base))
        if candidate.backend == "cuda":
            raise RuntimeError("inductor exploded\nlong trace")
        return Built(candidate.label), [f"{candidate.backend} built"]
    built = build_first(chosen.candidates, make, lambda candidate: f"weights on {candidate.base_device}")
    assert tried == [("cuda", "weights on cuda"), ("torch", "weights on cuda")]
    assert built.engine.name == "plain torch CUDA engine" and built.notices == ("torch built",)
    trt_skip, cuda_failed = built.fell_back
    assert (trt_skip.candidate, trt_skip.tried) == ("TensorRT backend", False) and "libnvinfer" in trt_skip.reason
    assert cuda_failed.tried and cuda_failed.reason == "RuntimeError: inductor exploded"
    assert cuda_failed.describe() == ("CUDA backend (torch fp16 + torch.compile) failed (RuntimeError: inductor "
                                      "exploded)")


def test_the_loop_lets_a_weights_problem_through_instead_of_falling_back():
    chosen = plan(Request("auto", "cpu"), machine(ov=(True, "ok")))

    def weights(candidate):
        raise ValueError("vox.pth.tar: not a PyTorch checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        build_first(chosen.candidates, lambda c, base: (Built(c.label), []), weights)


def test_the_loop_gives_the_report_the_plan_s_reason_for_the_precision():
    chosen = plan(Request(), machine(ov=(True, "ok"), int8=True))
    built = build_first(chosen.candidates, lambda c, base: (Built(c.label), []), lambda c: None)
    assert "earlier start" in built.engine.amended["why"] and built.fell_back == ()


def test_a_failing_int8_engine_falls_back_to_the_float_one():
    chosen = plan(Request(), machine(ov=(True, "ok"), int8=True))

    def make(candidate, base):
        if candidate.precision == "int8":
            raise RuntimeError("cached IR unreadable")
        return Built(f"{candidate.label} {candidate.precision}"), []
    built = build_first(chosen.candidates, make, lambda c: None)
    assert built.engine.name == "OpenVINO CPU backend None"
    (failed,) = built.fell_back
    assert failed.candidate == "OpenVINO CPU backend with the int8 renderer" and failed.tried


def test_create_engine_on_this_machine_reports_what_it_fell_back_from(monkeypatch, deterministic_engine):
    """Real probes (no CUDA here): an explicit TensorRT request ends on the CPU, and the report says why."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import engines.backends.builders as builders

    monkeypatch.setattr(builders, "load_weights", lambda *args: deterministic_engine)  # shared weights: faster
    monkeypatch.setattr(backends, "openvino_status", lambda: (False, "openvino left out of this test"))
    monkeypatch.setattr(backends, "torch_bf16", lambda store=None: Bf16Measurement(f32_ms=50.0, bf16_ms=60.0))
    engine, notices = backends.create_engine(backend="tensorrt", deterministic_weights=True, warm_up=False)
    report = engine.report()
    assert engine.device.type == "cpu" and report.backend == "cpu" and report.renderer == "fp32"
    assert [(f.candidate, f.tried) for f in report.fell_back] == [("TensorRT backend", False),
                                                                  ("OpenVINO CPU backend", False)]
    assert report.fell_back[0].reason == "no CUDA GPU" and report.startup_s is not None
    assert notices[0].startswith("TensorRT backend unavailable (no CUDA GPU): using the CPU backend")
    assert notices[-1] == f"backend: {report.summary()}" and "not used: TensorRT backend unavailable" in notices[-1]


def test_the_torch_backend_is_the_plain_eager_engine(monkeypatch, deterministic_engine):
    import engines.backends.builders as builders

    monkeypatch.setattr(builders, "load_weights", lambda *args: deterministic_engine)
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    engine, notices = backends.create_engine(backend="torch", device="cpu", deterministic_weights=True,
                                             precision="fp16")
    assert type(engine).__name__ == "FOMMEngine" and engine.kp_detector is deterministic_engine.kp_detector
    assert engine.report().backend == "torch" and any("fp32 only" in n for n in notices)


def test_checkpoint_is_required_without_deterministic_weights():
    with pytest.raises(ValueError, match="checkpoint"):
        backends.create_engine(device="cpu")


# --- the probe really catches a plain Exception from torch_tensorrt ---------------------------------------------
def test_tensorrt_status_catches_a_plain_exception_from_the_import(monkeypatch, tmp_path):
    (tmp_path / "torch_tensorrt.py").write_text(
        "raise Exception('libnvinfer.so.10: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "torch_tensorrt", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ok, reason = trt.tensorrt_status()
    assert not ok
    assert "Exception" in reason and "libnvinfer.so.10" in reason


def test_tensorrt_status_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trt.tensorrt_status() == (False, "no CUDA GPU is available to this torch build")


# --- the CPU backend ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 256, 256, generator=generator), torch.rand(1, 3, 256, 256, generator=generator)


@pytest.mark.parametrize("bf16_ms,expected", [(60.0, "fp32"), (30.0, "bf16")])
def test_auto_on_this_cpu_gives_the_measured_cpu_engine(monkeypatch, deterministic_engine, frames, bf16_ms,
                                                         expected):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto would not pick the CPU")
    import engines.backends.builders as builders

    monkeypatch.setattr(builders, "load_weights", lambda *args: deterministic_engine)
    monkeypatch.setattr(backends, "openvino_status", lambda: (False, "openvino not installed"))  # see test_openvino
    monkeypatch.setattr(backends, "present_accelerators", lambda ov_ok: ())
    monkeypatch.setattr(backends, "torch_bf16", lambda store=None: Bf16Measurement(f32_ms=50.0, bf16_ms=bf16_ms))
    engine, notices = backends.create_engine(deterministic_weights=True)
    report = engine.report()
    assert isinstance(engine, AcceleratedEngine) and engine.name == f"torch-cpu-{expected}"
    assert report.backend == "cpu" and report.renderer == expected and report.detector == "fp32"
    assert report.why.startswith("measured" if expected == "bf16" else "bf16 measured")
    assert [f.candidate for f in report.fell_back] == ["OpenVINO CPU backend"]
    if expected == "bf16":
        return
    # Same protocol and identity as the eager engine.
    assert engine.device == torch.device("cpu") and engine.image_size == 256
    assert engine.config_hash == deterministic_engine.config_hash
    source, driving = frames
    state = engine.encode(source)
    kp = engine.detect(driving)
    eager_kp = deterministic_engine.detect(driving)
    torch.testing.assert_close(kp.value, eager_kp.value, rtol=0, atol=0)  # the detector stays eager fp32
    out = engine.render(state, kp).image
    reference = deterministic_engine.render(deterministic_engine.encode(source), eager_kp).image
    assert out.shape == (1, 3, 256, 256) and out.dtype == torch.float32
    # fp32 differs from eager only by summation order
    assert float((out - reference).abs().max()) <= 1e-4


def test_cpu_precision_options(deterministic_engine, frames):
    source, driving = frames
    engine, notices = build_cpu_engine(deterministic_engine, precision="fp16", warm_up=False)
    assert engine.report().precision == DEFAULT_OPTIONS.precision and "not supported" in notices[0]
    bf16, notices = build_cpu_engine(deterministic_engine, options=CpuOptions("bf16", False, False))
    assert notices == [] and bf16.name == "torch-cpu-bf16"
    state = deterministic_engine.encode(source)
    kp = deterministic_engine.detect(driving)
    out, reference = bf16.render(state, kp).image, deterministic_engine.render(state, kp).image
    assert out.dtype == torch.float32
    diff = float((out - reference).abs().max())
    assert 0 < diff <= 2e-2  # really ran in bf16, and stayed close


def test_cpu_compile_failure_falls_back_to_eager_with_a_notice(monkeypatch, deterministic_engine, frames):
    def broken_compile(module, *args, **kwargs):
        def call(*inputs):
            raise RuntimeError("InductorError: no C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    engine, notices = build_cpu_engine(deterministic_engine, options=CpuOptions("fp32", False, True))
    assert any("torch.compile failed" in n and "C++ compiler" in n for n in notices)
    assert engine.name == "torch-cpu-fp32"
    source, driving = frames
    state = deterministic_engine.encode(source)
    kp = deterministic_engine.detect(driving)
    torch.testing.assert_close(engine.render(state, kp).image, deterministic_engine.render(state, kp).image,
                               rtol=0, atol=0)


def test_cpu_backend_leaves_the_shared_networks_untouched(deterministic_engine):
    before = deterministic_engine.generator.bottleneck.r0.conv1.weight
    layout = before.is_contiguous()
    build_cpu_engine(deterministic_engine, options=CpuOptions("fp32", True, False), warm_up=False)
    after = deterministic_engine.generator.bottleneck.r0.conv1.weight
    assert after is before and after.is_contiguous() == layout


# --- TensorRT cache logic (pure functions, fake payloads) --------------------------------------------------------
def fields(**overrides):
    values = dict(graph="frame_renderer", weights="a" * 64, config_hash="0123456789abcdef", precision="fp16",
                  shapes=[(1, 256, 64, 64), (1, 10, 2)],
                  gpu={"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
                  versions={"tensorrt": "10.9.0", "torch_tensorrt": "2.13.0", "torch": "2.13.0", "cuda": "12.8"})
    values.update(overrides)
    return trt.cache_fields(**values)


def test_default_cache_dir(monkeypatch, tmp_path):
    assert trt.default_cache_dir({"LIVE_AVATAR_CACHE": str(tmp_path)}) == tmp_path / "trt"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trt.default_cache_dir({}) == tmp_path / "home" / ".cache" / "live-avatar" / "trt"


def entry(tmp_path, f=None):
    f = f or fields()
    return trt.entry_cache(tmp_path).directory(trt.entry_prefix(f), f)


def test_cache_key_depends_on_everything_that_invalidates_an_engine():
    base = fields()
    assert cache_key(base) == cache_key(fields())  # stable
    variants = [fields(weights="b" * 64), fields(config_hash="fedcba9876543210"), fields(precision="fp32"),
                fields(graph="keypoint_detector"), fields(shapes=[(1, 256, 32, 32), (1, 10, 2)]),
                fields(gpu={"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}),
                fields(versions={"tensorrt": "10.10.0", "torch_tensorrt": "2.13.0", "torch": "2.13.0",
                                 "cuda": "12.8"}),
                fields(versions={"tensorrt": "10.9.0", "torch_tensorrt": "2.13.1", "torch": "2.13.0",
                                 "cuda": "12.8"})]
    keys = {cache_key(v) for v in variants}
    assert len(keys) == len(variants) and cache_key(base) not in keys
    assert entry("/c").name.startswith("frame_renderer-fp16-")


class FakeCompiler:
    """Stands in for compile/save/load: the 'engine' is a dict, its payload a JSON file."""

    def __init__(self):
        self.builds = 0
        self.loads = 0

    def build(self):
        self.builds += 1
        return {"engine": "compiled", "build": self.builds}

    def save(self, module, path):
        path.write_text(json.dumps(module))

    def load(self, path):
        self.loads += 1
        return json.loads(path.read_text())


def _load_or_build(tmp_path, compiler, f=None):
    return trt.load_or_build(tmp_path, f or fields(), build=compiler.build, save=compiler.save, load=compiler.load,
                             label="renderer")


def test_first_start_builds_and_second_start_loads(tmp_path):
    compiler = FakeCompiler()
    module, notices = _load_or_build(tmp_path, compiler)
    assert module == {"engine": "compiled", "build": 1} and compiler.builds == 1
    assert len(notices) == 1 and "building the TensorRT renderer engine" in notices[0]
    assert "none cached for this setup" in notices[0]
    assert trt.entry_cache(tmp_path).check(entry(tmp_path), fields())[0] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry(tmp_path).name]  # no staging leftovers

    module, notices = _load_or_build(tmp_path, compiler)
    assert module == {"engine": "compiled", "build": 1} and notices == []
    assert compiler.builds == 1 and compiler.loads == 1


def test_a_corrupt_or_unloadable_entry_is_set_aside_and_rebuilt(tmp_path):
    """(The kinds of damage: tests/test_cache.py.)"""
    compiler = FakeCompiler()
    _load_or_build(tmp_path, compiler)
    payload = entry(tmp_path) / trt.PAYLOAD
    payload.write_bytes(payload.read_bytes()[:-5])
    module, notices = _load_or_build(tmp_path, compiler)
    assert compiler.builds == 2 and module["build"] == 2
    assert any("TensorRT renderer engine" in n and "unusable" in n and "set aside" in n for n in notices), notices

    def broken_load(path):
        raise RuntimeError("TensorRT: engine plan deserialization failed (version mismatch)")
    module, notices = trt.load_or_build(tmp_path, fields(), build=compiler.build, save=compiler.save,
                                        load=broken_load, label="renderer")
    assert compiler.builds == 3
    assert any("does not load" in n and "deserialization failed" in n for n in notices)


def test_a_new_gpu_or_tensorrt_version_builds_beside_the_old_entry_and_says_what_changed(tmp_path):
    compiler = FakeCompiler()
    _load_or_build(tmp_path, compiler)
    moved = fields(gpu={"gpu": "NVIDIA L4", "compute_capability": "8.9"},
                   versions={"tensorrt": "10.11.0", "torch_tensorrt": "2.13.0", "torch": "2.13.0", "cuda": "12.8"})
    module, notices = _load_or_build(tmp_path, compiler, moved)
    assert compiler.builds == 2
    assert "different compute_capability, gpu, tensorrt" in notices[0]
    assert len(list(tmp_path.iterdir())) == 2  # the other machine's entry stays usable


def test_an_unwritable_cache_still_gives_an_engine(tmp_path):
    compiler = FakeCompiler()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    module, notices = _load_or_build(blocker, compiler)
    assert module["build"] == 1
    assert any("could not save" in n for n in notices)


def test_weights_digest_tracks_every_weight_and_the_resampling_flag(deterministic_engine):
    digest = weights_digest(deterministic_engine)
    assert digest == weights_digest(deterministic_engine) and len(digest) == 64
    original = deterministic_engine.align_corners
    try:
        deterministic_engine.generator.align_corners = not original  # graphs bake the grid_sample semantics in
        assert weights_digest(deterministic_engine) != digest
    finally:
        deterministic_engine.generator.align_corners = original
    weight = deterministic_engine.generator.final.bias
    with torch.no_grad():
        weight[0] += 1e-6
        try:
            assert weights_digest(deterministic_engine) != digest
        finally:
            weight[0] -= 1e-6
    assert weights_digest(deterministic_engine) == digest


def test_compile_graph_passes_an_exported_program_and_disables_tf32_for_fp32_graphs_only(monkeypatch):
    """torch_tensorrt replaced by a recorder: what compile_graph hands to dynamo.compile, and that the result of
    that call is what it returns."""
    import sys
    import types

    calls = []

    def compile(program, **settings):
        calls.append((program, settings))
        return program.module()
    fake = types.ModuleType("torch_tensorrt")
    fake.dynamo = types.SimpleNamespace(compile=compile)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    module = torch.nn.Linear(3, 2)
    x = torch.rand(1, 3)
    strict = trt.compile_graph(module, (x,), fp32_strict=True)
    half = trt.compile_graph(module, (x,), fp32_strict=False)
    (program, strict_settings), (_, half_settings) = calls
    assert isinstance(program, torch.export.ExportedProgram)
    assert strict_settings["arg_inputs"] == [x] and strict_settings["min_block_size"] == 1
    assert strict_settings["disable_tf32"] is True and "disable_tf32" not in half_settings
    torch.testing.assert_close(strict(x), module(x))
    torch.testing.assert_close(half(x), module(x))


def test_half_renderer_keeps_an_fp32_interface_and_leaves_the_original_fp32(deterministic_engine):
    from engines.export import frame_renderer

    original = frame_renderer(deterministic_engine)
    half = trt.HalfRenderer(original)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert all(p.dtype == torch.float32 for p in original.parameters())


# --- one compile-with-fallback wrapper; TF32 off for the detector ------------------------------------------------
def test_a_failing_compiled_graph_runs_eager_and_reports_once():
    from engines.backends.common import CompiledWithFallback

    reports, calls = [], []

    def compiled(x):
        calls.append("compiled")
        raise RuntimeError("InductorError: no C++ compiler\nlong trace ...")
    graph = CompiledWithFallback("renderer", lambda x: x + 1, compiled, report=reports.append)
    assert graph(1) == 2 and graph(2) == 3
    assert calls == ["compiled"], "after the first failure the compiled graph is not tried again"
    assert graph.fell_back and reports == ["torch.compile failed for the renderer (RuntimeError: InductorError: no "
                                           "C++ compiler): running it eager"]


class _TF32Probe(torch.nn.Module):
    """A stand-in keypoint detector that records whether cuDNN/matmul TF32 was allowed while it ran."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, image):
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return torch.zeros(1, 10, 2), torch.zeros(1, 10, 2, 2)


@pytest.fixture
def tf32_allowed():
    """TF32 allowed for the test, torch's own flags put back afterwards. Restored by hand: monkeypatch's undo
    deletes attributes it did not find in the instance dict, and `torch.backends.cuda.matmul` answers
    `allow_tf32` through __getattr__, so pytest 9 fails there with AttributeError."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # torch's default for cuDNN
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_detector_runs_with_tf32_off_on_every_engine_and_the_setting_is_restored(monkeypatch, tf32_allowed,
                                                                                     deterministic_engine):
    probe = _TF32Probe()
    monkeypatch.setattr(deterministic_engine, "kp_detector", probe)
    image = torch.rand(1, 3, 256, 256)
    deterministic_engine.detect(image)                                   # the torch backend
    AcceleratedEngine(deterministic_engine, name="x", detector=probe,  # the cuda / tensorrt graphs
                      report=deterministic_engine.report()).detect(image)
    assert probe.seen == [(False, False), (False, False)]
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32, "restored afterwards"
