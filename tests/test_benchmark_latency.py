"""Smoke test: the latency benchmark runs end to end in quick mode and writes well-formed results (not speed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUR_STAGES = {"audio_decode", "features", "encoder", "first_step", "ttft", "per_token", "total"}
HF_STAGES = {"features", "encoder", "first_step", "ttft", "per_token", "total"}
FW_STAGES = {"audio_decode", "features", "encoder", "total"}


@pytest.mark.tooling
def test_benchmark_latency_quick_run(tmp_path):
    out = tmp_path / "latency.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_latency.py"), "--quick", "--output-json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Machine:" in done.stdout and "| stage |" in done.stdout and "| time to first token |" in done.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "latency" and data["model"] == "tiny.en"
    assert data["repeats"] == 2 and data["warmup"] == 1 and 0 < data["audio_seconds"] <= 30
    runs = {row["system"]: row for row in data["results"]}
    expected = {"vllm-whisper": OUR_STAGES, "transformers": HF_STAGES}
    if importlib.util.find_spec("faster_whisper") is not None:
        expected["faster-whisper"] = FW_STAGES
    assert set(runs) == set(expected)
    for system, stages in expected.items():
        row = runs[system]
        assert set(row["stages"]) == stages, system
        assert row["tokens"] > 0 and row["text"], system
        for stage, summary in row["stages"].items():
            assert summary["n"] == 2, (system, stage)
            assert 0 < summary["p50_ms"] <= summary["p90_ms"], (system, stage)
            assert summary["mean_ms"] > 0, (system, stage)
    ours = runs["vllm-whisper"]["stages"]
    assert ours["ttft"]["mean_ms"] >= ours["first_step"]["mean_ms"]
    assert ours["total"]["mean_ms"] >= ours["ttft"]["mean_ms"]
