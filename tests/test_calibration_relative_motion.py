"""normalize_kp / movement scale: golden parity with the original FOMM code and hand-made hulls."""
import json

import numpy as np
import pytest
import torch

from calibration.relative_motion import DegenerateHullError, hull_area, movement_scale, normalize_kp
from engines.keypoints import Keypoints

from tests.conftest import GOLDEN, missing_data


def _load_case(name):
    path = GOLDEN / f"{name}.npz"
    if not path.is_file():
        missing_data(f"golden case {path} not found (shared/reference must sit beside the repo clone)")
    data = np.load(path)
    t = lambda key: torch.from_numpy(data[key])  # noqa: E731
    kp = lambda prefix, batch: Keypoints(  # noqa: E731
        t(f"{prefix}_value")[None] if batch else t(f"{prefix}_value"),
        t(f"{prefix}_jacobian")[None] if batch else t(f"{prefix}_jacobian"))
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    return kp("kp_source", True), kp("kp_initial", True), kp("kp_driving", False), kp("kp_norm", False), meta


def test_relative_adapt_matches_golden():
    kp_s, kp_0, kp_t, kp_norm, meta = _load_case("relative_adapt_ac_false")
    assert meta["relative"] and meta["adapt_movement_scale"]
    scale = movement_scale(kp_s.value, kp_0.value)
    assert not scale.degenerate and scale.notice is None
    assert scale.alpha == pytest.approx(meta["adapt_movement_scale_value"], abs=1e-9)
    assert hull_area(kp_s.value[0]) == pytest.approx(meta["source_hull_area"], abs=1e-9)
    assert hull_area(kp_0.value[0]) == pytest.approx(meta["initial_hull_area"], abs=1e-9)

    out = normalize_kp(kp_s, kp_t, kp_0)  # all 4 frames in one batch, kp_0 broadcasts
    assert out.value.shape == (4, 10, 2) and out.jacobian.shape == (4, 10, 2, 2)
    torch.testing.assert_close(out.value, kp_norm.value, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.jacobian, kp_norm.jacobian, rtol=0, atol=1e-5)
    # Frame by frame (the live loop's batch-1 case) and with a cached scale give the same answer.
    for i in range(4):
        frame = Keypoints(kp_t.value[i:i + 1], kp_t.jacobian[i:i + 1])
        one = normalize_kp(kp_s, frame, kp_0, scale=scale.alpha)
        torch.testing.assert_close(one.value[0], kp_norm.value[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(one.jacobian[0], kp_norm.jacobian[i], rtol=0, atol=1e-5)


def test_absolute_mode_returns_driving_unchanged():
    kp_s, kp_0, kp_t, kp_norm, meta = _load_case("absolute_ac_true")
    assert not meta["relative"]
    out = normalize_kp(kp_s, kp_t, kp_0, relative_movement=False)
    assert torch.equal(out.value, kp_t.value) and torch.equal(out.jacobian, kp_t.jacobian)
    torch.testing.assert_close(out.value, kp_norm.value, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.jacobian, kp_norm.jacobian, rtol=0, atol=1e-5)


def _square(side, centre=(0.0, 0.0)):
    c = np.array(centre)
    return np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]]) * side + c - side / 2


def _kp(points, jac=None):
    v = torch.tensor(points, dtype=torch.float32)[None]
    j = torch.eye(2).expand(1, v.shape[1], 2, 2).clone() if jac is None else jac
    return Keypoints(v, j)


def test_hull_area_of_known_shapes():
    assert hull_area(_square(2)) == pytest.approx(4.0)
    triangle = np.array([[0, 0], [3, 0], [0, 2], [0.5, 0.5]])
    assert hull_area(triangle) == pytest.approx(3.0)
    assert isinstance(hull_area(torch.tensor(_square(1), dtype=torch.float32)), float)


@pytest.mark.parametrize("points", [
    np.array([[0, 0], [1, 1], [2, 2], [3, 3]]),          # collinear
    np.zeros((10, 2)),                                  # coincident
    np.array([[0, 0], [1, 0]]),                         # too few
])
def test_hull_area_degenerate_raises(points):
    with pytest.raises(DegenerateHullError):
        hull_area(points)


def test_movement_scale_square_side_2_vs_1():
    s = movement_scale(_kp(_square(2, (0.3, -0.1))).value, _kp(_square(1)).value)
    assert s.alpha == pytest.approx(2.0) and not s.degenerate and s.notice is None
    assert movement_scale(_kp(_square(1)).value, _kp(_square(4)).value).alpha == pytest.approx(0.25)


