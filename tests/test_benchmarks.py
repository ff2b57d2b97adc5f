"""Smoke test: the offline benchmark runs end to end in a short mode and writes well-formed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.tooling
def test_benchmark_offline_short_run(tmp_path):
    out = tmp_path / "offline.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_offline.py"), "--clips", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "vllm-whisper (sequential)" in done.stdout and "transformers (sequential)" in done.stdout
    assert "Machine:" in done.stdout
    data = json.loads(out.read_text())
    assert data["clips"] == 2 and data["audio_seconds"] > 1
    systems = {row["system"] for row in data["results"]}
    assert {"vllm-whisper (sequential)", "transformers (sequential)", "transformers (batch 2)"} <= systems
    for row in data["results"]:
        assert row["rtfx"] > 0 and row["wall_s"] > 0 and 0 <= row["wer"] <= 1


@pytest.mark.tooling
def test_benchmark_throughput_short_run(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_throughput.py"), "--clips", "2",
         "--sentences-per-clip", "2", "--skip-whisper-cpp", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all at once vs one at a time" in done.stdout and "Machine:" in done.stdout
    data = json.loads(out.read_text())
    systems = [row["system"] for row in data["results"]]
    precision = data["precision"]  # what --dtype auto resolved to on this CPU, named in the rows
    assert precision in ("int8", "bfloat16", "float32")
    assert systems[:2] == [f"vllm-whisper, all at once ({precision})", f"vllm-whisper, one at a time ({precision})"]
    for row in data["results"]:
        assert row["rtfx"] > 0 and 0 <= row["wer"] <= 1
    assert data["results"][0]["encoder_runs"] == 1 + 2  # warm-up window + one window per clip
    assert data["sentences_per_clip"] == 2


@pytest.mark.tooling
def test_benchmark_serving_short_run(tmp_path):
    """Launches our server and the faster-whisper peer, loads each briefly, and reports both rows."""
    out = tmp_path / "serving.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_serving.py"), "--concurrency", "2", "--duration", "3",
         "--clips", "2", "--max-sentences", "2", "--stream", "--idle-probes", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Machine:" in done.stdout
    data = json.loads(out.read_text())
    systems = [row["system"] for row in data["results"]]
    assert systems == ["vllm-whisper", "faster-whisper server (int8)"]
    for row in data["results"]:
        assert row["ok"] >= 1 and row["errors_5xx"] == 0 and row["lost"] == 0
        assert row["ttft_p50_s"] > 0 and row["e2e_p99_s"] >= row["e2e_p50_s"] > 0 and row["rtfx"] > 0


@pytest.mark.tooling
def test_benchmark_realtime_short_run(tmp_path):
    out = tmp_path / "realtime.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_realtime.py"), "--utterances", "1", "--sentences", "1",
         "--json", str(out)], capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Machine:" in done.stdout
    data = json.loads(out.read_text())
    systems = [row["system"] for row in data["results"]]
    assert systems == ["vllm-whisper realtime, server VAD", "vllm-whisper realtime, client commit",
                       "faster-whisper int8, whole utterance at end"]
    for row in data["results"]:
        assert row["failed"] == 0 and row["completed_after_commit_mean_s"] > 0 and 0 <= row["wer"] <= 1
    assert data["results"][0]["first_delta_mean_s"] > 0


def test_progress_bars_on_a_terminal_only():
    """Long benchmark loops draw a tqdm bar when stderr is a terminal and stay silent in logs and pipes."""
    code = (
        "import io, sys; sys.path.insert(0, 'benchmarks'); from common import progress\n"
        "class Terminal(io.StringIO):\n"
        "    def isatty(self): return True\n"
        "sys.stderr = Terminal(); items = list(progress(range(5), desc='clips')); drawn = sys.stderr.getvalue()\n"
        "sys.stderr = io.StringIO(); list(progress(range(5), desc='clips')); piped = sys.stderr.getvalue()\n"
        "print(items == list(range(5)), 'clips' in drawn and '/5' in drawn, piped == '')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


@pytest.mark.tooling
def test_soak_smoke(tmp_path):
    """benchmarks/soak.py end to end for a few seconds: mixed load, RSS samples, zero 5xx and zero lost."""
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.3", "--warmup-minutes", "0.1",
         "--concurrency", "2", "--sample-seconds", "2", "--clips", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    tally = result["tally"]
    assert tally["server_errors"] == 0 and tally["lost"] == 0 and tally["unexpected_4xx"] == 0
    assert tally["ok"] > 0 and len(result["rss_curve"]) >= 3
