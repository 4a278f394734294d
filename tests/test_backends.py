"""Backend selection/fallback (probes and builders replaced where a GPU would be needed), the CPU backend's
parity, and the TensorRT engine cache logic (keys, entry validation, rebuilds) with fake payloads: all on CPU."""
from __future__ import annotations

import json

import pytest
import torch

import engines.backends as backends
from engines.backends import plan
from engines.backends import tensorrt_backend as trt
from engines.backends.common import AcceleratedEngine, weights_digest
from engines.backends.cpu_backend import DEFAULT_OPTIONS, CpuOptions, build_cpu_engine

TRT_MISSING = (False, "torch_tensorrt cannot be imported (Exception: libnvinfer.so.10: cannot open shared object)")


# --- selection: the pure plan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device,has_cuda,trt_ok,expected,notice", [
    # auto picks the fastest available
    ("auto", "auto", True, True, "tensorrt", None),
    ("auto", "auto", True, False, "cuda", "libnvinfer"),
    ("auto", "auto", False, False, "cpu", None),
    ("auto", "cuda", True, True, "tensorrt", None),
    # explicit tensorrt falls back and names why
    ("tensorrt", "auto", True, False, "cuda", "libnvinfer"),
    ("tensorrt", "auto", False, False, "cpu", "TensorRT backend unavailable"),
    ("tensorrt", "auto", True, True, "tensorrt", None),
    # --device cpu forces the CPU whatever the backend
    ("tensorrt", "cpu", True, True, "cpu", "--device cpu"),
    ("cuda", "cpu", True, True, "cpu", "--device cpu"),
    ("auto", "cpu", True, True, "cpu", None),
    ("torch", "cpu", True, True, "torch-cpu", None),
    # the rest
    ("cuda", "auto", True, False, "cuda", None),
    ("cuda", "auto", False, False, "cpu", "no CUDA GPU"),
    ("auto", "cuda", False, False, "cpu", "CUDA requested but not available"),
    ("torch", "auto", True, False, "torch-cuda", None),
    ("torch", "auto", False, False, "torch-cpu", None),
    ("cpu", "cuda", True, False, "cpu", "--backend cpu"),
])
def test_plan(backend, device, has_cuda, trt_ok, expected, notice):
    choice, notices = plan(backend, device, has_cuda=has_cuda, tensorrt=(trt_ok, TRT_MISSING[1]) if not trt_ok
                           else (True, "ok"))
    assert choice == expected
    if notice is None:
        assert notices == []
    else:
        assert any(notice in n for n in notices), notices


@pytest.mark.parametrize("kwargs", [{"backend": "onnx"}, {"device": "tpu"}, {"precision": "int4"}])
def test_unknown_names_are_rejected(kwargs):
    with pytest.raises(ValueError, match="unknown"):
        backends.create_engine(deterministic_weights=True, **kwargs)


# --- selection: create_engine with probes/builders replaced ------------------------------------------------------
class Recorder:
    def __init__(self, engine, fail: dict | None = None):
        self.engine, self.fail, self.calls = engine, fail or {}, []

    def builder(self, name):
        def build(base, **kwargs):
            self.calls.append((name, base.device.type if hasattr(base, "device") else None, kwargs))
            if name in self.fail:
                raise self.fail[name]
            return self.engine, [f"{name} built"]
        return build


@pytest.fixture
def fake_world(monkeypatch, deterministic_engine):
    """create_engine with no real base build, probes and builders under test control."""
    def setup(*, has_cuda, trt=(True, "ok"), fail=None, trt_probe_allowed=True):
        recorder = Recorder(object(), fail)
        monkeypatch.setattr(backends, "cuda_available", lambda: has_cuda)
        monkeypatch.setattr(backends, "openvino_status", lambda: (False, "openvino not installed"))

        def probe():
            assert trt_probe_allowed, "TensorRT was probed although it could not be used"
            return trt
        monkeypatch.setattr(backends, "tensorrt_status", probe)
        devices = []

        def base(device, checkpoint, deterministic_weights, align_corners):
            devices.append(device)
            return deterministic_engine
        monkeypatch.setattr(backends, "_base_engine", base)
        for name in ("tensorrt", "cuda", "cpu"):
            monkeypatch.setattr(backends, f"_build_{name}", recorder.builder(name))
        recorder.devices = devices
        return recorder
    return setup


