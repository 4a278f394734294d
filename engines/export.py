"""Export the two per-frame graphs (keypoint detector, FrameRenderer) with torch.export and to ONNX.

    python -m engines.export --out exported/ [--checkpoint vox-cpk.pth.tar] [--opset 17]

Both graphs have static shapes (batch 1, 256x256 images, the avatar state as plain tensor inputs), no torch.inverse
and no data-dependent control flow, so one exported graph serves every avatar. The ONNX files are what a plain
TensorRT builder (trtexec --onnx=...) consumes; the torch-tensorrt backend compiles the same modules directly.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from .cli import ArgumentParser
from .engine import FOMMEngine, renderer_inputs
from .generator import FrameRenderer

DETECTOR_INPUTS = ("image",)
DETECTOR_OUTPUTS = ("kp_value", "kp_jacobian")
# The renderer graph's inputs, in FrameRenderer.forward's order (= engine.renderer_inputs): avatar state first.
RENDERER_INPUTS = ("features", "source_small", "source_gaussians", "kp_source_value", "kp_source_jacobian",
                   "kp_driving_value", "kp_driving_jacobian")
RENDERER_OUTPUTS = ("prediction", "deformation", "occlusion")
GRAPHS = ("keypoint_detector", "frame_renderer")

# Ops whose presence would mean the graph is not static (control flow) or not convertible (inverse).
FORBIDDEN_ONNX_OPS = frozenset({"If", "Loop", "Scan", "Inverse", "NonZero", "Unique"})


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    # Tensors made under inference_mode cannot be traced by torch.export: clone them outside it.
    with torch.inference_mode(False):
        return tensor.detach().clone()


def example_inputs(engine: FOMMEngine, source: torch.Tensor | None = None, driving: torch.Tensor | None = None):
    """(detector_inputs, renderer_inputs) on the engine's device; random images unless given.

    The values only matter for parity checks: shapes and dtypes are what the graphs are specialised on.
    """
    size = engine.image_size
    generator = torch.Generator().manual_seed(0)
    if source is None:
        source = torch.rand(1, 3, size, size, generator=generator)
    if driving is None:
        driving = torch.rand(1, 3, size, size, generator=generator)
    state = engine.encode(source.to(engine.device))
    kp_driving = engine.detect(driving.to(engine.device))
    detector = (_plain(driving.to(engine.device, torch.float32)),)
    renderer = tuple(_plain(t) for t in renderer_inputs(state, kp_driving))
    return detector, renderer


def input_shapes(config) -> tuple[list[tuple], list[tuple]]:
    """(detector input shapes, renderer input shapes) from the config alone: the shapes `example_inputs` gives,
    without encoding an avatar (a second on a small CPU; caches are keyed by shapes every start)."""
    size, k, generator = config.image_size, config.num_kp, config.generator
    side = size // 2 ** generator.num_down_blocks
    channels = min(generator.max_features, generator.block_expansion * 2 ** generator.num_down_blocks)
    small = int(size * generator.dense_motion.scale_factor)
    renderer = [(1, channels, side, side), (1, config.num_channels, small, small), (1, k, small, small), (1, k, 2),
                (1, k, 2, 2), (1, k, 2), (1, k, 2, 2)]
    return [(1, config.num_channels, size, size)], renderer


def frame_renderer(engine: FOMMEngine) -> FrameRenderer:
    return FrameRenderer(engine.generator).eval()


def _export(module: torch.nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    # strict=False traces through Python like the ONNX exporter does; a data-dependent branch would still fail
    # here (GuardOnDataDependentSymNode), so success proves the graph is static.
    with torch.no_grad():
        return torch.export.export(module.eval(), tuple(inputs), strict=False)


def export_keypoint_detector(engine: FOMMEngine, inputs: tuple | None = None) -> torch.export.ExportedProgram:
    """torch.export of KeypointDetector: image [1,3,256,256] -> (value [1,K,2], jacobian [1,K,2,2])."""
    if inputs is None:
        inputs = example_inputs(engine)[0]
    return _export(engine.kp_detector, inputs)


def export_frame_renderer(engine: FOMMEngine, inputs: tuple | None = None) -> torch.export.ExportedProgram:
    """torch.export of the per-frame generator (inputs in RENDERER_INPUTS order) -> (prediction [1,3,256,256],
    deformation [1,64,64,2], occlusion [1,1,64,64]) (RENDERER_OUTPUTS)."""
    if inputs is None:
        inputs = example_inputs(engine)[1]
    return _export(frame_renderer(engine), inputs)


def control_flow_nodes(program: torch.export.ExportedProgram) -> list[str]:
    """Higher-order control-flow ops (cond, while_loop, map...) left in an exported graph: [] for a static graph."""
    found = []
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator):
            found.append(str(node.target))
    return found


def export_onnx(engine: FOMMEngine, graph: str, path, *, opset: int = 17, inputs: tuple | None = None,
                program: torch.export.ExportedProgram | None = None) -> Path:
    """Write `graph` ('keypoint_detector' or 'frame_renderer') as one self-contained ONNX file; returns the path.

    Uses the dynamo exporter (torch.export underneath): its graph is cleaner than the TorchScript exporter's (no
    Where/Equal left from shape checks). Pass `program` to reuse an ExportedProgram instead of tracing again.
    """
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if program is None:
        program = (export_keypoint_detector if graph == GRAPHS[0] else export_frame_renderer)(engine, inputs)
    names = (DETECTOR_INPUTS, DETECTOR_OUTPUTS) if graph == GRAPHS[0] else (RENDERER_INPUTS, RENDERER_OUTPUTS)
    with warnings.catch_warnings():
        # The exporter builds at its lowest native opset and converts down; it warns about that every time.
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, (), None, dynamo=True, opset_version=opset,
                                         input_names=list(names[0]), output_names=list(names[1]), verbose=False)
    # One file (~180 MB for the renderer, far below protobuf's 2 GB limit) is simpler to move around.
    onnx_program.save(str(path), external_data=False)
    return path


def onnx_op_types(path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def onnx_opset(path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m engines.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder for keypoint_detector.onnx, frame_renderer.onnx")
    parser.add_argument("--checkpoint", help="vox-cpk.pth.tar (default: deterministic weights)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.checkpoint:
        engine = FOMMEngine.from_checkpoint(args.checkpoint, device="cpu", align_corners=args.align_corners)
    else:
        engine = FOMMEngine.from_deterministic_weights(device="cpu", align_corners=args.align_corners)
    detector_inputs, renderer_inputs_ = example_inputs(engine)
    for graph, inputs in zip(GRAPHS, (detector_inputs, renderer_inputs_)):
        path = export_onnx(engine, graph, Path(args.out) / f"{graph}.onnx", opset=args.opset, inputs=inputs)
        print(f"wrote {path} (opset {onnx_opset(path)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
