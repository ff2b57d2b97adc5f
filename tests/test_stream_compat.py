"""One streamed transcription that both OpenAI's and vLLM's clients read, on a real uvicorn server with tiny.en:
the official `openai` client (sync and async, as OpenAI's users and as vLLM's examples read it), raw SSE over
httpx, aiohttp and curl all give the non-streamed text; vLLM's usage options; SRT cues; errors end with [DONE]."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import aiohttp
import httpx
import numpy as np
import openai
import pytest

from vllm_whisper.audio import load_audio
from vllm_whisper.outputs.sse import StreamChunks
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.faults import failing_encoder
from vllm_whisper.testing.server import serve_in_thread
from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.5") as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def talk(speech_dir):
    """Three sentences with pauses (about 9 s, several segments) as MP3."""
    gap = np.zeros(6400, dtype=np.float32)
    parts = []
    for i, text in enumerate(HARVARD_SENTENCES[5:8]):
        parts += [load_audio(synthesize(text, speech_dir / f"compat{i}.wav", "flite", "slt").path), gap]
    return encode_audio(np.concatenate(parts), 16000, speech_dir / "compat.mp3")


@pytest.fixture(scope="module")
def offline_text(client, talk) -> str:
    """The non-streamed json transcript every streamed reader must reproduce."""
    with open(talk, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f).text
    assert len(text.split()) > 15
    return text


def post_form(talk, **fields) -> tuple[dict, dict]:
    return {"file": ("talk.mp3", talk.read_bytes(), "audio/mpeg")}, {"stream": "true", "model": "whisper-1", **fields}


def read_sse(server, talk, **fields) -> list[str]:
    """Every `data:` payload of a streamed request read with httpx, [DONE] included."""
    files, data = post_form(talk, **fields)
    with httpx.stream("POST", f"{server.base_url}/v1/audio/transcriptions", files=files, data=data,
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def chunks_of(payloads: list[str]) -> list[dict]:
    """The JSON events before [DONE], checking that [DONE] ends the stream and nothing follows it."""
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]


def check_vllm_envelope(chunks: list[dict], model: str = "whisper-1") -> None:
    """vLLM's chunk fields on every event, one id and creation time per request."""
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("trsc-")
    assert {c["object"] for c in chunks} == {"transcription.chunk"} and {c["model"] for c in chunks} == {model}
    assert len({c["created"] for c in chunks}) == 1 and abs(chunks[0]["created"] - time.time()) < 300


def test_openai_sync_client_reads_both_shapes(client, talk, offline_text):
    with open(talk, "rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    deltas, done = events[:-1], events[-1]
    assert {e.type for e in deltas} == {"transcript.text.delta"} and done.type == "transcript.text.done"
    assert "".join(d.delta for d in deltas) == done.text == offline_text
    assert done.usage.input_tokens > 300 and done.usage.output_tokens > 15
    # vLLM's users read the same events through the same client: choices[0]["delta"]["content"] on every chunk
    assert "".join(e.choices[0]["delta"]["content"] for e in events) == offline_text
    assert [e.choices[0]["finish_reason"] for e in events] == [None] * len(deltas) + ["stop"]
    assert done.usage.prompt_tokens == done.usage.input_tokens
    assert done.usage.completion_tokens == done.usage.output_tokens


def test_openai_async_client_reads_both_shapes(server, talk, offline_text):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        stream = await client.audio.transcriptions.create(model="tiny.en", file=("talk.mp3", talk.read_bytes()),
                                                          stream=True)
        return [event async for event in stream]

    events = asyncio.run(main())
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) > 5 and "".join(deltas) == events[-1].text == offline_text
    assert "".join(e.choices[0]["delta"]["content"] for e in events) == offline_text
    assert {e.model for e in events} == {"tiny.en"}


def test_raw_sse_over_httpx_reads_content_until_done(server, talk, offline_text):
    chunks = chunks_of(read_sse(server, talk))
    check_vllm_envelope(chunks)
    content = ""
    for chunk in chunks:
        [choice] = chunk["choices"]
        content += choice["delta"]["content"]
        assert choice["stop_reason"] is None
    assert content == offline_text
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]
    assert all("usage" not in c for c in chunks[:-1]) and chunks[-1]["usage"]["total_tokens"] > 300


