"""Load test for any OpenAI-compatible transcription server (ours, vLLM, speaches, ...): a fixed number of
concurrent clients, or a fixed request rate, for a fixed time; streaming or not.

Reports requests/s, real-time factor (audio seconds answered per wall second), time to first token and
inter-token latency from the SSE stream, end-to-end p50/p90/p99, and error counts (4xx, 5xx, lost = no answer).
Without --base-url it launches our server and the faster-whisper peer (benchmarks/peers/) on the same weights
and runs the same load against each, one after the other.

    python benchmarks/benchmark_serving.py --concurrency 64 --duration 60 --stream --json serving.json
    python benchmarks/benchmark_serving.py --base-url http://127.0.0.1:8000 --concurrency 8 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, progress  # noqa: E402

from vllm_whisper.engine_args import EngineArgs  # noqa: E402


@dataclass
class Clip:
    name: str
    data: bytes
    seconds: float


@dataclass
class Outcome:
    status: int  # HTTP status; 0 when no answer came back (lost)
    start: float
    end: float
    audio_seconds: float
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    error: str = ""


async def one_request(session: aiohttp.ClientSession, url: str, model: str, clip: Clip, stream: bool,
                      timeout: float) -> Outcome:
    form = aiohttp.FormData()
    form.add_field("file", clip.data, filename=clip.name)
    form.add_field("model", model)
    if stream:
        form.add_field("stream", "true")
    start = time.perf_counter()
    outcome = Outcome(0, start, start, clip.seconds)
    try:
        async with session.post(url, data=form, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            outcome.status = response.status
            if response.status != 200:
                outcome.error = (await response.text())[:200]
            elif stream:
                done = False
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        break
                    event = json.loads(line[6:])
                    now = time.perf_counter()
                    if event.get("type") == "transcript.text.delta":
                        outcome.token_times.append(now)
                        if outcome.first_token is None:
                            outcome.first_token = now - start
                    elif event.get("type") == "transcript.text.done":
                        done = True
                if not done:
                    outcome.status, outcome.error = 0, "stream ended without transcript.text.done"
            else:
                body = await response.json()
                if "text" not in body:
                    outcome.status, outcome.error = 0, "no text in the answer"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        outcome.status, outcome.error = 0, f"{type(exc).__name__}: {exc}"
    outcome.end = time.perf_counter()
    return outcome


async def run_load(base_url: str, model: str, clips: list[Clip], concurrency: int, rate: float | None,
                   duration: float, stream: bool, timeout: float) -> tuple[list[Outcome], float]:
    """Closed loop (each of `concurrency` clients sends its next request when the last is answered), or open
    loop at `rate` requests/s (Poisson arrivals); new requests stop after `duration` s, all are awaited."""
    url = f"{base_url}/v1/audio/transcriptions"
    outcomes: list[Outcome] = []
    rng = random.Random(0)
    connector = aiohttp.TCPConnector(limit=0)
    bar = progress(desc="requests answered", unit="req")

    async def answered(clip: Clip) -> Outcome:
        outcome = await one_request(session, url, model, clip, stream, timeout)
        bar.update(1)
        return outcome

    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        deadline = start + duration
        if rate is None:
            async def client(index: int) -> None:
                k = index
                while time.perf_counter() < deadline:
                    outcomes.append(await answered(clips[k % len(clips)]))
                    k += concurrency
            await asyncio.gather(*(client(i) for i in range(concurrency)))
        else:
            tasks, k = [], 0
            while time.perf_counter() < deadline:
                tasks.append(asyncio.create_task(answered(clips[k % len(clips)])))
                k += 1
                await asyncio.sleep(rng.expovariate(rate))
            outcomes = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - start
    bar.close()
    return outcomes, wall


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(system: str, outcomes: list[Outcome], wall: float) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    latencies = [o.end - o.start for o in ok]
    ttfts = [o.first_token for o in ok if o.first_token is not None]
    gaps = [b - a for o in ok for a, b in zip(o.token_times, o.token_times[1:])]
    row = {
        "system": system, "requests": len(outcomes), "ok": len(ok),
        "errors_4xx": sum(400 <= o.status < 500 for o in outcomes),
        "errors_5xx": sum(o.status >= 500 for o in outcomes), "lost": sum(o.status == 0 for o in outcomes),
        "wall_s": wall, "requests_per_s": len(ok) / wall, "rtfx": sum(o.audio_seconds for o in ok) / wall,
        "e2e_p50_s": percentile(latencies, 50), "e2e_p90_s": percentile(latencies, 90),
        "e2e_p99_s": percentile(latencies, 99), "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99), "itl_mean_s": statistics.fmean(gaps) if gaps else None,
        "sample_errors": sorted({o.error for o in outcomes if o.error})[:3],
        "latencies_s": [round(v, 4) for v in latencies], "ttfts_s": [round(v, 4) for v in ttfts],
    }
    return row


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    mode = f"rate {args.request_rate}/s" if args.request_rate else f"concurrency {args.concurrency}"
    print(f"\nServing: {mode}, {args.duration:g} s, stream={args.stream}, model {args.model}")
    print(f"Machine: {machine_description()}")
    header = (f"{'system':<34} {'ok':>5} {'4xx':>4} {'5xx':>4} {'lost':>4} {'req/s':>6} {'RTFx':>6} "
              f"{'p50 s':>6} {'p90 s':>6} {'p99 s':>6} {'TTFT50':>6} {'TTFT99':>6} {'ITL ms':>6}")
    print(header)

    def f(value, scale=1.0):
        return "-" if value is None else f"{value * scale:.2f}" if scale == 1.0 else f"{value * scale:.0f}"

    for r in rows:
        print(f"{r['system']:<34} {r['ok']:>5} {r['errors_4xx']:>4} {r['errors_5xx']:>4} {r['lost']:>4} "
              f"{r['requests_per_s']:>6.2f} {r['rtfx']:>6.1f} {f(r['e2e_p50_s']):>6} {f(r['e2e_p90_s']):>6} "
              f"{f(r['e2e_p99_s']):>6} {f(r['ttft_p50_s']):>6} {f(r['ttft_p99_s']):>6} "
              f"{f(r['itl_mean_s'], 1000):>6}")


# --- audio and servers ------------------------------------------------------------------------------
def make_clips(folder: Path, count: int, max_sentences: int) -> list[Clip]:
    """Synthetic speech of 1..max_sentences Harvard sentences (3 to ~25 s), as MP3 uploads."""
    import numpy as np

    from vllm_whisper.audio.decode import load_audio
    from vllm_whisper.testing.encode import encode_audio
    from vllm_whisper.testing.speech import HARVARD_SENTENCES, SPEAKERS, synthesize

    clips = []
    for i in range(count):
        engine, voice = SPEAKERS[i % len(SPEAKERS)]
        sentences = 1 + i % max_sentences
        parts = []
        for k in range(sentences):
            text = HARVARD_SENTENCES[(i * 3 + k) % len(HARVARD_SENTENCES)]
            parts += [load_audio(synthesize(text, folder / f"s{i}_{k}.wav", engine, voice).path),
                      np.zeros(5600, dtype=np.float32)]
        audio = np.concatenate(parts)
        path = encode_audio(audio, 16000, folder / f"clip{i}.mp3")
        clips.append(Clip(path.name, path.read_bytes(), len(audio) / 16000))
    return clips


def load_clips(paths: list[Path]) -> list[Clip]:
    from vllm_whisper.audio.decode import load_audio

    return [Clip(p.name, p.read_bytes(), len(load_audio(p)) / 16000) for p in paths]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedServer:
    """A server subprocess, ready once /health answers."""

    def __init__(self, command: list[str], port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.perf_counter() + timeout
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited; see {self.log.name}")
                try:
                    async with session.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        raise RuntimeError(f"the server did not become healthy in {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def server_commands(args: argparse.Namespace, port: int) -> dict[str, list[str]]:
    engine_args = EngineArgs.from_cli_args(args)
    engine_args.max_num_seqs = max(args.concurrency, 1)
    ours = [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", "--port", str(port),
            *engine_args.to_cli_args(), "--log-level", "warning"]
    commands = {"vllm-whisper": ours}
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        print("faster-whisper is not installed: no peer row")
        return commands
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

    directory = str(resolve_alias(args.model) if args.model in OFFLINE_ALIASES else args.model)
    commands[f"faster-whisper server ({args.peer_compute_type})"] = [
        sys.executable, str(ROOT / "benchmarks" / "peers" / "faster_whisper_server.py"), "--model-dir", directory,
        "--port", str(port), "--compute-type", args.peer_compute_type]
    return commands


async def benchmark_launched(args: argparse.Namespace, clips: list[Clip], logs: Path) -> list[dict]:
    rows = []
    for system, _ in server_commands(args, 0).items():
        port = free_port()
        command = server_commands(args, port)[system]
        server = LaunchedServer(command, port, logs / f"{system.split()[0]}.log")
        try:
            await server.wait_ready()
            await one_request_warmup(server.url, args, clips[0])
            outcomes, wall = await run_load(server.url, args.model, clips, args.concurrency, args.request_rate,
                                            args.duration, args.stream, args.timeout)
            rows.append(summarize(system, outcomes, wall))
        finally:
            server.stop()
    return rows


async def one_request_warmup(url: str, args: argparse.Namespace, clip: Clip) -> None:
    async with aiohttp.ClientSession() as session:
        await one_request(session, f"{url}/v1/audio/transcriptions", args.model, clip, False, args.timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="benchmark this running server instead of launching ours "
                        "and the peer")
    # Our server's engine flags; --max-num-seqs follows --concurrency, --model also names the peer's weights.
    EngineArgs.add_cli_args(parser, only=set(EngineArgs.field_names()) - {"max_num_seqs"})
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--request-rate", type=float, default=None, help="open loop at this many requests/s")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds during which requests are sent")
    parser.add_argument("--stream", action="store_true", help="stream=true; measures TTFT and inter-token latency")
    parser.add_argument("--audio", type=Path, nargs="*", default=None, help="audio files (default: synthetic)")
    parser.add_argument("--clips", type=int, default=16, help="synthetic clips to generate")
    parser.add_argument("--max-sentences", type=int, default=8, help="longest synthetic clip, in sentences")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a request counts as lost")
    parser.add_argument("--peer-compute-type", default="int8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = load_clips(args.audio) if args.audio else make_clips(folder, args.clips, args.max_sentences)
        if args.base_url:
            async def run_one():
                await one_request_warmup(args.base_url, args, clips[0])
                return [summarize(args.base_url, *await run_load(args.base_url, args.model, clips, args.concurrency,
                                                                 args.request_rate, args.duration, args.stream,
                                                                 args.timeout))]
            rows = asyncio.run(run_one())
        else:
            rows = asyncio.run(benchmark_launched(args, clips, folder))
    print_table(rows, args)
    if args.json:
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("audio", "json")}
        args.json.write_text(json.dumps({"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
                                         "audio_clips": len(clips), "options": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
