#!/usr/bin/env bash
# The vLLM engine on one CUDA GPU, about 8 minutes once the environment exists: the parity tests
# (vLLM vs HF engine: tokens, telemetry, mixed batches, serve, build) and both throughputs
# (serving on uniform/mixed traffic, build rollouts/s), with the official vllm wheel.
#
# Needs: a CUDA machine where `make install-vllm VLLM_PKG=vllm==0.32.0 VLLM_TORCH= VLLM_DROP=`
# has run (it downloads vllm and its CUDA torch; with no network, build .venv-vllm elsewhere on
# the same image first). Usage, from the repository root:
#     bash benchmarks/gpu_vllm_check.sh [BUNDLE_DIR]     # BUNDLE_DIR: a SmolLM2 bundle
# Writes its log to ${OUT:-/tmp}/gpu_vllm_check.log. Not yet run: no GPU was lent when it was
# written (docs/vllm-backend.md).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-/tmp}/gpu_vllm_check.log"
PY=.venv-vllm/bin/python
BUNDLE="${1:-}"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src:$PWD/tests:$PWD/benchmarks"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  $PY -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'vllm', vllm.__version__)"
  # 1. parity (about 3 minutes): the same tests as `make test-vllm`, on the GPU
  timeout 300 $PY -m pytest -q -x -s --durations=5 tests/test_vllm_engine.py tests/test_vllm_serve.py tests/test_vllm_build.py
  # 2. throughput (about 4 minutes): build rollouts/s, then serving if a bundle was given
  if [ -n "$BUNDLE" ]; then
    timeout 300 $PY benchmarks/bench_vllm.py --bundle "$BUNDLE" --clients 64 --seconds 20 \
      --rounds 2 --rollouts 256 --batch 64 --build-tokens 128
  else
    timeout 200 $PY benchmarks/bench_vllm.py --bundle none --skip serving --rollouts 256 \
      --batch 64 --build-tokens 128
  fi
} 2>&1 | tee "$LOG"
