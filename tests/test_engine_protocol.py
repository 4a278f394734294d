"""Every engine - the eager one, each backend's, and the fakes other tests use - offers engines.protocol.Engine,
with the same method signatures (isinstance on a runtime Protocol only checks that the names exist)."""
import inspect

import pytest
import torch

from engines.protocol import ATTRIBUTES, METHODS, Engine


def _parameters(function) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values() if p.name != "self"]


def assert_conforms(engine) -> None:
    assert isinstance(engine, Engine)
    for name in ATTRIBUTES:
        assert getattr(engine, name, None) is not None, f"{type(engine).__name__}.{name} is missing"
    assert isinstance(engine.image_size, int) and isinstance(engine.device, torch.device)
    for name in METHODS:
        ours, declared = getattr(engine, name), getattr(Engine, name)
        assert _parameters(ours) == _parameters(declared), f"{type(engine).__name__}.{name}{inspect.signature(ours)}"


def test_protocol_members_are_the_documented_ones():
    members = {n for n in vars(Engine) if not n.startswith("_")} | set(Engine.__annotations__)
    assert members == set(ATTRIBUTES) | set(METHODS)


def test_the_eager_engine_conforms(deterministic_engine):
    assert_conforms(deterministic_engine)


def test_the_cpu_backends_engine_conforms(deterministic_engine):
    from engines.backends.cpu_backend import CpuOptions, build_cpu_engine

    engine, _ = build_cpu_engine(deterministic_engine, options=CpuOptions("bf16"), warm_up=False)
    assert_conforms(engine)


def test_the_switching_engine_conforms_and_closing_it_closes_what_it_held(deterministic_engine):
    from engines.backends.switching import SwitchingEngine
    from tests.support import FakeEngine

    first, second = FakeEngine(), FakeEngine()
    switching = SwitchingEngine(first)
    assert_conforms(switching)
    switching.offer(second, "switched")
    assert switching.between_frames() == "switched" and switching.current is second
    assert switching.between_frames() is None, "an offer is taken once"
    with switching:
        pass
    assert (first.closed, second.closed) == (1, 1)


def test_a_rendered_frame_carries_the_motion_of_the_generator(deterministic_engine):
    from engines.protocol import identity_motion

    engine = deterministic_engine
    image = torch.rand(1, 3, engine.image_size, engine.image_size, generator=torch.Generator().manual_seed(3))
    state = engine.encode(image)
    at_rest = engine.render(state, state.kp)  # driving = source: nothing moves
    assert at_rest.image.shape == (1, 3, 256, 256) and at_rest.fresh
    assert at_rest.deformation.shape == (1, 64, 64, 2) and at_rest.occlusion.shape == (1, 1, 64, 64)
    identity, _ = identity_motion(1)
    # the background mask blends the identity in: with no motion every local motion is the identity too
    assert (at_rest.deformation - identity).abs().max().item() < 1e-4
    assert 0.0 <= at_rest.occlusion.min().item() <= at_rest.occlusion.max().item() <= 1.0


def test_every_engine_reports_what_it_is(deterministic_engine):
    from engines.backends.cpu_backend import CpuOptions, build_cpu_engine
    from engines.backends.switching import SwitchingEngine
    from engines.protocol import EngineReport, Fallback, GateVerdict
    from tests.support import FakeEngine

    eager = deterministic_engine.report()
    assert (eager.backend, eager.device, eager.detector, eager.renderer) == ("torch", "cpu", "fp32", "fp32")
    bf16, _ = build_cpu_engine(deterministic_engine, options=CpuOptions("bf16"), warm_up=False)
    assert (bf16.report().backend, bf16.report().renderer, bf16.report().fact("channels_last")) == ("cpu", "bf16",
                                                                                                    False)
    switching = SwitchingEngine(FakeEngine())
    assert switching.report() == switching.current.report()
    switching.amend_report(startup_s=4.5)  # what the selection learned goes to the engine serving now
    assert switching.report().startup_s == 4.5 == switching.current.report().startup_s
    report = EngineReport(backend="openvino", device="cpu", detector="fp32", renderer="int8", why="requested",
                          frame_ms=31.4, startup_s=2.5, fell_back=(Fallback("TensorRT backend", "no CUDA GPU"),),
                          gate=GateVerdict(53.1, 0.9989, True, enforced=False), facts=(("threads", 2),))
    line = report.summary()
    for part in ("OpenVINO on the CPU, int8 (requested), detector fp32", "31 ms per frame at start",
                 "built in 2.5 s", "gate passed: PSNR 53.1 dB, SSIM 0.9989", "not enforced",
                 "not used: TensorRT backend unavailable (no CUDA GPU)"):
        assert part in line, (part, line)
    assert report.as_dict()["facts"] == {"threads": 2} and report.precision == "int8"


def test_an_engine_s_report_is_replaced_whole_never_edited():
    import dataclasses

    from tests.support import FakeEngine

    engine = FakeEngine()
    before = engine.report()
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.frame_ms = 1.0
    engine.amend_report(frame_ms=12.5)
    assert engine.report().frame_ms == 12.5 and before.frame_ms is None


def test_the_live_loop_fake_engine_conforms():
    from tests.test_live_loop import FakeEngine, NaNEngine

    assert_conforms(FakeEngine())
    assert_conforms(NaNEngine())


def test_an_engine_missing_a_member_does_not_conform():
    from tests.support import FakeEngine

    class NoWeightsId(FakeEngine):
        weights_id = None

    class OldRender(FakeEngine):
        def render(self, state, kp):  # a parameter renamed: keyword callers would break
            return super().render(state, kp)

    with pytest.raises(AssertionError, match="weights_id"):
        assert_conforms(NoWeightsId())
    with pytest.raises(AssertionError, match="render"):
        assert_conforms(OldRender())
