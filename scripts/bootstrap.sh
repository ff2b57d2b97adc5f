#!/usr/bin/env bash
# Idempotent set-up shared by the README's commands: Debian packages (text-to-speech for test audio),
# a .venv at the repository root, and vllm-whisper with its test, model, benchmark and Ray Serve extras installed
# into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(flite espeak-ng sox libsox-fmt-all festival festvox-us-slt-hts festvox-italp16k)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[bootstrap] installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the package definition changed (the stamp holds setup.py's hash).
stamp=.venv/.vllm_whisper_setup_hash
want="$(sha256sum setup.py | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing vllm-whisper into .venv (torch 2.11.0 is a large download the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,models,bench,ray]"
  echo "$want" > "$stamp"
fi

# The C++ extension vllm_whisper._C (rebuilt only when csrc/, the build files or torch changed). If it cannot be
# built the package still works: its ops fall back to torch, and the C++ tests skip with the reason.
bash scripts/build_ext.sh || echo "[bootstrap] warning: vllm_whisper._C not built; its ops fall back to torch" >&2