def test_movement_scale_uses_batch_element_0_only():
    init = torch.tensor(np.stack([_square(1), _square(3)]), dtype=torch.float32)
    assert movement_scale(torch.tensor(_square(2))[None], init).alpha == pytest.approx(2.0)


@pytest.mark.parametrize("which", ["source", "initial"])
def test_movement_scale_degenerate_falls_back_to_1(which):
    line = np.stack([np.linspace(-1, 1, 10), np.linspace(-0.5, 0.5, 10)], axis=1)
    good = _square(1)
    s = movement_scale(line if which == "source" else good, good if which == "source" else line)
    assert s.alpha == 1.0 and s.degenerate
    assert isinstance(s.notice, str) and "1.0" in s.notice


def test_normalize_kp_formula_and_switches():
    rng = np.random.default_rng(0)
    kp_s = _kp(_square(2), torch.tensor(rng.normal(size=(1, 5, 2, 2)), dtype=torch.float32) + 2 * torch.eye(2))
    kp_0 = _kp(_square(1), torch.tensor(rng.normal(size=(1, 5, 2, 2)), dtype=torch.float32) + 2 * torch.eye(2))
    kp_t = _kp(_square(1) + 0.1, torch.tensor(rng.normal(size=(1, 5, 2, 2)), dtype=torch.float32))

    out = normalize_kp(kp_s, kp_t, kp_0)
    torch.testing.assert_close(out.value, (kp_t.value - kp_0.value) * 2.0 + kp_s.value)
    expected_j = kp_t.jacobian @ torch.linalg.inv(kp_0.jacobian) @ kp_s.jacobian
    torch.testing.assert_close(out.jacobian, expected_j, rtol=1e-5, atol=1e-5)

    # Still pose: driving == initial -> avatar keypoints come back exactly.
    still = normalize_kp(kp_s, kp_0, kp_0)
    torch.testing.assert_close(still.value, kp_s.value)
    torch.testing.assert_close(still.jacobian, kp_s.jacobian, rtol=1e-5, atol=1e-5)

    no_adapt = normalize_kp(kp_s, kp_t, kp_0, adapt_movement_scale=False)
    torch.testing.assert_close(no_adapt.value, kp_t.value - kp_0.value + kp_s.value)
    given = normalize_kp(kp_s, kp_t, kp_0, scale=3.0)
    torch.testing.assert_close(given.value, (kp_t.value - kp_0.value) * 3.0 + kp_s.value)

    no_rel_jac = normalize_kp(kp_s, kp_t, kp_0, relative_jacobian=False)
    assert torch.equal(no_rel_jac.jacobian, kp_t.jacobian)

    # A degenerate hull inside normalize_kp falls back to alpha = 1 instead of raising.
    flat = _kp(np.stack([np.linspace(0, 1, 5), np.zeros(5)], axis=1))
    torch.testing.assert_close(normalize_kp(flat, kp_t, kp_0).value, kp_t.value - kp_0.value + flat.value)


def test_normalize_kp_is_pure_and_traceable():
    kp_s, kp_0, kp_t = _kp(_square(2)), _kp(_square(1)), _kp(_square(1) + 0.2)
    before = [t.clone() for t in (kp_s.value, kp_s.jacobian, kp_0.value, kp_0.jacobian, kp_t.value, kp_t.jacobian)]
    normalize_kp(kp_s, kp_t, kp_0)
    after = (kp_s.value, kp_s.jacobian, kp_0.value, kp_0.jacobian, kp_t.value, kp_t.jacobian)
    assert all(torch.equal(a, b) for a, b in zip(before, after))

    # With a cached scale the tensor part has no host-side work: it exports, and without any inverse op.
    class Normalize(torch.nn.Module):
        def forward(self, vt, jt):
            kp = normalize_kp(kp_s, Keypoints(vt, jt), kp_0, scale=2.0)
            return kp.value, kp.jacobian

    exported = torch.export.export(Normalize(), (kp_t.value, kp_t.jacobian))
    assert "inv" not in " ".join(str(node.target) for node in exported.graph.nodes)
    got = exported.module()(kp_t.value, kp_t.jacobian)
    want = Normalize()(kp_t.value, kp_t.jacobian)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
