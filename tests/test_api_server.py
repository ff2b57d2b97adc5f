"""The OpenAI-compatible server on a real uvicorn with tiny.en, driven by real clients: the official `openai`
package (sync and async, every response format, streaming), aiohttp and curl for server-sent events."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import httpx
import numpy as np
import openai
import pytest

from vllm_whisper.audio import load_audio
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.server import serve_in_thread
from vllm_whisper.testing.speech import HARVARD_SENTENCES, normalize_text, synthesize


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.5") as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def story(speech_dir):
    """Five sentences with pauses (about 14 s, several segments), as MP3 and its text."""
    gap = np.zeros(6400, dtype=np.float32)
    parts = []
    for i, text in enumerate(HARVARD_SENTENCES[:5]):
        parts += [load_audio(synthesize(text, speech_dir / f"story{i}.wav", "flite", "slt").path), gap]
    path = encode_audio(np.concatenate(parts), 16000, speech_dir / "story.mp3")
    return path, " ".join(HARVARD_SENTENCES[:5])


def words_match(expected: str, got: str, allowed_errors: int = 3) -> bool:
    want, have = normalize_text(expected).split(), normalize_text(got).split()
    return len(set(want) - set(have)) <= allowed_errors


def test_json_text_and_verbose_json(client, fox_clip):
    with open(fox_clip.path, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert words_match(fox_clip.text, result.text, allowed_errors=1)
    with open(fox_clip.path, "rb") as f:
        text = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="text")
    assert isinstance(text, str) and text.strip() == result.text
    with open(fox_clip.path, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert verbose.language == "english" and verbose.text == result.text
    assert 2.0 < verbose.duration < 4.0
    segment = verbose.segments[0]
    assert segment.start == 0.0 and segment.end <= verbose.duration and segment.tokens
    assert segment.avg_logprob < 0 and 0 <= segment.no_speech_prob < 0.6 and segment.compression_ratio > 0


def test_subtitles(client, story):
    path, text = story
    with open(path, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    cues = [c for c in srt.strip().split("\n\n")]
    assert len(cues) >= 3 and cues[0].startswith("1\n00:00:00,000 --> 00:00:0")
    assert words_match(text, " ".join(c.split("\n", 2)[2] for c in cues))
    with open(path, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt.count(" --> ") == len(cues)


def test_tsv_and_unknown_fields_through_httpx(server, fox_clip):
    with open(fox_clip.path, "rb") as f:
        response = httpx.post(f"{server.base_url}/v1/audio/transcriptions", timeout=120,
                              files={"file": ("fox.wav", f, "audio/wav")},
                              data={"response_format": "tsv", "some_future_field": "ignored"})
    assert response.status_code == 200
    header, *rows = response.text.strip().split("\n")
    assert header == "start\tend\ttext" and rows and rows[0].split("\t")[0] == "0"


def test_async_client_runs_requests_concurrently(server, fox_clip, story):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        fox, story_bytes = fox_clip.path.read_bytes(), story[0].read_bytes()
        calls = [client.audio.transcriptions.create(model="whisper-1", file=("a.wav", fox)) for _ in range(3)]
        calls += [client.audio.transcriptions.create(model="whisper-1", file=("b.mp3", story_bytes),
                                                     response_format="srt") for _ in range(2)]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert len({r.text for r in results[:3]}) == 1
    assert words_match(fox_clip.text, results[0].text, allowed_errors=1)
    assert results[3] == results[4] and results[3].startswith("1\n")


def test_openai_client_streams_deltas_then_done(client, story):
    path, text = story
    with open(path, "rb") as f:
        stream = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events = list(stream)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done" and len(deltas) > 10
    assert "".join(d.delta for d in deltas) == done.text
    assert words_match(text, done.text)
    assert done.usage.output_tokens > 10 and done.usage.input_tokens > 600
    with open(path, "rb") as f:
        offline = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert offline.text == done.text


def test_srt_cues_stream_as_they_close_over_aiohttp(server, story):
    async def main():
        form = aiohttp.FormData()
        form.add_field("file", story[0].read_bytes(), filename="story.mp3", content_type="audio/mpeg")
        form.add_field("response_format", "srt")
        form.add_field("stream", "true")
        events = []
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.base_url}/v1/audio/transcriptions", data=form) as response:
                assert response.status == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.content:
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip())
        return events

    payloads = asyncio.run(main())
    assert payloads[-1] == b"[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    cues, done = events[:-1], events[-1]
    assert done["type"] == "transcript.text.done" and len(cues) >= 3
    assert "".join(c["delta"] for c in cues) == done["text"]
    for number, cue in enumerate(cues, start=1):
        assert cue["delta"].startswith(f"{number}\n") and cue["delta"].endswith("\n\n")
        assert cue["segment"]["end"] > cue["segment"]["start"]


def test_curl_streams_vtt(server, story):
    out = subprocess.run(
        ["curl", "-sN", f"{server.base_url}/v1/audio/transcriptions", "-F", f"file=@{story[0]}",
         "-F", "response_format=vtt", "-F", "stream=true"], capture_output=True, text=True, timeout=120)
    payloads = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    assert events[0]["delta"].startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["text"].startswith("WEBVTT")


def test_models_health_version_metrics(server, client, fox_clip):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny.en", "whisper-1"]
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert httpx.get(f"{server.base_url}/version").json()["version"]
    assert httpx.get(f"{server.base_url}/docs").status_code == 200
    with open(fox_clip.path, "rb") as f:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    metrics = httpx.get(f"{server.base_url}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
                 "vllm_whisper:audio_seconds_processed_total", "vllm_whisper:request_real_time_factor_sum"):
        assert name in metrics, name
    audio_line = next(line for line in metrics.splitlines()
                      if line.startswith("vllm_whisper:audio_seconds_processed_total{"))
    assert float(audio_line.rsplit(" ", 1)[1]) > 2.0


def test_disconnecting_mid_stream_frees_the_cache(server, story):
    async def main():
        form = aiohttp.FormData()
        form.add_field("file", story[0].read_bytes(), filename="story.mp3")
        form.add_field("stream", "true")
        async with aiohttp.ClientSession() as session:
            response = await session.post(f"{server.base_url}/v1/audio/transcriptions", data=form)
            await response.content.readline()  # the first delta: decoding has started
            response.close()  # drop the connection
        for _ in range(200):
            stats = server.state.engine.stats
            if stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_running == 0 and \
                    stats.num_free_cross_slots == stats.num_cross_slots and server.state.service.in_progress == 0:
                return stats
            await asyncio.sleep(0.05)
        return server.state.engine.stats

    stats = asyncio.run(main())
    assert stats.num_free_kv_blocks == stats.num_kv_blocks
    assert stats.num_free_cross_slots == stats.num_cross_slots
    assert server.state.service.in_progress == 0


def test_word_timestamps_and_chunking_strategy(client, story):
    path, text = story
    with open(path, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"])
    assert verbose.words and verbose.segments
    assert all(0 <= w.start <= w.end <= verbose.duration for w in verbose.words)
    assert all(a.start <= b.start for a, b in zip(verbose.words, verbose.words[1:]))
    with open(path, "rb") as f:
        words_only = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                        timestamp_granularities=["word"])
    assert words_only.words and not words_only.segments
    with open(path, "rb") as f:
        chunked = client.audio.transcriptions.create(model="whisper-1", file=f, chunking_strategy="auto")
    assert words_match(text, chunked.text)
    with open(path, "rb") as f:
        vad = client.audio.transcriptions.create(
            model="whisper-1", file=f, chunking_strategy={"type": "server_vad", "threshold": 0.5,
                                                          "silence_duration_ms": 300})
    assert words_match(text, vad.text)
