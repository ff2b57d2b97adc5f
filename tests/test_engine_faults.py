"""Engine faults are contained: a fault in one request's model pass (an encoder exception, NaN logits, an
out-of-memory error) fails that request alone while the rest of its batch decodes exactly as without the fault; a
failure of the engine thread itself turns /health to 503 at once and, with --restart-engine-on-failure, the server
serves again."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.testing.engine_runs import outputs_differ, random_window_jobs, run_to_completion
from vllm_whisper.testing.faults import decoder_out_of_memory, failing_encoder, nan_logits
from vllm_whisper.testing.server import serve_in_thread

FAULTS = {"encoder exception": failing_encoder, "NaN logits": nan_logits, "decoder out of memory": decoder_out_of_memory}


def fresh_engine(loaded) -> LLMEngine:
    return LLMEngine(loaded, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=4))


@pytest.fixture(scope="module")
def jobs_and_clean_run(tiny_en):
    jobs = random_window_jobs(tiny_en, 5, seed=3)  # four greedy windows and a two-beam one, batched together
    return jobs, run_to_completion(fresh_engine(tiny_en), jobs)


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_fault_fails_its_request_alone(tiny_en, jobs_and_clean_run, fault):
    jobs, clean = jobs_and_clean_run
    for victim in ("r1", "r4"):  # a greedy request, then the beam-search one
        engine = fresh_engine(tiny_en)
        with FAULTS[fault](engine, lambda request: request.request_id == victim):
            got = run_to_completion(engine, jobs)
        assert got[victim].finish_reason == "error" and got[victim].error
        others = {k: v for k, v in got.items() if k != victim}
        assert outputs_differ(others, {k: v for k, v in clean.items() if k != victim}) == []
        stats = engine.stats
        assert stats.failed_requests == 1
        assert stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_free_cross_slots == stats.num_cross_slots
        # the engine is still correct afterwards
        assert outputs_differ(run_to_completion(engine, [(f"again-{j[0]}", *j[1:]) for j in jobs[:2]]),
                              {f"again-{k}": v for k, v in clean.items() if k in ("r0", "r1")}) == []


def _wav(clip_seconds: float, tmp_path) -> bytes:
    from vllm_whisper.testing.encode import encode_audio

    rng = np.random.default_rng(1)
    samples = rng.normal(0, 0.02, int(clip_seconds * 16000)).astype(np.float32)
    return encode_audio(samples, 16000, tmp_path / "poison.wav").read_bytes()


def test_a_poisoned_upload_gets_a_500_and_the_others_are_served(english_clips, tmp_path):
    poison_seconds = 1.37
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25") as server:
        url = f"{server.base_url}/v1/audio/transcriptions"
        clips = [c.path.read_bytes() for c in english_clips[:3]]

        def post(data: bytes) -> httpx.Response:
            return httpx.post(url, files={"file": ("a.wav", data)}, timeout=120)

        clean = [post(c).json()["text"] for c in clips]
        poisoned = lambda request: abs(request.audio_seconds - poison_seconds) < 1e-6  # noqa: E731
        with nan_logits(server.state.engine.engine, poisoned):
            with ThreadPoolExecutor(4) as pool:
                responses = list(pool.map(post, [clips[0], _wav(poison_seconds, tmp_path), clips[1], clips[2]]))
        bad = responses[1]
        assert bad.status_code == 500, bad.text
        assert bad.json()["error"]["type"] == "server_error" and bad.json()["error"]["code"] == "internal_error"
        assert "non-finite logits" in bad.json()["error"]["message"]
        assert [r.json()["text"] for r in responses[:1] + responses[2:]] == clean
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        assert post(clips[0]).json()["text"] == clean[0]


def test_a_failed_engine_thread_restarts_with_the_flag(fox_clip):
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25",
                         "--restart-engine-on-failure") as server:
        url = f"{server.base_url}/v1/audio/transcriptions"
        wav = fox_clip.path.read_bytes()
        before = httpx.post(url, files={"file": ("a.wav", wav)}, timeout=60).json()["text"]

        def broken_step():
            raise RuntimeError("simulated engine failure")

        async_engine = server.state.engine
        async_engine.engine.step = broken_step  # the next step in the engine thread raises outside any request
        failed = httpx.post(url, files={"file": ("a.wav", wav)}, timeout=60)
        assert failed.status_code == 503 and int(failed.headers["retry-after"]) > 0
        deadline = time.monotonic() + 30
        while async_engine.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert async_engine.restarts == 1
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
        after = httpx.post(url, files={"file": ("a.wav", wav)}, timeout=60)
        assert after.status_code == 200 and after.json()["text"] == before


def test_without_the_flag_a_dead_engine_answers_503_within_a_second(fox_clip):
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25") as server:
        url = f"{server.base_url}/v1/audio/transcriptions"

        def broken_step():
            raise RuntimeError("simulated engine failure")

        server.state.engine.engine.step = broken_step
        httpx.post(url, files={"file": ("a.wav", fox_clip.path.read_bytes())}, timeout=60)
        started = time.monotonic()
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 503
        assert httpx.post(url, files={"file": ("a.wav", fox_clip.path.read_bytes())}, timeout=5).status_code == 503
        assert time.monotonic() - started < 1.0
