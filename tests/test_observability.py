"""Logs and metrics an operator coming from vLLM expects, read from a real server process: its start-up line, one
request-log line per request (uploads and realtime turns), vLLM's periodic engine line (and none with
--disable-log-stats), vLLM's metric names and labels on /metrics, and HTTP responses counted by route template."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import torch
import websockets
from prometheus_client.parser import text_string_to_metric_families

from vllm_whisper.audio import load_audio
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.realtime_client import pcm16_chunks
from vllm_whisper.transcribe.sequential import build_rules

ROOT = Path(__file__).resolve().parents[1]
ENGINE = {"model_name": "tiny.en", "engine": "0"}
REQUEST_LINE = re.compile(r"vllm_whisper\.requests: Finished request (\S+): model=(\S+) task=(\S+) status=(\S+) "
                          r"audio_s=(\S+) latency_s=(\S+) rtfx=(\S+) streamed=(true|false)$")
STATS_LINE = re.compile(r"vllm_whisper\.stats: Engine 000: Avg prompt throughput: ([\d.]+) tokens/s, Avg generation "
                        r"throughput: ([\d.]+) tokens/s, Avg audio throughput: ([\d.]+) s/s, Running: (\d+) reqs, "
                        r"Waiting: (\d+) reqs, KV cache usage: ([\d.]+)%, Cross-attention slot usage: ([\d.]+)%, "
                        r"Preemptions: (\d+)$")


@dataclass
class ServerProcess:
    """`python -m vllm_whisper.entrypoints.api_server` with its stdout and stderr in one file."""

    process: subprocess.Popen
    log_path: Path
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def matching(self, pattern: re.Pattern) -> list[re.Match]:
        return [m for m in map(pattern.search, self.lines()) if m]


@pytest.fixture(scope="module")
def fox_bytes(fox_clip) -> bytes:
    return fox_clip.path.read_bytes()


def launch(log_path: Path, *flags: str) -> ServerProcess:
    """Start the server process (not yet waiting for it: two servers start side by side)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", "--model", "tiny.en", "--dtype", "float32",
             "--kv-cache-space", "0.5", "--port", str(port), *flags],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT, text=True)
    return ServerProcess(process, log_path, port)


def stop(server: ServerProcess) -> None:
    server.process.kill()  # no graceful drain needed (tests/test_shutdown.py covers it)
    server.process.wait(timeout=30)


def _healthy(server: ServerProcess) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError(f"the server exited early: {server.log_path.read_text()[-2000:]}")
    try:
        return httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The module's server (stats every second) and one with --disable-log-stats, started together."""
    folder = tmp_path_factory.mktemp("observability")
    started = [launch(folder / "server.log", "--log-stats-interval", "1"),
               launch(folder / "quiet.log", "--disable-log-stats", "--log-stats-interval", "0.2")]
    try:
        for server in started:
            wait_until(lambda: _healthy(server), timeout=180, what="the server to become healthy")
        yield started[0], started[1]
    finally:
        for server in started:
            stop(server)


@pytest.fixture(scope="module")
def server(servers) -> ServerProcess:
    return servers[0]


def transcribe(server: ServerProcess, audio: bytes, **fields: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/audio/transcriptions", files={"file": ("fox.wav", audio)}, data=fields,
                      timeout=120)


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def new_request_lines(server: ServerProcess, before: int, expected: int) -> list[re.Match]:
    """Wait for `expected` request lines after the first `before`, then check no more come."""
    wait_until(lambda: len(server.matching(REQUEST_LINE)) >= before + expected, what=f"{expected} request line(s)")
    time.sleep(0.3)
    lines = server.matching(REQUEST_LINE)[before:]
    assert len(lines) == expected, [m.group(0) for m in lines]
    return lines


# --- start-up ---------------------------------------------------------------------------------------------------
def test_startup_line_names_device_caches_and_address(server):
    [line] = [line for line in server.lines() if "Engine 000: ready:" in line]
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    assert fields["device"] == "cpu" and fields["dtype"] == "float32" and fields["quantization"] == "none"
    assert fields["attention"] == "torch" and fields["cuda_graphs"] == "off" and fields["max_num_seqs"] == "32"  # CPU default
    assert fields["models"] == "tiny.en,whisper-1" and fields["listening"] == f"http://127.0.0.1:{server.port}"
    blocks, block_gib = re.search(r"kv_cache=(\d+) blocks \(([\d.]+) GiB\)", line).groups()
    slots, slot_gib = re.search(r"cross_slots=(\d+) \(([\d.]+) GiB\)", line).groups()
    assert int(blocks) > 0 and int(slots) > 0 and fields["kv_cache_dtype"] == "bfloat16"  # the CPU's auto
    # the --kv-cache-space budget (0.5 GiB) bounds both pools; bfloat16 slots for all 32 sequences leave some unused
    assert 0.3 < float(block_gib) + float(slot_gib) <= 0.5


