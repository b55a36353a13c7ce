#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with .gpu-wheels/ carried (made by
# benchmarks/gpu_wheels.sh): install flexunet offline, measure the card's bfloat16 matrix peak,
# then benchmark the lung config (512x512, 8 levels) on JAX and PyTorch in float32, bfloat16 and
# float16 at one batch size. TensorFlow has no GPU build there (no network, and its wheel is
# far over what a run may carry). Figures go to $OUT (or ./gpu-results).
#   bash benchmarks/gpu_benchmark.sh 2      then      bash benchmarks/gpu_benchmark.sh 16
set -euo pipefail
batch="${1:?usage: gpu_benchmark.sh BATCH_SIZE [STEPS [CONFIG]]}"
steps="${2:-10}"
config="${3:-configs/lung.yaml}"
out="${OUT:-gpu-results}"
mkdir -p "$out"
python3 -m pip install --quiet --no-index --find-links .gpu-wheels --no-build-isolation .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv" \
  || echo "no nvidia-smi: measuring on the CPU"
python3 benchmarks/matmul_peak.py --json "$out/peak.json"
flexunet benchmark --config "$config" --backends jax,torch \
  --precision float32,mixed_bfloat16,mixed_float16 --batch-size "$batch" \
  --steps "$steps" --warmup 3 --json "$out/benchmark-batch$batch.json" --overwrite
