#!/usr/bin/env bash
# Run the whole test suite (set-up included). Extra arguments go to pytest, e.g. `-m "not slow"` or `-k loader`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
