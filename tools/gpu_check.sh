#!/usr/bin/env bash
# The GPU path's checks on a machine with an NVIDIA GPU (and no network): run from the repository root.
#
#   bash tools/gpu_check.sh            # logs to $OUT (if set) or ./gpu-check-logs
#
# 1. wheels in .whl/ (e.g. onnxruntime-gpu, cuda-bindings for the driver's CUDA major) are
#    installed with --no-deps into /tmp/site, which goes first on PYTHONPATH;
# 2. `segexport doctor` (driver and bindings CUDA versions, providers);
# 3. the tests marked gpu: the TensorRT runner on real CUDA (pinned buffers, streams, CUDA
#    graph capture of the copy path), ONNX Runtime's CUDA provider with IO binding, real
#    TensorRT where installed; each skip says why;
# 4. the emulator's own tests (they must pass there too) and the benchmark tables.
# Exit status: that of the gpu tests.
set -u
PYTHON=${PYTHON:-python3}
LOGS=${OUT:-$PWD/gpu-check-logs}
mkdir -p "$LOGS"
SITE=/tmp/segexport-site
rm -rf "$SITE"
mkdir -p "$SITE"
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}" 2>&1 | tee "$LOGS/pip.log"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# onnxruntime-gpu loads cuBLAS/cuDNN/cuFFT/cuRAND/cudart by soname: point it at the CUDA
# libraries that pip's nvidia-* packages (torch's) put in site-packages.
NVIDIA_LIBS=$("$PYTHON" - <<'PY'
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
found = set()
for base in nvidia.__path__:
    for folder, _, files in os.walk(base):
        if any(".so" in name for name in files):
            found.add(folder)
print(":".join(sorted(found)))
PY
)
export LD_LIBRARY_PATH="${NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
    echo "== $(date -u) on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$PYTHON" --version
    "$PYTHON" -c "import numpy, onnxruntime; print('numpy', numpy.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
    "$PYTHON" -c "import importlib.metadata as m; print('cuda-bindings', m.version('cuda-bindings'))" 2>&1
    "$PYTHON" -m segexport doctor 2>&1
} | tee "$LOGS/environment.log"

"$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider \
    tests/test_engine_runner.py tests/test_ort_gpu.py tests/test_tensorrt.py 2>&1 | tee "$LOGS/pytest-gpu.log"
status=${PIPESTATUS[0]}

"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_emulator.py tests/test_engine_runner.py \
    -m "not gpu" 2>&1 | tee "$LOGS/pytest-emulator.log"

"$PYTHON" tools/bench_gpu_path.py --runs 20 --warmup 3 --sizes 512x512,1024x2048 \
    --json "$LOGS/bench_gpu_path.json" 2>&1 | tee "$LOGS/bench_gpu_path.log"

echo "gpu tests exit status: $status (logs in $LOGS)"
exit "$status"
