#!/usr/bin/env bash
# Start the OpenAI-compatible server (set-up included). Flags pass through, e.g.
#   bash scripts/serve.sh --model base --port 8000 --api-key secret
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python -m vllm_whisper.entrypoints.api_server "$@"
