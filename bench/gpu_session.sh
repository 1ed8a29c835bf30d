#!/usr/bin/env bash
# One device session (a lent CUDA machine): the checks of issue 4 in one call, logs under $OUT.
#
#   bash bench/gpu_session.sh            # from the repository root, on the GPU machine
#
# Needs, carried beside the working tree in the ignored folder .gpu/: whl/ (wheels missing on the machine:
# rfc8785) and minilm/ (all-MiniLM-L6-v2 as bf16 safetensors + tokenizer/config files, to stay under the upload
# limit). Steps, most important first, each under its own time limit: GPU and software versions; every
# conformance vector on CUDA vs the stored reference digests, with the fused Triton kernels and with plain torch
# ops (bench/gpu_check.py); the runtime benchmark at the default size and at 8 x 512; the CUDA-marked unit tests.
set -u
out=${OUT:-/tmp/kolm-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers, numpy, triton; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'numpy', numpy.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
timeout 150 python3 bench/gpu_check.py --skip-bench 2>&1 | tee "$out/conformance.log"
timeout 60 python3 bench/gpu_check.py --skip-bench --unfused 2>&1 | tee "$out/conformance_unfused.log"
timeout 120 python3 bench/bench_runtime.py --device cuda --minilm-dir .gpu/minilm --skip-numpy 2>&1 \
  | grep -v "Loading weights" | tee "$out/bench_default.log"
timeout 90 python3 bench/bench_runtime.py --device cuda --layers 8 --hidden 512 --new 8 --skip-minilm --skip-numpy \
  2>&1 | tee "$out/bench_8x512.log"
timeout 50 python3 bench/bench_runtime.py --device cuda --unfused --skip-minilm --skip-numpy 2>&1 \
  | tee "$out/bench_default_unfused.log"
timeout 60 python3 -m pytest -q -m gpu tests/unit/runtime/test_torch_backend.py \
  tests/unit/runtime/test_torch_conformance.py -p no:cacheprovider 2>&1 | tail -4 | tee "$out/pytest_gpu.log"
