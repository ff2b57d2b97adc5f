"""When the engine thread dies (an internal bug), clients get 503 with Retry-After and /health says so,
instead of hanging or seeing a 500."""

from __future__ import annotations

import httpx
import pytest

from vllm_whisper.testing.server import serve_in_thread


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25") as running:
        yield running


def test_a_dead_engine_answers_503(server, fox_clip):
    url = f"{server.base_url}/v1/audio/transcriptions"
    wav = fox_clip.path.read_bytes()
    assert httpx.post(url, files={"file": ("a.wav", wav)}, timeout=60).status_code == 200

    def broken_step():
        raise RuntimeError("simulated engine failure")

    server.state.engine.engine.step = broken_step  # the next step in the engine thread raises
    failed = httpx.post(url, files={"file": ("a.wav", wav)}, timeout=60)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["type"] == "server_error" and "simulated engine failure" in failed.json()["error"]["message"]
    assert int(failed.headers["retry-after"]) > 0
    assert httpx.get(f"{server.base_url}/health").status_code == 503
    after = httpx.post(url, files={"file": ("a.wav", wav)}, timeout=60)
    assert after.status_code == 503 and "restart" in after.json()["error"]["message"]
