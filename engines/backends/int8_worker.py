"""The int8 check as a child process: `python -m engines.backends.int8_worker FOLDER` (started by int8_gate.in_child
through background.run_child; not a command for people).

FOLDER/params.json names the weights (checkpoint path or generated, align_corners), the IR cache folder, the
decision folder and the calibration samples; FOLDER/images.npy holds the avatars ([N,1,3,S,S] float) when the user's
are used. The child calibrates the int8 renderer (its IR lands in the cache), gates it against eager fp32, stores
the verdict, and writes FOLDER/result.json ({psnr_db, ssim, passed} or {error}). It runs at a lower priority, its
output is discarded by the parent, and it ends itself when the parent goes away.
"""
from __future__ import annotations

import engines  # noqa: F401 - first: blocks OpenVINO's telemetry before anything imports openvino


def main() -> int:
    from engines.backends.background import child_result, child_setup

    folder, params = child_setup()
    try:
        result = run(folder, params)
    except Exception as error:  # noqa: BLE001 - the parent reports it in one line
        from engines.backends.common import describe_error
        result = {"error": describe_error(error)}
    child_result(folder, result)
    return 0


def run(folder, params: dict) -> dict:
    import numpy as np
    import torch

    from engines.backends.int8_gate import check_int8
    from engines.backends.openvino_backend import build_openvino_engine
    from engines.cache import DecisionStore
    from engines.engine import FOMMEngine

    if params["deterministic_weights"]:
        base = FOMMEngine.from_deterministic_weights(device="cpu", align_corners=params["align_corners"])
    else:
        base = FOMMEngine.from_checkpoint(params["checkpoint"], device="cpu", align_corners=params["align_corners"])
    images = None
    if params["images"]:
        images = [image for image in torch.from_numpy(np.load(folder / "images.npy", allow_pickle=False))]
    store = DecisionStore(params["decisions"])

    def build_int8(cancelled=None):
        return build_openvino_engine(base, precision="int8", cache_dir=params["cache_dir"], store=store,
                                     calibration_images=images, calibration_samples=params["samples"],
                                     progress=lambda line: None)

    _, result = check_int8(base, images, build_int8=build_int8, calibration=params["calibration"], store=store)
    return {"psnr_db": result.psnr_db, "ssim": result.ssim, "passed": result.passed}


if __name__ == "__main__":
    raise SystemExit(main())
