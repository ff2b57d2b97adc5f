#!/usr/bin/env bash
# The GPU acceptance runs of the kernels and benchmarks issues, on a machine lent through the device tool: one step
# per call, each within the tool's 10-minute command limit. The machine has torch, Triton, transformers and pytest
# but no network and no model packages, so first, here:
#   python scripts/gpu_bundle.py            # .gpu_bundle/: the aliases' tokenizers (5 MiB), carried to the device
# then one device call per step, with carry [".gpu_bundle"]:
#   bash scripts/gpu_acceptance.sh STEP
# Steps:
#   all              the standing order's one call, within one device session (about 15 minutes with start-up):
#                    build, `tests`, then `small` and `large-v3-turbo` cut to 64 windows x 64 tokens at batch sizes
#                    1,8,64; each stage under its own `timeout` (ACCEPTANCE_*_S), logs to $OUT as it goes and a
#                    status line per stage in $OUT/summary.txt, so a stage that fails or overruns does not cost the
#                    others. About 8 minutes at most: run it with the device tool's timeout_s at 540.
#   tests            build vllm_whisper._C for CUDA, run the kernel, backend, custom-op and CUDA-graph test files
#   kernels          benchmarks/benchmark_kernels.py --sweep-splits (bandwidth / FLOP rate against measured ceilings)
#   small | large-v3-turbo | large-v3
#                    benchmarks/benchmark_random_weights.py for that shape: 256 windows x 128 tokens, batch sizes
#                    1,8,64,256 (batch 1 on 32 windows), fp16, ours beside transformers
#   graphs           ours only on small, with and without CUDA graphs (--enforce-eager), batch sizes 1,8,64
# Logs and JSON go to $OUT (the device tool brings that folder back), else to ./gpu_results.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
step="${1:-}"
case "$step" in
  all | tests | kernels | small | large-v3-turbo | large-v3 | graphs) ;;
  *)
    echo "usage: bash scripts/gpu_acceptance.sh all|tests|kernels|small|large-v3-turbo|large-v3|graphs" >&2
    exit 2
    ;;
esac
BUNDLE="${GPU_BUNDLE_DIR:-$ROOT/.gpu_bundle}"
if [ ! -d "$BUNDLE/site" ]; then
  echo "gpu_acceptance.sh: no $BUNDLE/site; run python scripts/gpu_bundle.py and carry .gpu_bundle" >&2
  exit 2
fi
export PYTHONPATH="$BUNDLE/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$ROOT/gpu_results}"
mkdir -p "$OUT"
export PY OUT

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)'
}

build() {  # the CUDA ops of vllm_whisper._C for this GPU's architecture only (a few minutes less than all five)
  local arch
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  VLLM_WHISPER_TARGET_DEVICE=cuda VLLM_WHISPER_CUDA_ARCHS="${VLLM_WHISPER_CUDA_ARCHS:-$arch}" PYTHON="$PY" \
    bash scripts/build_ext.sh 2>&1 | tee "$OUT/build.log"
}

random_weights() {  # shape, then extra flags
  local shape="$1"
  shift
  "$PY" benchmarks/benchmark_random_weights.py --shape "$shape" --windows 256 --tokens 128 --batch-sizes 1,8,64,256 \
    --batch1-windows 32 --device cuda --dtype float16 "$@"
}

gpu_tests() {
  "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels.py tests/test_attention_backends.py \
    tests/test_custom_ops.py tests/test_cuda_graphs.py
}

stage() {  # name, seconds, command...: run under a time limit, log to $OUT/NAME.log, record the outcome, go on
  local name="$1" seconds="$2" started rc
  shift 2
  started=$(date +%s)
  set +e  # the functions above travel into the timed shell; PY, OUT and PYTHONPATH are exported
  timeout --signal=INT --kill-after=20 "$seconds" bash -c "set -euo pipefail; $(declare -f build gpu_tests); \"\$@\"" \
    _ "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  set -e
  local verdict="ok"
  [ "$rc" -ne 0 ] && verdict="FAILED (exit $rc)"
  [ "$rc" -eq 124 ] && verdict="TIMED OUT after ${seconds} s"
  printf '%-22s %-28s %4d s\n' "$name" "$verdict" "$(( $(date +%s) - started ))" | tee -a "$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log"
}

machine | tee "$OUT/machine.txt"
if [ "$step" = all ]; then
  : > "$OUT/summary.txt"
  stage extension "${ACCEPTANCE_BUILD_S:-150}" build
  stage tests "${ACCEPTANCE_TESTS_S:-150}" gpu_tests
  for shape in small large-v3-turbo; do
    stage "random_$shape" "${ACCEPTANCE_SHAPE_S:-100}" "$PY" benchmarks/benchmark_random_weights.py --shape "$shape" \
      --windows 64 --tokens 64 --batch-sizes 1,8,64 --batch1-windows 8 --device cuda --dtype float16 \
      --json "$OUT/random_$shape.json"
  done
  echo "== summary ($OUT/summary.txt)"
  cat "$OUT/summary.txt"
  exit 0
fi
case "$step" in
  tests)
    build
    gpu_tests 2>&1 | tee "$OUT/tests.log" | tail -n 60
    ;;
  kernels)
    "$PY" benchmarks/benchmark_kernels.py --sweep-splits --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
    ;;
  small | large-v3-turbo | large-v3)
    build
    random_weights "$step" --json "$OUT/random_$step.json" 2>&1 | tee "$OUT/random_$step.log"
    ;;
  graphs)
    build
    "$PY" benchmarks/benchmark_random_weights.py --shape small --windows 64 --tokens 128 --batch-sizes 1,8,64 \
      --device cuda --dtype float16 --skip-transformers --json "$OUT/graphs_on.json" 2>&1 | tee "$OUT/graphs_on.log"
    "$PY" benchmarks/benchmark_random_weights.py --shape small --windows 64 --tokens 128 --batch-sizes 1,8,64 \
      --device cuda --dtype float16 --skip-transformers --enforce-eager --json "$OUT/graphs_off.json" 2>&1 |
      tee "$OUT/graphs_off.log"
    ;;
esac
