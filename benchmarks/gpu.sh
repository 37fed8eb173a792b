#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md ("GPU") in one call, for a machine with CUDA and a CUDA build
# of torch already installed:  bash benchmarks/gpu.sh 2>&1 | tee gpu.log
# 1. the CUDA tests (the Triton kernel compiled, AMP, train on GPU / evaluate on CPU / resume),
# 2. the Triton scan against the chunked torch path at every preset's SS2D stages, fp32 and bf16,
# 3. training speed of the cpu and light presets, fp32 and bf16, beside the CNN TD3 and SB3 TD3.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e ".[dev,gpu,sb3]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -m pytest -q tests/test_cuda.py
python benchmarks/scan.py --device cuda --repeats 10
for preset in cpu light; do
  python benchmarks/train_speed.py --device cuda --preset "$preset" --amp off bf16 --updates 20 --steps 50 --fill 300
done
