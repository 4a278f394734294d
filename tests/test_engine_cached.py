"""The cached-source split: encode once, render per frame == the original full forward."""
import torch

from engines.geometry import coordinate_grid, inverse_2x2
from engines.blocks import warp
from engines.keypoints import Keypoints
from tests.conftest import hwc_to_tensor


def test_render_of_encoded_state_equals_full_forward(golden, deterministic_engine):
    engine = deterministic_engine
    source = hwc_to_tensor(golden("relative_adapt_ac_true")["source"])
    state = engine.encode(source)
    for frame in golden.driving[1:3]:
        kp = engine.detect(hwc_to_tensor(frame))
        cached = engine.render(state, kp).image
        full = engine.forward_full(source, kp)["prediction"]
        assert (cached - full).abs().max().item() <= 1e-5
    assert cached.shape == (1, 3, 256, 256)
    assert 0.0 <= cached.min().item() and cached.max().item() <= 1.0


def test_one_state_per_avatar_outputs_differ(golden, deterministic_engine):
    engine = deterministic_engine
    source = hwc_to_tensor(golden("relative_adapt_ac_true")["source"])
    other = torch.flip(source, dims=[3])
    kp = engine.detect(hwc_to_tensor(golden.driving[1]))
    a = engine.render(engine.encode(source), kp).image
    b = engine.render(engine.encode(other), kp).image
    assert (a - b).abs().mean().item() > 1e-3


def test_inverse_2x2_matches_torch_inverse():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(5, 10, 2, 2, generator=generator) + 2 * torch.eye(2)
    assert torch.allclose(inverse_2x2(m), torch.inverse(m), atol=1e-5, rtol=1e-5)


def test_identity_warp_semantics():
    """align_corners=True (training-time) reproduces the image under the identity grid; False shrinks it."""
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    grid = coordinate_grid(64, 64)[None]
    assert (warp(image, grid, True) - image).abs().max().item() < 1e-5
    assert (warp(image, grid, False) - image).abs().max().item() > 0.1


def test_rigid_motion_moves_the_sparse_field(deterministic_engine):
    """Keypoints shifted right by d: the dense motion samples the source at z - d (pure translation)."""
    from engines.dense_motion import sparse_motions

    value = torch.zeros(1, 10, 2)
    jac = torch.eye(2).expand(1, 10, 2, 2)
    shifted = value + torch.tensor([0.2, 0.0])
    motions = sparse_motions(8, 8, shifted, jac, value, jac)
    grid = coordinate_grid(8, 8)
    assert torch.allclose(motions[0, 0], grid)
    assert torch.allclose(motions[0, 1:], (grid - torch.tensor([0.2, 0.0])).expand(10, 8, 8, 2), atol=1e-6)
    assert Keypoints(value[:, :4], jac[:, :4]).num_kp == 4


def test_building_an_engine_leaves_torch_s_own_initialisation_as_it_was():
    """The engine builds its convolutions without random initialisation (every weight is loaded right after):
    a convolution built anywhere else afterwards is initialised as torch always does."""
    from engines.engine import FOMMEngine

    torch.manual_seed(3)
    expected = torch.nn.Conv2d(3, 4, 3).weight.detach().clone()
    FOMMEngine.from_deterministic_weights(device="cpu")
    torch.manual_seed(3)
    assert torch.equal(torch.nn.Conv2d(3, 4, 3).weight, expected)
