"""Regressions from the abuse probe: inputs that killed the engine, exhausted memory or reached a 500, and capacity
waits that made the engine raise. Each test fails on the code before the fix."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import struct
import subprocess
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import httpx
import numpy as np
import pytest
import torch
import websockets

from vllm_whisper.audio import AudioDecodeError, load_audio
from vllm_whisper.audio.decode import AudioTooLongError
from vllm_whisper.testing.server import serve_in_thread
from vllm_whisper.testing.speech import normalize_text

FOX = "quick brown fox"  # tiny.en hears "jump" on this voice: compare the words it always gets


def float_wav(samples: np.ndarray, rate: int) -> bytes:
    """A 32-bit IEEE-float WAV (format tag 3), which the `wave` module cannot write."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_wav(samples: np.ndarray, rate: int) -> bytes:
    out = BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def loud_sample_wav() -> bytes:
    """Noise with one finite 1e30 sample: its power overflows float32 in the STFT (inf/NaN features)."""
    samples = np.random.default_rng(0).normal(0, 0.05, 16000).astype(np.float32)
    samples[8000] = 1e30
    return float_wav(samples, 16000)


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25",
                         "--max-num-seqs", "1", "--max-audio-duration", "60", "--max-audio-filesize-mb", "1",
                         "--upload-read-timeout", "1", "--header-read-timeout", "1.5") as running:
        yield running


def transcribe(server, content: bytes, name: str = "a.wav", **fields) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/audio/transcriptions", files={"file": (name, content)}, data=fields,
                      timeout=120)


# --- audio that cannot be analysed ---------------------------------------------------------------------------
def test_a_huge_sample_is_a_400_and_the_next_request_is_served(server, fox_clip):
    before = transcribe(server, fox_clip.path.read_bytes()).json()["text"]
    bad = transcribe(server, loud_sample_wav())
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "file" and "[-1, 1]" in bad.json()["error"]["message"]
    good = transcribe(server, fox_clip.path.read_bytes())
    assert good.status_code == 200 and good.json()["text"] == before and FOX in normalize_text(before)
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_the_engine_refuses_non_finite_features_for_that_caller_only(tiny_en, fox_clip):
    from vllm_whisper import LLM
    from vllm_whisper.engine.sampler import SamplingParams
    from vllm_whisper.params import TranscriptionParams
    from vllm_whisper.transcribe.sequential import build_rules

    llm = LLM(model="tiny.en", dtype="float32")
    before = llm.transcribe([fox_clip.path])[0].text
    loud = np.random.default_rng(0).normal(0, 0.05, 16000).astype(np.float32)
    loud[100] = 1e30
    with pytest.raises(AudioDecodeError, match=r"\[-1, 1\]"):
        llm.transcribe([loud])
    params = SamplingParams(build_rules(llm.loaded, TranscriptionParams(timestamps=False)), max_new_tokens=8)
    prompt = llm.tokenizer.sot_sequence(None, "transcribe", timestamps=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        llm.engine.add_request("poisoned", torch.full((80, 3000), float("inf")), prompt, params)
    assert not llm.engine.has_unfinished_requests()
    assert llm.transcribe([fox_clip.path])[0].text == before


# --- rates and durations that buy unbounded work --------------------------------------------------------------
MEMORY_PROBE = """
import resource, sys
import numpy as np
from vllm_whisper.audio import load_audio
data = open(sys.argv[1], "rb").read()
load_audio(np.zeros(16000, np.float32))  # imports and first-use allocations before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
samples = load_audio(data)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(samples), (after - before) / 1024)
"""


@pytest.mark.parametrize("rate", [44101, 8009])
def test_a_rate_coprime_with_16k_resamples_in_bounded_memory(rate, tmp_path):
    t = np.arange(rate) / rate
    path = tmp_path / f"tone_{rate}.wav"
    path.write_bytes(pcm_wav(0.5 * np.sin(2 * np.pi * 440 * t), rate))
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    length, extra_mb = done.stdout.split()
    assert int(length) == 16000
    assert float(extra_mb) < 200, f"{extra_mb} MB extra for one second at {rate} Hz"


def test_odd_rate_resampling_keeps_the_signal():
    rate = 44101
    t = np.arange(2 * rate) / rate
    samples = load_audio(pcm_wav(0.5 * np.sin(2 * np.pi * 440 * t), rate))
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(samples.size) / 16000)
    assert samples.size == 32000
    assert np.abs(samples[400:-400] - expected[400:-400]).max() < 1e-3


