"""benchmark_serving.py against Ray Serve: target parsing, replica resources and the capacity model (fast), and one
real run of the single server next to Serve with one replica (slow: real tiny.en, real Ray, real aiohttp load)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_capacity import capacity_model, parse_replicas, proxy_overhead  # noqa: E402
from targets import Target, parse_targets, replica_resources  # noqa: E402


def test_targets_parse_in_order_and_refuse_unknown_names():
    assert parse_targets("vllm-whisper, serve-1,serve-2,faster-whisper") == [
        Target("vllm-whisper", "single"), Target("serve-1", "serve", 1), Target("serve-2", "serve", 2),
        Target("faster-whisper", "peer")]
    assert [t.name for t in parse_targets("vllm-whisper,faster-whisper")] == ["vllm-whisper", "faster-whisper"]
    for bad, message in (("serve-0", "unknown target"), ("serve-x", "unknown target"), ("ray", "unknown target"),
                         ("", "empty"), ("serve-1,serve-1", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_targets(bad)


def test_replica_resources_split_the_cores_and_take_gpus_only_on_cuda():
    assert replica_resources(2, None, None, None, cuda_available=False, cores=2).num_cpus == 1.0
    assert replica_resources(1, None, None, None, cuda_available=False, cores=2).num_cpus == 2.0
    assert replica_resources(4, None, None, None, cuda_available=False, cores=2).num_cpus == 0.5
    assert replica_resources(3, 1.5, None, None, cuda_available=False, cores=2).num_cpus == 1.5
    assert replica_resources(2, None, None, None, cuda_available=True, cores=8).num_gpus == 1.0
    assert replica_resources(2, None, None, "cpu", cuda_available=True, cores=8).num_gpus == 0.0
    assert replica_resources(2, None, 0.5, None, cuda_available=False, cores=8).num_gpus == 0.5
    with pytest.raises(ValueError, match="--serve-cpus-per-replica must be positive"):
        replica_resources(2, 0, None, None, cuda_available=False)


def rows(single_rps: float, serve_rps: float, proxy_cpu: float | None, serve2_rps: float | None = None) -> list[dict]:
    out = [{"system": "vllm-whisper", "requests_per_s": single_rps, "idle_e2e_p50_s": 0.40},
           {"system": "serve-1", "requests_per_s": serve_rps, "idle_e2e_p50_s": 0.45,
            "proxy_cpu_s_per_request": proxy_cpu}]
    if serve2_rps is not None:
        out.append({"system": "serve-2", "requests_per_s": serve2_rps, "idle_e2e_p50_s": 0.5})
    return out


def test_proxy_overhead_and_capacity_model():
    run = rows(single_rps=10.0, serve_rps=9.0, proxy_cpu=0.02, serve2_rps=12.0)
    overhead = proxy_overhead(run)
    assert overhead.throughput_loss == pytest.approx(0.1)
    assert overhead.added_latency_s == pytest.approx(0.05)
    table = capacity_model(overhead, [1, 2, 4, 8], run)
    assert [round(r.engine_bound, 6) for r in table] == [9.0, 18.0, 36.0, 72.0]
    assert [r.requests_per_s for r in table] == pytest.approx([9.0, 18.0, 36.0, 50.0])  # 1 / 0.02 s: proxy cap 50
    assert [r.bound_by for r in table] == ["engines", "engines", "engines", "proxy"]
    assert [r.measured for r in table] == [9.0, 12.0, None, None]


def test_capacity_model_floors_a_noisy_gain_and_works_without_a_proxy_figure():
    overhead = proxy_overhead(rows(single_rps=4.0, serve_rps=4.4, proxy_cpu=None))
    assert overhead.throughput_loss == pytest.approx(-0.1)
    table = capacity_model(overhead, [2])
    assert table[0].requests_per_s == pytest.approx(8.0) and table[0].proxy_cap is None
    with pytest.raises(ValueError, match="no 'serve-1' row"):
        proxy_overhead([{"system": "vllm-whisper", "requests_per_s": 1.0}])
    with pytest.raises(ValueError, match="comma-separated"):
        parse_replicas("1,two")
    with pytest.raises(ValueError, match=">= 1"):
        capacity_model(overhead, [0])


def processes_with_env(entry: str) -> list[int]:
    """Live processes whose environment holds `entry` (NAME=VALUE): what the benchmark must not leave behind."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.tooling
def test_benchmark_single_server_next_to_serve_one_replica(tmp_path):
    """The real run: both rows answered, the capacity model printed and written, no Ray process left."""
    out = tmp_path / "serve.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_serving.py"), "--model", "tiny.en", "--targets",
         "vllm-whisper,serve-1", "--concurrency", "2", "--duration", "2", "--clips", "2", "--max-sentences", "1",
         "--idle-probes", "1", "--stream", "--capacity-replicas", "1,2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Capacity model" in done.stdout and "Ray Serve proxy overhead" in done.stdout
    data = json.loads(out.read_text())
    assert [row["system"] for row in data["results"]] == ["vllm-whisper", "serve-1"]
    for row in data["results"]:
        assert row["ok"] >= 1 and row["errors_5xx"] == 0 and row["lost"] == 0 and row["idle_e2e_p50_s"] > 0
    serve = data["results"][1]
    assert len(serve["replicas"]) == 1 and serve["proxy_cpu_s_per_request"] > 0
    assert [row["replicas"] for row in data["serve_capacity"]["model"]] == [1, 2]
    ray_tmp = re.search(r"serve-1: Ray temp dir (\S+)", done.stdout).group(1)
    assert not processes_with_env(f"RAY_TMPDIR={ray_tmp}")  # the launch's Ray is gone: GCS, raylet, workers
    assert not Path(ray_tmp).exists()
