#!/usr/bin/env bash
# The GPU checks of issue 22, as one time-boxed script for a machine with an NVIDIA GPU,
# CuPy and (for step 3) PyTorch with CUDA; run from the repository root:
#   bash bench/gpu_check.sh OUT_DIR
# Steps, in this order, each with its own time limit, all within GPU_CHECK_SECONDS
# (default 450 s: a step gets what is left, and is skipped when under 20 s is left):
#   1. env.txt            the GPU, driver, Python, NumPy, CuPy and CUDA versions;
#   2. count_ops.txt      `bench --count-ops`: array operations per meta-iteration (counted on
#                         NumPy, the same on any machine; here to sit beside the GPU's times);
#   3. bench_cupy.txt     `bench` under CuPy: s / meta-iteration, GFLOP/s, the memory pool's peak
#                         and the 5-inner-step / 1-inner-step peak ratio; then, back to back,
#      torch_cuda.txt     bench/torch_reference.py --device cuda --impl vmap, with TF32 off
#                         (NVIDIA_TF32_OVERRIDE=0: full float32, as CuPy's matmuls) and as PyTorch
#                         runs by default (cuDNN's TF32 convolutions);
#   4. train_omniglot.txt 300 iterations of the README's Omniglot 5-way 1-shot MAML run (strided
#                         CNN, B = 32), data pipeline included, with --curvature-every 150 (λ_max
#                         on the GPU): seconds per iteration, and what that makes of 15,000 and
#                         60,000 iterations. Needs the Omniglot zips: NUMPY_AMAML_OMNIGLOT_DIR, or
#                         data/ holding them, or ../shared/data/omniglot (bench/README.md, "On a GPU");
#   5. pytest_cupy.txt    every test file that can run on a GPU, NUMPY_AMAML_BACKEND=cupy (not the
#                         notebook tests: nbclient, nbgrader; they run the NumPy notebooks);
#   6. gradcheck_cupy.txt `python -m numpy_amaml gradcheck` under CuPy;
#   7. launches.txt       where Nsight Compute (ncu) runs: the GPU's own kernel count for one
#                         sinusoid meta-iteration, beside step 2's count.
# Settings (environment): PYTHON, the interpreter (default python3); GPU_CHECK_SECONDS, the
# budget; GPU_CHECK_ONLY, run only these steps (names: count bench torch train pytest gradcheck
# launches), e.g. to finish a run that was cut short; GPU_CHECK_TRAIN_ITERATIONS (default 300);
# NUMPY_AMAML_BACKEND (default cupy; numpy runs the plumbing on a CPU). At most 8 files go to OUT_DIR.
set -u
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-450}
DEADLINE=$(( $(date +%s) + BUDGET ))
ITERATIONS=${GPU_CHECK_TRAIN_ITERATIONS:-300}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NUMPY_AMAML_BACKEND=${NUMPY_AMAML_BACKEND:-cupy}
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/numpy_amaml-cupy-cache}   # compiled kernels, kept for a rerun

wanted() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ " $GPU_CHECK_ONLY " == *" $1 "* ]]; }

# step NAME SECONDS FILE COMMAND...: unless GPU_CHECK_ONLY leaves NAME out, run COMMAND for at
# most SECONDS (or what is left of the budget), appending its output to OUT_DIR/FILE
step() {
  local name=$1 cap=$2 file=$3 left=$(( DEADLINE - $(date +%s) ))
  shift 3
  wanted "$name" || return 0
  (( left < cap )) && cap=$left
  if (( cap < 20 )); then
    echo "skipped (the $BUDGET s of GPU_CHECK_SECONDS are spent): $*" | tee -a "$OUT/$file"
    return 0
  fi
  echo "\$ $* (limit ${cap} s)" | tee -a "$OUT/$file"
  local start=$(date +%s)
  timeout "$cap" "$@" 2>&1 | tee -a "$OUT/$file"
  echo "[exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s]" | tee -a "$OUT/$file"
}

# 1. environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import sys, numpy, cupy; print('Python', sys.version.split()[0], '| NumPy', numpy.__version__,
'| CuPy', cupy.__version__, '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
  $PY -c "import torch; print('PyTorch', torch.__version__, '| CUDA', torch.cuda.is_available())" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"

# 2. the operation count (NumPy, one CPU thread)
step count 60 count_ops.txt env NUMPY_AMAML_BACKEND=numpy OPENBLAS_NUM_THREADS=1 $PY -m numpy_amaml bench --count-ops

# 3. numpy_amaml on CuPy, then PyTorch on the same GPU, back to back
step bench 120 bench_cupy.txt $PY -m numpy_amaml bench --warmup 3 --repeats 10 --no-phases
if ! wanted torch; then
  :
