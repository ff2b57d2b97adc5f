"""Soak test of our server: a mixed load for N minutes (json / srt / verbose_json requests, SSE streams, clients
that disconnect mid-stream, bad inputs, realtime turns), with the server's resident memory sampled every 10 s.

Reports requests by outcome (2xx, expected 4xx, unexpected 4xx, 5xx, lost = no answer or a broken stream), the RSS
curve, and the RSS slope after the warm-up (MB per hour, least squares) with the growth after warm-up in percent;
writes JSON and, with --plot, a PNG of the curve.

    python benchmarks/soak.py --minutes 30 --warmup-minutes 5 --json soak.json --plot soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_serving import Clip, LaunchedServer, free_port, make_clips  # noqa: E402
from common import machine_description  # noqa: E402

from vllm_whisper.engine_args import EngineArgs  # noqa: E402

BAD_INPUTS = [  # (form fields, file bytes, expected status)
    ({}, b"\x00\x01 not audio" * 100, 400),
    ({"response_format": "xml"}, None, 400),
    ({"temperature": "hot"}, None, 400),
    ({"chunking_strategy": "[" * 5000 + "]" * 5000}, None, 400),
    ({"language": "klingon"}, None, 400),
]


@dataclass
class Tally:
    ok: int = 0
    expected_4xx: int = 0
    unexpected_4xx: int = 0
    server_errors: int = 0
    lost: int = 0
    disconnects: int = 0
    realtime_turns: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def request(session: aiohttp.ClientSession, url: str, clip: Clip, tally: Tally, rng: random.Random) -> None:
    """One client action chosen at random: a plain request, a stream (maybe dropped early) or a bad input."""
    kind = rng.choice(["json", "srt", "verbose_json", "stream", "stream", "disconnect", "bad"])
    tally.count(kind)
    form = aiohttp.FormData()
    expected = 200
    fields: dict[str, str] = {"response_format": kind if kind in ("json", "srt", "verbose_json") else "json"}
    data = clip.data
    if kind in ("stream", "disconnect"):
        fields["stream"] = "true"
    if kind == "bad":
        bad_fields, bad_data, expected = rng.choice(BAD_INPUTS)
        fields, data = {**fields, **bad_fields}, bad_data or clip.data
    form.add_field("file", data, filename=clip.name)
    for name, value in fields.items():
        form.add_field(name, value)
    try:
        async with session.post(f"{url}/v1/audio/transcriptions", data=form) as response:
            if response.status >= 500:
                tally.server_errors += 1
                return
            if response.status >= 400:
                tally.expected_4xx += response.status == expected
                tally.unexpected_4xx += response.status != expected
                return
            if kind == "disconnect":
                await response.content.readline()
                tally.disconnects += 1
                return  # leaving the block closes the connection mid-stream
            body = await response.read()
            if kind == "stream" and b"transcript.text.done" not in body:
                tally.lost += 1
                return
            tally.ok += 1
    except (aiohttp.ClientError, asyncio.TimeoutError):
        tally.lost += 1


async def realtime_turn(url: str, audio: np.ndarray, tally: Tally) -> None:
    """One manually committed realtime turn at 16 kHz, sent as fast as the socket takes it."""
    tally.count("realtime")
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    try:
        async with websockets.connect(url.replace("http://", "ws://") + "/v1/realtime?intent=transcription") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))
            for start in range(0, len(pcm), 6400):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[start:start + 6400]).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    tally.realtime_turns += 1
                    return
                if event["type"] == "error":
                    tally.server_errors += event["error"]["type"] == "server_error"
    except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
        tally.lost += 1


async def run(args: argparse.Namespace, clips: list[Clip], realtime_audio: np.ndarray, logs: Path) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", *EngineArgs.from_cli_args(args).to_cli_args(),
               "--port", str(port), "--log-level", "warning"]
    server = LaunchedServer(command, port, logs / "soak-server.log")
    try:
        await server.wait_ready()
        tally, curve = Tally(), []
        started = time.perf_counter()
        deadline = started + args.minutes * 60
        rng = random.Random(0)

        async def sample_memory() -> None:
            while time.perf_counter() < deadline:
                curve.append((time.perf_counter() - started, rss_mb(server.process.pid)))
                await asyncio.sleep(args.sample_seconds)

        async def client(index: int) -> None:
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while time.perf_counter() < deadline:
                    if index == 0 and rng.random() < 0.3:
                        await realtime_turn(server.url, realtime_audio, tally)
                    else:
                        await request(session, server.url, rng.choice(clips), tally, rng)

        await asyncio.gather(sample_memory(), *(client(i) for i in range(args.concurrency)))
        curve.append((time.perf_counter() - started, rss_mb(server.process.pid)))
    finally:
        server.stop()
    return summarize(tally, curve, args.warmup_minutes * 60)


def summarize(tally: Tally, curve: list[tuple[float, float]], warmup_s: float) -> dict:
    after = [(t, mb) for t, mb in curve if t >= warmup_s]
    slope = growth = None
    if len(after) >= 3:
        times, values = np.array([t for t, _ in after]), np.array([mb for _, mb in after])
        slope = float(np.polyfit(times, values, 1)[0] * 3600)
        growth = float((values[-1] - values[0]) / values[0] * 100)
    return {"tally": tally.__dict__, "rss_curve": curve, "rss_slope_mb_per_hour": slope,
            "rss_growth_after_warmup_pct": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    EngineArgs.add_cli_args(parser)  # the server's engine flags (--model, --dtype, --quantization, ...)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = make_clips(folder, args.clips, 3)
        from vllm_whisper.audio.decode import load_audio

        realtime_audio = load_audio(clips[0].data)
        result = asyncio.run(run(args, clips, realtime_audio, folder))
    result.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"), minutes=args.minutes,
                  concurrency=args.concurrency, model=args.model)
    t = result["tally"]
    print(f"Soak: {args.minutes:g} min, {args.concurrency} clients, {args.model} — {result['machine']}")
    print(f"ok {t['ok']}, expected 4xx {t['expected_4xx']}, unexpected 4xx {t['unexpected_4xx']}, "
          f"5xx {t['server_errors']}, lost {t['lost']}, disconnects {t['disconnects']}, "
          f"realtime turns {t['realtime_turns']}")
    curve = result["rss_curve"]
    print(f"RSS {curve[0][1]:.0f} MB -> {curve[-1][1]:.0f} MB; after warm-up: slope "
          f"{result['rss_slope_mb_per_hour']} MB/h, growth {result['rss_growth_after_warmup_pct']} %")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([t / 60 for t, _ in curve], [mb for _, mb in curve])
        ax.axvline(args.warmup_minutes, linestyle="--", color="grey")
        ax.set_xlabel("minutes")
        ax.set_ylabel("server RSS (MB)")
        ax.set_title(f"Soak: {args.model}, {args.concurrency} clients")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
