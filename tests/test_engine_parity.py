"""Numerical parity with the original FOMM implementation on deterministic weights (golden cases, fp32, 1e-4).

Keep this test forever: the official checkpoints cannot be downloaded here, and parity on generated weights is how
we know the engine behaves like FOMM on the real ones.
"""
import numpy as np
import pytest
import torch

from calibration.relative_motion import normalize_kp
from engines.keypoints import Keypoints
from tests.conftest import hwc_to_tensor

TOL = 1e-4
VARIANTS = {  # variant -> (align_corners, relative + adapt scale)
    "relative_adapt_ac_false": (False, True),
    "relative_adapt_ac_true": (True, True),
    "absolute_ac_true": (True, False),
}


def _max_diff(ours: torch.Tensor, theirs: np.ndarray) -> float:
    return float(np.abs(ours.detach().cpu().numpy() - theirs).max())


@pytest.fixture
def engine(deterministic_engine):
    yield deterministic_engine
    deterministic_engine.generator.align_corners = True


def _kp(arrays, name, index=None):
    value, jacobian = arrays[f"{name}_value"], arrays[f"{name}_jacobian"]
    if index is not None:
        value, jacobian = value[index], jacobian[index]
    return Keypoints(torch.from_numpy(value)[None], torch.from_numpy(jacobian)[None])


def test_deterministic_weights_equal_the_reference_generator(reference_dir, engine):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_weights", reference_dir / "deterministic_weights.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    from engines.deterministic_weights import deterministic_state_dict

    for net, module in (("kp_detector", engine.kp_detector), ("generator", engine.generator)):
        theirs = reference.deterministic_state_dict(module.state_dict(), net=net, salt="")
        ours = deterministic_state_dict(module.state_dict(), net=net, salt="")
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keypoints_match_golden(golden, engine, variant):
    arrays = golden(variant)
    kp_source = engine.detect(hwc_to_tensor(arrays["source"]))
    kp_driving = engine.detect(hwc_to_tensor(golden.driving))
    assert _max_diff(kp_source.value[0], arrays["kp_source_value"]) <= TOL
    assert _max_diff(kp_source.jacobian[0], arrays["kp_source_jacobian"]) <= TOL
    assert _max_diff(kp_driving.value, arrays["kp_driving_value"]) <= TOL
    assert _max_diff(kp_driving.jacobian, arrays["kp_driving_jacobian"]) <= TOL
    assert _max_diff(kp_driving.value[0], arrays["kp_initial_value"]) <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generator_matches_golden_on_golden_keypoints(golden, engine, variant):
    """Generator alone: fed the original's normalised keypoints, every output matches."""
    arrays = golden(variant)
    engine.generator.align_corners = VARIANTS[variant][0]
    source = hwc_to_tensor(arrays["source"])
    for t in range(len(golden.driving)):
        out = engine.forward_full(source, _kp(arrays, "kp_norm", t), _kp(arrays, "kp_source"))
        assert _max_diff(out["prediction"][0].permute(1, 2, 0), arrays["prediction"][t]) <= TOL
        assert _max_diff(out["occlusion_map"][0], arrays["occlusion_map"][t]) <= TOL
        assert _max_diff(out["mask"][0], arrays["mask"][t]) <= TOL
        assert _max_diff(out["deformation"][0], arrays["deformation"][t]) <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_chain_matches_golden(golden, engine, variant):
    """Our keypoints -> our normalisation -> cached-source render, as the live tool runs it."""
    arrays = golden(variant)
    align_corners, relative = VARIANTS[variant]
    engine.generator.align_corners = align_corners
    state = engine.encode(hwc_to_tensor(arrays["source"]))
    kp_initial = engine.detect(hwc_to_tensor(golden.driving[0]))
    for t in range(len(golden.driving)):
        kp = engine.detect(hwc_to_tensor(golden.driving[t]))
        kp_norm = normalize_kp(state.kp, kp, kp_initial, relative_movement=relative, adapt_movement_scale=relative)
        assert _max_diff(kp_norm.value[0], arrays["kp_norm_value"][t]) <= TOL
        assert _max_diff(kp_norm.jacobian[0], arrays["kp_norm_jacobian"][t]) <= TOL
        prediction = engine.render(state, kp_norm).image
        assert _max_diff(prediction[0].permute(1, 2, 0), arrays["prediction"][t]) <= TOL


def test_align_corners_variants_are_told_apart(golden, engine):
    """The flag really switches semantics: each golden variant is matched only by its own setting."""
    arrays = golden("relative_adapt_ac_false")
    source = hwc_to_tensor(arrays["source"])
    engine.generator.align_corners = True
    out = engine.forward_full(source, _kp(arrays, "kp_norm", 1), _kp(arrays, "kp_source"))
    assert _max_diff(out["prediction"][0].permute(1, 2, 0), arrays["prediction"][1]) > 1e-3
