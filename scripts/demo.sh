#!/usr/bin/env bash
# The main job on the bundled tiny.en model (set-up included): synthesise a spoken sentence, then transcribe it
# with the `vllm-whisper` command. Pass your own audio files to transcribe those instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
if [ $# -gt 0 ]; then
  exec .venv/bin/vllm-whisper transcribe "$@"
fi
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
sentence="The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
flite -voice slt -t "$sentence" -o "$workdir/sample.wav"
echo "[demo] spoken text: $sentence"
.venv/bin/vllm-whisper transcribe "$workdir/sample.wav" --model tiny.en --output-format jsonl
.venv/bin/vllm-whisper transcribe "$workdir/sample.wav" --model tiny.en --output-format srt
