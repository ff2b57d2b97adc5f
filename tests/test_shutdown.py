"""Graceful shutdown of the real server process: on SIGTERM running streams finish (or, past --shutdown-timeout,
end with a final error event), new requests are refused cleanly, realtime sessions hear why they close, and the
process exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from vllm_whisper.audio import load_audio
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_server(port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm_whisper.entrypoints.api_server", "--model", "tiny.en", "--dtype", "float32",
         "--kv-cache-space", "0.5", "--port", str(port), *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early: {process.stdout.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become healthy")


def stream_events(url: str, wav: bytes, events: list, first_event: threading.Event) -> None:
    """POST a streamed transcription and record every SSE payload (or the exception that ended it)."""
    try:
        with httpx.stream("POST", url, files={"file": ("a.wav", wav)}, data={"stream": "true"}, timeout=300) as r:
            events.append(("status", r.status_code))
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(("data", line[6:]))
                    first_event.set()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        events.append(("exception", repr(exc)))
        first_event.set()


@pytest.fixture(scope="module")
def speech_wav(english_clips, tmp_path_factory) -> bytes:
    """About 20 s of speech in one window-sized file."""
    audio = np.concatenate([load_audio(c.path) for c in english_clips[:8]])[: 25 * 16000]
    return encode_audio(audio, 16000, tmp_path_factory.mktemp("shutdown") / "speech.wav").read_bytes()


def test_sigterm_lets_running_streams_finish_and_exits_0(speech_wav):
    port = free_port()
    process = start_server(port, "--shutdown-timeout", "120")
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    try:
        streams = [([], threading.Event()) for _ in range(10)]
        threads = [threading.Thread(target=stream_events, args=(url, speech_wav, ev, first)) for ev, first in streams]
        for thread in threads:
            thread.start()
        for _, first in streams:
            assert first.wait(120)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:  # the listening socket is closed: refused, or a clean 503 if the connection got in first
            late = httpx.post(url, files={"file": ("a.wav", speech_wav)}, timeout=10)
            assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
        except httpx.ConnectError:
            pass
        for thread in threads:
            thread.join(180)
        for events, _ in streams:
            assert ("status", 200) in events
            payloads = [p for kind, p in events if kind == "data"]
            assert payloads[-1] == "[DONE]" or json.loads(payloads[-1])["type"] == "transcript.text.done", events[-3:]
            done = [json.loads(p) for p in payloads if p != "[DONE]" and json.loads(p)["type"] == "transcript.text.done"]
            assert done and len(done[0]["text"].split()) > 20
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_past_the_timeout_streams_and_sessions_get_a_final_error_event(speech_wav, tmp_path):
    port = free_port()
    process = start_server(port, "--shutdown-timeout", "3")
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    long_audio = np.concatenate([load_audio(speech_wav)] * 6)  # 2.5 minutes: far more than 3 s of work here
    long_wav = encode_audio(long_audio, 16000, tmp_path / "long.wav").read_bytes()
    realtime_events: list[dict] = []
    vllm_events: list[dict] = []

    async def realtime_session(query: str, opening: list[dict], events: list[dict], ready: threading.Event) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime{query}") as ws:
            events.append(json.loads(await ws.recv()))
            for event in opening:
                await ws.send(json.dumps(event))
            ready.set()
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except websockets.ConnectionClosed:
                pass

    try:
        events, first = [], threading.Event()
        streamer = threading.Thread(target=stream_events, args=(url, long_wav, events, first))
        streamer.start()
        sessions, readies = [], []
        for query, opening, received in (("?intent=transcription", [], realtime_events),
                                          ("", [{"type": "session.update", "model": "tiny.en"}], vllm_events)):
            ready = threading.Event()
            sessions.append(threading.Thread(
                target=lambda q=query, o=opening, r=received, e=ready: asyncio.run(realtime_session(q, o, r, e))))
            sessions[-1].start()
            readies.append(ready)
        assert first.wait(120) and all(ready.wait(30) for ready in readies)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        streamer.join(60)
        for session in sessions:
            session.join(60)
        payloads = [json.loads(p) for kind, p in events if kind == "data" and p != "[DONE]"]
        assert payloads[-1]["type"] == "error" and "shutting down" in json.dumps(payloads[-1]), payloads[-2:]
        assert any(e.get("type") == "error" and e["error"]["code"] == "server_shutting_down" for e in realtime_events)
        # vLLM's protocol (no intent) hears it in vLLM's error shape: {"type": "error", "error": "...", "code"}
        assert any(e.get("type") == "error" and e.get("code") == "server_shutting_down" for e in vllm_events), \
            vllm_events
        assert process.wait(60) == 0
        assert time.monotonic() - started < 30
    finally:
        if process.poll() is None:
            process.kill()