def test_aiohttp_reads_both_shapes(server, talk, offline_text):
    async def main():
        form = aiohttp.FormData()
        form.add_field("file", talk.read_bytes(), filename="talk.mp3", content_type="audio/mpeg")
        form.add_field("stream", "true")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.base_url}/v1/audio/transcriptions", data=form) as response:
                assert response.status == 200
                return [line[6:].decode().strip() async for line in response.content if line.startswith(b"data: ")]

    chunks = chunks_of(asyncio.run(main()))
    check_vllm_envelope(chunks, model="tiny.en")  # no model in the form: the first served name
    assert "".join(c["delta"] for c in chunks[:-1]) == chunks[-1]["text"] == offline_text
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == offline_text


def test_curl_reads_both_shapes(server, talk, offline_text):
    out = subprocess.run(["curl", "-sN", f"{server.base_url}/v1/audio/transcriptions", "-F", f"file=@{talk}",
                          "-F", "stream=true", "-F", "model=whisper-1"],
                         capture_output=True, text=True, timeout=120, check=True)
    chunks = chunks_of([line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")])
    check_vllm_envelope(chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == chunks[-1]["text"] == offline_text


def test_stream_include_usage_adds_vllms_usage_chunk(server, talk, offline_text):
    chunks = chunks_of(read_sse(server, talk, stream_include_usage="true"))
    check_vllm_envelope(chunks)
    *content, done, usage_chunk = chunks
    assert done["type"] == "transcript.text.done" and done["text"] == offline_text
    assert all("usage" not in c for c in content)
    assert usage_chunk["choices"] == [] and usage_chunk["type"] == "transcript.usage"
    usage = usage_chunk["usage"]
    assert usage["prompt_tokens"] > 300 and usage["completion_tokens"] > 15
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done["usage"] == usage


def test_continuous_usage_stats_on_every_chunk(server, talk, offline_text):
    """As vLLM's own test reads it: every chunk with choices has usage, and a final chunk has none."""
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        stream = await client.audio.transcriptions.create(
            model="whisper-1", file=("talk.mp3", talk.read_bytes()), stream=True,
            extra_body=dict(stream_include_usage=True, stream_continuous_usage_stats=True))
        return [event async for event in stream]

    events = asyncio.run(main())
    with_choices = [e for e in events if len(e.choices)]
    assert len(events) == len(with_choices) + 1 and not events[-1].choices
    assert all(hasattr(e, "usage") and e.usage for e in with_choices)
    assert "".join(e.choices[0]["delta"]["content"] for e in with_choices) == offline_text
    usages = [e.usage if isinstance(e.usage, dict) else e.usage.model_dump() for e in events]
    completion = [u["completion_tokens"] for u in usages]
    assert completion == sorted(completion) and 0 < completion[0] < completion[-1]
    assert len({u["prompt_tokens"] for u in usages}) == 1
    assert usages[-1] == usages[-2]  # the usage-only chunk repeats the done event's totals


def test_stream_include_usage_false_turns_every_usage_off(server, talk):
    chunks = chunks_of(read_sse(server, talk, stream_include_usage="false", stream_continuous_usage_stats="true"))
    assert chunks[-1]["type"] == "transcript.text.done"
    assert all("usage" not in c for c in chunks)


def test_srt_cues_join_into_the_srt_file(server, client, talk):
    with open(talk, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    chunks = chunks_of(read_sse(server, talk, response_format="srt"))
    check_vllm_envelope(chunks)
    cues, done = chunks[:-1], chunks[-1]
    assert len(cues) >= 3 and all(c["type"] == "transcript.text.delta" for c in cues)
    for number, cue in enumerate(cues, start=1):
        assert cue["delta"].startswith(f"{number}\n") and cue["choices"][0]["delta"]["content"] == cue["delta"]
        assert cue["segment"]["end"] > cue["segment"]["start"]
    assert "".join(c["delta"] for c in cues) == done["text"] == srt
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == srt
    assert done["choices"][0]["finish_reason"] == "stop"


def test_a_failure_after_the_headers_sends_an_error_event_then_done(server, client, talk):
    with failing_encoder(server.state.engine.engine, lambda request: True):
        payloads = read_sse(server, talk)
        with open(talk, "rb") as f, pytest.raises(openai.APIError, match="injected encoder fault"):
            list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    chunks = chunks_of(payloads)
    assert chunks[-1]["type"] == "error" and "injected encoder fault" in chunks[-1]["error"]["message"]
    assert all(c["type"] != "transcript.text.done" for c in chunks)
    assert server.state.engine.is_running  # the fault failed that request alone


def test_translation_chunks_are_named_as_vllm_names_them():
    chunks = StreamChunks.start("translate", "whisper-1")
    assert chunks.id.startswith("trsl-") and chunks.object == "translation.chunk"
    event = json.loads(chunks.text_delta("hello")[6:])
    assert event["object"] == "translation.chunk" and event["choices"][0]["delta"]["content"] == "hello"
