#!/usr/bin/env bash
# The CuPy checks, as one script for a machine with an NVIDIA GPU and CuPy installed
# (run from the repository root):
#   bash bench/gpu_check.sh OUT_DIR
# 1. the float64 gradient-check tests (every layer, loss, model and method derivative
#    against finite differences) with NUMPY_AMAML_BACKEND=cupy, so every array lives on the GPU;
# 2. the gradient-check table;
# 3. `python -m numpy_amaml bench` under CuPy (GPU times, the memory pool's peak);
# 4. the PyTorch reference on the same GPU, when PyTorch is installed: as PyTorch runs by
#    default, and with TF32 off (NVIDIA_TF32_OVERRIDE=0), i.e. in full float32 like CuPy's
#    matmuls (PyTorch lets cuDNN use TF32 for convolutions by default).
# Each step has its own time limit, so one slow step cannot starve the others. PYTHON
# picks the interpreter (default python3); the outputs go to OUT_DIR as text files.
set -u
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NUMPY_AMAML_BACKEND=cupy
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/numpy_amaml-cupy-cache}   # compiled kernels, kept for a rerun

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import sys, numpy, cupy; print('Python', sys.version.split()[0], '| NumPy', numpy.__version__,
'| CuPy', cupy.__version__, '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
} 2>&1 | tee "$OUT/env.txt"

# xdist spreads the test files over processes (each with its own CUDA context) when installed
PARALLEL=""
$PY -c "import xdist" 2>/dev/null && PARALLEL="-n 8"
# (the two tests of the report command are left to step 2, which runs that command itself)
timeout 240 $PY -m pytest -q -p no:cacheprovider -rfE --durations=10 $PARALLEL \
  tests/test_layers_basic.py tests/test_layers_cnn.py tests/test_model.py tests/test_gradcheck.py \
  tests/test_maml.py tests/test_parallel.py tests/test_backend.py \
  -k "not test_report_command_passes_and_prints_the_table and not test_report_tol_option" \
  2>&1 | tee "$OUT/pytest_cupy.txt"

timeout 120 $PY -m numpy_amaml gradcheck 2>&1 | tee "$OUT/gradcheck_cupy.txt"

timeout 150 $PY -m numpy_amaml bench --warmup 3 --repeats 10 --no-phases 2>&1 | tee "$OUT/bench_cupy.txt"

if $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  timeout 120 $PY bench/torch_reference.py --device cuda --warmup 3 --repeats 10 2>&1 | tee "$OUT/torch_cuda.txt"
  NVIDIA_TF32_OVERRIDE=0 timeout 120 $PY bench/torch_reference.py --device cuda --warmup 3 --repeats 10 \
    --only CNN 2>&1 | tee "$OUT/torch_cuda_no_tf32.txt"
fi
