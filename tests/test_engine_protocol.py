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


def test_the_live_loop_fake_engine_conforms():
    from tests.test_live_loop import FakeEngine, NaNEngine

    assert_conforms(FakeEngine())
    assert_conforms(NaNEngine())


def test_an_engine_missing_a_member_does_not_conform():
    from tests.test_live_loop import FakeEngine

    class NoWeightsId(FakeEngine):
        weights_id = None

    class OldRender(FakeEngine):
        def render(self, state, kp):  # a parameter renamed: keyword callers would break
            return super().render(state, kp)

    with pytest.raises(AssertionError, match="weights_id"):
        assert_conforms(NoWeightsId())
    with pytest.raises(AssertionError, match="render"):
        assert_conforms(OldRender())
