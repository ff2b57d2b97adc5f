"""benchmarks/plots.py on small synthetic JSONs in the shapes the benchmark scripts write: every PNG is written,
is a real PNG and is not empty; a file of the wrong shape fails with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "benchmarks" / "plots.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def serving_row(system: str, rtfx: float, with_samples: bool) -> dict:
    row = {"system": system, "requests": 20, "ok": 20, "errors_4xx": 0, "errors_5xx": 0, "lost": 0, "wall_s": 10.0,
           "requests_per_s": 2.0, "rtfx": rtfx, "e2e_p50_s": 0.8, "e2e_p90_s": 1.4, "e2e_p99_s": 2.1,
           "ttft_p50_s": 0.2, "ttft_p99_s": 0.5, "itl_mean_s": 0.01, "sample_errors": []}
    if with_samples:
        row["latencies_s"] = [0.5 + 0.08 * i for i in range(20)]
        row["ttfts_s"] = [0.1 + 0.02 * i for i in range(20)]
    return row


def write_serving(path: Path, concurrency: int, rate: float | None, with_samples: bool) -> Path:
    options = {"base_url": None, "model": "tiny.en", "concurrency": concurrency, "request_rate": rate,
               "duration": 10.0, "stream": True}
    rows = [serving_row("vllm-whisper", 20.0 + concurrency, with_samples),
            serving_row("faster-whisper server (int8)", 10.0 + concurrency / 4, with_samples)]
    path.write_text(json.dumps({"machine": "test", "date": "2025-01-01", "audio_clips": 4, "options": options,
                                "results": rows}))
    return path


def write_throughput(path: Path) -> Path:
    rows = [{"system": "vllm-whisper, all at once (float32)", "wall_s": 2.0, "rtfx": 40.0, "tokens_per_s": 300.0},
            {"system": "vllm-whisper, one at a time (float32)", "wall_s": 6.0, "rtfx": 12.0, "tokens_per_s": 90.0},
            {"system": "faster-whisper sequential (int8)", "wall_s": 5.0, "rtfx": 15.0, "tokens_per_s": 100.0}]
    path.write_text(json.dumps({"benchmark": "throughput", "model": "tiny.en", "clips": 30, "machine": "test",
                                "results": rows}))
    return path


def run_plots(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PLOTS), *args], capture_output=True, text=True, timeout=120)


def test_plots_from_serving_and_throughput_json(tmp_path):
    serving = [write_serving(tmp_path / "c8.json", 8, None, with_samples=True),
               write_serving(tmp_path / "c64.json", 64, None, with_samples=False),  # percentiles only
               write_serving(tmp_path / "rate.json", 64, 4.0, with_samples=True)]
    throughput = write_throughput(tmp_path / "throughput.json")
    out_dir = tmp_path / "plots"
    done = run_plots("--serving", *map(str, serving), "--throughput", str(throughput), "--out-dir", str(out_dir))
    assert done.returncode == 0, done.stderr[-2000:]

    expected = {"rtfx_vs_concurrency.png", "rtfx_vs_request_rate.png", "rtfx_vs_batch_size.png", "latency_cdf.png",
                "ttft_cdf.png"}
    printed = [Path(line) for line in done.stdout.split()]
    assert {p.name for p in printed} == expected
    assert {p.name for p in out_dir.iterdir()} == expected
    for path in printed:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, path
        assert len(data) > 10_000, (path, len(data))


def test_plots_serving_only(tmp_path):
    serving = write_serving(tmp_path / "c4.json", 4, None, with_samples=False)
    done = run_plots("--serving", str(serving), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(Path(line).name for line in done.stdout.split()) == ["latency_cdf.png", "rtfx_vs_concurrency.png",
                                                                        "ttft_cdf.png"]


def test_plots_rejects_a_file_of_the_wrong_shape(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"name": "no system field"}]}))
    done = run_plots("--serving", str(bad), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "bad.json" in done.stderr and "'system'" in done.stderr
    assert run_plots("--out-dir", str(tmp_path / "out")).returncode == 2  # nothing to plot