def test_a_one_hertz_file_is_refused(server):
    tiny = pcm_wav(np.zeros(3500), 1)  # 7 kB that would be an hour of audio at 16 kHz
    with pytest.raises(AudioDecodeError, match="below the supported minimum"):
        load_audio(tiny)
    response = transcribe(server, tiny)
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_audio_over_the_duration_limit_is_refused_while_decoding(server):
    long = pcm_wav(np.zeros(61 * 8000), 8000)
    with pytest.raises(AudioTooLongError):
        load_audio(long, max_duration_s=60)
    with pytest.raises(AudioTooLongError):
        load_audio(np.zeros(61 * 16000, np.float32), max_duration_s=60)
    assert load_audio(long).size == 61 * 16000  # no limit unless asked
    response = transcribe(server, long)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "audio_too_long"
    assert "--max-audio-duration" in response.json()["error"]["message"]


# --- upload bodies --------------------------------------------------------------------------------------------
BOUNDARY = "vwboundary"


def _open_chunked_upload(server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall((f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode())
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode()
    sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
    return sock


def _read_status(sock: socket.socket) -> int:
    reply = b""
    while b"\r\n" not in reply:
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    return int(reply.split(b" ", 2)[1])


def test_a_chunked_upload_is_refused_once_the_limit_is_read(server):
    """No Content-Length: the server must stop reading at its limit (1 MB here), not spool 2 GB to disk first."""
    sock = _open_chunked_upload(server)
    chunk = b"\x00" * 65536
    sent = 0
    try:
        while sent < 200 * 2**20:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered before the body ended
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status = _read_status(sock)
    sock.close()
    assert status == 413
    assert sent < 16 * 2**20, f"{sent / 2**20:.0f} MB were sent before the refusal"


def test_a_stalled_upload_gets_a_408(server):
    sock = _open_chunked_upload(server)
    sock.sendall(b"4\r\nRIFF\r\n")
    started = time.monotonic()
    status = _read_status(sock)  # then nothing more: the server gives up after --upload-read-timeout (1 s)
    sock.close()
    assert status == 408 and time.monotonic() - started < 10


def _connect(server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _reply_after_stall(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, reply = time.monotonic(), b""
    while data := sock.recv(4096):
        reply += data
    sock.close()
    return reply, time.monotonic() - started


def test_headers_that_never_finish_get_a_408_and_the_connection_closes(server):
    sock = _connect(server)
    sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multi")  # then nothing
    reply, waited = _reply_after_stall(sock)
    assert reply.startswith(b"HTTP/1.1 408") and waited < 10, (reply, waited)


# --- form fields that reached a parser's exception ------------------------------------------------------------
@pytest.mark.parametrize("value", [
    '{"type": "server_vad", "silence_duration_ms": 1e400}',
    '{"type": "server_vad", "silence_duration_ms": 1e12}',
    '{"type": "server_vad", "threshold": "NaN"}',
    '{"type": "server_vad", "threshold": [0.5]}',
    "[" * 100_000 + "]" * 100_000,
    '{"type": "server_vad", "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
], ids=["overflow", "huge", "nan", "list", "deep list", "deep inside"])
def test_chunking_strategy_values_are_400s(server, fox_clip, value):
    response = transcribe(server, fox_clip.path.read_bytes(), chunking_strategy=value)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"] == "chunking_strategy"


def test_bracketed_chunking_fields_with_fractions_are_accepted(server, fox_clip):
    response = transcribe(server, fox_clip.path.read_bytes(), **{
        "chunking_strategy[type]": "server_vad", "chunking_strategy[silence_duration_ms]": "300.5"})
    assert response.status_code == 200, response.text
    assert FOX in normalize_text(response.json()["text"])


def test_special_token_text_in_the_prompt_is_plain_text(server, fox_clip):
    response = transcribe(server, fox_clip.path.read_bytes(), prompt="<|endoftext|>")
    assert response.status_code == 200 and FOX in normalize_text(response.json()["text"])


# --- capacity waits --------------------------------------------------------------------------------------------
def test_two_concurrent_clips_with_one_sequence_both_succeed(server, english_clips):
    clips = english_clips[:2]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda c: transcribe(server, c.path.read_bytes()), clips))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_three_concurrent_clips_with_one_cross_attention_slot(english_clips):
    clips = english_clips[2:5]
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-dtype", "float32",
                         "--kv-cache-space", "0.03") as running:
        assert running.state.engine.stats.num_cross_slots == 1
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda c: transcribe(running, c.path.read_bytes()), clips))
        assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
        assert all(r.json()["text"].strip() for r in responses)
        assert httpx.get(f"{running.base_url}/health").status_code == 200


