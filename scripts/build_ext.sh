#!/usr/bin/env bash
# Build the C++ extension vllm_whisper._C in place (vllm_whisper/_C*.so) with the environment's torch.
# Skipped when the sources, the build configuration, torch and the target device are unchanged since the last
# successful build (a hash stamp in build/). If the build fails the stale module is removed, so the package
# falls back to its torch paths, and the script exits non-zero.
#
#   bash scripts/build_ext.sh               build if needed (C++ CPU ops; CUDA too where a GPU is visible)
#   bash scripts/build_ext.sh --force       rebuild
#   bash scripts/build_ext.sh --cmake       build with CMakeLists.txt instead of setup.py
#   bash scripts/build_ext.sh --check-cuda  compile csrc/cuda/*.cu with nvcc for sm_75 and sm_90 (-c only)
# Environment: PYTHON (default .venv/bin/python), VLLM_WHISPER_TARGET_DEVICE, VLLM_WHISPER_CUDA_ARCHS, MAX_JOBS
# (see csrc/setup_ext.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

force=0
builder=setup
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --cmake) builder=cmake ;;
    --check-cuda) exec "$PY" csrc/setup_ext.py check-cuda ;;
    *) echo "build_ext.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [ "${VLLM_WHISPER_TARGET_DEVICE:-auto}" = none ]; then
  echo "[build_ext] VLLM_WHISPER_TARGET_DEVICE=none: not building vllm_whisper._C"
  exit 0
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"
mkdir -p build
stamp=build/vllm_whisper_ext.stamp
log=build/vllm_whisper_ext.log
torch_version="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || echo none)"
want="$( {
  find csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.py' \) -print0 | sort -z | xargs -0 sha256sum
  sha256sum setup.py CMakeLists.txt
  echo "torch=$torch_version builder=$builder device=${VLLM_WHISPER_TARGET_DEVICE:-auto}"
  echo "archs=${VLLM_WHISPER_CUDA_ARCHS:-${TORCH_CUDA_ARCH_LIST:-}} python=$("$PY" -c 'import sys; print(sys.version)')"
} | sha256sum | cut -d' ' -f1)"
if [ "$force" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && compgen -G "vllm_whisper/_C*.so" >/dev/null; then
  echo "[build_ext] vllm_whisper._C is up to date"
  exit 0
fi

rm -f "$stamp" vllm_whisper/_C*.so
start=$(date +%s)
echo "[build_ext] building vllm_whisper._C with $builder ($MAX_JOBS jobs, torch $torch_version); log: $log"
if [ "$builder" = cmake ]; then
  build() {
    cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(cd "$(dirname "$(command -v "$PY")")" && pwd)/$(basename "$PY")" &&
      cmake --build build/cmake -j "$MAX_JOBS"
  }
else
  build() { "$PY" setup.py build_ext --inplace --build-temp build/ext; }
fi
if ! build >"$log" 2>&1 || ! compgen -G "vllm_whisper/_C*.so" >/dev/null; then
  tail -n 40 "$log" >&2
  rm -f vllm_whisper/_C*.so
  echo "[build_ext] FAILED: vllm_whisper._C not built; the torch fallbacks will be used (full log: $log)" >&2
  exit 1
fi
if ! "$PY" -c 'import torch, vllm_whisper._C' 2>>"$log"; then
  tail -n 5 "$log" >&2
  rm -f vllm_whisper/_C*.so
  echo "[build_ext] FAILED: the built vllm_whisper._C does not import (full log: $log)" >&2
  exit 1
fi
echo "$want" >"$stamp"
echo "[build_ext] built vllm_whisper._C in $(( $(date +%s) - start ))s"
