"""Loading official-layout checkpoints (zip and legacy serialisation) and one clear error per bad input."""
import hashlib
import pickle

import pytest
import torch

from engines.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, verify_checkpoint
from engines.config import VOX_256
from engines.engine import FOMMEngine
from engines.generator import OcclusionAwareGenerator
from engines.keypoint_detector import KeypointDetector


def official_layout(engine) -> dict:
    """What Logger.save_cpk writes: generator, discriminator, kp_detector, three optimisers, epoch."""
    return {
        "generator": engine.generator.state_dict(),
        "discriminator": {"discs.1.conv.weight": torch.zeros(1)},
        "kp_detector": engine.kp_detector.state_dict(),
        "optimizer_generator": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}]},
        "optimizer_discriminator": {"state": {}, "param_groups": []},
        "optimizer_kp_detector": {"state": {}, "param_groups": []},
        "epoch": 99,
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, deterministic_engine):
    folder = tmp_path_factory.mktemp("ckpt")
    content = official_layout(deterministic_engine)
    paths = {"zip": folder / "zip.pth.tar", "legacy": folder / "legacy.pth.tar"}
    torch.save(content, paths["zip"])
    torch.save(content, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_official_layout_loads_strictly_in_both_serialisations(checkpoints, deterministic_engine, fmt):
    engine = FOMMEngine.from_checkpoint(checkpoints[fmt])
    for ours, theirs in ((engine.kp_detector, deterministic_engine.kp_detector),
                         (engine.generator, deterministic_engine.generator)):
        reference = theirs.state_dict()
        for key, value in ours.state_dict().items():
            assert torch.equal(value, reference[key]), key
    frame = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    assert torch.equal(engine.detect(frame).value, deterministic_engine.detect(frame).value)


def _error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, KeypointDetector(VOX_256), OcclusionAwareGenerator(VOX_256), **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _save(path, content, legacy=False):
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.pth.tar")


def test_directory(tmp_path):
    assert "not a file" in _error(tmp_path)


@pytest.mark.parametrize("payload", [b"hello, I am a text file\n", bytes(range(256)) * 10, b"\x89PNG\r\n\x1a\n"],
                         ids=["text", "binary", "png"])
def test_not_a_torch_file(tmp_path, payload):
    path = tmp_path / "junk.pth.tar"
    path.write_bytes(payload)
    assert "not a PyTorch checkpoint" in _error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth.tar"
    path.write_bytes(b"")
    assert "file is empty" in _error(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_file(checkpoints, tmp_path, fmt):
    data = checkpoints[fmt].read_bytes()
    path = tmp_path / f"truncated-{fmt}.pth.tar"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(path)


@pytest.mark.parametrize("missing", ["generator", "kp_detector"])
def test_missing_network_entry(tmp_path, deterministic_engine, missing):
    content = official_layout(deterministic_engine)
    del content[missing]
    message = _error(_save(tmp_path / "partial.pth.tar", content))
    assert f"missing '{missing}'" in message


def test_top_level_not_a_dict(tmp_path):
    assert "top level is list" in _error(_save(tmp_path / "list.pth.tar", [torch.zeros(1)]))


def test_shape_mismatch_names_the_first_differing_key(tmp_path, deterministic_engine):
    content = official_layout(deterministic_engine)
    generator = dict(content["generator"])
    generator["first.conv.weight"] = torch.zeros(64, 3, 5, 5)
    generator["final.weight"] = torch.zeros(3, 64, 3, 3)
    content["generator"] = generator
    message = _error(_save(tmp_path / "shape.pth.tar", content))
    assert "generator key 'first.conv.weight' has shape (64, 3, 5, 5), expected (64, 3, 7, 7)" in message


def test_missing_and_unexpected_keys(tmp_path, deterministic_engine):
    content = official_layout(deterministic_engine)
    kp = dict(content["kp_detector"])
    del kp["kp.bias"]
    content["kp_detector"] = kp
    assert "kp_detector is missing key 'kp.bias'" in _error(_save(tmp_path / "m.pth.tar", content))
    content = official_layout(deterministic_engine)
    kp = dict(content["kp_detector"])
    kp["extra.weight"] = torch.zeros(1)
    content["kp_detector"] = kp
    assert "unexpected key 'extra.weight'" in _error(_save(tmp_path / "u.pth.tar", content))


def test_optional_num_batches_tracked_and_module_prefix(tmp_path, deterministic_engine):
    content = official_layout(deterministic_engine)
    content["kp_detector"] = {f"module.{k}": v for k, v in content["kp_detector"].items()
                              if not k.endswith("num_batches_tracked")}
    engine = FOMMEngine.from_checkpoint(_save(tmp_path / "dp.pth.tar", content))
    assert torch.equal(engine.kp_detector.kp.weight, deterministic_engine.kp_detector.kp.weight)


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth.tar"
    torch.save({"generator": Payload(), "kp_detector": {}}, path)
    assert "refused: contains Python code/objects, not only tensors" in _error(path)
    assert "arbitrary code ran" not in capsys.readouterr().out


class SystemPayload:
    """The hostile case: os.system in __reduce__. torch words this refusal differently ("unsupported
    GLOBAL posix.system whose module posix is blocked"); it used to be reported as a corrupt download."""

    def __reduce__(self):
        import os
        return (os.system, ("echo PAYLOAD-RAN > payload-ran.txt",))


def test_os_system_payload_is_refused_with_torchs_real_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hostile.pth.tar"
    torch.save({"generator": SystemPayload(), "kp_detector": {}}, path)
    with pytest.raises(pickle.UnpicklingError) as raw:  # torch's own message, as read_checkpoint sees it
        torch.load(path, weights_only=True)
    assert "unsupported global" in str(raw.value).lower()  # the real wording is what read_checkpoint must match
    message = _error(path)
    assert "refused: contains Python code/objects, not only tensors" in message
    assert "truncated or corrupt" not in message
    assert not (tmp_path / "payload-ran.txt").exists()


@pytest.mark.parametrize("text", ["Unsupported global: GLOBAL builtins.print was not an allowed global by default",
                                  "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.",
                                  "UNSUPPORTED CLASS foo.Bar"])
def test_code_refusal_wording_is_matched_case_insensitively(text):
    from engines.checkpoint import _names_code
    assert _names_code(text)
    assert not _names_code("unexpected EOF, expected 2176 more bytes. The file might be corrupted.")


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    assert "not a PyTorch checkpoint" in _error(path)


def test_sha256_verification(tmp_path):
    path = tmp_path / "weights.pth.tar"
    path.write_bytes(b"some bytes")
    digest = hashlib.sha256(b"some bytes").hexdigest()
    verify_checkpoint(path, digest, 10)
    with pytest.raises(CheckpointError, match="does not match"):
        verify_checkpoint(path, "0" * 64)
    with pytest.raises(CheckpointError, match="size 10 bytes, expected 11"):
        verify_checkpoint(path, digest, 11)
    with pytest.raises(CheckpointError, match="no known sha256"):
        verify_checkpoint(path)


def test_known_file_name_is_checked_against_the_published_digest(tmp_path):
    path = tmp_path / "vox-cpk.pth.tar"
    path.write_bytes(b"not the real file")
    with pytest.raises(CheckpointError, match="expected 728,766,691"):
        read_checkpoint(path, verify=True)


# --- hostile checkpoints: bombs, damaged and unusual weights -------------------------------------------------------
FIRST_KEY = "predictor.encoder.down_blocks.0.conv.weight"  # the first key load_state checks, shape (64, 3, 3, 3)


def _first_weight_checkpoint(path, tensor):
    """A tiny file whose kp_detector's first weight is `tensor` (checked, and refused, before any other key)."""
    return _save(path, {"kp_detector": {FIRST_KEY: tensor}, "generator": {}})


@pytest.mark.parametrize("value, count", [(float("nan"), 1), (float("inf"), 3)])
def test_non_finite_weights_are_refused_at_load(tmp_path, value, count):
    weight = torch.zeros(64, 3, 3, 3)
    weight.view(-1)[:count] = value
    message = _error(_first_weight_checkpoint(tmp_path / "nan.pth.tar", weight))
    assert f"'{FIRST_KEY}' holds {count} non-finite values" in message


@pytest.mark.parametrize("make, word", [
    (lambda: torch.zeros(64, 3, 3, 3).to_sparse(), "torch.sparse_coo"),
    (lambda: torch.zeros(64, 3, 3, 3, dtype=torch.complex64), "torch.complex64"),
    (lambda: torch.zeros(64, 3, 3, 3, dtype=torch.bool), "torch.bool"),
    (lambda: torch.zeros(64, 3, 3, 3, dtype=torch.int64), "torch.int64"),
    (lambda: torch.zeros(64, 3, 3, 3, dtype=torch.float64), "torch.float64"),
])
def test_weights_of_a_dtype_the_official_files_never_have_are_refused(tmp_path, make, word):
    message = _error(_first_weight_checkpoint(tmp_path / "odd.pth.tar", make()))
    assert f"'{FIRST_KEY}' is a {word}" in message and "expected a dense torch.float32" in message


def test_a_sparse_weight_is_one_line_through_the_cli(tmp_path, capsys):
    import cv2
    import numpy as np

    from live.cli.animate import main
    avatar, clip = tmp_path / "a.png", tmp_path / "d.mp4"
    cv2.imwrite(str(avatar), np.zeros((64, 64, 3), np.uint8))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    path = _first_weight_checkpoint(tmp_path / "sparse.pth.tar", torch.zeros(64, 3, 3, 3).to_sparse())
    code = main(["--avatar", str(avatar), "--driving", str(clip), "--output", str(tmp_path / "o.mp4"),
                 "--checkpoint", str(path), "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # after the "loading ..." line
    assert code == 2 and len(errors) == 1 and "torch.sparse_coo" in errors[0] and "Traceback" not in err, err


def _deflated_bomb(path, declared_mib: int):
    import zipfile
    small = path.with_suffix(".small")
    torch.save({"kp_detector": {FIRST_KEY: torch.zeros(64, 3, 3, 3)}, "generator": {}}, small)
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED,
                                                           compresslevel=1) as bomb:
        for entry in source.infolist():
            if "/data/" not in entry.filename:
                info = zipfile.ZipInfo(entry.filename)
                info.compress_type = zipfile.ZIP_STORED
                bomb.writestr(info, source.read(entry))
                continue
            info = zipfile.ZipInfo(entry.filename)
            info.compress_type = zipfile.ZIP_DEFLATED
            with bomb.open(info, "w", force_zip64=True) as out:
                chunk = bytes(1 << 20)
                for _ in range(declared_mib):
                    out.write(chunk)
    return path


def test_a_zip_bomb_is_refused_before_torch_load_expands_it(tmp_path):
    from tests.support import peak_rss_growth_mb
    bomb = _deflated_bomb(tmp_path / "bomb.pth.tar", 600)
    assert bomb.stat().st_size < 3_000_000  # 0.6 MB on disk, 600 MB unpacked (+600 MB RSS before the check)
    growth, said = peak_rss_growth_mb(
        "from engines.checkpoint import read_checkpoint",
        f"read_checkpoint({str(bomb)!r})\nprint('loaded')")
    assert "raised CheckpointError" in said and "compressed archive entries" in said and "zip bomb" in said, said
    assert growth < 50, f"peak RSS grew by {growth:.0f} MB"


@pytest.mark.parametrize("legacy", [False, True])
def test_a_file_larger_than_any_vox_checkpoint_is_refused_unread(tmp_path, monkeypatch, legacy):
    import engines.checkpoint as ckpt
    path = _first_weight_checkpoint(tmp_path / "big.pth.tar", torch.zeros(64, 3, 3, 3))
    if legacy:
        path = _save(tmp_path / "big-legacy.pth.tar", {"kp_detector": {}, "generator": {}}, legacy=True)
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    assert "larger than any FOMM vox checkpoint" in _error(path)
