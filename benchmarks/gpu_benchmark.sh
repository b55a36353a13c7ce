#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with .gpu-wheels/ carried (made by
# benchmarks/gpu_wheels.sh), in one call: install flexunet offline, record the card and what
# `train.precision: auto` resolves to there (`flexunet info` under JAX and PyTorch), measure the
# card's matrix-product peak, benchmark the lung config (512x512, 8 levels) on JAX and PyTorch
# in float32, bfloat16 and float16 at each batch size, then run the README demo (prepare, train
# at `precision: auto`, evaluate) on PyTorch. TensorFlow has no GPU build there (no network, and
# its wheel is far over what a run may carry). The benchmarks' JSON and the matrix peak go to $OUT
# (or ./gpu-results); the rest is printed.
#   bash benchmarks/gpu_benchmark.sh "16 2" 2>&1 | tee "$OUT/log.txt"
# On an H200 this needs more than one 10-minute call: everything up to JAX at batch 2 took 560 s
# (JAX's warm-ups take 20-90 s a row). Split the batch sizes over calls where time is short.
# (checked on a CPU with: bash benchmarks/gpu_benchmark.sh 2 2 configs/demo.yaml)
set -euo pipefail
batches="${1:?usage: gpu_benchmark.sh \"BATCH_SIZES\" [STEPS [CONFIG]]}"
steps="${2:-10}"
config="${3:-configs/lung.yaml}"
out="$(realpath -m "${OUT:-gpu-results}")"
mkdir -p "$out"
python3 -m pip install --quiet --no-index --find-links .gpu-wheels --no-build-isolation .
PATH="$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  || echo "no nvidia-smi: measuring on the CPU"
for backend in jax torch; do
  flexunet --backend "$backend" info
done
python3 benchmarks/matmul_peak.py --json "$out/peak.json"
# One benchmark per backend and batch size, so that a run cut short keeps the rows it finished.
for batch in $batches; do
  for backend in torch jax; do
    flexunet benchmark --config "$config" --backends "$backend" \
      --precision float32,mixed_bfloat16,mixed_float16 --batch-size "$batch" --steps "$steps" \
      --warmup 3 --timeout 150 --json "$out/benchmark-$backend-batch$batch.json" --overwrite
  done
done
# The demo end to end on PyTorch, in a scratch copy so that the checkout gets no datasets/runs.
demo="$(mktemp -d)"
cp -r configs "$demo/"
cd "$demo"
export KERAS_BACKEND=torch
flexunet -q prepare synthetic --output datasets/demo-ct --cases 60 --size 96 --slices 32
flexunet -q prepare msd --source datasets/demo-ct --output datasets/demo --size 96
time flexunet -q train --config configs/demo.yaml --set train.precision=auto
flexunet evaluate --config configs/demo.yaml