# --- realtime events that closed the socket without a word -----------------------------------------------------
def test_realtime_bad_values_and_binary_frames_get_error_events(server):
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

    async def main():
        async with websockets.connect(url) as ws:
            await ws.recv()  # session created
            replies = []
            for message in [
                json.dumps({"type": "session.update", "session": {"audio": {"input": {
                    "format": {"type": "audio/pcm", "rate": "fast"}}}}}),
                json.dumps({"type": "session.update", "session": {"audio": "loud"}}),
                json.dumps({"type": "transcription_session.update", "session": {
                    "input_audio_sample_rate": 1e400}}),
                json.dumps({"type": "transcription_session.update", "session": {
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": "x"}}}),
                "[" * 100_000 + "]" * 100_000,
                b"\x00\x01binary",
            ]:
                await ws.send(message)
                replies.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}}}}}))
            replies.append(json.loads(await ws.recv()))
            return replies

    replies = asyncio.run(main())
    assert [r["type"] for r in replies[:-1]] == ["error"] * 6, replies
    assert replies[-2]["error"]["code"] == "invalid_frame"
    assert replies[-1]["type"] == "session.updated"
    assert replies[-1]["session"]["audio"]["input"]["format"]["rate"] == 16000


def test_realtime_sessions_beyond_the_limit_are_refused(fox_clip):
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25",
                         "--max-realtime-sessions", "1") as running:
        url = running.base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

        async def main():
            async with websockets.connect(url) as first:
                assert json.loads(await first.recv())["type"].endswith("session.created")
                assert running.state.service.in_progress == 1  # a session counts toward admission
                try:
                    async with websockets.connect(url) as second:
                        refusal = json.loads(await second.recv())
                        await second.wait_closed()
                        outcome = ("closed", second.close_code, refusal["error"]["code"])
                except websockets.InvalidStatus as exc:
                    outcome = ("denied", exc.response.status_code, json.loads(exc.response.body)["error"]["code"])
            async with websockets.connect(url) as third:  # the slot is free again
                created = json.loads(await third.recv())
            return outcome, created

        outcome, created = asyncio.run(main())
        assert outcome in (("denied", 429, "rate_limit_exceeded"), ("closed", 1013, "rate_limit_exceeded")), outcome
        assert created["type"].endswith("session.created")


def test_metrics_can_be_put_behind_the_key():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.1", "--api-key", "k",
                         "--protect-metrics") as running:
        assert httpx.get(f"{running.base_url}/metrics").status_code == 401
        assert httpx.get(f"{running.base_url}/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
        assert httpx.get(f"{running.base_url}/health").status_code == 200