elif $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  step torch 60 torch_cuda.txt env NVIDIA_TF32_OVERRIDE=0 $PY bench/torch_reference.py --device cuda --impl vmap \
    --warmup 3 --repeats 10
  step torch 45 torch_cuda.txt $PY bench/torch_reference.py --device cuda --impl vmap --warmup 3 --repeats 10
else
  echo "PyTorch with CUDA is not installed here: no reference rows" | tee "$OUT/torch_cuda.txt"
fi

# 4. Omniglot 5-way 1-shot training end to end (the README's setting, 300 iterations)
RUN=$(mktemp -d)/omniglot-5w1s
step train 150 train_omniglot.txt $PY -m numpy_amaml train --task omniglot --method maml --ways 5 --shots 1 \
  --queries 1 --alpha 0.4 --beta 0.001 --meta-batch 32 --inner-steps 1 --test-inner-steps 3 \
  --downsample stride --iterations "$ITERATIONS" --seed 0 --log-every $(( ITERATIONS / 12 )) \
  --val-every "$ITERATIONS" --checkpoint-every "$ITERATIONS" --curvature-every $(( ITERATIONS / 2 )) \
  --no-figures --no-progress --out "$RUN"
if [ -f "$RUN/metrics.jsonl" ]; then
  $PY - "$RUN/metrics.jsonl" <<'EOF' 2>&1 | tee -a "$OUT/train_omniglot.txt"
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1])]
# seconds per iteration between logged records, leaving out the spans with validation or λ_max
spans = [(b["elapsed_s"] - a["elapsed_s"]) / (b["iteration"] - a["iteration"])
         for a, b in zip(records, records[1:])
         if "val_accuracy" not in b and "lambda_max" not in b and b["iteration"] > a["iteration"]]
per_it = statistics.median(spans)
print(f"seconds per iteration (median of {len(spans)} spans between logged iterations, "
      f"none with validation or λ_max): {per_it:.4f}")
print(f"  15,000 iterations (the README's run): {15000 * per_it / 60:.1f} min; "
      f"60,000 (the MAML paper's): {60000 * per_it / 60:.1f} min")
print(f"  λ_max logged at iterations {[r['iteration'] for r in records if 'lambda_max' in r]}; "
      f"validation accuracy {records[-1].get('val_accuracy')}")
EOF
fi

# 5. the CuPy test run (pytest-xdist spreads the files over processes, each its own CUDA context)
# (and pytest-timeout, where installed, stops a hanging test after 90 s)
PYTEST_OPTIONS=""
$PY -c "import xdist" 2>/dev/null && PYTEST_OPTIONS="-n 12"
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTIONS="$PYTEST_OPTIONS --timeout 90"
step pytest 240 pytest_cupy.txt $PY -m pytest -q -p no:cacheprovider -rfEs --durations=15 $PYTEST_OPTIONS tests \
  --ignore=tests/test_tutorials.py --ignore=tests/test_nbgrader.py --ignore=tests/test_assignments.py \
  --ignore=tests/test_grader_mutants.py

# 6. the gradient-check table on the GPU
step gradcheck 60 gradcheck_cupy.txt $PY -m numpy_amaml gradcheck

# 7. the GPU's own kernel count for one sinusoid meta-iteration (Nsight Compute), where it runs
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
CSV=$(mktemp -d)/launches.csv
if ! wanted launches; then
  :
elif [ -n "$NCU" ]; then
  step launches 90 launches.txt "$NCU" --clock-control none --profile-from-start off --metrics gpu__time_duration.sum \
    --csv --log-file "$CSV" $PY -c "
import cupy
from numpy_amaml.commands import bench
case = bench.CASES[0]
model, theta, batch, alpha = bench.make_problem(case)
learner = bench._learner(case, model, theta, alpha)
for _ in range(3):
    learner.step(batch)
cupy.cuda.Device().synchronize()
cupy.cuda.profiler.start()
learner.step(batch)
cupy.cuda.Device().synchronize()
cupy.cuda.profiler.stop()"
  if [ -f "$CSV" ]; then
    $PY - "$CSV" <<'EOF' 2>&1 | tee -a "$OUT/launches.txt"
import csv, sys
rows = [r for r in csv.DictReader(line for line in open(sys.argv[1]) if line.startswith('"'))]
kernels = {r["ID"]: r["Kernel Name"] for r in rows}
print(f"kernels launched in one sinusoid meta-iteration (second order, CuPy): {len(kernels)}")
names = {}
for name in kernels.values():
    names[name.split("(")[0][:60]] = names.get(name.split("(")[0][:60], 0) + 1
for name, n in sorted(names.items(), key=lambda kv: -kv[1])[:15]:
    print(f"{n:6d}  {name}")
EOF
  fi
else
  echo "ncu is not on the PATH: no kernel count from the GPU" | tee "$OUT/launches.txt"
fi
echo "done in $(( $(date +%s) - DEADLINE + BUDGET )) s" | tee -a "$OUT/env.txt"
