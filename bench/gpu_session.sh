#!/usr/bin/env bash
# One device session on a lent CUDA machine (issue 18): conformance first, then the benchmarks, logs under $OUT.
#
#   bash bench/gpu_session.sh            # from the repository root, on the GPU machine
#
# Carry (device tool: run with carry=[".gpu"]): the ignored folder .gpu/, made here by
#   python bench/gpu_prepare.py          # .gpu/whl/*.whl (rfc8785, the wheel the device image lacks) and
#                                        # .gpu/minilm/ (all-MiniLM-L6-v2 as bf16 safetensors + config/tokenizer)
# The device needs torch with CUDA, triton, transformers, numpy, safetensors, tokenizers, cryptography, jsonschema,
# click, tqdm (its image has them; versions are logged to $OUT/gpu.txt).
#
# Steps, most important first, each under its own time limit (seconds), skipped once the session budget
# ($KOLM_GPU_BUDGET, default 400 s) would be exceeded, so a rerun fits in a 15-minute device allowance:
#   1. conformance, fused Triton kernels, bf16 GEMMs, CUDA-graph decoding: every vector alone and batched  (100)
#   2. the ~0.85B Llama-shaped model (16 x 2048, GQA 32/8, vocab 32000): prefill + decode at batch 1, 8, 32,
#      128 vs transformers bf16, peak memory, GEMM paths, launches per layer                             (180)
#   3. conformance with plain torch ops (TorchOps)                                                        (40)
#   4. the small Llama (4 x 256, batch 1 and 32) and MiniLM at batch 1 and 256                            (70)
#   5. if time is left: conformance and the 0.85B rows with int8 GEMMs (_int_mm) where the shapes allow   (60+150)
# If step 1 fails, it is rerun at once with --decode static (no CUDA graphs), to tell kernels from capture.
# Exit status: 1 if a conformance step failed or timed out, else 0. $OUT/summary.txt collects the key lines.
set -u
out=${OUT:-/tmp/kolm-gpu-out}
budget=${KOLM_GPU_BUDGET:-400}
mkdir -p "$out"
start=$(date +%s)
status=0
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers, numpy, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'numpy', numpy.__version__, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"

# step NAME LIMIT CONFORMANCE(0|1) COMMAND...: run under `timeout LIMIT` if the budget allows, log to $out/NAME.log
step() {
  local name=$1 limit=$2 conformance=$3
  shift 3
  local used=$(( $(date +%s) - start ))
  if (( used + limit > budget )); then
    echo "SKIP $name: ${used}s used, ${limit}s more would pass the ${budget}s budget" | tee -a "$out/summary.txt"
    return
  fi
  local t0 rc
  t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  grep -v -e "Loading weights" -e "Warning" -e "warn(" "$out/$name.log" | tail -40
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$out/summary.txt"
  grep -E "^(PASS|FAIL)|ratio|peak memory|weights resident|gemm paths|launches per layer|graphs captured|^# " \
    "$out/$name.log" >> "$out/summary.txt"
  if (( conformance && rc != 0 )); then status=1; fi
}

step conformance 100 1 python3 bench/gpu_check.py --skip-bench
if (( status )); then   # separate the kernels from the graph capture: the same vectors decoded without graphs
  step conformance_static 80 1 python3 bench/gpu_check.py --skip-bench --decode static
fi
step bench_1b 180 0 python3 bench/bench_runtime.py --device cuda --preset 1b --skip-minilm --skip-numpy
step conformance_unfused 40 1 python3 bench/gpu_check.py --skip-bench --unfused
step bench_small_minilm 70 0 python3 bench/bench_runtime.py --device cuda --minilm-dir .gpu/minilm --skip-numpy \
  --minilm-batches 1,256
step conformance_int_mm 60 1 python3 bench/gpu_check.py --skip-bench --gemm int_mm,bf16_fp32
step bench_1b_int_mm 150 0 python3 bench/bench_runtime.py --device cuda --preset 1b --skip-minilm --skip-numpy \
  --gemm int_mm,bf16_fp32 --batches 1,32,128 --repeat 1
echo "== total $(( $(date +%s) - start ))s, status $status" | tee -a "$out/summary.txt"
exit $status