def test_auto_prefers_tensorrt_when_importable_and_cuda_present(fake_world):
    world = fake_world(has_cuda=True)
    engine, notices = backends.create_engine(deterministic_weights=True, precision="fp32", cache_dir="/x")
    assert engine is world.engine
    assert [c[0] for c in world.calls] == ["tensorrt"]
    assert world.calls[0][2]["precision"] == "fp32" and world.calls[0][2]["cache_dir"] == "/x"
    assert world.devices == ["cuda"]
    assert notices == ["tensorrt built"]


def test_auto_without_tensorrt_uses_the_compiled_cuda_backend_and_says_why(fake_world):
    world = fake_world(has_cuda=True, trt=TRT_MISSING)
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert [c[0] for c in world.calls] == ["cuda"] and world.devices == ["cuda"]
    assert "libnvinfer" in notices[0] and notices[-1] == "cuda built"


def test_a_failing_tensorrt_build_falls_back_to_cuda_with_a_notice(fake_world):
    world = fake_world(has_cuda=True, fail={"tensorrt": RuntimeError("engine build failed: out of memory")})
    engine, notices = backends.create_engine(backend="tensorrt", deterministic_weights=True)
    assert [c[0] for c in world.calls] == ["tensorrt", "cuda"] and engine is world.engine
    assert any("TensorRT build failed" in n and "out of memory" in n for n in notices)


def test_a_failing_cuda_backend_falls_back_to_the_plain_cuda_engine(fake_world, deterministic_engine):
    fake_world(has_cuda=True, trt=TRT_MISSING, fail={"cuda": RuntimeError("inductor exploded")})
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert engine is deterministic_engine
    assert any("CUDA backend failed" in n and "inductor exploded" in n for n in notices)


def test_device_cpu_forces_the_cpu_without_probing_tensorrt(fake_world):
    world = fake_world(has_cuda=True, trt_probe_allowed=False)
    engine, notices = backends.create_engine(backend="tensorrt", device="cpu", deterministic_weights=True)
    assert [c[0] for c in world.calls] == ["cpu"] and world.devices == ["cpu"]
    assert any("--device cpu" in n for n in notices)


def test_no_cuda_means_cpu_and_tensorrt_is_not_probed(fake_world):
    world = fake_world(has_cuda=False, trt_probe_allowed=False)
    engine, notices = backends.create_engine(backend="tensorrt", deterministic_weights=True)
    assert [c[0] for c in world.calls] == ["cpu"] and world.devices == ["cpu"]
    assert any("TensorRT backend unavailable" in n and "no CUDA GPU" in n for n in notices)


def test_torch_backend_is_the_plain_eager_engine(fake_world, deterministic_engine):
    world = fake_world(has_cuda=False)
    engine, notices = backends.create_engine(backend="torch", device="cpu", deterministic_weights=True,
                                             precision="fp16")
    assert engine is deterministic_engine and world.calls == []
    assert any("fp32 only" in n for n in notices)


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


def test_explicit_tensorrt_on_this_machine_falls_back_with_the_reason(monkeypatch, deterministic_engine):
    # Real probes (this machine has no CUDA); only the weights are shared to save the build time.
    monkeypatch.setattr(backends, "_base_engine", lambda *a: deterministic_engine)
    engine, notices = backends.create_engine(backend="tensorrt", deterministic_weights=True)
    assert engine.device.type == "cpu"
    if not torch.cuda.is_available():
        assert any("TensorRT backend unavailable" in n for n in notices), notices


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
    from engines.backends.precision import Bf16Measurement

    monkeypatch.setattr(backends, "_base_engine", lambda *a: deterministic_engine)
    monkeypatch.setattr(backends, "openvino_status", lambda: (False, "openvino not installed"))  # tests/test_openvino.py
    monkeypatch.setattr(backends, "present_accelerators", lambda ov_ok: ())
    monkeypatch.setattr(backends, "torch_bf16", lambda: Bf16Measurement(f32_ms=50.0, bf16_ms=bf16_ms))
    engine, notices = backends.create_engine(deterministic_weights=True)
    assert notices == []
    assert isinstance(engine, AcceleratedEngine) and engine.name == f"torch-cpu-{expected}"
    assert engine.details["precision_reason"].startswith("measured" if expected == "bf16" else "bf16 measured")
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
    assert engine.precision == DEFAULT_OPTIONS.precision and "not supported" in notices[0]
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
    torch.testing.assert_close(engine.render(state, kp).image, deterministic_engine.render(state, kp).image, rtol=0, atol=0)


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


