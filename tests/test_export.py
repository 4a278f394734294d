"""Exportability of the two per-frame graphs on CPU: torch.export, and ONNX run in onnxruntime vs PyTorch eager.

Deterministic weights on the golden astronaut (source + a driving frame), so the inputs are realistic keypoints and
features rather than noise. Exports go to tmp_path; one module-scoped export per graph keeps the file at ~30 s.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines import export
from engines.image import to_model_input
from tests.conftest import GOLDEN, hwc_to_tensor

ONNX_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def inputs(deterministic_engine, golden):
    cv2 = pytest.importorskip("cv2")
    source = cv2.cvtColor(cv2.imread(str(GOLDEN / "source.png")), cv2.COLOR_BGR2RGB)
    driving = hwc_to_tensor(golden.driving[2])  # an affine warp of the source: keypoints move, Jacobians differ
    return export.example_inputs(deterministic_engine, to_model_input(source), driving)


@pytest.fixture(scope="module")
def programs(deterministic_engine, inputs):
    return {"keypoint_detector": export.export_keypoint_detector(deterministic_engine, inputs[0]),
            "frame_renderer": export.export_frame_renderer(deterministic_engine, inputs[1])}


def _graph_inputs(inputs, graph):
    return inputs[0] if graph == "keypoint_detector" else inputs[1]


def _eager(engine, graph, args):
    module = engine.kp_detector if graph == "keypoint_detector" else export.frame_renderer(engine)
    with torch.no_grad():
        out = module(*args)
    return out if isinstance(out, tuple) else (out,)


def test_example_inputs_have_the_graph_shapes(inputs):
    (image,), renderer = inputs
    assert image.shape == (1, 3, 256, 256)
    shapes = [tuple(t.shape) for t in renderer]
    assert shapes == [(1, 256, 64, 64), (1, 3, 64, 64), (1, 10, 64, 64), (1, 10, 2), (1, 10, 2, 2), (1, 10, 2),
                      (1, 10, 2, 2)]
    assert all(t.dtype == torch.float32 and not t.is_inference() for t in (image, *renderer))


@pytest.mark.parametrize("graph", export.GRAPHS)
def test_torch_export_is_static_and_matches_eager(deterministic_engine, inputs, programs, graph):
    program = programs[graph]
    assert export.control_flow_nodes(program) == []
    # Every input and output keeps the static example shape: nothing was made dynamic.
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in
                    program.graph_signature.user_inputs]
    args = _graph_inputs(inputs, graph)
    assert [tuple(n.meta["val"].shape) for n in placeholders] == [tuple(a.shape) for a in args]
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("inverse" in t or "linalg" in t for t in targets), targets
    if graph == "frame_renderer":
        assert any("grid_sampler" in t for t in targets)
    with torch.no_grad():
        exported = program.module()(*args)
    exported = exported if isinstance(exported, tuple) else (exported,)
    for got, want in zip(exported, _eager(deterministic_engine, graph, args), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_renderer_inputs_follow_the_declared_names(deterministic_engine, inputs):
    from engines.engine import SourceState
    from engines.keypoints import Keypoints

    features, small, gaussians, kp_s_value, kp_s_jacobian, kp_d_value, kp_d_jacobian = inputs[1]
    state = SourceState(image=None, kp=Keypoints(kp_s_value, kp_s_jacobian), features=features, image_small=small,
                        gaussians=gaussians)
    kp = Keypoints(kp_d_value, kp_d_jacobian)
    ordered = export.renderer_inputs(state, kp)
    assert len(ordered) == len(export.RENDERER_INPUTS)
    assert all(a is b for a, b in zip(ordered, inputs[1]))
    # The plain-tensor graph gives exactly what the engine renders.
    with torch.no_grad():
        direct = export.frame_renderer(deterministic_engine)(*ordered)
    rendered = deterministic_engine.render(state, kp)
    assert len(direct) == len(export.RENDERER_OUTPUTS)
    for graph_output, engine_output in zip(direct, (rendered.image, rendered.deformation, rendered.occlusion)):
        torch.testing.assert_close(graph_output, engine_output, rtol=0, atol=0)


@pytest.mark.parametrize("graph,opset", [
    ("keypoint_detector", 17),
    ("keypoint_detector", 18),
    ("frame_renderer", 17),
    ("frame_renderer", 18),
])
def test_onnx_runs_in_onnxruntime_and_matches_pytorch(deterministic_engine, inputs, programs, tmp_path, graph,
                                                      opset):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = export.export_onnx(deterministic_engine, graph, tmp_path / f"{graph}.onnx", opset=opset,
                              program=programs[graph])
    assert path.exists() and not list(tmp_path.glob("*.data"))  # one self-contained file
    assert export.onnx_opset(path) == opset
    ops = export.onnx_op_types(path)
    assert "Inverse" not in ops
    assert not ops & export.FORBIDDEN_ONNX_OPS, ops & export.FORBIDDEN_ONNX_OPS
    if graph == "frame_renderer":
        assert "GridSample" in ops

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args = _graph_inputs(inputs, graph)
    names = export.DETECTOR_INPUTS if graph == "keypoint_detector" else export.RENDERER_INPUTS
    assert [i.name for i in session.get_inputs()] == list(names)
    outputs = session.run(None, {name: a.numpy() for name, a in zip(names, args)})
    expected = _eager(deterministic_engine, graph, args)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape)
        diff = float(np.abs(got - want.numpy()).max())
        assert diff <= ONNX_TOLERANCE, f"{graph} opset {opset}: max |onnxruntime - torch| = {diff:.2e}"


def test_export_onnx_rejects_an_unknown_graph(deterministic_engine, tmp_path):
    with pytest.raises(ValueError, match="unknown graph"):
        export.export_onnx(deterministic_engine, "generator", tmp_path / "x.onnx")


def test_input_shapes_from_the_config_are_the_example_inputs_shapes(deterministic_engine):
    """Caches are keyed by the graphs' input shapes every start: computed from the config, not by encoding."""
    from engines.export import example_inputs, input_shapes

    detector, renderer = example_inputs(deterministic_engine)
    assert input_shapes(deterministic_engine.config) == ([tuple(t.shape) for t in detector],
                                                         [tuple(t.shape) for t in renderer])
