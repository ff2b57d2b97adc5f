#!/usr/bin/env bash
# The main job on the bundled tiny.en model (set-up included): synthesise a spoken sentence, transcribe it with
# the `vllm-whisper` command, then start the OpenAI-compatible server and ask it over HTTP (JSON, and SRT cues
# streamed as server-sent events). Pass your own audio files to transcribe those with the CLI instead.
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

port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "[demo] starting the server: python -m vllm_whisper.entrypoints.api_server --model tiny.en --port $port"
.venv/bin/python -m vllm_whisper.entrypoints.api_server --model tiny.en --port "$port" --log-level warning &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$workdir"' EXIT
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "[demo] the server exited" >&2; exit 1; }
  sleep 0.5
done
echo "[demo] POST /v1/audio/transcriptions (json):"
curl -sS "http://127.0.0.1:$port/v1/audio/transcriptions" -F file=@"$workdir/sample.wav" -F model=whisper-1
echo
echo "[demo] the same with response_format=srt and stream=true (one event per finished cue):"
curl -sSN "http://127.0.0.1:$port/v1/audio/transcriptions" -F file=@"$workdir/sample.wav" \
  -F response_format=srt -F stream=true
