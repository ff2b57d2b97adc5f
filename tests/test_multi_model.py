"""Several models behind one server (issue 17 item 4): a real server process serving tiny.en and base with a 3 s
--model-ttl, driven by the `openai` client: routing by name, /v1/models, the 404 for unknown names, the idle unload
measured on the process's RSS, the reload, and the memory budget's 503."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from vllm_whisper.engine_args import EngineArgs
from vllm_whisper.entrypoints.model_footprint import GIB, Footprint
from vllm_whisper.entrypoints.model_registry import ModelRegistry
from vllm_whisper.entrypoints.model_specs import ModelSpec
from vllm_whisper.entrypoints.openai.errors import OpenAIError
from vllm_whisper.testing.ports import free_port
from vllm_whisper.testing.speech import normalize_text

TTL_S = 3.0


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A --models-dir with one model too big for any budget: a sparse 64 GiB model.bin (no disk used)."""
    root = tmp_path_factory.mktemp("models")
    (root / "huge").mkdir()
    (root / "huge" / "config.json").write_text("{}")
    with open(root / "huge" / "model.bin", "wb") as f:
        f.truncate(64 * GIB)
    return root


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    """`serve tiny.en --model base --models-dir DIR --model-ttl 3 --models-memory-budget-gib 8` in its own process."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    command = [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", "tiny.en", "--model", "base",
               "--models-dir", str(models_dir), "--model-ttl", str(TTL_S), "--models-memory-budget-gib", "8",
               "--dtype", "float32", "--kv-cache-space", "0.25", "--port", str(port), "--disable-log-stats"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError(f"the server did not start:\n{log.read()[-3000:]}")
        time.sleep(0.2)
    yield process, base_url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key="unused", max_retries=0, timeout=120)


def rss_mib(pid: int) -> float:
    """The process's resident set size (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def loaded(base_url: str) -> dict[str, bool]:
    return {card["id"]: card["loaded"] for card in httpx.get(f"{base_url}/v1/models").json()["data"]}


def transcribe(client: openai.OpenAI, model: str, clip) -> str:
    with open(clip.path, "rb") as f:
        return client.audio.transcriptions.create(model=model, file=f).text


def close_to(expected: str, got: str) -> bool:
    """At most one of the expected words missed (tiny.en hears "jump" for "jumps")."""
    return len(set(normalize_text(expected).split()) - set(normalize_text(got).split())) <= 1


def test_models_lists_every_model_with_its_loaded_state(server):
    assert loaded(server[1]) == {"tiny.en": True, "whisper-1": True, "base": False, "huge": False}


def test_each_model_answers_by_name_and_unloads_when_idle(server, client, fox_clip):
    process, base_url = server
    expected = normalize_text(fox_clip.text)
    assert close_to(expected, transcribe(client, "tiny.en", fox_clip))
    before = rss_mib(process.pid)
    assert normalize_text(transcribe(client, "base", fox_clip)) == expected  # loads base on this request
    assert loaded(base_url)["base"] is True
    with_base = rss_mib(process.pid)
    deadline = time.monotonic() + TTL_S + 10
    while loaded(base_url)["base"] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert loaded(base_url) == {"tiny.en": True, "whisper-1": True, "base": False, "huge": False}
    after = rss_mib(process.pid)
    print(f"RSS MiB: before base {before:.0f}, with base {with_base:.0f}, after the TTL {after:.0f}")
    assert with_base > before + 100  # base's weights and caches really were resident
    assert abs(after - before) <= 0.10 * before
    assert normalize_text(transcribe(client, "base", fox_clip)) == expected  # loads again
    assert loaded(base_url)["base"] is True
    assert close_to(expected, transcribe(client, "whisper-1", fox_clip))  # the default's names still work


def test_an_unknown_model_is_a_404_naming_the_served_ones(client, fox_clip):
    with pytest.raises(openai.NotFoundError) as caught:
        transcribe(client, "large-v9", fox_clip)
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert all(name in error["message"] for name in ("tiny.en", "whisper-1", "base", "huge"))


def test_a_model_over_the_memory_budget_is_a_503(server, client, fox_clip):
    with pytest.raises(openai.InternalServerError) as caught:
        transcribe(client, "huge", fox_clip)
    response = caught.value.response
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    error = caught.value.body
    assert error["code"] == "model_does_not_fit"
    assert "8 GiB" in error["message"] and "64.25 GiB" in error["message"]
    assert loaded(server[1])["huge"] is False


@dataclass
class _Runtime:
    """What the registry reads of a loaded model: whether requests run on it, and how to stop it."""

    busy: bool = False
    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True


def test_the_budget_unloads_idle_models_first_and_refuses_when_busy():
    specs = [ModelSpec(name, (name,), EngineArgs(model=name)) for name in ("a", "b", "c")]
    sizes = {"a": 1 * GIB, "b": 2 * GIB, "c": 2 * GIB}
    registry = ModelRegistry(specs, lambda entry: _Runtime(), ttl=None, budget_gib=4.5,
                             estimate=lambda spec: Footprint(sizes[spec.name], 0))
    registry.load_at_start()  # a and b fit (3 GiB); c does not beside them
    assert [entry.runtime is not None for entry in registry.entries] == [True, True, False]
    b_runtime = registry.entries[1].runtime
    b_runtime.busy = True
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(registry.acquire("c"))
    assert caught.value.status == 503 and caught.value.code == "model_does_not_fit"
    assert "4.5 GiB" in caught.value.message and "'c' needs an estimated 2.00 GiB" in caught.value.message
    b_runtime.busy = False
    asyncio.run(registry.acquire("c"))  # b is idle now: unloaded to make room (a, the default, stays)
    assert b_runtime.stopped and [entry.runtime is not None for entry in registry.entries] == [True, False, True]


def request_counts(base_url: str) -> dict[tuple[str, str], float]:
    """Per-upload series of /metrics by (sample name, model_name): answered requests, latency and RTF counts."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"vllm:request_success_total", "vllm:e2e_request_latency_seconds_count",
              "vllm_whisper:request_real_time_factor_count", "vllm_whisper:audio_seconds_processed_total"}
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        for sample in family.samples:
            if sample.name in wanted:
                key = (sample.name, sample.labels["model_name"])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def test_metrics_count_each_models_requests_under_its_model_name(server, client, fox_clip):
    """One request to each model adds exactly one answered request to that model's `model_name` series."""
    base_url = server[1]
    before = request_counts(base_url)
    transcribe(client, "tiny.en", fox_clip)
    transcribe(client, "base", fox_clip)
    after = request_counts(base_url)
    duration = 2.9  # the fox clip is 2.97 s long
    for model in ("tiny.en", "base"):
        delta = {name: value - before.get((name, label), 0.0)
                 for (name, label), value in after.items() if label == model}
        assert delta["vllm:request_success_total"] == 1, (model, delta)
        assert delta["vllm:e2e_request_latency_seconds_count"] == 1, (model, delta)
        assert delta["vllm_whisper:request_real_time_factor_count"] == 1, (model, delta)
        assert duration < delta["vllm_whisper:audio_seconds_processed_total"] < duration + 0.2, (model, delta)
