"""Isolation under realtime load: N realtime sessions stream speech at real-time pace (server VAD, partial passes)
while a probe measures how the rest of the server fares: /health latency (the event loop) and a plain transcription
request's latency, each next to the same measurement on the idle server in the same run.

There is no peer row: this measures our server against itself (idle versus loaded).

    python benchmarks/benchmark_realtime_load.py --sessions 20 --duration 30 --json realtime_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_realtime import utterances  # noqa: E402
from benchmark_serving import LaunchedServer, free_port  # noqa: E402
from common import machine_description  # noqa: E402

from vllm_whisper.engine_args import EngineArgs  # noqa: E402


async def health_latencies(session: aiohttp.ClientSession, url: str, until: float, every: float) -> list[float]:
    latencies = []
    while time.perf_counter() < until:
        started = time.perf_counter()
        async with session.get(f"{url}/health") as response:
            await response.read()
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(every)
    return latencies


async def request_latency(session: aiohttp.ClientSession, url: str, wav: bytes) -> float:
    form = aiohttp.FormData()
    form.add_field("file", wav, filename="probe.wav")
    started = time.perf_counter()
    async with session.post(f"{url}/v1/audio/transcriptions", data=form) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"probe request failed with {response.status}")
    return time.perf_counter() - started


async def requests_until(session, url: str, wav: bytes, until: float, gap: float) -> list[float]:
    latencies = []
    while time.perf_counter() < until:
        latencies.append(await request_latency(session, url, wav))
        await asyncio.sleep(gap)
    return latencies


def turn_latencies(run) -> list[float]:
    """Seconds from each turn's `input_audio_buffer.committed` to its `...completed` event."""
    committed = {e.event["item_id"]: e.at for e in run.of_type("input_audio_buffer.committed")}
    return [e.at - committed[e.event["item_id"]]
            for e in run.of_type("conversation.item.input_audio_transcription.completed")
            if e.event["item_id"] in committed]


async def sessions_until(url: str, items, count: int, until: float) -> list[float]:
    """`count` sessions, each streaming utterances back to back at real-time pace; returns each completed turn's
    commit-to-completed latency."""
    from vllm_whisper.testing.realtime_client import pcm16_chunks, stream_audio

    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    latencies: list[float] = []
    # Each utterance's PCM16 chunks are made once: resampling one on the event loop (~0.1 s) whenever a session
    # starts it would stall this process's /health and upload probes, which share the loop.
    chunks = [pcm16_chunks(audio, 24000, 100) for audio, _, _ in items]

    async def one(index: int) -> None:
        turn = index
        while time.perf_counter() < until:
            audio, speech, _ = items[turn % len(items)]
            run = await stream_audio(ws_url, audio, speech, timeout=60, chunks=chunks[turn % len(items)])
            latencies.extend(turn_latencies(run))
            turn += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan, "n": 0}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": statistics.median(ordered), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1],
            "n": len(ordered)}


async def run(args: argparse.Namespace, items, probe_wav: bytes, logs: Path) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", *EngineArgs.from_cli_args(args).to_cli_args(),
               "--port", str(port), "--log-level", "warning", "--max-realtime-sessions", str(args.sessions + 1)]
    server = LaunchedServer(command, port, logs / "server.log")
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await request_latency(session, server.url, probe_wav)  # warm
            idle_until = time.perf_counter() + 10
            idle_health, idle_requests = await asyncio.gather(
                health_latencies(session, server.url, idle_until, 0.25),
                requests_until(session, server.url, probe_wav, idle_until, 0.5))
            until = time.perf_counter() + args.duration
            client_cpu = time.process_time()
            loaded_started = time.perf_counter()
            sessions = asyncio.create_task(sessions_until(server.url, items, args.sessions, until))
            await asyncio.sleep(3)  # sessions under way
            loaded_health, loaded_requests = await asyncio.gather(
                health_latencies(session, server.url, until, 0.25),
                requests_until(session, server.url, probe_wav, until, 1.0))
            turns = await sessions
            client_cpu = time.process_time() - client_cpu
            loaded_wall = time.perf_counter() - loaded_started
    finally:
        server.stop()
    return {"idle": {"health_s": stats(idle_health), "request_s": stats(idle_requests)},
            "loaded": {"health_s": stats(loaded_health), "request_s": stats(loaded_requests),
                       "completed_turns": len(turns), "turn_commit_to_completed_s": stats(turns),
                       "client_cpu_s": client_cpu, "wall_s": loaded_wall}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of realtime load")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = utterances(folder, 4, 2)
        from vllm_whisper.testing.encode import encode_audio

        probe = encode_audio(items[0][0], 16000, folder / "probe.wav").read_bytes()
        result = asyncio.run(run(args, items, probe, folder))
    result.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"), sessions=args.sessions,
                  duration_s=args.duration, model=args.model)
    idle, loaded = result["idle"], result["loaded"]
    print(f"Realtime load: {args.sessions} sessions at real-time pace for {args.duration:g} s, {args.model} — "
          f"{result['machine']}")
    for name in ("health_s", "request_s"):
        print(f"{name:<10} idle p50 {idle[name]['p50'] * 1000:8.1f} ms  max {idle[name]['max'] * 1000:8.1f} ms   "
              f"loaded p50 {loaded[name]['p50'] * 1000:8.1f} ms  p99 {loaded[name]['p99'] * 1000:8.1f} ms  "
              f"max {loaded[name]['max'] * 1000:8.1f} ms")
    ratio = loaded["request_s"]["p50"] / idle["request_s"]["p50"]
    print(f"plain request p50 loaded / idle: {ratio:.2f}x; realtime turns completed: {loaded['completed_turns']}")
    turn = loaded["turn_commit_to_completed_s"]
    print(f"turn commit -> completed p50 {turn['p50'] * 1000:.0f} ms  p95 {turn['p95'] * 1000:.0f} ms  "
          f"max {turn['max'] * 1000:.0f} ms; this client process used {loaded['client_cpu_s']:.1f} s CPU in "
          f"{loaded['wall_s']:.1f} s of load ({loaded['client_cpu_s'] / loaded['wall_s']:.2f} cores)")
    result["request_p50_ratio"] = ratio
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
