"""Our networks' state_dicts equal the official manifests, so the official checkpoints load with strict=True."""
import pytest
import torch

from engines.config import VOX_256
from engines.generator import OcclusionAwareGenerator
from engines.keypoint_detector import KeypointDetector

NETWORKS = {"kp_detector": KeypointDetector, "generator": OcclusionAwareGenerator}


@pytest.mark.parametrize("config_name", ["vox-256", "vox-adv-256"])
@pytest.mark.parametrize("network", ["kp_detector", "generator"])
def test_state_dict_matches_manifest_exactly(manifest, config_name, network):
    expected = manifest(config_name)[network]
    module = NETWORKS[network](VOX_256)
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in module.state_dict().items()]
    theirs = [(e["key"], e["shape"], e["dtype"]) for e in expected["state_dict"]]
    assert ours == theirs  # same keys, same order, same shapes, same dtypes
    assert sum(p.numel() for p in module.parameters()) == expected["num_parameters"]


@pytest.mark.parametrize("config_name", ["vox-256", "vox-adv-256"])
def test_strict_load_of_a_state_dict_built_from_the_manifest(manifest, config_name):
    for network, cls in NETWORKS.items():
        entries = manifest(config_name)[network]["state_dict"]
        state = {e["key"]: torch.full(e["shape"], 0.5, dtype=getattr(torch, e["dtype"])) for e in entries}
        module = cls(VOX_256)
        result = module.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        first = entries[0]["key"]
        assert torch.equal(module.state_dict()[first], state[first])


def test_anti_alias_kernel_matches_the_closed_form():
    kd = KeypointDetector(VOX_256)
    taps = torch.tensor([8.9221e-05, 1.02820e-03, 7.59740e-03, 3.59943e-02, 0.109341, 0.212968, 0.265964])
    taps = torch.cat([taps, taps[:-1].flip(0)])
    taps = taps / taps.sum()
    kernel = kd.down.weight[0, 0]
    assert kd.down.weight.shape == (3, 1, 13, 13)
    assert torch.allclose(kernel, taps[:, None] * taps[None, :], atol=1e-6)
    assert abs(kernel.sum().item() - 1.0) < 1e-6
