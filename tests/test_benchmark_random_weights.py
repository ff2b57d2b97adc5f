"""Smoke test: the random-weight benchmark runs end to end in quick mode (CPU) and writes well-formed results; its
large-v3 tokenizer has the real special-token layout; short decodes are flagged (not speed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "benchmark_random_weights.py"
SYSTEMS = {"vllm-whisper", "transformers (sdpa)"}


def load_benchmark():
    """The script as a module (it imports benchmarks/common.py as `common`)."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("benchmark_random_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.tooling
def test_quick_run_writes_rows_for_both_systems(tmp_path):
    out = tmp_path / "random.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Machine:" in done.stdout and "| shape | batch | system |" in done.stdout
    assert "faster-whisper: skipped" in done.stdout and "WARNING" not in done.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "random_weights" and data["date"] and data["machine"]
    options = data["options"]
    assert options["shapes"] == ["tiny"] and options["windows"] == 4 and options["tokens"] == 8
    assert options["batch_sizes"] == [1, 4] and options["device"] == "cpu" and options["dtype"] == "float32"
    rows = {(r["system"], r["batch_size"]): r for r in data["results"]}
    assert set(rows) == {(system, b) for system in SYSTEMS for b in (1, 4)}
    for (system, _), row in rows.items():
        assert row["error"] is None and row["warning"] is None, row
        assert row["windows"] == 4 and row["tokens_per_window"] == 8 and row["tokens_decoded"] == 32
        assert row["wall_s"] > 0 and row["rtfx"] > 0 and row["tokens_per_s"] > 0
        assert abs(row["rtfx"] - 30 * row["windows_per_s"]) < 1e-6 * row["rtfx"]
        if system == "vllm-whisper":
            assert row["ratio_vs_transformers"] > 0
    assert [s["shape"] for s in data["summary"]] == ["tiny"] and data["summary"][0]["ratio_best"] > 0
    assert data["agreement"][0]["shape"] == "tiny"  # fp32 on the CPU: usually 1.0, not asserted


def test_large_v3_tokenizer_has_the_released_layout():
    bench = load_benchmark()
    tok = bench.tokenizer_for(51866)
    s = tok.special
    assert (s.eot, s.sot, s.translate, s.transcribe, s.no_timestamps) == (50257, 50258, 50359, 50360, 50364)
    assert tok.language_to_id["yue"] == 50358 and tok.timestamp_begin + 1501 == 51866
    assert tok.sot_sequence("en", "transcribe", False) == [50258, 50259, 50360, 50364]
    rules = bench.fixed_length_rules(tok)
    assert tok.eot in rules.suppress_tokens and not rules.timestamps


def test_short_windows_get_a_warning_row():
    bench = load_benchmark()
    workload = bench.Workload("tiny", None, [None] * 2, [1], None, tokens=8)
    row = bench.make_row(workload, bench.OURS, 2, bench.Timed([[5] * 8, [5] * 3], wall_s=1.0))
    assert row.tokens_per_window == 5.5 and row.warning == "1 of 2 windows decoded 3..3 tokens, not 8"
    assert "WARNING vllm-whisper" in bench.markdown_table([row])
    assert bench.strip_prompt([1, 2, 9, 9, 50257, 50257], [1, 2], 50257) == [9, 9]