# --- request log ------------------------------------------------------------------------------------------------
def test_each_upload_logs_exactly_one_line_with_its_fields(server, fox_bytes):
    before = len(server.matching(REQUEST_LINE))
    assert transcribe(server, fox_bytes, model="whisper-1").status_code == 200
    [ok] = new_request_lines(server, before, 1)
    request_id, model, task, status, audio, latency, rtfx, streamed = ok.groups()
    assert re.fullmatch(r"trsc-[0-9a-f]{32}", request_id) and model == "tiny.en" and task == "transcribe"
    assert status == "ok" and streamed == "false" and 2.5 < float(audio) < 3.5
    assert float(latency) > 0 and abs(float(rtfx) - float(audio) / float(latency)) < 0.02 * float(rtfx) + 0.01

    with httpx.stream("POST", f"{server.base_url}/v1/audio/transcriptions", files={"file": ("fox.wav", fox_bytes)},
                      data={"stream": "true"}, timeout=120) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert response.status_code == 200 and events[-1]["type"] == "transcript.text.done"
    assert transcribe(server, b"not audio at all").status_code == 400
    assert transcribe(server, fox_bytes, model="no-such-model").status_code == 404
    streamed, bad, unknown = new_request_lines(server, before + 1, 3)
    assert streamed.group(4) == "ok" and streamed.group(8) == "true"
    assert streamed.group(1) == events[0]["id"] != request_id  # logged under the id the client saw
    assert (bad.group(4), bad.group(5), bad.group(7)) == ("400", "-", "-")
    assert unknown.group(4) == "404"
    log = server.log_path.read_text()
    assert "quick brown fox" not in log.lower()  # never the transcript