def test_cache_key_depends_on_everything_that_invalidates_an_engine():
    base = fields()
    assert trt.cache_key(base) == trt.cache_key(fields())  # stable
    variants = [fields(weights="b" * 64), fields(config_hash="fedcba9876543210"), fields(precision="fp32"),
                fields(graph="keypoint_detector"), fields(shapes=[(1, 256, 32, 32), (1, 10, 2)]),
                fields(gpu={"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}),
                fields(versions={"tensorrt": "10.10.0", "torch_tensorrt": "2.13.0", "torch": "2.13.0",
                                 "cuda": "12.8"}),
                fields(versions={"tensorrt": "10.9.0", "torch_tensorrt": "2.13.1", "torch": "2.13.0",
                                 "cuda": "12.8"})]
    keys = {trt.cache_key(v) for v in variants}
    assert len(keys) == len(variants) and trt.cache_key(base) not in keys
    assert trt.entry_dir("/c", base).name.startswith("frame_renderer-fp16-")


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
    entry = trt.entry_dir(tmp_path, fields())
    assert trt.check_entry(entry, fields()) == ("ok", "cached engine is valid")
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name]  # no staging leftovers

    module, notices = _load_or_build(tmp_path, compiler)
    assert module == {"engine": "compiled", "build": 1} and notices == []
    assert compiler.builds == 1 and compiler.loads == 1


@pytest.mark.parametrize("damage,word", [
    ("flip_byte", "checksum"),
    ("truncate", "bytes"),
    ("delete_payload", "missing"),
    ("garbage_meta", "unreadable"),
    ("meta_without_fields", "unreadable"),
])
def test_a_corrupt_entry_is_rebuilt_with_a_notice(tmp_path, damage, word):
    compiler = FakeCompiler()
    _load_or_build(tmp_path, compiler)
    entry = trt.entry_dir(tmp_path, fields())
    payload, meta = entry / trt.PAYLOAD, entry / trt.META
    if damage == "flip_byte":
        data = bytearray(payload.read_bytes())
        data[3] ^= 0xFF
        payload.write_bytes(bytes(data))
    elif damage == "truncate":
        payload.write_bytes(payload.read_bytes()[:-5])
    elif damage == "delete_payload":
        payload.unlink()
    elif damage == "garbage_meta":
        meta.write_text("{not json")
    else:
        meta.write_text(json.dumps({"size": 1}))
    status, reason = trt.check_entry(entry, fields())
    assert status == "corrupt" and word in reason

    module, notices = _load_or_build(tmp_path, compiler)
    assert compiler.builds == 2 and module["build"] == 2
    assert any("is corrupt" in n and "rebuilding" in n for n in notices), notices
    assert trt.check_entry(entry, fields())[0] == "ok"  # repaired


def test_an_entry_that_does_not_load_is_rebuilt(tmp_path):
    compiler = FakeCompiler()
    _load_or_build(tmp_path, compiler)

    def broken_load(path):
        raise RuntimeError("TensorRT: engine plan deserialization failed (version mismatch)")
    module, notices = trt.load_or_build(tmp_path, fields(), build=compiler.build, save=compiler.save,
                                        load=broken_load, label="renderer")
    assert compiler.builds == 2
    assert any("does not load" in n and "deserialization failed" in n for n in notices)


def test_a_mismatched_entry_is_rebuilt_with_a_notice(tmp_path):
    compiler = FakeCompiler()
    _load_or_build(tmp_path, compiler)
    entry = trt.entry_dir(tmp_path, fields())
    meta = json.loads((entry / trt.META).read_text())
    meta["fields"]["gpu"] = "NVIDIA GeForce RTX 3060"  # e.g. a cache folder copied from another machine
    (entry / trt.META).write_text(json.dumps(meta))
    assert trt.check_entry(entry, fields()) == ("mismatch", "built for a different gpu")
    module, notices = _load_or_build(tmp_path, compiler)
    assert compiler.builds == 2
    assert any("is mismatch" in n and "different gpu" in n for n in notices), notices


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
    AcceleratedEngine(deterministic_engine, name="x", detector=probe).detect(image)  # cuda / tensorrt graphs
    assert probe.seen == [(False, False), (False, False)]
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32, "restored afterwards"
