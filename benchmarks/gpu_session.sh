#!/usr/bin/env bash
# The GPU measurements of one session in one device call (the device tool's README:
# few, full calls). Each step has its own time limit, writes its log under $OUT and
# prints its tail; a step that fails or overruns does not stop the next.
#
#   bash benchmarks/gpu_session.sh            # on the device, from the repository root
#   TINY=1 bash benchmarks/gpu_session.sh     # on a CPU: every step at tiny size (plumbing check)
#
# Setup it expects (see docs/STATUS.md): the wheels the image lacks installed into
# /tmp/site and on PYTHONPATH (transformer-lens and its imports, zarr, Ray), and the
# project installed with `pip install --no-deps --no-build-isolation .`.
set -u
OUT=${OUT:-/tmp/ssmlens-gpu-out}
mkdir -p "$OUT"
T0=$(date +%s)
TINY=${TINY:-}

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) starts at $(( $(date +%s) - T0 ))s"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name rc=$? at $(( $(date +%s) - T0 ))s"
  tail -n "${TAIL:-30}" "$OUT/$name.log"
}

if [ -n "$TINY" ]; then
  step evaluate 600 ssmlens evaluate examples/suites/arora-ar.yaml --out "$OUT/eval" --no-progress \
    --engine ray --gpus-per-task 0 --deadline 180 --set 'widths=[16]' --set train.device=cpu \
    --set 'models[*].steps=8' --set 'models[*].max_time_s=30' --set task_config.n_keys=64 \
    --set task_config.n_values=64 --set train.batch_size=16 --set train.eval_every=8 --set train.eval_size=32 \
    --set analysis.n_examples=8 --set analysis.eval_size=32 --set resources.gpus=0
  step pretrained 300 python3 benchmarks/pretrained_gpu.py --tiny --json "$OUT/pretrained.json"
  step engine 300 python3 benchmarks/engine_gpu.py --cpu --tiny --no-progress --json "$OUT/engine.json"
  exit 0
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
EVAL_ENGINE=(--engine ray --gpus-per-task 0.14)
python3 -c "import plotly" 2>/dev/null || EVAL_ENGINE+=(--no-report)  # carry plotly + narwhals for the report
if ! timeout 60 python3 -c "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.get(ray.put(1))" \
    > "$OUT/ray_check.log" 2>&1; then  # no Ray here: the suite one cell after another, shortened
  echo "=== Ray does not start (see ray_check.log): evaluate on the local engine, 40 s trainings, width 64"
  EVAL_ENGINE=(--engine local --set 'widths=[64]' --set 'models[*].max_time_s=40')
fi
# Issues 13 and 15 (and 17: the suite's cells are Ray tasks sharing the GPU): the paper's
# AR setting for every family, the mechanism table last.
step evaluate "${EVAL_LIMIT:-290}" ssmlens evaluate examples/suites/arora-ar.yaml --out /tmp/eval-arora \
  "${EVAL_ENGINE[@]}" --deadline 180 --no-progress
cp /tmp/eval-arora/report.html /tmp/eval-arora/report.md "$OUT/" 2>/dev/null
# Issue 14: pretrained sizes in bf16, >= 1M tokens cached into run stores, tokens/s.
step pretrained "${PRETRAINED_LIMIT:-130}" python3 benchmarks/pretrained_gpu.py --budget-s 100 \
  --json "$OUT/pretrained.json"
# Issue 17: trainings one after another (local engine) vs side by side as Ray tasks.
step engine "${ENGINE_LIMIT:-100}" python3 benchmarks/engine_gpu.py --n-models 8 --steps 300 --no-progress \
  --json "$OUT/engine.json"
# Issue 16: the model table on the merged code (fused path vs module path, hooks), checked.
step model "${MODEL_LIMIT:-75}" python3 benchmarks/model_gpu.py --check
echo "=== all steps done at $(( $(date +%s) - T0 ))s"
