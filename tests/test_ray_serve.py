"""The server on Ray Serve: a local Ray (started here, loopback, a few logical CPUs), the real tiny.en engine in
each replica, Serve's real proxy, and the real clients (openai, httpx, websockets).

`vllm-whisper serve --ray` runs in a subprocess against the test's cluster; the autoscaling test deploys through
the application builder (`serve run`'s path); the config files are validated with Ray's own schema. The replica
plan and the proxy's replica-loss middleware are also checked without Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import websockets

from vllm_whisper.audio import load_audio
from vllm_whisper.entrypoints.api_server import build_parser
from vllm_whisper.entrypoints.ray_serve.options import (APP_NAME, DEPLOYMENT_NAME, ReplicaPlan, check_ray_flags,
                                                        replica_plan)
from vllm_whisper.entrypoints.ray_serve.proxy_errors import (CLOSE_SERVICE_RESTART, PROXY_CALLBACK,
                                                             PROXY_CALLBACK_ENV, ReplicaLossMiddleware)
from vllm_whisper.entrypoints.ray_serve.replica_header import REPLICA_HEADER
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.realtime_client import stream_audio
from vllm_whisper.testing.speech import HARVARD_SENTENCES, normalize_text, synthesize
from vllm_whisper.testing.timeline import speech_bounds
from vllm_whisper.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "ray-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SERVER_FLAGS = ["--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25", "--api-key", API_KEY]


def words_match(expected: str, got: str, allowed_errors: int = 2) -> bool:
    want, have = normalize_text(expected).split(), normalize_text(got).split()
    return len(set(want) - set(have)) <= allowed_errors


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- without Ray: the replica plan, the flags, the proxy middleware ------------------------------------------------

def parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(list(flags))


def test_replica_plan_from_flags():
    plan = replica_plan(parse("--ray", "--num-replicas", "3"), cluster_has_gpus=False)
    assert plan == ReplicaPlan(num_replicas=3, autoscaling_config=None, max_ongoing_requests=32 + 256, num_cpus=1.0,
                               num_gpus=0.0, graceful_shutdown_timeout_s=30.0)
    options = plan.deployment_options()
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0} and options["name"] == DEPLOYMENT_NAME

    auto = replica_plan(parse("--ray", "--min-replicas", "1", "--max-replicas", "4", "--max-num-seqs", "16"),
                        cluster_has_gpus=True)
    assert auto.num_gpus == 1.0  # device unset and the cluster has GPUs: one per replica
    assert auto.autoscaling_config == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                       "target_ongoing_requests": 8.0}
    assert "num_replicas" not in auto.deployment_options() and auto.max_ongoing_requests == 16 + 256
    assert replica_plan(parse("--ray", "--device", "cuda"), cluster_has_gpus=False).num_gpus == 1.0
    assert replica_plan(parse("--ray", "--device", "cpu", "--num-cpus-per-replica", "4"),
                        cluster_has_gpus=True) .num_cpus == 4.0

    for flags, message in ((("--num-replicas", "2", "--max-replicas", "3"), "either"),
                           (("--min-replicas", "3", "--max-replicas", "2"), "min <= max"),
                           (("--target-ongoing-requests", "4"), "autoscaling range"),
                           (("--num-replicas", "0"), "at least 1"),
                           (("--device", "cpu", "--num-gpus-per-replica", "1"), "GPUs the replicas never use")):
        with pytest.raises(ValueError, match=message):
            replica_plan(parse("--ray", *flags), cluster_has_gpus=False)


def test_ray_flags_need_ray():
    check_ray_flags(parse("--num-replicas", "2", "--ray"))
    check_ray_flags(parse())
    with pytest.raises(ValueError, match="--ray-address, --num-replicas only apply with --ray"):
        check_ray_flags(parse("--num-replicas", "2", "--ray-address", "auto"))


def run_middleware(app, kind: str = "http") -> list[dict]:
    """The messages ReplicaLossMiddleware sends for one HTTP request (or WebSocket session) to `app`."""
    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(ReplicaLossMiddleware(app)({"type": kind, "method": "POST", "path": "/v1/x"}, receive, send))
    return sent


def test_proxy_middleware_turns_a_lost_replica_into_retriable_errors():
    async def died_before_answering(scope, receive, send):
        return  # what Serve's proxy does when the replica actor died: nothing sent

    start, body = run_middleware(died_before_answering)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "replica_unavailable"

    async def died_mid_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b'data: {"type": "transcript.text.delta"}\n\n',
                    "more_body": True})

    *_, last = run_middleware(died_mid_stream)
    assert last["more_body"] is False
    error, done = last["body"].decode().split("\n\n")[:2]
    event = json.loads(error.removeprefix("data: "))
    assert event["type"] == "error" and event["error"]["code"] == "replica_unavailable" and done == "data: [DONE]"

    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    assert [m.get("status") for m in run_middleware(answered)] == [500, None]  # real answers pass untouched

    async def session_lost(scope, receive, send):
        await send({"type": "websocket.accept"})

    accept, event, close = run_middleware(session_lost, "websocket")
    assert json.loads(event["text"])["error"]["code"] == "replica_unavailable"
    assert close["type"] == "websocket.close" and close["code"] == CLOSE_SERVICE_RESTART


# --- the config files, validated by Ray's own schema ---------------------------------------------------------------

def check_serve_config(config: dict, gpus_per_replica: float) -> argparse.Namespace:
    """Ray's schema accepts the config; its application is our builder, whose args parse with the server's flags
    into an autoscaling plan and build a Serve application. Returns the parsed flags."""
    pytest.importorskip("ray.serve", reason="Ray Serve is the optional `ray` extra: pip install -e .[ray]")
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from vllm_whisper.entrypoints.ray_serve.app import app_builder, parse_server_args

    schema = ServeDeploySchema.model_validate(config)
    [application] = schema.applications
    module, attribute = application.import_path.split(":")
    assert getattr(importlib.import_module(module), attribute) is app_builder
    assert application.route_prefix == "/" and application.name == APP_NAME
    assert [d.name for d in application.deployments] == [DEPLOYMENT_NAME]  # overrides reach our deployment
    args = parse_server_args(application.args)
    plan = replica_plan(args, cluster_has_gpus=False)
    auto = plan.autoscaling_config
    assert auto and 1 <= auto["min_replicas"] < auto["max_replicas"] and plan.num_gpus == gpus_per_replica
    assert isinstance(app_builder(application.args), Application)
    return args


def test_serve_deploy_config_is_valid():
    config = yaml_load(ROOT / "deploy" / "serve_config.yaml")
    args = check_serve_config(config, gpus_per_replica=0.0)
    assert args.model == "tiny.en" and config["http_options"]["port"] == 8000


def test_kuberay_rayservice_runs_the_serve_app_on_autoscaled_gpu_workers():
    ray = pytest.importorskip("ray", reason="Ray Serve is the optional `ray` extra: pip install -e .[ray]")
    manifest = yaml_load(ROOT / "deploy" / "kuberay" / "rayservice.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    serve_config = manifest["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str), "KubeRay takes serveConfigV2 as a YAML string"
    args = check_serve_config(yaml_loads(serve_config), gpus_per_replica=1.0)
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    [workers] = cluster["workerGroupSpecs"]
    [worker] = workers["template"]["spec"]["containers"]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and float(worker["resources"]["limits"]["cpu"]) >= args.num_cpus_per_replica
    assert workers["minReplicas"] < workers["maxReplicas"] and workers["maxReplicas"] * gpus >= args.max_replicas
    head = cluster["headGroupSpec"]
    containers = [*head["template"]["spec"]["containers"], worker]
    for container in containers:  # every proxy answers a lost replica with a retriable error
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[PROXY_CALLBACK_ENV] == PROXY_CALLBACK and "VLLM_API_KEY" in env
        assert container["image"].endswith(":ray-cuda"), "the `ray` stage of docker/Dockerfile.cuda"
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas only on the GPU workers


def yaml_loads(text: str) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the `ray` extra")
    return yaml.safe_load(text)


def yaml_load(path: Path) -> dict:
    return yaml_loads(path.read_text(encoding="utf-8"))


# --- on Ray ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray on loopback whose Serve proxy has the replica-loss middleware; metrics exported on a port."""
    ray = pytest.importorskip("ray", reason="Ray Serve is the optional `ray` extra: pip install -e .[ray]")
    serve = pytest.importorskip("ray.serve")
    os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK  # inherited by the proxy actor
    metrics_port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port, logging_level="WARNING",
             _system_config={"metrics_report_interval_ms": 1000})
    try:
        yield argparse.Namespace(ray=ray, serve=serve, gcs=ray.get_runtime_context().gcs_address,
                                 metrics_port=metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(PROXY_CALLBACK_ENV, None)


def replica_actor_names(ray_cluster, app: str = APP_NAME) -> dict[str, str]:
    """Live replicas of the app: replica id -> the actor's name in Serve's namespace (Ray's named-actor registry,
    which needs no dashboard)."""
    prefix = f"SERVE_REPLICA::{app}#{DEPLOYMENT_NAME}#"
    names = ray_cluster.ray.util.list_named_actors(all_namespaces=True)
    return {entry["name"][len(prefix):]: entry["name"] for entry in names
            if entry["namespace"] == "serve" and entry["name"].startswith(prefix)}


def replica_ids(ray_cluster, app: str = APP_NAME) -> set[str]:
    return set(replica_actor_names(ray_cluster, app))


def running_replicas(ray_cluster, app: str = APP_NAME) -> int:
    status = ray_cluster.serve.status().applications.get(app)
    if status is None or DEPLOYMENT_NAME not in status.deployments:
        return 0
    return status.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def server(ray_cluster):
    """`vllm-whisper serve --ray --num-replicas 2` (as `python -m ...api_server`) on the test's cluster."""
    port = free_port()
    command = [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", *SERVER_FLAGS, "--ray",
               "--ray-address", ray_cluster.gcs, "--num-replicas", "2", "--num-cpus-per-replica", "1",
               "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"`serve --ray` exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            return httpx.get(f"{base_url}/health", timeout=5).status_code == 200 and running_replicas(
                ray_cluster) == 2
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 240, "two replicas behind Serve's proxy")
        yield argparse.Namespace(base_url=base_url, process=process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, process.stderr.read()[-3000:]
    assert APP_NAME not in ray_cluster.serve.status().applications  # the CLI deleted its application on exit


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def two_sentences(speech_dir):
    """Two sentences with a pause (two subtitle cues), as MP3, and their text."""
    gap = np.zeros(8000, dtype=np.float32)
    parts = []
    for i, text in enumerate(HARVARD_SENTENCES[4:6]):
        parts += [load_audio(synthesize(text, speech_dir / f"ray{i}.wav", "flite", "slt").path), gap]
    return encode_audio(np.concatenate(parts), 16000, speech_dir / "ray_two.mp3"), " ".join(HARVARD_SENTENCES[4:6])


def sse_events(body: str) -> list[dict]:
    """The JSON events of an SSE body; it must end with `data: [DONE]`, which is left out."""
    lines = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert lines and lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(line) for line in lines[:-1]]


def test_every_response_format_through_serve(client, fox_clip, two_sentences):
    with open(fox_clip.path, "rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)
    result = raw.parse()
    assert words_match(fox_clip.text, result.text, allowed_errors=1)
    assert raw.headers[REPLICA_HEADER]
    with open(fox_clip.path, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"])
    assert verbose.text == result.text and 2.0 < verbose.duration < 4.0 and verbose.words
    path, text = two_sentences
    with open(path, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "\n\n2\n" in srt and words_match(text, srt)
    with open(path, "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert words_match(text, plain)


def test_streams_through_serve(client, server, two_sentences):
    path, text = two_sentences
    with open(path, "rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    deltas, done = events[:-1], events[-1]
    assert done.type == "transcript.text.done" and len(deltas) > 5
    assert "".join(d.delta for d in deltas) == done.text and words_match(text, done.text)

    with httpx.stream("POST", f"{server.base_url}/v1/audio/transcriptions", headers=AUTH, timeout=120,
                      files={"file": ("two.mp3", path.read_bytes(), "audio/mpeg")},
                      data={"response_format": "srt", "stream": "true"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        cues = sse_events("\n".join(response.iter_lines()))
    assert cues[-1]["type"] == "transcript.text.done" and len(cues) >= 3
    assert "".join(c["delta"] for c in cues[:-1]) == cues[-1]["text"]


def test_realtime_turn_through_serve(server, speech_dir):
    clip = load_audio(synthesize(HARVARD_SENTENCES[4], speech_dir / "ray_realtime.wav").path)
    start, end = speech_bounds(clip)
    clip = clip[start:end]
    audio = np.concatenate([np.zeros(8000, np.float32), clip, np.zeros(24000, np.float32)])
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    run = asyncio.run(stream_audio(url, audio, (0.5, 0.5 + clip.size / 16000), headers=AUTH))
    kinds = [e.event["type"] for e in run.events]
    assert kinds[0] == "transcription_session.created" and "input_audio_buffer.committed" in kinds
    [transcript] = run.transcripts
    assert words_match(HARVARD_SENTENCES[4], transcript)

    async def handshake_headers():
        async with websockets.connect(url, additional_headers=AUTH) as ws:
            return ws.response.headers

    assert asyncio.run(handshake_headers())[REPLICA_HEADER]  # the session's replica, named on the handshake


def test_auth_models_health_metrics_and_both_replicas(server, client, ray_cluster):
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    assert [m.id for m in client.models.list().data] == ["tiny.en", "whisper-1"]
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert "vllm:num_requests_running" in httpx.get(f"{server.base_url}/metrics").text

    async def burst() -> set[str]:
        async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=30) as http:
            responses = await asyncio.gather(*(http.get("/v1/models") for _ in range(16)))
        assert all(r.status_code == 200 for r in responses)
        return {r.headers[REPLICA_HEADER] for r in responses}

    seen = set().union(*(asyncio.run(burst()) for _ in range(3)))
    assert seen == replica_ids(ray_cluster)  # both replicas answered, and the header names Ray's replicas
    assert len(seen) == 2


def test_each_replicas_engine_metrics_reach_prometheus_through_ray(server, client, fox_clip, ray_cluster):
    for _ in range(4):
        with open(fox_clip.path, "rb") as f:
            client.audio.transcriptions.create(model="whisper-1", file=f)
    replicas = replica_ids(ray_cluster)

    def exported() -> bool:
        text = httpx.get(f"http://127.0.0.1:{ray_cluster.metrics_port}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("ray_vllm_num_requests_running{")]
        audio = [line for line in text.splitlines()
                 if line.startswith("ray_vllm_whisper_audio_seconds_processed_total{")]
        return ({r for r in replicas if any(f'replica="{r}"' in line for line in lines)} == replicas
                and any(float(line.rsplit(" ", 1)[1]) > 0 for line in audio) and "ray_serve_" in text)

    wait_until(exported, 60, "both replicas' engine metrics on Ray's Prometheus endpoint", interval=2)


# --- failure and autoscaling -----------------------------------------------------------------------------------------

async def transcribe_once(http: httpx.AsyncClient, path: str, audio: bytes, stream: bool) -> dict:
    """One upload; what came back, or the exception that ended it."""
    data = {"model": "whisper-1", **({"stream": "true"} if stream else {})}
    try:
        async with http.stream("POST", path, files={"file": ("fox.wav", audio, "audio/wav")}, data=data) as response:
            body = (await response.aread()).decode()
            return {"status": response.status_code, "headers": response.headers, "body": body, "stream": stream}
    except Exception as exc:  # noqa: BLE001 - a cut connection or a timeout is what the test must not see
        return {"error": repr(exc), "stream": stream}


def classify(outcome: dict, expected_text: str) -> str:
    """'ok' (a correct answer), 'retriable' (503 + Retry-After, or a stream's final error event) or what went wrong."""
    if "error" in outcome:
        return f"broken: {outcome['error']}"
    status, body = outcome["status"], outcome["body"]
    if status == 503 and outcome["headers"].get("retry-after"):
        return "retriable"
    if status != 200:
        return f"status {status}: {body[:200]}"
    if outcome["stream"]:
        events = sse_events(body)
        last = events[-1] if events else {}
        if last.get("type") == "error" and last["error"].get("code") == "replica_unavailable":
            return "retriable"
        text = last.get("text", "") if last.get("type") == "transcript.text.done" else ""
    else:
        text = json.loads(body)["text"]
    return "ok" if words_match(expected_text, text, allowed_errors=1) else f"wrong text {text!r}"


async def until_closed(ws) -> tuple[list[dict], int | None]:
    """A realtime session's events up to its close, and the close code."""
    events = []
    try:
        async for message in ws:
            events.append(json.loads(message))
    except websockets.ConnectionClosed:
        pass
    return events, ws.close_code


def test_a_replica_killed_mid_burst_is_replaced_and_nothing_hangs(server, ray_cluster, fox_clip):
    ray = ray_cluster.ray
    audio = Path(fox_clip.path).read_bytes()
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    victim_id = None

    async def burst():
        nonlocal victim_id
        async with websockets.connect(url, additional_headers=AUTH) as session, \
                httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=120) as http:
            victim_id = session.response.headers[REPLICA_HEADER]  # the replica holding this realtime session
            victim = ray.get_actor(replica_actor_names(ray_cluster)[victim_id], namespace="serve")

            def launch(count: int, offset: int):
                return [asyncio.create_task(transcribe_once(http, "/v1/audio/transcriptions", audio,
                                                            stream=(offset + i) % 3 == 0)) for i in range(count)]

            before = launch(20, 0)
            await asyncio.sleep(1.5)  # both replicas busy with the burst
            ray.kill(victim, no_restart=True)
            await asyncio.sleep(0.5)
            after = launch(10, 20)  # sent while Serve notices the loss and starts a replacement
            return (await asyncio.wait_for(asyncio.gather(*before), 180),
                    await asyncio.wait_for(asyncio.gather(*after), 180),
                    await asyncio.wait_for(until_closed(session), 60))

    started = time.monotonic()
    before, after, (session_events, close_code) = asyncio.run(burst())
    assert session_events[-1]["type"] == "error" and session_events[-1]["error"]["code"] == "replica_unavailable"
    assert close_code == CLOSE_SERVICE_RESTART  # the realtime client learns to reconnect, it is not left hanging
    kinds = [classify(o, fox_clip.text) for o in before + after]
    print(f"burst of 30 with a kill: {kinds.count('ok')} ok, {kinds.count('retriable')} retriable, "
          f"{time.monotonic() - started:.1f} s")
    assert all(kind in ("ok", "retriable") for kind in kinds), kinds
    assert "retriable" in kinds[:20], "no request was in flight on the killed replica"
    assert kinds[20:].count("ok") >= 5, kinds[20:]  # new requests are served while the replica is replaced

    replaced = wait_until(lambda: running_replicas(ray_cluster) == 2 and len(ids := replica_ids(ray_cluster)) == 2
                          and victim_id not in ids and ids, 180, "Serve to replace the killed replica")

    async def afterwards():
        async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=120) as http:
            outcomes = await asyncio.gather(*(transcribe_once(http, "/v1/audio/transcriptions", audio, stream=False)
                                              for _ in range(6)))
            seen = {r.headers[REPLICA_HEADER] for r in
                    await asyncio.gather(*(http.get("/v1/models") for _ in range(16)))}
        return outcomes, seen

    outcomes, seen = asyncio.run(afterwards())
    assert [classify(o, fox_clip.text) for o in outcomes] == ["ok"] * 6
    assert seen == replaced


def test_autoscaling_goes_from_one_to_two_replicas_under_load_and_back(ray_cluster, fox_clip):
    from vllm_whisper.entrypoints.ray_serve.app import parse_server_args, whisper_application

    args = parse_server_args({"model": "tiny.en", "dtype": "float32", "kv_cache_space": 0.25, "api_key": API_KEY,
                              "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1})
    fast = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
            "upscale_delay_s": 1, "downscale_delay_s": 3, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    serve = ray_cluster.serve
    serve.run(whisper_application(args, autoscaling_config=fast), name="autoscale", route_prefix="/autoscale")
    base_url = f"http://127.0.0.1:{serve.context._global_client.http_config.port}/autoscale"
    audio = Path(fox_clip.path).read_bytes()
    try:
        assert running_replicas(ray_cluster, "autoscale") == 1
        assert httpx.get(f"{base_url}/v1/models").status_code == 401  # the key holds under a route prefix too
        loaded = asyncio.Event()

        async def client_loop(http: httpx.AsyncClient) -> list[str]:
            kinds = []
            while not loaded.is_set():
                kinds.append(classify(await transcribe_once(http, "/v1/audio/transcriptions", audio, False),
                                      fox_clip.text))
            return kinds

        async def load() -> tuple[float, list[str]]:
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=120) as http:
                clients = [asyncio.create_task(client_loop(http)) for _ in range(4)]
                while running_replicas(ray_cluster, "autoscale") < 2:
                    assert time.monotonic() - started < 120, "no second replica after 120 s of load"
                    await asyncio.sleep(0.5)
                loaded.set()
                results = await asyncio.gather(*clients)
            return time.monotonic() - started, [kind for kinds in results for kind in kinds]

        up_after, kinds = asyncio.run(load())
        assert kinds and all(kind == "ok" for kind in kinds), kinds
        idle = time.monotonic()
        wait_until(lambda: running_replicas(ray_cluster, "autoscale") == 1
                   and ray_cluster.serve.status().applications["autoscale"].deployments[DEPLOYMENT_NAME]
                   .replica_states.get("STOPPING", 0) == 0, 120, "the scale-down to one replica")
        print(f"autoscaling: 2 replicas after {up_after:.1f} s of load, back to 1 {time.monotonic() - idle:.1f} s "
              "after it stopped")
    finally:
        serve.delete("autoscale")
