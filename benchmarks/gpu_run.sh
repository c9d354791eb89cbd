#!/usr/bin/env bash
# The GPU rows of issue 7, item 6: train-step throughput and MFU (benchmarks/train_throughput.py)
# and sampling throughput (benchmarks/sampling.py), ours vs diffusers, at the issue's sizes, in
# under 8 minutes on one H100/H200. Each script appends its table to BENCHMARKS.md.
#
# NOT RUN YET: written in a session that had no GPU; the CPU rows in BENCHMARKS.md are smoke tests.
# Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_run.sh
#
# It needs jax (CUDA), flax, optax, numpy, absl-py, torch, diffusers and ml_collections, and no
# TensorFlow, TFDS, grain, CLU or torch-fidelity. Wheels in $WHEELS (default .whl/, e.g. diffusers
# and ml_collections, as /work/.library/device/README.md describes) are installed first with
# --no-deps into /tmp/site. $PYTHON picks the interpreter (default python3).
#
# The budget (TOTAL_S, default 470 s) is shared out in order of importance: the 35.7M CIFAR-10
# model's train rows, its sampling rows (DDPM times 200 of its 1000 steps and extrapolates per
# step; the table says so), then the 64x64 default model's train rows with what is left. Each
# step runs under `timeout` (SIGINT, so the script still writes the rows it has) with a
# --time_budget_s after which it starts no new row; bf16 rows come first. After every step
# BENCHMARKS.md and the log are copied to $OUT, when set, so a cut-off run still returns them.
set -u -o pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
TOTAL_S=${TOTAL_S:-470}
ROW_S=70  # the longest a row may take once started (compiles included): stop starting rows this early
END=$((SECONDS + TOTAL_S))
LOG=${OUT:-/tmp}/gpu_run.log
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU in one process

copy_out() {
  if [[ -n "${OUT:-}" ]]; then cp BENCHMARKS.md "$OUT/BENCHMARKS.md"; fi
}

# run_step SHARE_S MODULE ARGS...: runs one benchmark within SHARE_S seconds (0 = all that is left).
run_step() {
  local share=$1 left=$((END - SECONDS))
  shift
  if ((share == 0 || share > left)); then share=$left; fi
  if ((share < ROW_S + 30)); then
    echo "== skipping $*: ${left}s of the budget left" | tee -a "$LOG"
    return
  fi
  echo "== $* (${share}s)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=30 "$share" \
      "$PYTHON" -m "$@" --time_budget_s=$((share - ROW_S)) 2>&1 | tee -a "$LOG"
  echo "== exit status ${PIPESTATUS[0]} after $((SECONDS))s" | tee -a "$LOG"
  copy_out
}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$LOG"
"$PYTHON" -c 'import jax, flax, optax, torch, diffusers, ml_collections; print(jax.devices(), torch.cuda.get_device_name())' \
    2>&1 | tee -a "$LOG" || exit 1

run_step 190 benchmarks.train_throughput --models=cifar10 --dtypes=bfloat16,float32 \
    --batch_sizes=128,256 --steps=20 --warmup_steps=3
run_step 120 benchmarks.sampling --models=cifar10 --dtypes=bfloat16,float32 --batch_size=256 \
    --ddpm_timed_steps=200 --ddim_steps=100
run_step 60 benchmarks.bf16_loss_curve --steps=500 --batch_size=128 --image_size=32 --base_channels=64
run_step 0 benchmarks.train_throughput --models=default --dtypes=bfloat16,float32 \
    --batch_sizes=128,256 --steps=10 --warmup_steps=2
copy_out
echo "== done in ${SECONDS}s" | tee -a "$LOG"
