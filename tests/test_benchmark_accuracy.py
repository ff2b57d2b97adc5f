"""Smoke test: the accuracy benchmark runs end to end in quick mode and writes well-formed results (not values)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMESTAMP_FIELDS = {"system", "segments", "start_mae_s", "starts_within", "sentences_hit", "wer", "starts"}


def expected_wer_systems() -> set[str]:
    systems = {"vllm-whisper", "transformers (fp32)"}
    if importlib.util.find_spec("faster_whisper") is not None:
        systems.add("faster-whisper (int8)")
    if importlib.util.find_spec("pywhispercpp") is not None:
        systems.add("whisper.cpp (q8_0)")
    return systems


@pytest.mark.tooling
def test_benchmark_accuracy_quick_run(tmp_path):
    out = tmp_path / "accuracy.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "benchmark_accuracy.py"), "--quick", "--json",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("Machine:") == 2 and "WER," in done.stdout and "Segment starts," in done.stdout

    data = json.loads(out.read_text())
    assert data["benchmark"] == "accuracy" and data["model"] == "tiny.en" and data["machine"]
    assert list(data["variants"]) == ["clean", "noise"]
    assert len(data["clips"]) == 6 and {c["variant"] for c in data["clips"]} == {"clean", "noise"}

    wer = {row["system"]: row for row in data["wer"]}
    assert set(wer) == expected_wer_systems()
    for system, row in wer.items():
        assert 0.0 <= row["overall"] <= 1.0, system
        assert set(row["per_variant"]) == {"clean", "noise"}, system
        assert all(0.0 <= v <= 1.0 for v in row["per_variant"].values()), system
        assert len(row["hypotheses"]) == len(data["clips"]), system

    timestamps = data["timestamps"]
    assert timestamps["audio_seconds"] > 0 and len(timestamps["true_starts"]) == 4
    rows = {row["system"]: row for row in timestamps["results"]}
    expected = {"vllm-whisper", "vllm-whisper, word timestamps", "transformers (fp32)"}
    if "faster-whisper (int8)" in wer:
        expected |= {"faster-whisper (int8)", "faster-whisper (int8), word timestamps"}
    if "whisper.cpp (q8_0)" in wer:
        expected.add("whisper.cpp (q8_0)")
    assert set(rows) == expected
    for system, row in rows.items():
        assert set(row) == TIMESTAMP_FIELDS, system
        assert row["segments"] == len(row["starts"]) > 0, system
        assert row["start_mae_s"] >= 0 and 0 <= row["starts_within"] <= 1 and 0 <= row["sentences_hit"] <= 1, system
        assert 0 <= row["wer"] <= 1, system


def test_compared_configurations_are_named_by_what_they_resolved_to(tmp_path):
    """--compare-kv-cache-dtype and --compare-defaults add our engine again, named by its precision and slots."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import benchmark_accuracy
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    args = benchmark_accuracy.parse_args(["--kv-cache-dtype", "float32", "--compare-kv-cache-dtype", "bfloat16",
                                          "--compare-defaults", "--skip-transformers", "--skip-faster-whisper",
                                          "--skip-whisper-cpp"])
    names = [s.name for s in benchmark_accuracy.build_systems(args, tmp_path)]
    assert names[0] == "vllm-whisper" and len(names) == 3
    assert names[1] == "vllm-whisper (float32, bfloat16 cross K/V, audio-context full)"
    assert names[2].startswith("vllm-whisper (") and "cross K/V" in names[2]  # what --dtype auto picked here