def test_a_realtime_turn_logs_one_line(server, fox_clip):
    fox = load_audio(fox_clip.path)
    [chunk] = pcm16_chunks(fox, 16000, chunk_ms=fox.size * 1000 // 16000 + 1000)

    async def one_turn() -> dict:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/realtime", max_size=2**24) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "model": "whisper-1"}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "transcription.done":
                pass
            return event

    before = len(server.matching(REQUEST_LINE))
    assert "fox" in asyncio.run(one_turn())["text"].lower()
    [turn] = new_request_lines(server, before, 1)
    assert turn.group(1).startswith("rt-") and turn.group(3) == "realtime"
    assert turn.group(4) == "ok" and turn.group(8) == "true" and 2.5 < float(turn.group(5)) < 3.5


# --- periodic stats line ----------------------------------------------------------------------------------------
def test_stats_line_appears_within_the_interval_under_load(server, fox_bytes):
    before = len(server.matching(STATS_LINE))
    assert transcribe(server, fox_bytes).status_code == 200
    wait_until(lambda: any(float(m.group(2)) > 0 for m in server.matching(STATS_LINE)[before:]), timeout=5,
               what="a stats line with generation throughput")
    for line in server.matching(STATS_LINE)[before:]:
        prompt, generation, audio, running, waiting, kv, cross, preemptions = line.groups()
        assert 0 <= float(kv) <= 100 and 0 <= float(cross) <= 100 and int(preemptions) == 0
    time.sleep(2.5)  # idle: at most one more line (the drop to zero), then none
    idle_from = len(server.matching(STATS_LINE))
    time.sleep(1.5)
    assert len(server.matching(STATS_LINE)) == idle_from


def test_no_stats_line_with_disable_log_stats(servers, fox_bytes):
    quiet = servers[1]
    assert transcribe(quiet, fox_bytes).status_code == 200
    time.sleep(1.0)
    assert len(quiet.matching(REQUEST_LINE)) == 1  # the server logs, just not the stats
    assert not [line for line in quiet.lines() if "Avg generation throughput" in line]


# --- /metrics ---------------------------------------------------------------------------------------------------
def test_metrics_expose_vllm_names_with_sensible_values(server, fox_bytes):
    before = scrape(server)
    requests = 2
    for _ in range(requests):
        assert transcribe(server, fox_bytes).status_code == 200
    after = scrape(server)

    def grew(name: str) -> float:
        return metric(after, name, **ENGINE) - metric(before, name, **ENGINE)

    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert (name, frozenset(ENGINE.items())) in after, name
    assert 0.0 <= metric(after, "vllm:kv_cache_usage_perc", **ENGINE) <= 1.0
    assert metric(after, "vllm:num_requests_running", **ENGINE) == 0  # idle again
    assert metric(after, "vllm:num_preemptions_total", **ENGINE) == 0  # nothing preempted with this cache
    assert grew("vllm:prompt_tokens_total") >= requests  # each window's decoder prompt
    tokens = grew("vllm:generation_tokens_total")
    assert tokens >= requests * 8
    # One window per 3 s upload: each waited in the queue once, and each token after its first came one gap later
    # (the end-of-text step closes the last gap).
    assert grew("vllm:request_queue_time_seconds_count") == requests
    assert grew("vllm:inter_token_latency_seconds_count") == tokens
    assert grew("vllm:e2e_request_latency_seconds_count") == requests
    assert grew("vllm:time_to_first_token_seconds_count") == requests
    assert 0 <= grew("vllm:request_queue_time_seconds_sum") < grew("vllm:e2e_request_latency_seconds_sum")
    # vLLM's buckets, so a vLLM dashboard's quantiles line up.
    for name, bound in (("vllm:request_queue_time_seconds_bucket", "0.3"),
                        ("vllm:inter_token_latency_seconds_bucket", "0.025"),
                        ("vllm:time_to_first_token_seconds_bucket", "2560.0")):
        assert (name, frozenset({**ENGINE, "le": bound}.items())) in after, (name, bound)


def test_http_responses_are_counted_by_route_template_and_status(server, fox_bytes):
    before = scrape(server)
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200
    assert transcribe(server, b"not audio at all").status_code == 400
    assert httpx.get(f"{server.base_url}/v1/models/no-such-model").status_code == 404
    assert httpx.get(f"{server.base_url}/v1/models/{'x' * 40}").status_code == 404
    assert httpx.get(f"{server.base_url}/no/such/path").status_code == 404
    with httpx.stream("POST", f"{server.base_url}/v1/audio/transcriptions", files={"file": ("fox.wav", fox_bytes)},
                      data={"stream": "true"}, timeout=120) as response:
        list(response.iter_lines())

    async def open_and_close() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
            await ws.recv()

    asyncio.run(open_and_close())

    def count(samples: dict, route: str, status: str) -> float:
        return metric(samples, "vllm_whisper:http_responses_total", route=route, status=status)

    def counted(route: str, status: str) -> float:
        return count(scrape(server), route, status) - count(before, route, status)

    assert counted("/v1/models", "200") == 1
    assert counted("/v1/audio/transcriptions", "400") == 1
    assert counted("/v1/models/{model_id:path}", "404") == 2  # both ids under one template
    assert counted("unmatched", "404") == 1
    assert counted("/v1/audio/transcriptions", "200") == 1  # the stream, counted once it ended
    wait_until(lambda: counted("/v1/realtime", "101") == 1, what="the WebSocket's count")
    routes = {dict(labels)["route"] for name, labels in scrape(server) if name == "vllm_whisper:http_responses_total"}
    assert not any("no-such-model" in route or "no/such" in route for route in routes)  # bounded labels


# --- the engine's side ------------------------------------------------------------------------------------------
def test_iteration_stats_add_up_to_the_engine_totals_preemptions_included(small_random):
    """What the metrics listener receives per step sums to the engine's running totals; on a cache too small for
    every window at once the engine preempts, and those preemptions are counted."""
    torch.manual_seed(1)
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=6, num_cross_slots=3, block_size=4))
    engine.take_iteration_stats()  # a consumer starts collecting
    rules = build_rules(small_random, TranscriptionParams(timestamps=False))
    prompt = small_random.tokenizer.sot_sequence(None, "transcribe", False)
    for i in range(3):
        engine.add_request(str(i), torch.randn(80, 3000), prompt, SamplingParams(rules, max_new_tokens=12))
    totals = {"prompt": 0, "generation": 0, "preemptions": 0, "queued": 0, "gaps": 0, "outputs": 0}
    while engine.has_unfinished_requests():
        totals["outputs"] += len(engine.step())
        iteration = engine.take_iteration_stats()
        totals["prompt"] += iteration.prompt_tokens
        totals["generation"] += iteration.generation_tokens
        totals["preemptions"] += iteration.preemptions
        totals["queued"] += len(iteration.queue_times)
        totals["gaps"] += len(iteration.inter_token_latencies)
    stats = engine.stats
    assert stats.preemptions > 0 and totals["preemptions"] == stats.preemptions
    assert totals["prompt"] == stats.prompt_tokens == 3 * len(prompt)  # once per window, not per recompute
    assert totals["generation"] == stats.generated_tokens > 0
    assert totals["queued"] == 3  # each window's first admission only
    assert totals["gaps"] == totals["outputs"] - 3  # one gap between each window's successive outputs


def test_offline_engine_keeps_no_timings(small_random):
    """Without a consumer (offline use) the engine records no per-token lists."""
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=16, num_cross_slots=2))
    rules = build_rules(small_random, TranscriptionParams(timestamps=False))
    prompt = small_random.tokenizer.sot_sequence(None, "transcribe", False)
    engine.add_request("a", torch.randn(80, 3000), prompt, SamplingParams(rules, max_new_tokens=10))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats.prompt_tokens == len(prompt)
    first = engine.take_iteration_stats()  # the first take reports nothing from before it
    assert first.queue_times == [] and first.generation_tokens == 0
