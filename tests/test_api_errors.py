"""Every client mistake gets OpenAI's error shape and the right status, never a 500; afterwards the server
still transcribes correctly."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import numpy as np
import pytest

from vllm_whisper.audio import load_audio
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.server import serve_in_thread
from vllm_whisper.testing.speech import HARVARD_SENTENCES, normalize_text, synthesize

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25", "--api-key", KEY,
                         "--max-audio-filesize-mb", "1", "--max-num-seqs", "1", "--max-waiting-requests", "0") as s:
        yield s


@pytest.fixture(scope="module")
def wav(fox_clip) -> bytes:
    return fox_clip.path.read_bytes()


def post(server, path="/v1/audio/transcriptions", files=None, data=None, headers=AUTH, **kwargs):
    return httpx.post(server.base_url + path, files=files, data=data, headers=headers, timeout=60, **kwargs)


def audio_file(content: bytes, name: str = "a.wav"):
    return {"file": (name, content, "application/octet-stream")}


CASES = [
    # (name, request builder -> response, status, param)
    ("undecodable bytes", lambda s, w: post(s, files=audio_file(b"\x00\x01garbage" * 500)), 400, "file"),
    ("empty file", lambda s, w: post(s, files=audio_file(b"")), 400, "file"),
    ("text file", lambda s, w: post(s, files=audio_file(b"hello, this is not audio\n" * 10, "notes.txt")), 400, "file"),
    ("truncated wav", lambda s, w: post(s, files=audio_file(w[:40])), 400, "file"),
    ("no file field", lambda s, w: post(s, data={"model": "whisper-1"}, files={"other": ("x", b"1")}), 400, "file"),
    ("json body", lambda s, w: post(s, json={"file": "x"}), 400, "file"),
    ("unknown language", lambda s, w: post(s, files=audio_file(w), data={"language": "klingon"}), 400, "language"),
    ("language the model lacks", lambda s, w: post(s, files=audio_file(w), data={"language": "de"}), 400, "language"),
    ("bad response_format", lambda s, w: post(s, files=audio_file(w), data={"response_format": "xml"}), 400,
     "response_format"),
    ("temperature not a number", lambda s, w: post(s, files=audio_file(w), data={"temperature": "hot"}), 400,
     "temperature"),
    ("temperature out of range", lambda s, w: post(s, files=audio_file(w), data={"temperature": "1.5"}), 400,
     "temperature"),
    ("word timestamps without verbose_json",
     lambda s, w: post(s, files=audio_file(w), data={"timestamp_granularities[]": "word"}), 400,
     "timestamp_granularities"),
    ("stream of verbose_json",
     lambda s, w: post(s, files=audio_file(w), data={"stream": "true", "response_format": "verbose_json"}), 400,
     "stream"),
    ("stream not a boolean", lambda s, w: post(s, files=audio_file(w), data={"stream": "maybe"}), 400, "stream"),
    ("bad chunking_strategy", lambda s, w: post(s, files=audio_file(w), data={"chunking_strategy": "sometimes"}),
     400, "chunking_strategy"),
    ("translate on an English-only model", lambda s, w: post(s, "/v1/audio/translations", files=audio_file(w)), 400,
     "model"),
    ("over the size limit", lambda s, w: post(s, files=audio_file(b"\x00" * (3 * 2**20))), 413, "file"),
    ("missing API key", lambda s, w: post(s, files=audio_file(w), headers={}), 401, None),
    ("wrong API key", lambda s, w: post(s, files=audio_file(w), headers={"Authorization": "Bearer nope"}), 401, None),
    ("unknown model", lambda s, w: post(s, files=audio_file(w), data={"model": "whisper-9"}), 404, "model"),
    ("unknown model card", lambda s, w: httpx.get(s.base_url + "/v1/models/whisper-9", headers=AUTH), 404, "model"),
    ("unknown route", lambda s, w: httpx.get(s.base_url + "/v1/audio/nothing", headers=AUTH), 404, None),
    ("wrong method", lambda s, w: httpx.get(s.base_url + "/v1/audio/transcriptions", headers=AUTH), 405, None),
]


@pytest.mark.parametrize("name,call,status,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_an_openai_error(server, wav, name, call, status, param):
    response = call(server, wav)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    assert error["param"] == param
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_queue_full_is_429_with_retry_after(server, speech_dir):
    """With room for one request, a second one while the first streams is told to retry."""
    parts = [load_audio(synthesize(t, speech_dir / f"busy{i}.wav").path) for i, t in enumerate(HARVARD_SENTENCES[:6])]
    long_mp3 = encode_audio(np.concatenate(parts), 16000, speech_dir / "busy.mp3").read_bytes()

    async def main():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            form = aiohttp.FormData()
            form.add_field("file", long_mp3, filename="busy.mp3")
            form.add_field("stream", "true")
            first = await session.post(f"{server.base_url}/v1/audio/transcriptions", data=form)
            await first.content.readline()
            second = httpx.post(f"{server.base_url}/v1/audio/transcriptions", headers=AUTH, timeout=60,
                                files=audio_file(long_mp3, "b.mp3"))
            rest = await first.text()
            return second, rest

    second, rest = asyncio.run(main())
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert "transcript.text.done" in rest


def test_the_server_still_serves_after_bad_input(server, wav, fox_clip):
    for _, call, _, _ in CASES:
        call(server, wav)
    response = post(server, files=audio_file(wav))
    assert response.status_code == 200
    assert normalize_text(response.json()["text"]).startswith("the quick brown fox")
    assert server.state.engine.is_running and server.state.service.in_progress == 0
    stats = server.state.engine.stats
    assert stats.num_free_kv_blocks == stats.num_kv_blocks


@pytest.mark.parametrize("content,name", [(b"\x00\x01garbage" * 500, "a.wav"), (b"not audio\n" * 10, "notes.txt")])
def test_undecodable_upload_says_invalid_or_unsupported(server, content, name):
    """OpenAI's and vLLM's clients both match this phrase: an undecodable upload says it in its message."""
    response = post(server, files=audio_file(content, name))
    assert response.status_code == 400
    assert "Invalid or unsupported audio file" in response.json()["error"]["message"]
