"""Load test for any OpenAI-compatible transcription server (ours, vLLM, speaches, ...): a fixed number of
concurrent clients, or a fixed request rate, for a fixed time; streaming or not.

Reports requests/s, real-time factor (audio seconds answered per wall second), time to first token and
inter-token latency from the SSE stream, end-to-end p50/p90/p99, and error counts (4xx, 5xx, lost = no answer).
Without --base-url it launches the --targets (default: our server and the faster-whisper peer, benchmarks/peers/,
on the same weights; serve-N: our server on Ray Serve with N replicas) and runs the same load against each, one
after the other; with vllm-whisper and serve-1 it ends with Serve's proxy overhead and a capacity model
(serve_capacity.py).

    python benchmarks/benchmark_serving.py --concurrency 64 --duration 60 --stream --json serving.json
    python benchmarks/benchmark_serving.py --base-url http://127.0.0.1:8000 --concurrency 8 --duration 30
    python benchmarks/benchmark_serving.py --targets vllm-whisper,serve-1,serve-2 --concurrency 8 --duration 30 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, progress  # noqa: E402
from launched import LaunchedServer, free_port  # noqa: E402,F401 (LaunchedServer, free_port: re-exported)
from proc_tree import cpu_seconds  # noqa: E402
from serve_capacity import (SERVE_ONE, SINGLE, capacity_model, parse_replicas, print_capacity,  # noqa: E402
                            proxy_overhead)
from targets import DEFAULT_TARGETS, Target, parse_targets, replica_resources  # noqa: E402

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


def engine_flags(args: argparse.Namespace) -> list[str]:
    """Our engine's flags for every launch of it (the server's own defaults unless given)."""
    engine_args = EngineArgs.from_cli_args(args)
    return engine_args.to_cli_args()


def peer_command(args: argparse.Namespace, port: int) -> list[str] | None:
    """The faster-whisper server on the same weights, or None when faster-whisper is not installed."""
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return None
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

    directory = str(resolve_alias(args.model) if args.model in OFFLINE_ALIASES else args.model)
    return [sys.executable, str(ROOT / "benchmarks" / "peers" / "faster_whisper_server.py"), "--model-dir", directory,
            "--port", str(port), "--compute-type", args.peer_compute_type]


def launch_target(target: Target, args: argparse.Namespace, logs: Path) -> tuple[str, LaunchedServer] | None:
    """Start one target on a free port: (the row's system name, the server), None for a peer that is missing."""
    port = free_port()
    ours = [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", "--port", str(port), *engine_flags(args),
            "--log-level", "warning"]
    log = logs / f"{target.name}.log"
    if target.kind == "single":
        return target.name, LaunchedServer(ours, port, log)
    if target.kind == "peer":
        command = peer_command(args, port)
        if command is None:
            print("faster-whisper is not installed: no peer row")
            return None
        return f"faster-whisper server ({args.peer_compute_type})", LaunchedServer(command, port, log)
    import torch

    resources = replica_resources(target.replicas, args.serve_cpus_per_replica, args.serve_gpus_per_replica,
                                  args.device, torch.cuda.is_available())
    command = [*ours, "--ray", "--num-replicas", str(target.replicas), "--num-cpus-per-replica",
               f"{resources.num_cpus:g}", "--num-gpus-per-replica", f"{resources.num_gpus:g}"]
    # A private Ray temp dir, short (Ray's Unix sockets live below it): this launch's Ray meets no other Ray.
    ray_tmp = tempfile.mkdtemp(prefix="vwray-", dir="/tmp")
    print(f"{target.name}: Ray temp dir {ray_tmp}")
    return target.name, LaunchedServer(command, port, log, replicas=target.replicas, env={"RAY_TMPDIR": ray_tmp},
                                       stop_timeout=args.serve_stop_timeout)


def proxy_pids(server: LaunchedServer) -> list[int]:
    """Serve's HTTP proxy actor(s) of this launch (Ray names the worker process `ray::ProxyActor`)."""
    return [p.pid for p in server.related() if p.cmdline.startswith("ray::ProxyActor")]


async def idle_latencies(url: str, args: argparse.Namespace, clip: Clip) -> list[float]:
    """`--idle-probes` requests one after another on the otherwise idle server: the per-request latency floor."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(args.idle_probes):
            outcome = await one_request(session, f"{url}/v1/audio/transcriptions", args.model, clip, False,
                                        args.timeout)
            if outcome.status == 200:
                latencies.append(outcome.end - outcome.start)
    return latencies


async def benchmark_target(target: Target, args: argparse.Namespace, clips: list[Clip], logs: Path) -> dict | None:
    """Launch, wait for every replica, warm up, probe the idle latency, load, and stop: the target's row."""
    launched = launch_target(target, args, logs)
    if launched is None:
        return None
    system, server = launched
    try:
        await server.wait_ready(args.serve_ready_timeout if target.kind == "serve" else 300.0)
        await one_request_warmup(server.url, args, clips[0])
        idle = await idle_latencies(server.url, args, min(clips, key=lambda c: c.seconds))
        proxies = proxy_pids(server) if target.kind == "serve" else []
        cpu_before = sum(cpu_seconds(pid) for pid in proxies)
        outcomes, wall = await run_load(server.url, args.model, clips, args.concurrency, args.request_rate,
                                        args.duration, args.stream, args.timeout)
        row = summarize(system, outcomes, wall)
        row["idle_e2e_p50_s"] = percentile(idle, 50)
        if target.kind == "serve":
            row["replicas"] = sorted(server.replica_ids - {""})
            ok = row["ok"] or 1
            row["proxy_cpu_s_per_request"] = ((sum(cpu_seconds(pid) for pid in proxies) - cpu_before) / ok
                                              if proxies else None)
        return row
    finally:
        left = server.stop()
        if "RAY_TMPDIR" in server.env:
            shutil.rmtree(server.env["RAY_TMPDIR"], ignore_errors=True)
        if left:
            print(f"{system}: killed {len(left)} leftover process(es) after shutdown: "
                  f"{', '.join(p.cmdline.split()[0] for p in left)}")


async def benchmark_launched(args: argparse.Namespace, clips: list[Clip], logs: Path) -> list[dict]:
    """Each target in turn, in the same run: one row each (none for a peer that is not installed)."""
    rows = []
    for target in parse_targets(args.targets):
        row = await benchmark_target(target, args, clips, logs)
        if row is not None:
            rows.append(row)
    return rows


async def one_request_warmup(url: str, args: argparse.Namespace, clip: Clip) -> None:
    async with aiohttp.ClientSession() as session:
        await one_request(session, f"{url}/v1/audio/transcriptions", args.model, clip, False, args.timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="benchmark this running server instead of launching ours "
                        "and the peer")
    # Our server's engine flags (its defaults unless given); --model also names the peer's weights.
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--request-rate", type=float, default=None, help="open loop at this many requests/s")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds during which requests are sent")
    parser.add_argument("--stream", action="store_true", help="stream=true; measures TTFT and inter-token latency")
    parser.add_argument("--audio", type=Path, nargs="*", default=None, help="audio files (default: synthetic)")
    parser.add_argument("--clips", type=int, default=16, help="synthetic clips to generate")
    parser.add_argument("--max-sentences", type=int, default=8, help="longest synthetic clip, in sentences")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a request counts as lost")
    parser.add_argument("--peer-compute-type", default="int8")
    parser.add_argument("--targets", default=DEFAULT_TARGETS,
                        help="systems to launch, in turn: vllm-whisper, serve-N (Ray Serve, N replicas), "
                        "faster-whisper (skipped when not installed)")
    parser.add_argument("--serve-cpus-per-replica", type=float, default=None,
                        help="CPUs (and torch threads) per Serve replica (default: the machine's cores / N)")
    parser.add_argument("--serve-gpus-per-replica", type=float, default=None,
                        help="GPUs per Serve replica (default: 1 on a CUDA machine, else 0)")
    parser.add_argument("--serve-ready-timeout", type=float, default=600.0,
                        help="seconds for all N Serve replicas to answer before the run fails")
    parser.add_argument("--serve-stop-timeout", type=float, default=60.0,
                        help="seconds after SIGINT before the Serve launch is killed")
    parser.add_argument("--idle-probes", type=int, default=5,
                        help="sequential requests on the idle server before the load (latency floor per target)")
    parser.add_argument("--capacity-replicas", default="1,2,4,8",
                        help="replica counts for the capacity model (printed when vllm-whisper and serve-1 ran)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        parse_targets(args.targets)
        replicas = parse_replicas(args.capacity_replicas)
    except ValueError as exc:
        parser.error(str(exc))

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
    capacity = None
    if {SINGLE, SERVE_ONE} <= {row["system"] for row in rows}:
        overhead = proxy_overhead(rows)
        table = capacity_model(overhead, replicas, rows)
        print_capacity(overhead, table)
        capacity = {"proxy_overhead": asdict(overhead), "model": [asdict(row) for row in table]}
    if args.json:
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("audio", "json")}
        args.json.write_text(json.dumps({"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
                                         "audio_clips": len(clips), "options": meta, "results": rows,
                                         "serve_capacity": capacity}, indent=2))


if __name__ == "__main__":
    main()
