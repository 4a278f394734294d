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
