#!/usr/bin/env bash
# Download, here, the wheels the lent GPU machine lacks, into .gpu-wheels/ (git-ignored; carry
# it to the device with the run: carry [".gpu-wheels"]). That machine's image has Python 3.12,
# PyTorch and JAX with CUDA, numpy, scipy, matplotlib, imageio, typer, rich, pyyaml, h5py and
# ml-dtypes, but no keras, pydantic or nibabel, no TensorFlow, and no network (as its image was
# described to the sessions that wrote this). Then run benchmarks/gpu_benchmark.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu-wheels
python -m pip download --quiet --dest .gpu-wheels --only-binary=:all: \
  --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  keras pydantic nibabel 2>&1 | grep -v "is ignored" || true
# Keep what the machine lacks (resolved together, so pydantic and pydantic-core match), plus
# typing-extensions in case its own is older than pydantic needs.
keep='^(keras|namex|optree|pydantic|pydantic_core|annotated_types|typing_inspection|typing_extensions|nibabel)-'
for wheel in .gpu-wheels/*.whl; do
  basename "$wheel" | grep -Eq "$keep" || rm "$wheel"
done
ls .gpu-wheels
du -sh .gpu-wheels
