"""python -m live.pipeline.bench: the loop's own per-frame cost runs the real loop around frozen network outputs."""
from live.pipeline import bench


def test_the_loop_bench_times_both_rows_around_a_found_face(deterministic_engine):
    result = bench.run(frames=4, warmup=3, camera=(640, 360), canvas=(640, 360), engine=deterministic_engine)
    assert set(result["rows"]) == {"composite on", "composite off"}
    for name, row in result["rows"].items():
        assert row["face_found"], name  # the tracker follows the head, as it would a webcam's
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["mean_ms"] > 0
        assert {"crop", "detect", "normalize", "sinks"} <= set(row["stages_mean_ms"])
    assert "composite" in result["rows"]["composite on"]["stages_mean_ms"]
    assert "composite" not in result["rows"]["composite off"]["stages_mean_ms"]
    printed = bench.report(result)
    assert len(printed) == 3 and all(" ms " in line for line in printed[1:])


def test_the_command_refuses_what_it_cannot_time(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        bench.main(["--camera", "12x7"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_a_frozen_engine_costs_nothing_and_answers_like_the_real_one(deterministic_engine):
    import torch

    from engines.keypoints import Keypoints

    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    state = deterministic_engine.encode(image)
    kp = deterministic_engine.detect(image)
    rendered = deterministic_engine.render(state, Keypoints(state.kp.value + 0.03, state.kp.jacobian))
    frozen = bench.FrozenEngine(deterministic_engine, kp, rendered)
    assert frozen.detect(torch.zeros(1, 3, 256, 256)) is kp and frozen.render(state, kp) is rendered
    assert frozen.report() == deterministic_engine.report() and frozen.config_hash == deterministic_engine.config_hash
